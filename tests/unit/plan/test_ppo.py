"""PPO plans its four models together and refuses pipelines."""
import pytest

from orchestrator.config.cluster import GiB, make_cluster
from orchestrator.config.model import get_model
from orchestrator.plan.evaluate import evaluate
from orchestrator.plan.job import BatchTarget, Job
from orchestrator.plan.layout import Layout
from orchestrator.plan.memory import estimate_memory
from orchestrator.plan.ppo import ppo_memory, ppo_model_states
from orchestrator.plan.search import search


def job(ppo=True, **kw):
    return Job(model=get_model("gpt3-6.7b"), cluster=make_cluster(gpu="a100-80g", gpus=8), seq=2048,
               batch=BatchTarget(64), ppo=ppo, **kw)


LAYOUT = Layout(tp=1, pp=1, dp=8, zero_stage=3, micro_batch=1, grad_accum=8, recompute="full")


def test_trained_models_carry_optimizer_state_and_frozen_ones_only_weights():
    states = ppo_model_states(LAYOUT, job())
    assert states["actor"] == states["critic"] and states["actor"].optimizer > 0
    assert states["reference"].grads == 0 and states["reference"].optimizer == 0 and states["reference"].params > 0


def test_four_models_need_more_than_one_and_less_than_four_trained_ones():
    single = estimate_memory(LAYOUT, job(ppo=False))
    four, per_model = ppo_memory(LAYOUT, job())
    assert single.total < four.total
    assert set(per_model) == {"actor", "critic", "reference", "reward"}


def test_offloading_the_frozen_models_moves_them_to_host_memory():
    resident, _ = ppo_memory(LAYOUT, job())
    offloaded, _ = ppo_memory(LAYOUT, job(offload_frozen=True))
    assert offloaded.breakdown.params < resident.breakdown.params
    assert offloaded.cpu_bytes_per_node > resident.cpu_bytes_per_node


def test_ppo_refuses_pipeline_parallelism_with_a_message():
    evaluation = evaluate(Layout(tp=1, pp=2, dp=4, zero_stage=1, micro_batch=1, recompute="full"), job())
    (issue,) = [i for i in evaluation.errors if i.code == "ppo_pp"]
    assert "rollouts" in issue.message and "pp 2" in issue.message


def test_ppo_search_finds_only_pp_1_layouts_and_a_slower_step_than_pretraining():
    ppo = search(job())
    assert ppo.ranked and all(e.layout.pp == 1 for e in ppo.ranked)
    best = ppo.best
    pretrain = evaluate(best.layout, job(ppo=False))
    assert best.time.step_s > 2 * pretrain.time.step_s
    assert best.memory.total / GiB == pytest.approx(sum(best.ppo_models_gib.values())
                                                     + (best.memory.breakdown.activations
                                                        + best.memory.breakdown.buffers) / GiB, abs=0.01)
