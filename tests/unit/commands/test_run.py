import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config.run import load_run_config
from orchestrator.engine.launch import LaunchCommand, LaunchPlan
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.manifest import read_manifest
from orchestrator.runner.pipeline import run_pipeline, select_phases
from orchestrator.runner.process import run_logged, stop_group
from orchestrator.plan.layout import LayoutError
from orchestrator.engine.launch.ports import free_port

HERE = Path(__file__).parent
STAND_IN = "phase_stand_in"  # tests/unit/commands/phase_stand_in.py, on PYTHONPATH through launch.env


def recipe(tmp_path, launcher="torchrun", **extra):
    data = {"name": "t", "run_dir": str(tmp_path / "run"), "model": "tiny",
            "launch": {"launcher": launcher, "master_port": free_port(), "env": {"PYTHONPATH": str(HERE)}},
            **{p: {"optim": {"warmup_steps": 1}, "loop": {"steps": 4, "save_every": 2, "eval_every": 2}}
               for p in ("pretrain", "sft", "reward", "ppo")}}
    data.update(extra)
    return data


def run(data, overrides=(), **kwargs):
    out = io.StringIO()
    kwargs.setdefault("with_data", False)  # the stand-in reads no data; one test below runs the real step
    code = run_pipeline(load_run_config(data, list(overrides)), entry_module=STAND_IN, out=out, **kwargs)
    return code, out.getvalue()


def test_runs_every_phase_in_order_each_handing_off_through_its_manifest(tmp_path):
    code, out = run(recipe(tmp_path))
    assert code == 0, out
    run_dir = tmp_path / "run"
    assert [line.split("]")[0][1:] for line in out.splitlines() if line.endswith(" complete in " + line.split()[-2] + " s")] \
        == ["pretrain", "sft", "reward", "ppo"]
    ppo = read_manifest(run_dir / "ppo")
    assert ppo.status == "complete" and [p.phase for p in ppo.parents] == ["sft", "reward"]
    for phase in ("pretrain", "sft", "reward", "ppo"):
        folder = run_dir / phase
        assert {"run_config.yaml", "plan.json", "ds_config.json", "launch.json", "metrics.jsonl"} <= \
            {p.name for p in folder.iterdir()}
        argv = LaunchPlan.from_json((folder / "launch.json").read_text()).commands[0].argv
        assert argv[0] == "torchrun" and argv[-4:] == ("--phase", phase, "--run-dir", str(run_dir))
        assert "starts at step 0" in (folder / "logs" / "launch.log").read_text()
    assert (run_dir / "run_config.yaml").is_file()


def test_complete_phases_are_skipped_and_a_failed_phase_resumes_when_rerun(tmp_path, monkeypatch):
    data = recipe(tmp_path)
    monkeypatch.setenv("STAND_IN_FAIL", "sft:3")
    code, out = run(data)
    assert code != 0  # torchrun reports a failed rank as 1
    assert f"[sft] failed (exit code {code})" in out and "injected failure at step 3" in out.split("[sft] failed")[1]
    assert f"orchestrate run {tmp_path / 'run' / 'run_config.yaml'} --only sft" in out
    assert not (tmp_path / "run" / "reward").exists()  # the run stopped
    code, out = run(data)
    assert code == 0, out
    assert "[pretrain] skip: complete at step 4" in out
    assert "sft: rank 0 starts at step 2" in out  # resumed from its latest checkpoint


def test_a_checkpoint_without_sharded_state_is_refused_under_another_layout_before_launch(tmp_path, monkeypatch):
    data = recipe(tmp_path)
    monkeypatch.setenv("STAND_IN_FAIL", "sft:3")
    assert run(data)[0] != 0                                  # sft stopped after its step-2 checkpoint
    monkeypatch.delenv("STAND_IN_FAIL")
    checkpoint = tmp_path / "run" / "sft" / "checkpoints" / "step_00000002"
    saved = {"tp": 1, "pp": 1, "dp": 2, "ep": 1, "zero_stage": 2, "micro_batch": 1, "grad_accum": 1}
    (checkpoint / "loop_state.json").write_text(json.dumps({"layouts": {"model": saved}}))   # no shards/, no consolidated.pt
    launch_log = (tmp_path / "run" / "sft" / "logs" / "launch.log").read_text()
    with pytest.raises(ValueError, match=r"sft: checkpoint .*step_00000002 was saved under layout tp=1 pp=1 dp=2 "
                                         r"ep=1 zero_stage=2 .*without sharded state"):
        run(data)
    assert (tmp_path / "run" / "sft" / "logs" / "launch.log").read_text() == launch_log   # nothing started


def test_only_a_phase_whose_parent_is_missing_fails_before_launching_and_names_the_command(tmp_path):
    with pytest.raises(HandoffError, match=r"no complete pretrain checkpoint in .*run/pretrain: run `orchestrate run"):
        run(recipe(tmp_path), only="sft")
    assert not (tmp_path / "run").exists()


def test_every_phase_layout_is_checked_before_any_process_starts(tmp_path):
    with pytest.raises(LayoutError, match=r"reward.layout: world 1 is not divisible by tp 2") as err:
        run(recipe(tmp_path), ["reward.layout.tp=2", "ppo.layout.dp=2"])
    assert "ppo.layout: world 1 != tp 1 × pp 1 × dp 2" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_complete_phase_whose_weights_were_edited_stops_the_run(tmp_path):
    data = recipe(tmp_path, phases=["pretrain", "sft"])
    assert run(data)[0] == 0
    (tmp_path / "run" / "pretrain" / "checkpoints" / "final" / "model.pt").write_bytes(b"edited")
    with pytest.raises(HandoffError, match=r"model.pt \(6 bytes\) does not match"):
        run(data)


def test_from_runs_the_tail_and_only_runs_one(tmp_path):
    phases = ["pretrain", "sft", "reward", "ppo"]
    assert select_phases(phases, only=None, start="reward") == ["reward", "ppo"]
    assert select_phases(phases, only="sft", start=None) == ["sft"]
    with pytest.raises(ValueError, match="--only ppo: not one of this recipe's phases"):
        select_phases(["pretrain"], only="ppo", start=None)


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe(tmp_path, launcher="deepspeed")))
    assert main(["run", str(path), "--dry-run", "--set", "pretrain.layout.zero_stage=1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split("]")[0][1:] for line in lines] == ["data", "pretrain", "sft", "reward", "ppo"]
    assert "-m orchestrator data --out" in lines[0]
    assert "deepspeed --num_gpus 1 --master_port" in lines[1] and "--module orchestrator.phases.entry" in lines[1]
    assert list(tmp_path.iterdir()) == [path]


def test_dry_run_of_a_multinode_recipe_prints_per_node_commands_and_the_env_file(tmp_path, capsys):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    data = recipe(tmp_path, launcher="deepspeed", cluster={"nodes": 2, "gpus_per_node": 2}, phases=["pretrain"])
    data["launch"].update(hostfile=str(hostfile), multinode="no_ssh", master_addr="node-a", env={"NCCL_IB_HCA": "mlx5"})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[pretrain node 0] $" in out and "--no_ssh --node_rank 1 --master_addr node-a" in out
    assert "MASTER_ADDR=node-a\n" in out and "NCCL_IB_HCA=mlx5\n" in out and "DEEPSPEED_TIMEOUT=30\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile", "r.json"]


def test_a_hostfile_that_does_not_match_the_cluster_is_refused(tmp_path, capsys):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\n")
    data = recipe(tmp_path, launcher="deepspeed", cluster={"nodes": 2, "gpus_per_node": 2})
    data["launch"]["hostfile"] = str(hostfile)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "lists 1 host(s) (node-a) but cluster.nodes=2" in capsys.readouterr().err


def test_the_deepspeed_launcher_runs_a_phase(tmp_path):
    code, out = run(recipe(tmp_path, launcher="deepspeed", phases=["pretrain"]))
    assert code == 0, out
    assert "pretrain: rank 0 starts at step 0" in out
    assert read_manifest(tmp_path / "run" / "pretrain").status == "complete"


def test_sbatch_writes_a_per_node_script_and_the_resolved_config(tmp_path, capsys):
    data = recipe(tmp_path, cluster={"gpu": "a100-80g", "nodes": 4, "gpus_per_node": 8})
    data["launch"]["slurm_partition"] = "gpu"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--sbatch", str(tmp_path / "job.sbatch")]) == 0
    script = (tmp_path / "job.sbatch").read_text()
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --partition=gpu" in script
    assert '--node-rank "$SLURM_NODEID"' in script and "srun --ntasks-per-node=1" in script
    assert load_run_config(tmp_path / "run" / "run_config.yaml").launch.multinode == "no_ssh"
    result = subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_interrupting_a_launch_stops_its_whole_process_group(tmp_path):
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('started', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout.readline() == b"started\n"
    stop_group(process)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
    process.stdout.close()


def test_run_logged_tees_output_to_the_log_and_keeps_the_tail(tmp_path):
    command = LaunchCommand(argv=(sys.executable, "-c", "import os\nfor i in range(50): print(i)\nprint(os.environ['X'])"),
                            env={"X": "from-env"})
    out = io.StringIO()
    code, tail = run_logged(command, log_path=tmp_path / "logs" / "launch.log", out=out)
    log = (tmp_path / "logs" / "launch.log").read_text()
    assert code == 0 and len(tail) == 40 and tail[-1] == "from-env" and tail[0] == "11"
    assert "0\n1\n" in out.getvalue() and "from-env" in log and "=== exit code 0" in log


def test_the_planners_validator_refuses_a_layout_deepspeed_cannot_run(tmp_path):
    with pytest.raises(LayoutError, match=r"sft.layout: DeepSpeed's pipeline engine allows ZeRO ≤ 1 \(got zero 2"):
        run(recipe(tmp_path, cluster={"gpus_per_node": 2}), ["sft.layout.pp=2", "sft.layout.zero_stage=2"])
    assert not (tmp_path / "run").exists()


def test_the_accelerate_launcher_runs_a_phase_on_two_ranks_with_the_phase_deepspeed_config(tmp_path):
    code, out = run(recipe(tmp_path, launcher="accelerate", phases=["pretrain"], cluster={"gpus_per_node": 2}))
    assert code == 0, out
    ds_config = tmp_path / "run" / "pretrain" / "ds_config.json"
    for rank in (0, 1):
        assert f"pretrain: rank {rank} of 2 up, accelerate's DeepSpeed config: {ds_config}" in out
    assert json.loads(ds_config.read_text())["train_batch_size"] == 2  # micro_batch 1 × dp 2


def test_the_data_step_prepares_the_run_directory_once(tmp_path):
    data = recipe(tmp_path, phases=["pretrain"])
    data["data"] = {"cache_dir": str(tmp_path / "cache")}
    code, out = run(data, with_data=True)
    assert code == 0, out
    assert "[data] $ " in out and (tmp_path / "run" / "data" / "tokenizer" / "tokenizer.json").is_file()
    assert {"sft_train.jsonl", "rm_train.jsonl", "ppo_train.jsonl"} <= {p.name for p in (tmp_path / "run" / "data").iterdir()}
    (tmp_path / "run" / "pretrain").rename(tmp_path / "old")  # train pretrain again, data stays
    code, out = run(data, with_data=True)
    assert code == 0 and "[data] skip:" in out


def test_a_multinode_backend_missing_on_this_machine_is_refused_before_anything_starts(tmp_path, monkeypatch):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    data = recipe(tmp_path, launcher="deepspeed", cluster={"nodes": 2, "gpus_per_node": 1})
    data["launch"].update(hostfile=str(hostfile), multinode="pdsh", master_addr="node-a")
    monkeypatch.setenv("PATH", str(tmp_path))  # no pdsh here
    with pytest.raises(ValueError, match="launch.multinode=pdsh needs `pdsh` on this machine"):
        run(data)
    assert not (tmp_path / "run").exists()
    assert run(data, dry_run=True)[1].count("warning: launch.multinode=pdsh needs `pdsh`") == 1
