"""Planning: how to lay a model onto a cluster. Pure Python: nothing here imports torch.

job        what is fixed: model, cluster, batch, sequence, precision, options
layout     the parallel degrees, ZeRO stage, batch split and recompute of one candidate
partition  which parameters a rank holds (tensor shards, pipeline stages, experts)
validate   every reason a layout cannot run, each with the numbers and the fix
memory     model states (ZeRO paper and DeepSpeed accountings) + activations + buffers per GPU
timing     step time from FLOPs, memory traffic, communication and the 1F1B bubble
calibration, fit   the published runs and the fitted constants of the time model
evaluate, search   one layout judged; every layout enumerated, filtered and ranked
artifact   the plan as a JSON-round-tripping dataclass; ppo: the four PPO models together
"""
