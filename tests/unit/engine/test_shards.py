"""The sharded checkpoint on one process: every ZeRO stage's fp32 masters, Adam moments and step
are written and read back into another ZeRO stage's buffers, and training continues exactly as
the uninterrupted run. (Resharding over TP / PP / DP ranks: tests/distributed/test_sharded_resume.py.)"""

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.config.run import OptimConfig
from orchestrator.engine.build import build_runtime
from orchestrator.engine.shards import adam_step, fragment_tensors, local_fragments, torch_optimizer
from orchestrator.plan.layout import Layout

OPTIM = OptimConfig(lr=3e-3, warmup_steps=2, grad_clip=1.0)


pytestmark = pytest.mark.usefixtures("world_of_one")   # tests/conftest.py


def batches(step: int) -> list[dict[str, torch.Tensor]]:
    blocks = torch.randint(0, 64, (2, 2, 17), generator=torch.Generator().manual_seed(step))
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in blocks]


def runtime(zero_stage: int, *, seed: int, precision=None, preset="tiny"):
    return build_runtime(get_model(preset), Layout(grad_accum=2, zero_stage=zero_stage), OPTIM, total_steps=20,
                         seed=seed, precision=precision)


def optimizer_state(rt) -> dict[str, dict[str, torch.Tensor]]:
    optimizer = torch_optimizer(rt.engine)
    return {f.region.name: {k: v.clone() for k, v in fragment_tensors(f, optimizer).items()}
            for f in local_fragments(rt.engine, rt._shards())}


@pytest.mark.parametrize("saved,loaded,precision,preset", [(0, 3, None, "tiny"), (3, 1, None, "tiny"),
                                                          (2, 0, None, "tiny"), (1, 1, "bf16", "tiny"),
                                                          (2, 0, None, "tiny-moe")])
def test_masters_and_moments_move_between_zero_stages_and_training_continues_unchanged(tmp_path, saved, loaded,
                                                                                        precision, preset):
    first = runtime(saved, seed=1, precision=precision, preset=preset)
    for step in range(3):
        first.train_step(batches(step))
    first.save_sharded(tmp_path)
    expected_state = optimizer_state(first)
    expected = [first.train_step(batches(step)).loss for step in range(3, 6)]

    resumed = runtime(loaded, seed=2, precision=precision, preset=preset)     # another init: everything must come from the files
    resumed.load_sharded(tmp_path)
    resumed.steps_done = 3
    state = optimizer_state(resumed)
    assert sorted(state) == sorted(expected_state) and len(state) == len(list(first.engine.module.parameters()))
    for name, kinds in expected_state.items():
        for kind, value in kinds.items():
            assert torch.equal(state[name][kind], value), (name, kind)
    assert expected_state["wte.weight"]["exp_avg_sq"].abs().sum() > 0       # the moments are not the zeros of a restart
    assert adam_step(torch_optimizer(resumed.engine)) == 3
    got = [resumed.train_step(batches(step)).loss for step in range(3, 6)]
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
