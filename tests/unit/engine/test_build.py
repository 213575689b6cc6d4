"""The runtime on one process (a world of one, gloo): training, skipping, schedule, checkpoints,
handoff. The multi-rank layouts are proven in tests/distributed/."""
import math

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.config.run import OptimConfig
from orchestrator.engine.build import build_runtime
from orchestrator.engine.ds_config import build_ds_config
from orchestrator.model.attention import KVCache
from orchestrator.plan.layout import Layout, LayoutError
from orchestrator.plan.memory import planned_bucket_elements
from orchestrator.plan.partition import stage_params

OPTIM = OptimConfig(lr=3e-3, warmup_steps=2, grad_clip=1.0)


pytestmark = pytest.mark.usefixtures("world_of_one")   # tests/conftest.py


def batches(count: int, *, seed: int = 0, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, vocab, (count, 2, 17), generator=g)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def runtime(preset="tiny", layout=None, **kwargs):
    return build_runtime(get_model(preset), layout or Layout(grad_accum=2), OPTIM, total_steps=20, seed=1, **kwargs)


def weights(rt) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rt.engine.module.state_dict().items()}


def test_one_process_trains_with_zero0_and_reports_the_step():
    rt = runtime()
    data = batches(2)
    results = [rt.train_step(data) for _ in range(8)]
    assert results[-1].loss < results[0].loss - 0.5
    assert results[0].tokens == 2 * 2 * 16 and not any(r.skipped for r in results)
    assert [r.lr for r in results[:3]] == pytest.approx([1.5e-3, 3e-3, 3e-3], rel=1e-6)
    assert all(math.isfinite(r.grad_norm) and r.grad_norm > 0 for r in results)
    assert results[0].metrics["lm_loss"] == pytest.approx(results[0].loss) and results[0].metrics["aux_loss"] == 0


def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights_unchanged():
    rt = runtime()
    rt.train_step(batches(2))
    before, adam_before = weights(rt), {k: v["step"].clone() for k, v in rt.engine.optimizer.state.items()}

    def nan_loss(forward, batch):
        loss, metrics = rt.lm_loss(forward, batch)
        return loss * math.inf, metrics

    result = rt.train_step(batches(2, seed=1), loss_fn=nan_loss)
    assert result.skipped and math.isnan(result.grad_norm)
    assert all(torch.equal(before[k], v) for k, v in weights(rt).items())
    assert {k: v["step"] for k, v in rt.engine.optimizer.state.items()} == adam_before
    assert rt.steps_done == 1
    assert not rt.train_step(batches(2, seed=2)).skipped and rt.steps_done == 2


def test_weight_decay_skips_biases_and_layernorm_gains():
    rt = runtime()
    groups = {g["name"]: g for g in rt.engine.optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == OPTIM.weight_decay and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.dim() < 2 for p in groups["no_decay"]["params"])
    assert all(p.dim() == 2 for p in groups["decay"]["params"])


def test_moe_expert_parameters_get_their_own_optimizer_groups_and_an_aux_loss():
    rt = runtime("tiny-moe")
    assert any(g.get("moe") for g in rt.engine.optimizer.param_groups)
    result = rt.train_step(batches(2))
    assert result.metrics["aux_loss"] > 0
    assert result.loss == pytest.approx(result.metrics["lm_loss"] + result.metrics["aux_loss"], rel=1e-5)


def test_save_then_load_restores_weights_optimizer_step_and_client_state(tmp_path):
    rt = runtime()
    rt.train_step(batches(2))
    rt.save(tmp_path, tag="step1", client_state={"data_position": 7})
    saved = weights(rt)
    rt.train_step(batches(2, seed=1))
    assert rt.load(tmp_path, tag="step1") == {"data_position": 7}
    assert rt.steps_done == 1
    assert all(torch.equal(saved[k], v) for k, v in weights(rt).items())
    with pytest.raises(FileNotFoundError, match="no DeepSpeed checkpoint with tag 'nope'"):
        rt.load(tmp_path, tag="nope")


def test_consolidated_weights_start_a_new_runtime_with_the_same_logits():
    rt = runtime()
    rt.train_step(batches(2))
    state = rt.consolidated_state_dict()
    ids = torch.randint(0, 2048, (2, 12))
    fresh = runtime(layout=Layout(grad_accum=1, zero_stage=2), init_state=state)
    assert torch.allclose(fresh.logits(ids), rt.logits(ids), atol=1e-6)
    other = runtime()
    other.load_consolidated(state)
    assert torch.allclose(other.logits(ids), rt.logits(ids), atol=1e-6)


def test_a_state_dict_of_another_model_is_refused():
    state = runtime().consolidated_state_dict()
    with pytest.raises(ValueError, match="does not fit model tiny with head='scalar'"):
        runtime(head="scalar", init_state=state)


def test_a_custom_loss_trains_a_scalar_head_and_inference_uses_the_kv_cache():
    rt = runtime(head="scalar")

    def reward_like(forward, batch):
        values = forward(batch["input_ids"]).logits[:, -1]
        target = (batch["input_ids"][:, 0] % 2).float()
        return ((values - target) ** 2).mean(), {"value": values.mean().detach()}

    losses = [rt.train_step(batches(2), loss_fn=reward_like).loss for _ in range(6)]
    assert losses[-1] < losses[0]
    model = rt.module_for_inference()
    out = model(torch.randint(0, 64, (1, 5)), kv_cache=KVCache.empty())
    assert out.logits.shape == (1, 5) and out.kv_cache.length == 5


def test_the_deepspeed_config_carries_the_planners_bucket_and_a_given_config_is_used_as_is():
    """ZeRO allocates what the memory plan counted (``planned_bucket_elements``: the tiny model's
    whole parameter count), not DeepSpeed's 5e8-element default buckets; a config passed in (a
    phase's ds_config.json) reaches the engine unchanged."""
    layout = Layout(zero_stage=3, grad_accum=1)
    bucket = planned_bucket_elements(get_model("tiny"), layout.resolve(1))
    assert bucket == stage_params(get_model("tiny"), tp=1, pp=1, ep=1, stage="only").total
    engine = runtime(layout=layout).engine
    assert engine.zero_reduce_bucket_size() == engine.zero_allgather_bucket_size() == bucket
    assert engine.zero_prefetch_bucket_size() == engine.zero_max_live_parameters() == bucket
    assert engine.zero_max_reuse_distance() == bucket
    given = build_ds_config(Layout(zero_stage=2, grad_accum=1).resolve(1), model=get_model("tiny"))
    given["zero_optimization"]["reduce_bucket_size"] = 1000
    overridden = runtime(layout=Layout(zero_stage=2, grad_accum=1), ds_config=given).engine
    assert overridden.zero_reduce_bucket_size() == 1000 and overridden.zero_allgather_bucket_size() == bucket
    assert overridden.config is given


def test_a_deepspeed_config_of_another_layout_is_refused():
    stale = build_ds_config(Layout(grad_accum=4).resolve(1), model=get_model("tiny"))
    with pytest.raises(ValueError, match=r"'gradient_accumulation_steps': 4\} and ZeRO stage 0, but the layout .* "
                                         r"needs .*'gradient_accumulation_steps': 2\}"):
        runtime(ds_config=stale)


def test_wrong_number_of_micro_batches_is_refused():
    with pytest.raises(ValueError, match="got 3 micro-batches but layout.grad_accum=2"):
        runtime().train_step(batches(3))


@pytest.mark.parametrize("preset,layout,head,message", [
    ("tiny", Layout(zero_stage=0, offload_optimizer=True), "lm", "optimizer offload needs ZeRO ≥ 1"),
    ("tiny", Layout(interleave=2), "lm", "interleave 2 needs pp > 1"),
    ("tiny", Layout(), "value", "head 'value': choose one of lm, scalar"),
])
def test_build_runtime_refuses_what_the_runtime_validator_refuses_before_building(preset, layout, head, message):
    """The rank runs ``plan.validate.require_runtime``, the rules ``orchestrate run`` checked before launch
    (every rule is tested in tests/unit/plan/test_validate.py)."""
    with pytest.raises(LayoutError, match=message):
        runtime(preset, layout=layout, head=head)
