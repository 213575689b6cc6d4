"""Checkpoints and parents that must not be used are refused, each with a message that names the
file or the parent and the command that fixes it (SPEC §8, §9).

Each case is built on a copy of the finished tiny pipeline: a file truncated or edited in place,
a parent deleted, a reward model replaced by an LM-head checkpoint, a parent's tokenizer changed.
The phase process itself refuses (``python -m orchestrator.phases.entry``, what every launcher
starts) and so does the runner, before it launches anything.
"""
import dataclasses
import shutil

import pytest

import e2e_support as e2e
from orchestrator.cli import main
from orchestrator.handoff.checkpoint import read_latest
from orchestrator.handoff.manifest import write_manifest


def rerun(run_dir, phase: str) -> str:
    return f"run `orchestrate run {run_dir / 'run_config.yaml'} --only {phase}`"


def interrupted(run_dir, phase: str) -> None:
    """Make a finished phase look interrupted: a running manifest, checkpoints, no final weights."""
    folder = run_dir / phase
    shutil.rmtree(folder / "final")
    done = e2e.manifest(run_dir, phase)
    write_manifest(folder, dataclasses.replace(done, status="running", files={}, checkpoint=None, finished=None))


def runner(run_dir, *args: str, capsys) -> tuple[int, str]:
    """``orchestrate run RUN_DIR/run_config.yaml --run-dir RUN_DIR ...`` in this process (nothing is launched)."""
    code = main(["run", str(run_dir / "run_config.yaml"), "--run-dir", str(run_dir), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.e2e
def test_a_truncated_resume_checkpoint_is_refused_by_its_hash_naming_the_file(prepared, tiny_pipeline):
    run_dir = e2e.copy_run(tiny_pipeline.run_dir, prepared.root / "truncated-checkpoint", phases=["pretrain"])
    interrupted(run_dir, "pretrain")
    latest = read_latest(run_dir / "pretrain" / "checkpoints")
    damaged = next(latest.rglob("*model_states.pt"))
    e2e.truncate(damaged)

    code, output = e2e.run_recipe(run_dir, tiny_pipeline.sets, "--only", "pretrain")
    assert code != 0
    assert f"checkpoint file {damaged} ({damaged.stat().st_size} bytes) does not match SHA256SUMS " \
           f"(truncated or edited)" in output
    assert f"checkpoint {latest} is corrupt; delete it to resume from the previous one" in output
    assert "[pretrain] failed (exit code" in output
    assert not (run_dir / "pretrain" / "final").exists()


@pytest.mark.e2e
def test_an_edited_final_checkpoint_is_refused_when_the_next_phase_starts(prepared, tiny_pipeline, capsys):
    run_dir = e2e.copy_run(tiny_pipeline.run_dir, prepared.root / "edited-final", phases=["pretrain"])
    weights = run_dir / "pretrain" / "final" / "shards" / "rank00000.safetensors"     # one rank's shard
    size = weights.stat().st_size
    e2e.flip_byte(weights)
    expected = (f"file {weights} ({size} bytes) does not match its recorded sha256 (truncated or edited)",
                f"the pretrain output is corrupt; {rerun(run_dir, 'pretrain')}")

    code, output = runner(run_dir, "--only", "sft", capsys=capsys)         # the runner, before launching
    assert code == 2 and all(part in output for part in expected), output
    assert not (run_dir / "sft").exists()

    code, output = e2e.run(e2e.entry("sft", run_dir), log=run_dir / "sft.log", cwd=run_dir)   # the phase itself
    assert code != 0 and all(part in output for part in expected), output[-3000:]
    assert e2e.manifest(run_dir, "pretrain").status == "complete"         # nothing rewrote the parent


@pytest.mark.e2e
def test_a_phase_whose_parent_is_missing_names_the_command_that_produces_it(prepared):
    run_dir = prepared.run_dir("missing-parent")
    e2e.write_run_config(run_dir, prepared.sets)

    code, output = e2e.run(e2e.entry("sft", run_dir), log=run_dir / "sft.log", cwd=run_dir)
    assert code != 0
    assert f"no complete pretrain checkpoint in {run_dir / 'pretrain'}: {rerun(run_dir, 'pretrain')}" in output
    assert not (run_dir / "sft" / "final").exists()


@pytest.mark.e2e
def test_ppo_given_an_lm_head_checkpoint_as_its_reward_model_is_refused_naming_the_expected_head(
        prepared, tiny_pipeline, capsys):
    run_dir = e2e.copy_run(tiny_pipeline.run_dir, prepared.root / "lm-as-reward", phases=["pretrain", "sft"])
    shutil.copytree(run_dir / "sft", run_dir / "reward")                    # an SFT (LM head) where the RM belongs
    expected = f"the reward model checkpoint in {run_dir / 'reward'} has a lm head, expected scalar: " \
               f"{rerun(run_dir, 'reward')}"

    code, output = runner(run_dir, "--only", "ppo", capsys=capsys)
    assert code == 2 and expected in output, output
    code, output = e2e.run(e2e.entry("ppo", run_dir), log=run_dir / "ppo.log", cwd=run_dir)
    assert code != 0 and expected in output, output[-3000:]
    assert not (run_dir / "ppo" / "final").exists()


@pytest.mark.e2e
def test_a_parent_trained_with_another_tokenizer_is_refused(prepared, tiny_pipeline):
    run_dir = e2e.copy_run(tiny_pipeline.run_dir, prepared.root / "other-tokenizer", phases=["pretrain"])
    parent = e2e.manifest(run_dir, "pretrain")
    write_manifest(run_dir / "pretrain", dataclasses.replace(parent, tokenizer_hash="0" * 64))

    code, output = e2e.run(e2e.entry("sft", run_dir), log=run_dir / "sft.log", cwd=run_dir)
    assert code != 0
    assert (f"the pretrain checkpoint in {run_dir / 'pretrain'} was trained with another tokenizer "
            f"(hash {'0' * 12}…, this run's is {parent.tokenizer_hash[:12]}…): "
            f"{rerun(run_dir, 'pretrain')}") in output
