"""bf16 on the CPU (DeepSpeed's CPU accelerator), one process: the optimizer DeepSpeed picks per
ZeRO stage with fp32 gradient accumulation, the fp32 master weights handed on, the frozen PPO
reference computing exactly what the bf16 actor computes (KL 0 at step 1), and the device and
precision taken from the run config."""

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.config.run import OptimConfig, SamplingConfig, load_run_config
from orchestrator.engine.build import build_runtime
from orchestrator.engine.ds_config import build_ds_config, cluster_precision
from orchestrator.engine.parallel import local_device
from orchestrator.engine.precision import resolve_run_precision
from orchestrator.phases import rl_math
from orchestrator.phases.outputs import frozen_model
from orchestrator.phases.ppo import forward_rollout, response_logprobs, sample_rollout
from orchestrator.plan.layout import Layout, LayoutError

OPTIM = OptimConfig(lr=3e-3, warmup_steps=1, grad_clip=1.0)


pytestmark = pytest.mark.usefixtures("world_of_one")   # tests/conftest.py


def batches(count: int, *, seed: int = 0, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, vocab, (count, 2, 17), generator=g)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def bf16_runtime(zero: int, *, grad_accum: int, **kwargs):
    return build_runtime(get_model("tiny"), Layout(zero_stage=zero, grad_accum=grad_accum), OPTIM, total_steps=10,
                         seed=1, precision="bf16", **kwargs)


@pytest.mark.parametrize("zero, optimizer, accumulates_in", [
    (0, "FP16_UnfusedOptimizer", None),              # one micro-batch per step: nothing is accumulated
    (1, "BF16_Optimizer", "grad_acc_dtype"),
    (2, "DeepSpeedZeroOptimizer", "gradient_accumulation_dtype"),
    (3, "DeepSpeedZeroOptimizer_Stage3", "gradient_accumulation_dtype"),
])
def test_bf16_trains_with_fp32_accumulation_and_hands_on_the_fp32_masters(zero, optimizer, accumulates_in, tmp_path):
    grad_accum = 1 if zero == 0 else 4
    rt = bf16_runtime(zero, grad_accum=grad_accum)
    assert type(rt.engine.optimizer).__name__ == optimizer
    assert next(rt.engine.module.parameters()).dtype == torch.bfloat16
    if accumulates_in:
        assert getattr(rt.engine.optimizer, accumulates_in) == torch.float32
    results = [rt.train_step(batches(grad_accum, seed=s)) for s in range(4)]
    assert not any(r.skipped for r in results) and results[-1].loss < results[0].loss
    state = rt.consolidated_state_dict()
    assert all(t.dtype == torch.float32 for t in state.values())
    rounded = {k: t.to(torch.bfloat16).float() for k, t in state.items()}
    assert any(not torch.equal(state[k], rounded[k]) for k in state)       # more than the bf16 rounding
    rt.save_weights_sharded(tmp_path / "final")                            # what a phase hands on
    child = bf16_runtime(zero, grad_accum=grad_accum)                       # … and the child starts from them
    child.load_weights_sharded(tmp_path / "final", parent_head="lm")
    again = child.consolidated_state_dict()                                # (the gather: an independent reference)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_bf16_without_zero_refuses_to_accumulate_micro_batches_in_bf16():
    with pytest.raises(LayoutError, match="bf16 with ZeRO 0 .* grad_accum 4 .* use zero_stage 1"):
        bf16_runtime(0, grad_accum=4)


def test_the_ds_config_asks_for_fp32_accumulation_only_where_deepspeed_supports_it():
    tiny = get_model("tiny")
    for zero in (0, 1, 2, 3):
        config = build_ds_config(Layout(zero_stage=zero, dp=1), model=tiny, precision="bf16")
        assert config.get("data_types") == (None if zero == 0 else {"grad_accum_dtype": "fp32"})
    assert "data_types" not in build_ds_config(Layout(zero_stage=2, dp=1), model=tiny, precision="fp32")


def test_kl_to_the_reference_is_exactly_zero_at_ppo_step_1_in_bf16(tmp_path):
    sft = bf16_runtime(2, grad_accum=1)
    sft.train_step(batches(1))
    sft.save_weights_sharded(tmp_path)             # the fp32 masters, as SFT hands them to PPO
    actor = bf16_runtime(2, grad_accum=1)
    actor.load_weights_sharded(tmp_path, parent_head="lm")
    reference = frozen_model(get_model("tiny"), head="lm", shards=tmp_path, device=actor.device, dtype=actor.dtype)
    prompts = torch.randint(3, 64, (4, 6), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": prompts, "attention_mask": torch.ones_like(prompts)}
    rollout = sample_rollout(actor, batch, sampling=SamplingConfig(max_new_tokens=8), seed=(5,), eos_id=0, pad_id=1)
    scored = {"sequences": rollout.sequences, "attention_mask": rollout.attention_mask,
              "position_ids": rollout.position_ids}
    model = actor.module_for_inference().eval()
    actor_logp = response_logprobs(forward_rollout(model, scored).logits, rollout.sequences, rollout.prompt_len)
    ref_logp = response_logprobs(forward_rollout(reference, scored).logits, rollout.sequences, rollout.prompt_len)
    assert actor_logp.dtype == torch.float32                                    # log-probs in fp32
    _, kl = rl_math.token_rewards(torch.zeros(4), actor_logp, ref_logp, rollout.response_mask.float(), kl_coef=0.1)
    assert torch.equal(kl, torch.zeros(4))


def test_precision_and_device_come_from_the_run_config(tmp_path):
    cpu = load_run_config("recipes/tiny.yaml", ["cluster.precision=bf16"])
    assert cluster_precision(cpu.cluster) == "bf16" and cpu.cluster.device_type == "cpu"
    gpu = load_run_config("recipes/tiny.yaml", ["cluster.gpu=h100-80g"])
    assert resolve_run_precision(gpu).cluster.precision == "bf16"              # auto on GPUs, no probe
    auto = load_run_config("recipes/tiny.yaml")
    with pytest.raises(ValueError, match="chosen by measuring"):
        cluster_precision(auto.cluster)
    fast = {torch.bfloat16: 6.7e11, torch.float32: 1e11}                        # an AMX-like CPU …
    chosen = resolve_run_precision(auto, cache_file=tmp_path / "peaks.json",
                                   measure=lambda *, dtype, **_: (fast[dtype], 512)).cluster.precision
    assert chosen == "bf16"
    slow = {torch.bfloat16: 1.2e11, torch.float32: 2.5e11}                      # … and one with AVX-512 only
    chosen = resolve_run_precision(auto, cache_file=tmp_path / "other.json",
                                   measure=lambda *, dtype, **_: (slow[dtype], 512)).cluster.precision
    assert chosen == "fp32"
    assert local_device("cpu", 3) == torch.device("cpu")                       # cpu ranks stay on the CPU
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees none .* set cluster.gpu=cpu"):
            local_device("cuda", 0)
