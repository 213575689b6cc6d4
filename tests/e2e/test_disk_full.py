"""Issue 12: a full disk during a checkpoint save (a real one: a small tmpfs under the phase's
``checkpoints/``) stops the phase with one message naming the path and the bytes to free; the
previous checkpoint stays what ``latest`` names; after space is freed the rerun resumes from it and
ends exactly where an uninterrupted run ends."""
import pytest

import e2e_support as e2e
from orchestrator.faults import tree_bytes
from orchestrator.handoff.checkpoint import read_latest, verify_checkpoint

STEPS, SAVE_EVERY = 24, 4   # e2e_support.PHASE_SETS: pretrain.loop.steps, save_every


@pytest.mark.e2e
def test_a_save_on_a_full_disk_is_one_message_and_the_rerun_ends_as_the_uninterrupted_run(prepared, small_tmpfs):
    reference = prepared.run_dir("disk-full-reference")
    code, output = e2e.run_recipe(reference, prepared.sets, "--only", "pretrain")
    assert code == 0, output[-3000:]
    checkpoint = tree_bytes(read_latest(reference / "pretrain" / "checkpoints"))

    run_dir = prepared.run_dir("disk-full")
    checkpoints = run_dir / "pretrain" / "checkpoints"
    small_tmpfs(checkpoints, 4 * checkpoint)
    filler = checkpoints / ".filler"               # leaves room for one checkpoint and a half
    filler.write_bytes(b"\0" * int(2.5 * checkpoint))
    code, output = e2e.run_recipe(run_dir, prepared.sets, "--only", "pretrain")
    assert code != 0, output[-3000:]
    first = checkpoints / f"step_{SAVE_EVERY:08d}"
    assert (f"pretrain: rank 0: error: no space left on {checkpoints} while saving checkpoint "
            f"step_{2 * SAVE_EVERY:08d}") in output
    assert f"the committed checkpoint {first} is intact and a rerun resumes from it" in output
    assert "Traceback" not in output and "[pretrain] failed (exit code" in output
    assert read_latest(checkpoints) == first
    verify_checkpoint(first)
    assert sorted(p.name for p in checkpoints.iterdir()) == [".filler", "latest", first.name]  # no staging

    filler.unlink()                                # space freed: rerun
    code, output = e2e.run_recipe(run_dir, prepared.sets, "--only", "pretrain", log_name="rerun.log")
    assert code == 0, output[-3000:]
    assert f"pretrain: resuming from checkpoint {first} at step {SAVE_EVERY} of {STEPS}" in output
    final = e2e.last_per_step(e2e.records(run_dir, "pretrain", "final"), ("eval_loss",))
    assert final == e2e.last_per_step(e2e.records(reference, "pretrain", "final"), ("eval_loss",))
    train = e2e.last_per_step(e2e.records(run_dir, "pretrain", "train"), ("loss",))
    assert train[STEPS] == e2e.last_per_step(e2e.records(reference, "pretrain", "train"), ("loss",))[STEPS]
    assert e2e.manifest(run_dir, "pretrain").metrics == e2e.manifest(reference, "pretrain").metrics
