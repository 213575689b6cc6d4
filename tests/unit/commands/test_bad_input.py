"""Every bad input a new user can type into ``orchestrate run`` is refused before anything starts:
exit code 2, one message that names the key, the value and the fix, no traceback, no process
launched and nothing written (issue 12). Run in this process through ``orchestrator.cli.main``;
the last tests run the real command line for the edges only a process shows (a closed pipe,
``--version``, the exit code of ``status``)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from run_dir_builder import mixed_run

REPO = Path(__file__).resolve().parents[3]
TINY = str(REPO / "recipes" / "tiny.yaml")
TWO_RANKS = ("cluster.gpus_per_node=2",)
MOE = ("model=tiny-moe",)
GPT3_ON_8_A100 = ("model=gpt3-175b", "cluster.gpu=a100-80g", "cluster.gpus_per_node=8", "phases=[pretrain]",
                  "pretrain.layout.zero_stage=0", "pretrain.layout.micro_batch=16", "pretrain.loop.seq_len=2048")

# (case, --set overrides, other arguments, fragments the message must hold)
BAD = [
    # what this runtime cannot run (the planner ranks it as "plan only"; run and the rank refuse it)
    ("sequence parallel", (*TWO_RANKS, "pretrain.layout.tp=2", "pretrain.layout.sequence_parallel=true"), (),
     ["pretrain.layout: sequence parallel: this project's runtime does not run it", "set sequence_parallel false"]),
    ("interleave", (*TWO_RANKS, "pretrain.layout.pp=2", "pretrain.layout.interleave=2"), (),
     ["pretrain.layout: interleave 2 is Megatron-LM's interleaved 1F1B", "set interleave 1"]),
    ("moe capacity over tp", (*MOE, *TWO_RANKS, "phases=[pretrain]", "pretrain.layout.tp=2",
                              "pretrain.layout.micro_batch=1", "pretrain.loop.seq_len=24"), (),
     ["pretrain.layout: expert capacity 15 slots", "not divisible by tp 2"]),
    ("moe pipeline with zero 2", (*MOE, *TWO_RANKS, "pretrain.layout.pp=2", "pretrain.layout.zero_stage=2"), (),
     ["pretrain.layout: DeepSpeed's pipeline engine allows ZeRO ≤ 1", "use zero 0 or 1"]),
    ("moe with zero 3", (*MOE, "pretrain.layout.zero_stage=3"), (),
     ["pretrain.layout: DeepSpeed MoE allows ZeRO ≤ 2 (got zero 3)", "use zero 2"]),
    ("reward model with pp", (*TWO_RANKS, "reward.layout.pp=2"), (),
     ["reward.layout: head 'scalar' with pp 2", "use pp 1"]),
    ("ppo with pp", (*TWO_RANKS, "ppo.layout.pp=2"), (), ["ppo.layout: PPO needs whole models", "use pp 1"]),
    ("pipeline with zero 2", (*TWO_RANKS, "sft.layout.pp=2", "sft.layout.zero_stage=2"), (),
     ["sft.layout: DeepSpeed's pipeline engine allows ZeRO ≤ 1", "use zero 0 or 1"]),
    ("heads over tp", ("cluster.gpus_per_node=3", "pretrain.layout.tp=3"), (),
     ["pretrain.layout: heads 4 not divisible by tp 3: use tp ∈ {1, 2, 4}"]),
    ("world", ("pretrain.layout.dp=2",), (), ["pretrain.layout: world 1 != tp 1 × pp 1 × dp 2", "dp=-1"]),
    ("offload without zero", ("pretrain.layout.offload_optimizer=true",), (), ["optimizer offload needs ZeRO ≥ 1"]),
    ("memory", GPT3_ON_8_A100, (), ["pretrain.layout: memory", "GiB per GPU > 76.0 GiB usable of 80.0 GiB"]),
    # range checks: the dotted key, the value, the range
    ("negative steps", ("pretrain.loop.steps=-5",), (), ["pretrain.loop.steps=-5: must be >= 1"]),
    ("negative lr", ("sft.optim.lr=-1",), (), ["sft.optim.lr=-1.0: must be >= 0"]),
    ("warm-up past the steps", ("pretrain.optim.warmup_steps=99999",), (),
     ["pretrain.optim.warmup_steps=99999: must be in 0..200", "raise loop.steps"]),
    ("ppo warm-up past steps × epochs × minibatches", ("ppo.optim.warmup_steps=481",), (),
     ["ppo.optim.warmup_steps=481: must be in 0..480 (", "loop.steps × ppo_epochs × minibatches"]),
    ("min lr ratio", ("reward.optim.min_lr_ratio=1.5",), (), ["reward.optim.min_lr_ratio=1.5: must be in [0, 1]"]),
    ("beta2 of one", ("pretrain.optim.beta2=1.0",), (), ["pretrain.optim.beta2=1.0: must be in [0, 1)"]),
    ("nan epsilon", ("pretrain.optim.eps=.nan",), (), ["pretrain.optim.eps=nan: must be > 0"]),
    ("negative clipping", ("pretrain.optim.grad_clip=-1",), (), ["pretrain.optim.grad_clip=-1.0: must be >= 0"]),
    ("log every zero", ("sft.loop.log_every=0",), (), ["sft.loop.log_every=0: must be >= 1"]),
    ("negative eval interval", ("sft.loop.eval_every=-1",), (), ["sft.loop.eval_every=-1: must be >= 0"]),
    ("micro-batch zero", ("pretrain.layout.micro_batch=0",), (), ["pretrain.layout.micro_batch=0: must be an integer"]),
    ("tp zero", ("pretrain.layout.tp=0",), (), ["pretrain.layout.tp=0: must be an integer >= 1"]),
    ("zero stage 4", ("pretrain.layout.zero_stage=4",), (), ["pretrain.layout.zero_stage=4: must be 0, 1, 2 or 3"]),
    ("seq over the context", ("pretrain.loop.seq_len=4096",), (),
     ["pretrain.loop.seq_len=4096: must be in 1..128 (model.ctx", "--set model.ctx=N"]),
    ("dropout of one", ("model.dropout=1.0",), (), ["model.dropout=1.0: must be in [0, 1)"]),
    ("no layers", ("model.n_layers=0",), (), ["model.n_layers=0: must be >= 1"]),
    ("k of ten", ("reward.k=10",), (), ["reward.k=10: must be in 2..9"]),
    ("k of one", ("reward.k=1",), (), ["reward.k=1: must be in 2..9"]),
    ("top-p of zero", ("ppo.top_p=0",), (), ["ppo.top_p=0.0: must be in (0, 1]"]),
    ("temperature of zero", ("oracle_eval.temperature=0",), (), ["oracle_eval.temperature=0.0: must be > 0"]),
    ("gamma above one", ("ppo.gamma=1.5",), (), ["ppo.gamma=1.5: must be in [0, 1]"]),
    ("no ppo epochs", ("ppo.ppo_epochs=0",), (), ["ppo.ppo_epochs=0: must be >= 1"]),
    ("response past the context", ("ppo.max_new_tokens=128",), (), ["ppo.max_new_tokens=128: must be in 1..127"]),
    ("noise rate", ("data.task.noise_rate=2",), (), ["data.task.noise_rate=2.0: must be in [0, 1]"]),
    ("eval fraction", ("data.eval_fraction=0.7",), (), ["data.eval_fraction=0.7: must be in [0, 0.5)"]),
    ("source weight", ("data.sources=[{path: embedded, weight: 0}]",), (), ["data.sources[0].weight=0.0: must be > 0"]),
    ("vocab over the model's", ("data.vocab_size=4096",), (), ["data.vocab_size=4096: must be <= model.vocab 2048"]),
    ("port", ("launch.master_port=70000",), (), ["launch.master_port=70000: must be in 1..65535"]),
    ("collective timeout", ("launch.timeout_minutes=0",), (), ["launch.timeout_minutes=0: must be >= 1"]),
    ("no nodes", ("cluster.nodes=0",), (), ["cluster.nodes=0: must be >= 1"]),
    ("bad gpu", ("cluster.gpu=a100",), (), ["cluster.gpu='a100': must be one of a100-40g, a100-80g"]),
    ("negative seed", ("seed=-1",), (), ["seed=-1: must be >= 0"]),
    ("phases out of order", ("phases=[sft, pretrain]",), (), ["phases=['sft', 'pretrain']: must be distinct, in the order"]),
    ("unknown phase", ("phases=[pretrain, dpo]",), (), ["phases: unknown phase 'dpo'"]),
    ("unknown key", ("pretrain.optim.lrr=1",), (), ["unknown key 'pretrain.optim.lrr': valid keys are lr, min_lr_ratio"]),
    ("wrong type", ("sft.loop.steps=many",), (), ["sft.loop.steps='many' must be int"]),
    ("recompute choice", ("pretrain.layout.recompute=most",), (), ["pretrain.layout.recompute='most' is not allowed"]),
    # your data and labeller (issue 16): paths and fields are checked before launch
    ("your data: a missing file", ("data.ppo.path=absent.jsonl", "reward.candidates=file"), (),
     ["data.ppo.path: absent.jsonl: no such file or folder"]),
    ("your data: a field it does not have", (f"data.sft.path={REPO / 'recipes/data/byod/demonstrations.jsonl'}",
                                              "reward.candidates=file"), (),
     ["data.sft.path:", "has no field 'prompt', 'response' (its rows have answer, question)",
      "set data.sft.prompt_field, data.sft.response_field"]),
    ("your data: a file type", (f"data.reward.path={REPO / 'README.md'}", "reward.candidates=file"), (),
     ["data.reward.path:", "unsupported file type '.md'"]),
    ("policy candidates without a labeller", ("data.labeller=none",), (),
     ["reward.candidates='policy': ranks the SFT model's samples with the labeller", "set reward.candidates: file"]),
    ("a labeller that does not import", ("data.labeller=no_such_module_h16:score",), (),
     ["data.labeller='no_such_module_h16:score': cannot import", "PYTHONPATH"]),
    ("a labeller spec", ("data.labeller=judge",), (), ["data.labeller='judge': give wordlist, none, or 'module:function'"]),
    ("a template without the response", ("data.template='{prompt} says'",), (),
     ["data.template='{prompt} says': must hold {prompt} and then {response}"]),
    ("a pretrain mix of no row", ("sft.pretrain_mix=0.01",), (), ["sft.pretrain_mix=0.01: × layout.micro_batch 32"]),
    # arguments
    ("node rank past the cluster", (), ("--node-rank", "5"), ["--node-rank 5: must be in 0..0 (cluster.nodes=1)"]),
    ("negative node rank", (), ("--node-rank", "-1"), ["--node-rank -1: must be in 0..0"]),
    ("missing recipe", (), ("--recipe-is", "missing.yaml"), ["config file missing.yaml not found"]),
]


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if the runner starts any process (the data step or a phase)."""
    def launched(command, **_):
        raise AssertionError(f"a process was launched: {command.argv}")
    monkeypatch.setattr("orchestrator.runner.pipeline.run_logged", launched)


def orchestrate_run(tmp_path, sets, extra, *, dry_run: bool, capsys) -> tuple[int, str, str]:
    recipe = TINY
    if extra[:1] == ("--recipe-is",):
        recipe, extra = extra[1], extra[2:]
    argv = ["run", recipe, "--run-dir", str(tmp_path / "run"), *extra, *[a for s in sets for a in ("--set", s)]]
    code = main(argv + (["--dry-run"] if dry_run else []))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case,sets,extra,fragments", BAD, ids=[case[0] for case in BAD])
def test_a_bad_input_exits_2_with_its_message_before_anything_starts_or_is_written(
        case, sets, extra, fragments, dry_run, tmp_path, capsys, no_launch):
    code, out, err = orchestrate_run(tmp_path, sets, extra, dry_run=dry_run, capsys=capsys)
    assert code == 2, out + err
    assert err.startswith("orchestrate run: error: ") and "Traceback" not in err + out
    for fragment in fragments:
        assert fragment in err, err
    assert list(tmp_path.iterdir()) == []              # no run directory, no file


def test_each_bad_input_has_its_own_message(tmp_path, capsys, no_launch):
    messages = {orchestrate_run(tmp_path, sets, extra, dry_run=True, capsys=capsys)[2] for _, sets, extra, _ in BAD}
    assert len(messages) == len(BAD)


def test_a_bad_gpu_is_reported_once_not_once_per_phase(tmp_path, capsys, no_launch):
    _, _, err = orchestrate_run(tmp_path, ("cluster.gpu=a100",), (), dry_run=True, capsys=capsys)
    assert err.count("cluster.gpu='a100'") == 1 and len(err.strip().splitlines()) == 1, err


def test_every_phase_refusal_is_reported_in_one_message(tmp_path, capsys, no_launch):
    _, _, err = orchestrate_run(tmp_path, (*TWO_RANKS, "reward.layout.pp=2", "ppo.layout.pp=2"), (),
                                dry_run=True, capsys=capsys)
    assert "reward.layout: head 'scalar' with pp 2" in err and "ppo.layout: PPO needs whole models" in err


def test_run_refuses_the_memory_plan_that_orchestrate_plan_refuses_with_the_same_numbers(tmp_path, capsys, no_launch):
    assert main(["plan", "--model", "gpt3-175b", "--gpus", "8", "--gpu", "a100-80g", "--tp", "1", "--pp", "1",
                 "--zero", "0", "--micro-batch", "16", "--recompute", "none", "--global-batch", "128"]) == 2
    planned = re.search(r"memory ([0-9.]+) GiB per GPU", capsys.readouterr().err).group(1)
    code, _, err = orchestrate_run(tmp_path, GPT3_ON_8_A100, (), dry_run=True, capsys=capsys)
    assert code == 2 and f"pretrain.layout: memory {planned} GiB per GPU > 76.0 GiB usable" in err, err


def test_ppo_memory_counts_the_four_models(tmp_path, capsys, no_launch):
    sets = ("model=gpt3-6.7b", "cluster.gpu=a100-80g", "cluster.gpus_per_node=8", "phases=[ppo]",
            "ppo.layout.zero_stage=1", "ppo.layout.micro_batch=1", "ppo.loop.seq_len=2048")
    code, _, err = orchestrate_run(tmp_path, sets, ("--only", "ppo"), dry_run=True, capsys=capsys)
    params = float(re.search(r"ppo.layout: memory [0-9.]+ GiB per GPU .*\(params ([0-9.]+)", err).group(1))
    one_copy = 6.7e9 * 2 / 2 ** 30           # 16-bit weights of one 6.7B model, replicated under ZeRO-1
    assert code == 2 and params == pytest.approx(4 * one_copy, rel=0.02), err


def test_a_good_recipe_still_dry_runs(tmp_path, capsys, no_launch):
    code, out, err = orchestrate_run(tmp_path, (), (), dry_run=True, capsys=capsys)
    assert code == 0 and "--phase ppo --run-dir" in out and err == "", err
    assert list(tmp_path.iterdir()) == []


# --- the command line as a process ------------------------------------------------------------
def orchestrate(*args: str, shell_tail: str = "") -> subprocess.CompletedProcess:
    command = " ".join([f"'{sys.executable}'", "-m", "orchestrator", *args]) + shell_tail
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_the_real_command_line_refuses_bad_input_with_exit_2_and_no_traceback(tmp_path):
    result = orchestrate("run", TINY, "--run-dir", str(tmp_path / "run"), "--dry-run", "--set", "loop.steps=-5")
    assert result.returncode == 2 and result.stderr.startswith("orchestrate run: error: unknown key 'loop'")
    result = orchestrate("run", TINY, "--run-dir", str(tmp_path / "run"), "--set", "pretrain.loop.steps=-5")
    assert result.returncode == 2 and "pretrain.loop.steps=-5: must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_plan_piped_into_head_ends_quietly():
    result = orchestrate("plan", "--model", "gpt3-175b", "--gpus", "1024", "--gpu", "a100-80g", "--explain",
                         shell_tail=" | head -1")
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("gpt3-175b")


def test_version_and_train_are_commands():
    from orchestrator import __version__

    version = orchestrate("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"orchestrate {__version__}"
    train = orchestrate("train", "--help")
    assert train.returncode == 0 and "usage: orchestrate train" in train.stdout, train.stderr


def test_status_of_a_run_with_a_failed_phase_exits_1(tmp_path):
    result = orchestrate("status", str(mixed_run(tmp_path / "run")))
    assert result.returncode == 1 and "failed" in result.stdout and result.stderr == ""
