"""SPEC §9: a NaN/inf loss skips its step and is counted; ``loop.max_bad_steps`` in a row stop the run.

``pretrain.optim.lr=1e30`` (no warm-up): the first step's loss is finite, its update throws every
weight to ~1e30, and from then on the forward pass overflows fp32, so every loss is non-finite.
"""
import pytest

import e2e_support as e2e

MAX_BAD = 3


@pytest.mark.e2e
def test_non_finite_losses_skip_their_steps_are_counted_and_stop_the_run_after_max_bad_steps(prepared):
    run_dir = prepared.run_dir("non-finite")
    e2e.write_run_config(run_dir, [*prepared.sets, "pretrain.optim.lr=1e30", "pretrain.optim.warmup_steps=0",
                                   f"pretrain.loop.max_bad_steps={MAX_BAD}", "pretrain.loop.steps=8"])

    code, output = e2e.run(e2e.entry("pretrain", run_dir), log=run_dir / "entry.log", cwd=run_dir)
    assert code != 0
    train = e2e.records(run_dir, "pretrain", "train")
    first, skipped = train[0], train[1:]
    assert first["step"] == 1 and first["loss"] is not None and first["skipped_steps"] == 0
    # every later step was skipped: loss and gradient norm non-finite (null in JSON), the count rising by one
    assert [e["step"] for e in skipped] == list(range(2, MAX_BAD + 1))
    assert [e["skipped_steps"] for e in skipped] == list(range(1, MAX_BAD))
    assert all(e["loss"] is None and e["grad_norm"] is None for e in skipped)
    # a skipped step is not an optimizer step: the learning-rate schedule does not advance past it
    assert len({e["lr"] for e in skipped}) == 1 and skipped[0]["lr"] != first["lr"]

    stop = MAX_BAD + 1
    message = (f"loss was not finite for {MAX_BAD} steps in a row (steps 2..{stop}); the run stops: lower optim.lr, "
               f"raise optim.warmup_steps, or check the data; loop.max_bad_steps={MAX_BAD} sets how many are tolerated")
    assert message in output
    failed = e2e.manifest(run_dir, "pretrain")
    assert failed.status == "failed" and message in failed.error
    assert not (run_dir / "pretrain" / "final").exists()
