"""``orchestrate plan`` and ``orchestrate config`` from the command line."""
import json
import subprocess
import sys

import pytest

from orchestrator.cli import main
from orchestrator.plan.artifact import Plan

GPT3 = ["--model", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80g"]
JSON_KEYS = {"tp", "pp", "dp", "ep", "zero_stage", "micro_batch", "grad_accum", "micro_batches", "bubble_fraction",
             "memory_gib", "memory_breakdown_gib", "step_time_s", "tokens_per_s", "mfu"}


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_prints_the_best_layouts_as_a_table(capsys):
    code, out, _ = run(["plan", *GPT3, "--top", "5"], capsys)
    assert code == 0
    assert "layouts considered" in out and "tokens/s" in out and "MFU" in out
    assert sum(line.lstrip().startswith(tuple("12345")) for line in out.splitlines()) >= 5


def test_json_lists_layouts_with_the_documented_keys(capsys):
    code, out, _ = run(["plan", *GPT3, "--top", "3", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3
    assert JSON_KEYS <= set(rows[0])
    assert {"params", "grads", "optimizer", "activations"} <= set(rows[0]["memory_breakdown_gib"])
    assert rows[0]["tokens_per_s"] >= rows[1]["tokens_per_s"] >= rows[2]["tokens_per_s"]


def test_explain_groups_the_rejections_with_examples(capsys):
    code, out, _ = run(["plan", *GPT3, "--explain"], capsys)
    assert code == 0
    assert "rejected" in out and "zero_pp:" in out and "memory:" in out and "e.g. tp" in out


def test_every_degree_fixed_evaluates_that_one_layout(capsys):
    code, out, _ = run(["plan", *GPT3, "--tp", "8", "--pp", "16", "--zero", "1", "--micro-batch", "1",
                        "--recompute", "full"], capsys)
    assert code == 0
    assert "tp8 pp16 dp8 zero1 mb1×195 full" in out and "memory" in out and "MFU" in out


def test_an_invalid_fixed_layout_prints_all_its_errors_and_exits_2(capsys):
    code, _, err = run(["plan", *GPT3, "--tp", "5", "--pp", "7", "--dp", "3", "--zero", "2", "--micro-batch", "1",
                        "--recompute", "full"], capsys)
    assert code == 2
    for fragment in ("world 1024 != tp 5 × pp 7 × dp 3", "heads 96 not divisible by tp 5",
                     "layers 96 not divisible by pp 7", "ZeRO ≤ 1"):
        assert fragment in err


def test_ppo_with_a_pipeline_is_refused(capsys):
    code, _, err = run(["plan", "--model", "gpt3-6.7b", "--gpus", "8", "--gpu", "a100-80g", "--ppo", "--tp", "1",
                        "--pp", "2", "--zero", "1", "--micro-batch", "1", "--recompute", "full"], capsys)
    assert code == 2 and "PPO needs whole models" in err


def test_ppo_search_reports_the_four_models(capsys):
    code, out, _ = run(["plan", "--model", "gpt3-6.7b", "--gpus", "8", "--gpu", "a100-80g", "--ppo", "--top", "2"],
                       capsys)
    assert code == 0 and "PPO (4 models)" in out


def test_set_overrides_the_model_and_bad_input_is_one_clear_line(capsys):
    code, out, _ = run(["plan", *GPT3, "--set", "model.n_layers=48", "--json", "--top", "1"], capsys)
    assert code == 0 and json.loads(out)
    code, _, err = run(["plan", "--model", "gpt9", "--gpus", "8"], capsys)
    assert code == 2 and "unknown model 'gpt9'" in err and "Traceback" not in err
    code, _, err = run(["plan", "--model", "tiny", "--gpus", "2", "--gpu", "cpu", "--gpus-per-node", "2"], capsys)
    assert code == 2 and "--global-batch" in err
    code, _, err = run(["plan", *GPT3[:2], "--gpus", "12", "--gpus-per-node", "8"], capsys)
    assert code == 2 and "use 8 or 16" in err


def test_tiny_model_plans_on_this_cpu(capsys):
    code, out, _ = run(["plan", "--model", "tiny", "--gpus", "2", "--gpu", "cpu", "--gpus-per-node", "2",
                        "--global-batch", "8", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["dp"] * json.loads(out)[0]["tp"] * json.loads(out)[0]["pp"] == 2


def test_config_writes_deepspeed_json_plan_and_launch_beside_it(tmp_path, capsys):
    output = tmp_path / "gpt3.json"
    code, out, _ = run(["config", *GPT3, "-o", str(output)], capsys)
    assert code == 0
    ds, plan = json.loads(output.read_text()), Plan.load(tmp_path / "gpt3.plan.json")
    launch = json.loads((tmp_path / "gpt3.launch.json").read_text())
    assert ds["train_batch_size"] == plan.layout.global_batch
    assert launch["commands"][0]["argv"][:3] == ["deepspeed", "--hostfile", "hostfile"]
    assert "launch: " in out


def test_config_refuses_when_nothing_fits(tmp_path, capsys):
    code, _, err = run(["config", "--model", "gpt3-175b", "--gpus", "8", "--gpu", "a100-40g",
                        "-o", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "0 layouts fit" in err and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv", [["plan", *GPT3, "--top", "5"]])
def test_the_makefile_smoke_command_runs_as_a_process(argv):
    out = subprocess.run([sys.executable, "-m", "orchestrator", *argv], capture_output=True, text=True, check=True)
    assert "gpt3-175b" in out.stdout


def test_layouts_the_runtime_cannot_run_are_ranked_and_marked_plan_only(capsys):
    code, out, _ = run(["plan", *GPT3, "--sequence-parallel", "--top", "2"], capsys)
    assert code == 0 and out.count("sp (plan only)") == 2
    assert "plan only: this project's runtime cannot run these layouts (orchestrate run refuses them):\n  #1, #2: " \
           "sequence parallel" in out
    code, out, _ = run(["plan", *GPT3, "--sequence-parallel", "--top", "1", "--json"], capsys)
    assert json.loads(out)[0]["plan_only"][0].startswith("sequence parallel: this project's runtime does not run it")
    code, out, _ = run(["plan", *GPT3, "--top", "1", "--json"], capsys)
    assert json.loads(out)[0]["plan_only"] == []
