"""Issue 14: a phase hands on its sharded fp32 masters, and a child under another layout starts
from exactly them — nothing is gathered on the way.

Each job (``handoff_worker.py``, 2 ranks, gloo) trains a pretrain parent for 3 steps under PP2
ZeRO-1 or DP2 ZeRO-3, ends it as a phase ends (every rank its own ``final/shards`` files, hashed
by that rank; rank 0's manifest lists them), then starts an SFT child under TP2 and a reward
child (scalar head) from the verified parent. The test checks:

- every element of the model is stored exactly once over the ranks' files (no rank holds it all
  under ZeRO-3), and the manifest lists every file with the hash its rank computed;
- the SFT child's weights equal the parent's bit for bit, and its first logits equal the parent's
  to 1e-5 relative to max(1, |logit|) (fp32; PP2 and TP2 differ only in the order of sums:
  measured in the report); its optimizer starts with no state (a fresh AdamW), and it trains;
- PPO's frozen reference built from the same shards over the child's TP group holds only its TP
  piece and gives the parent's logits to the same tolerance;
- the reward child's trunk equals the parent's bit for bit and its new scalar head is the
  layout-independent initial value (what ``load_consolidated`` with ``with_scalar_head`` gave).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.engine.launch.ports import free_port

WORKER = Path(__file__).with_name("handoff_worker.py")
LOGIT_TOL = 1e-5

pytestmark = pytest.mark.distributed


def run_handoff(directory: Path, case: str) -> dict:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            str(WORKER), "--case", case, "--dir", str(directory)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, cwd=WORKER.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((directory / "result.json").read_text())


def stored_elements(shards: Path) -> dict[str, int]:
    """Elements of each tensor over every rank's index, and per rank in total."""
    per_tensor, per_rank = {}, {}
    for index in sorted(shards.glob("rank*.json")):
        entries = json.loads(index.read_text())["entries"]
        per_rank[index.stem] = sum(e["numel"] for e in entries)
        for entry in entries:
            per_tensor[entry["name"]] = per_tensor.get(entry["name"], 0) + entry["numel"]
    return {"tensor": per_tensor, "rank": per_rank}


def assert_handed_on(run_dir: Path, result: dict, *, sharded_over_dp: bool) -> None:
    from orchestrator.config.model import get_model
    from orchestrator.handoff.manifest import read_manifest
    from orchestrator.model.params import initial_value

    parent = torch.load(run_dir / "parent_weights.pt", weights_only=True)
    manifest = read_manifest(run_dir / "pretrain")
    assert manifest.status == "complete" and manifest.checkpoint == "final/shards"
    assert sorted(n for n in manifest.files if n.startswith("final/")) == [
        f"final/shards/rank0000{r}.{ext}" for r in (0, 1) for ext in ("json", "safetensors")]
    counts = stored_elements(run_dir / "pretrain" / "final" / "shards")
    assert counts["tensor"] == {name: t.numel() for name, t in parent.items()}        # each element once
    if sharded_over_dp:       # ZeRO-3: each rank about half the model, none of it whole
        total = sum(t.numel() for t in parent.values())
        assert all(0.4 * total < n < 0.6 * total for n in counts["rank"].values()), counts["rank"]

    sft = torch.load(run_dir / "child_lm_weights.pt", weights_only=True)
    assert sorted(sft) == sorted(parent)
    assert [n for n in parent if not torch.equal(sft[n], parent[n])] == []
    ours, theirs = torch.load(run_dir / "child_logits.pt"), torch.load(run_dir / "parent_logits.pt")
    diff = float((ours - theirs).abs().max()) / max(1.0, float(theirs.abs().max()))
    print(f"{run_dir.name}: max |Δlogit| / max(1, |logit|) = {diff:.3g}")
    assert diff <= LOGIT_TOL
    frozen = torch.load(run_dir / "frozen_logits.pt")          # PPO's reference, TP2 like the child
    assert float((frozen - theirs).abs().max()) / max(1.0, float(theirs.abs().max())) <= LOGIT_TOL
    config = get_model("tiny")
    assert result["sft"]["frozen"]["c_attn_shape"] == [3 * config.d_attn // 2, config.d_model]   # its TP piece
    assert result["sft"]["optimizer_state_entries"] == 0 and result["reward"]["optimizer_state_entries"] == 0
    assert all(loss == loss and loss > 0 for loss in result["sft"]["losses"] + result["reward"]["losses"])

    reward = torch.load(run_dir / "child_scalar_weights.pt", weights_only=True)
    assert sorted(set(reward) - set(parent)) == ["value_head.bias", "value_head.weight"]
    assert [n for n in parent if not torch.equal(reward[n], parent[n])] == []
    for name in ("value_head.weight", "value_head.bias"):
        expected = initial_value(name, tuple(reward[name].shape), config=get_model("tiny"), seed=8)   # SEED + 1
        assert torch.equal(reward[name], expected)


def test_sft_under_tp2_starts_from_a_pp2_zero1_pretrain_with_its_logits(tmp_path):
    result = run_handoff(tmp_path, "pp2_zero1")
    assert_handed_on(tmp_path, result, sharded_over_dp=False)


def test_sft_under_tp2_starts_from_a_dp2_zero3_pretrain_with_its_logits(tmp_path):
    result = run_handoff(tmp_path, "dp2_zero3")
    assert_handed_on(tmp_path, result, sharded_over_dp=True)
