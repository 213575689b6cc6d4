"""The whole tiny pipeline through ``orchestrate run recipes/tiny.yaml`` (very few steps): four
phases, each its own launcher process, handing off through verified manifests; ``status`` and
``report`` read the result; a second ``orchestrate run`` has nothing left to do.
"""
import json
import math

import pytest

import e2e_support as e2e
from orchestrator.cli import main
from orchestrator.config.run import PHASES
from orchestrator.handoff.hashing import sha256_file

EXPECTED_METRICS = {"pretrain": ("eval_loss", "perplexity", "pretrain_loss"),
                    "sft": ("eval_loss", "oracle_score", "pretrain_loss", "parent_pretrain_loss"),
                    "reward": ("pairwise_accuracy", "pretrain_loss"),
                    "ppo": ("oracle_score", "kl", "reward", "pretrain_loss", "sft_reward", "sft_oracle_score")}


def launched_phases(output: str) -> list[str]:
    return [line.split("]")[0][1:] for line in output.splitlines() if line.startswith("[") and "] complete in " in line]


@pytest.mark.e2e
def test_the_tiny_recipe_runs_all_four_phases_each_handing_off_to_the_next(tiny_pipeline):
    run_dir = tiny_pipeline.run_dir
    assert launched_phases(tiny_pipeline.output) == list(PHASES)
    manifests = {phase: e2e.manifest(run_dir, phase) for phase in PHASES}
    assert {phase: m.status for phase, m in manifests.items()} == dict.fromkeys(PHASES, "complete")
    assert {phase: [p.phase for p in m.parents] for phase, m in manifests.items()} == \
        {"pretrain": [], "sft": ["pretrain"], "reward": ["sft"], "ppo": ["sft", "reward"]}
    assert {phase: m.head for phase, m in manifests.items()} == \
        {"pretrain": "lm", "sft": "lm", "reward": "scalar", "ppo": "lm"}
    for ref in manifests["ppo"].parents:                      # pinned to the parents as they are now
        assert sha256_file(run_dir / ref.manifest) == ref.sha256
    for phase, keys in EXPECTED_METRICS.items():
        metrics = manifests[phase].metrics
        assert all(isinstance(metrics.get(k), float) and math.isfinite(metrics[k]) for k in keys), (phase, metrics)
    for phase, key in (("sft", "oracle_score"), ("reward", "pairwise_accuracy"), ("ppo", "oracle_score")):
        assert 0.0 <= manifests[phase].metrics[key] <= 1.0
    # every phase measures the same held-out corpus blocks: SFT's start is pretrain's end, and PPO's
    # SFT level (the frozen reference under the same protocol and seed) is SFT's own labeller score
    assert manifests["sft"].metrics["parent_pretrain_loss"] == pytest.approx(manifests["pretrain"].metrics["pretrain_loss"],
                                                                             abs=1e-5)
    assert manifests["ppo"].metrics["sft_oracle_score"] == pytest.approx(manifests["sft"].metrics["oracle_score"], abs=1e-6)


@pytest.mark.e2e
def test_ppo_starts_with_zero_kl_because_actor_and_reference_are_the_same_model(tiny_pipeline):
    first = e2e.records(tiny_pipeline.run_dir, "ppo", "train")[0]
    assert first["step"] == 1
    assert abs(first["kl"]) < 1e-6
    assert first["skipped_steps"] == 0 and math.isfinite(first["reward"])
    assert math.isfinite(first["ptx_loss"]) and first["ptx_loss"] > 0     # PPO-ptx ran in the actor's step


@pytest.mark.e2e
def test_status_and_report_read_the_finished_pipeline(tiny_pipeline, tmp_path, capsys):
    run_dir = tiny_pipeline.run_dir
    assert main(["status", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["phase"], r["status"], r["checkpoint"]) for r in rows] == \
        [(phase, "complete", "final/shards") for phase in PHASES]
    assert [next(iter(r["metric"])) for r in rows] == ["eval_loss", "eval_loss", "pairwise_accuracy", "oracle_score"]
    assert main(["status", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert all(f"{phase}" in table for phase in PHASES) and table.count("complete") == len(PHASES)

    out = tmp_path / "report"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"report.md", *(f"{phase}.png" for phase in PHASES)}
    assert all(phase in (out / "report.md").read_text() for phase in PHASES)


@pytest.mark.e2e
def test_running_the_finished_recipe_again_skips_every_phase(tiny_pipeline):
    run_dir = tiny_pipeline.run_dir
    before = {phase: sha256_file(run_dir / phase / "manifest.json") for phase in PHASES}
    code, output = e2e.run_recipe(run_dir, tiny_pipeline.sets, log_name="again.log")
    assert code == 0, output[-3000:]
    steps = {phase: e2e.manifest(run_dir, phase).step for phase in PHASES}
    for phase in PHASES:
        assert f"[{phase}] skip: complete at step {steps[phase]}" in output
    assert launched_phases(output) == [] and "$ " not in output          # nothing was launched
    assert {phase: sha256_file(run_dir / phase / "manifest.json") for phase in PHASES} == before
