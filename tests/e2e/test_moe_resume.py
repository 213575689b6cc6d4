"""Issue 15: a resume may change EP. The tiny MoE (4 experts, top-2, every second layer) pretrained
on two ranks under EP2 (ZeRO-1) and interrupted after its step-3 checkpoint resumes under EP1 on
the same two ranks, through ``orchestrate run --only pretrain`` as a user would rerun it.

The checkpoint holds DeepSpeed's own files (one per expert, what a same-layout resume loads) and
every rank's sharded fp32 weights and Adam moments (``handoff.sharded``, what a resume under
another layout reads). Under EP1 every rank holds all four experts: the resharded weights give the
eval loss the EP2 run logged at step 3, and since the moments reshard too, every resumed step
gives the uninterrupted run's loss and gradient norm (to 1e-5: the expert gradients are reduced
over another group) and its learning rate (the schedule continues).
"""
import shutil

import pytest

import e2e_support as e2e
from orchestrator.handoff.manifest import failed_manifest, read_manifest, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

STEPS, CHECKPOINT = 6, 3
# two ranks of micro-batch 2: the same 4 sequences per step as the one-process tiny pipeline
MOE_EP2 = ("model.preset=tiny-moe", "cluster.gpus_per_node=2", "pretrain.layout.ep=2", "pretrain.layout.zero_stage=1",
           "pretrain.layout.micro_batch=2", f"pretrain.loop.steps={STEPS}", f"pretrain.loop.save_every={CHECKPOINT}",
           f"pretrain.loop.eval_every={CHECKPOINT}")


def interrupt_after(run_dir, step: int) -> None:
    """What a run killed after its step-``step`` checkpoint leaves: no later checkpoint, no final
    weights, a manifest that is not complete."""
    phase = run_dir / "pretrain"
    shutil.rmtree(phase / "final")
    for later in range(step + 1, STEPS + 1):
        shutil.rmtree(phase / "checkpoints" / f"step_{later:08d}", ignore_errors=True)
    (phase / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")
    write_manifest(phase, failed_manifest(read_manifest(phase), step=step, error="killed (test)"))


def test_an_moe_phase_checkpointed_under_ep2_resumes_under_ep1_with_the_same_model(prepared):
    sets = (*prepared.sets, *MOE_EP2)
    reference = prepared.run_dir("moe-ep2")
    code, output = e2e.run_recipe(reference, sets, "--only", "pretrain")
    assert code == 0, output[-3000:]
    assert e2e.manifest(reference, "pretrain").layout["ep"] == 2
    checkpoint = reference / "pretrain" / "checkpoints" / f"step_{CHECKPOINT:08d}" / "model"
    assert any("_expert_" in path.name for path in (checkpoint / "state").iterdir())  # DeepSpeed's per-expert files
    assert any(checkpoint.glob("shards/rank*.safetensors"))  # every rank's fp32 state

    resumed = e2e.copy_run(reference, prepared.root / "moe-ep2-to-ep1", phases=["pretrain"])
    interrupt_after(resumed, CHECKPOINT)
    code, output = e2e.run_recipe(resumed, [*sets, "pretrain.layout.ep=1"], "--only", "pretrain")
    assert code == 0, output[-3000:]
    assert "ep=2 zero_stage=1" in output and "ep=1 zero_stage=1" in output
    assert "resharding its weights and Adam moments" in output
    assert "resuming from checkpoint" in output and f"at step {CHECKPOINT} of {STEPS}" in output
    done = e2e.manifest(resumed, "pretrain")
    assert done.status == "complete" and done.step == STEPS and done.layout["ep"] == 1

    # the resharded weights are the saved model: the held-out loss EP2 measured at the checkpoint
    (check,) = e2e.records(resumed, "pretrain", "reshard")
    (saved,) = [e for e in e2e.records(reference, "pretrain", "eval") if e["step"] == CHECKPOINT]
    assert check["step"] == CHECKPOINT
    assert check["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-6, abs=0)

    train = e2e.records(resumed, "pretrain", "train")
    assert [e["step"] for e in train] == list(range(1, STEPS + 1))      # each step once, the resumed ones after 3
    ours = {e["step"]: e for e in train}
    theirs = e2e.last_per_step(e2e.records(reference, "pretrain", "train"), ("loss", "grad_norm", "lr"))
    first = CHECKPOINT + 1
    for step in range(first, STEPS + 1):   # same weights, data, moments and Adam step: the same updates
        assert ours[step]["loss"] == pytest.approx(theirs[step]["loss"], rel=1e-5, abs=0), step
        assert ours[step]["grad_norm"] == pytest.approx(theirs[step]["grad_norm"], rel=1e-5, abs=0), step
        assert ours[step]["lr"] == theirs[step]["lr"]
