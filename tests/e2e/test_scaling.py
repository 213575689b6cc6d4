"""``orchestrate scaling`` on real pretrain phase jobs: a five-rung ladder of a few steps each (half a
token per parameter, one seed), every rung its own launcher, fitted and recorded. torchrun, not the
recipe's deepspeed launcher: the runs are the same phase jobs, and its one process in front of
each rank instead of deepspeed's two is most of a rung's start-up here."""
import json
import math
import shutil

import pytest

import e2e_support as e2e
from orchestrator.engine.launch.ports import free_port

pytestmark = pytest.mark.e2e
RECIPE = e2e.REPO / "recipes" / "scaling-tiny.yaml"


def test_a_short_ladder_runs_as_pretrain_jobs_on_one_held_out_set_and_is_fitted(prepared):
    run_dir = prepared.root / "scaling"
    shutil.copytree(prepared.data, run_dir / "data")  # the scaling command's own data step then skips
    # the shared e2e data has a 2048-token vocabulary; the recipe's own is 512
    sets = [*prepared.sets, "model.vocab=2048", "data.vocab_size=2048", "scaling.tokens_per_param=0.5",
            "scaling.seeds=1", "launch.launcher=torchrun", f"launch.master_port={free_port()}"]
    argv = e2e.orchestrate("scaling", str(RECIPE), "--run-dir", str(run_dir), *e2e.as_set_flags(sets))
    code, output = e2e.run(argv, log=prepared.root / "scaling.log", cwd=prepared.root)
    assert code == 0, output[-4000:]
    record = json.loads((run_dir / "scaling.json").read_text())
    rows = record["ladder"]
    assert [row["run_dir"] for row in rows] == [str(run_dir / "ladder" / row["name"]) for row in rows]
    assert len(rows) == 5 and all(math.isfinite(row["eval_loss"]) for row in rows)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    for row in rows:  # every rung evaluated the same held-out micro-batches with its own schedule length
        config = e2e.read_json(run_dir / "ladder" / row["name"] / "rung.json")
        assert config["pretrain"]["loop"]["eval_batches"] == 64 and config["pretrain"]["loop"]["steps"] == row["steps"]
        assert config["data"] == e2e.read_json(run_dir / "ladder" / rows[0]["name"] / "rung.json")["data"]
    assert record["target"]["measured_loss"] is None and record["target"]["predicted_loss"] > 0
    assert (run_dir / "scaling.png").is_file()

    code, output = e2e.run(argv, log=prepared.root / "scaling.log", cwd=prepared.root)
    assert code == 0 and output.count("[pretrain] skip: complete") == 5
