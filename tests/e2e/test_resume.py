"""Issue 7: a phase killed with SIGKILL after a committed checkpoint resumes from it and ends
exactly where the uninterrupted run of the same seed ends.

"Exactly": every logged train loss, learning rate and gradient norm, the eval and final metrics,
and every tensor of the handed-on ``final/shards`` are bit-for-bit equal. Nothing random is left unsaved (the
data position, the Python/NumPy/torch RNG states, the optimizer and ZeRO partitions are in the
checkpoint) and both runs use one thread per rank, so fp32 round-off is the same too.
"""
import os
import shutil
import signal

import pytest

import e2e_support as e2e
from orchestrator.config.run import load_run_config, save_run_config
from orchestrator.handoff.checkpoint import read_latest

TRAIN_KEYS = ("loss", "lr", "grad_norm", "skipped_steps")
STEPS = 24  # pretrain.loop.steps in e2e_support.PHASE_SETS


def assert_same_run(resumed, reference, phase: str = "pretrain") -> None:
    """Every event the resumed run logged (including steps logged twice, before the kill and again
    after the resume) equals the uninterrupted run's; so do final metrics and final weights."""
    expected = e2e.last_per_step(e2e.records(reference, phase, "train"), TRAIN_KEYS)
    logged = e2e.records(resumed, phase, "train")
    assert sorted({e["step"] for e in logged}) == sorted(expected)
    for event in logged:
        assert {k: event.get(k) for k in TRAIN_KEYS} == expected[event["step"]], f"step {event['step']}"
    for kind in ("eval", "final"):
        keys = ("eval_loss", "perplexity")
        assert e2e.last_per_step(e2e.records(resumed, phase, kind), keys) == \
            e2e.last_per_step(e2e.records(reference, phase, kind), keys)
    done = e2e.manifest(resumed, phase)
    assert done.status == "complete" and done.step == STEPS
    assert done.metrics == e2e.manifest(reference, phase).metrics
    e2e.assert_same_weights(e2e.final_weights(resumed, phase), e2e.final_weights(reference, phase))


def checkpoint_step(run_dir) -> int:
    latest = read_latest(run_dir / "pretrain" / "checkpoints")
    assert latest is not None
    return int(latest.name.removeprefix("step_"))


def resume_message(run_dir, step: int) -> str:
    return (f"pretrain: resuming from checkpoint {run_dir / 'pretrain' / 'checkpoints' / f'step_{step:08d}'} "
            f"at step {step} of {STEPS}")


@pytest.mark.e2e
def test_a_phase_process_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(prepared, tiny_pipeline):
    """Its checkpoints skip the consolidated weights (same layout: DeepSpeed's files suffice)."""
    reference = tiny_pipeline.run_dir                       # the pipeline's pretrain: same config, never killed
    run_dir = prepared.run_dir("resume-entry")
    config = load_run_config(reference / "run_config.yaml", ["pretrain.loop.reshardable_checkpoints=false"])
    save_run_config(config, run_dir / "run_config.yaml")
    log = run_dir / "entry.log"
    process = e2e.start(e2e.entry("pretrain", run_dir), log=log, cwd=run_dir)
    try:
        e2e.wait_for_checkpoint(run_dir / "pretrain" / "checkpoints", process)
    finally:
        e2e.kill_group(process)
    assert process.returncode == -signal.SIGKILL
    assert e2e.manifest(run_dir, "pretrain").status == "running"   # killed mid-phase, not after it
    assert not (run_dir / "pretrain" / "final").exists()
    step = checkpoint_step(run_dir)
    assert 0 < step < STEPS
    assert not list((run_dir / "pretrain" / "checkpoints").rglob("consolidated.pt"))

    code, output = e2e.run(e2e.entry("pretrain", run_dir), log=log, cwd=run_dir)
    assert code == 0, output[-3000:]
    assert resume_message(run_dir, step) in output
    assert_same_run(run_dir, reference)


@pytest.mark.e2e
def test_the_runner_fails_when_a_rank_is_killed_and_its_rerun_resumes_to_the_uninterrupted_result(prepared,
                                                                                                    pretrained):
    reference = pretrained("zero2")                         # ZeRO-2 over two ranks, never killed
    run_dir = prepared.run_dir("resume-runner")
    argv = e2e.orchestrate("run", str(e2e.TINY_RECIPE), "--run-dir", str(run_dir), "--only", "pretrain",
                           *e2e.as_set_flags([*reference.sets, f"launch.master_port={e2e.free_port()}"]))
    log = run_dir.parent / "resume-runner.log"
    process = e2e.start(argv, log=log, cwd=run_dir.parent)
    try:
        e2e.wait_for_checkpoint(run_dir / "pretrain" / "checkpoints", process)
        os.kill(e2e.rank_process(run_dir, rank=1), signal.SIGKILL)
        code = e2e.finish(process)
    finally:
        e2e.kill_group(process)
    output = log.read_text()
    assert code != 0, output[-3000:]
    assert "[pretrain] failed (exit code" in output
    assert f"orchestrate run {run_dir / 'run_config.yaml'} --only pretrain" in output   # the rerun hint
    assert e2e.manifest(run_dir, "pretrain").status != "complete"
    step = checkpoint_step(run_dir)
    assert 0 < step < STEPS

    code, output = e2e.run_recipe(run_dir, reference.sets, "--only", "pretrain", log_name="rerun.log")
    assert code == 0, output[-3000:]
    assert resume_message(run_dir, step) in output
    assert "[pretrain] complete in" in output
    assert_same_run(run_dir, reference.run_dir)


@pytest.mark.e2e
def test_a_phase_interrupted_under_zero2_resumes_in_one_process(prepared, pretrained):
    """The sharded fp32 state of the checkpoint (weights, Adam moments and step) is resharded into
    the new layout: every resumed step sees the weights, moments and data the uninterrupted run
    saw, so its losses are the uninterrupted ones (fp32: to sums-order round-off)."""
    reference = pretrained("zero2")
    run_dir = e2e.copy_run(reference.run_dir, prepared.root / "resume-relayout", phases=["pretrain"])
    phase = run_dir / "pretrain"
    shutil.rmtree(phase / "final")                          # interrupted after the step-20 checkpoint
    shutil.rmtree(phase / "checkpoints" / f"step_{STEPS:08d}")
    (phase / "checkpoints" / "latest").write_text("step_00000020\n")
    # one rank now takes both ranks' micro-batches (grad_accum 2), so each step reads the same blocks
    e2e.write_run_config(run_dir, [*reference.sets, "cluster.gpus_per_node=1", "pretrain.layout.zero_stage=0",
                                   "pretrain.layout.grad_accum=2"])
    # started by hand, not by the runner: the two-rank DeepSpeed config goes, and the phase writes
    # its own from the edited run config (with it left in place the rank refuses the mismatch)
    (phase / "ds_config.json").unlink()

    code, output = e2e.run(e2e.entry("pretrain", run_dir), log=run_dir / "entry.log", cwd=run_dir)
    assert code == 0, output[-3000:]
    assert resume_message(run_dir, 20) in output
    assert e2e.manifest(run_dir, "pretrain").layout["dp"] == 1
    resumed = e2e.last_per_step(e2e.records(run_dir, "pretrain", "train"), ("loss",))
    expected = e2e.last_per_step(e2e.records(reference.run_dir, "pretrain", "train"), ("loss",))
    assert "resharding its weights and Adam moments" in output
    assert [resumed[s]["loss"] for s in range(21, STEPS + 1)] == \
        pytest.approx([expected[s]["loss"] for s in range(21, STEPS + 1)], abs=1e-4, rel=0)
