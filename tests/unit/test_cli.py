import json
import subprocess
import sys

from orchestrator.cli import main

FIELDS = {"name", "n_layers", "d_model", "n_heads", "d_head", "ctx", "vocab", "n_experts", "top_k",
          "params", "active_params"}


def test_models_json_lists_every_preset_with_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert FIELDS <= set(rows[0])
    by_name = {r["name"]: r for r in rows}
    assert by_name["gpt4-moe"]["active_params"] < by_name["gpt4-moe"]["params"]


def test_models_table_and_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "orchestrator", "models"], capture_output=True, text=True,
                         check=True).stdout
    assert "gpt3-175b" in out and "174.6B" in out
