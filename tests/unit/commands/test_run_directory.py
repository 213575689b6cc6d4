"""One run directory, one writer; one machine, many runs: ``orchestrate run`` takes the run
directory's lock, and a single-node run picks a free rendezvous port unless the recipe sets one.

The runs use the stand-in phase (``phase_stand_in.py``) under ``torchrun``, whose agent binds the
rendezvous port for as long as the phase runs: two runs on one port at once would fail."""
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


from orchestrator.cli import main
from orchestrator.config.run import load_run_config
from orchestrator.engine.launch import LaunchPlan
from orchestrator.handoff.manifest import read_manifest
from orchestrator.runner.lock import LOCK_FILE
from orchestrator.runner.pipeline import run_pipeline

HERE = Path(__file__).parent
STAND_IN = "phase_stand_in"
WAIT_S = 600  # hang guard for a child that never gets there, not a timing


def recipe(run_dir: Path, **launch) -> dict:
    return {"name": "t", "run_dir": str(run_dir), "model": "tiny", "phases": ["pretrain", "sft"],
            "launch": {"launcher": "torchrun", "env": {"PYTHONPATH": str(HERE)}, **launch},
            **{p: {"optim": {"warmup_steps": 1}, "loop": {"steps": 2, "save_every": 1, "eval_every": 1}}
               for p in ("pretrain", "sft")}}


def start_run(data: dict, *, hold: Path, log: Path) -> subprocess.Popen:
    """``run_pipeline`` with the stand-in phase in its own process, its first phase held until ``hold`` exists."""
    script = ("import json, sys; from orchestrator.config.run import load_run_config; "
              "from orchestrator.runner.pipeline import run_pipeline; "
              f"sys.exit(run_pipeline(load_run_config(json.loads({json.dumps(data)!r})), entry_module={STAND_IN!r}, "
              "with_data=False))")
    env = {**os.environ, "STAND_IN_HOLD": str(hold)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def wait_for(log: Path, text: str, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        output = log.read_text() if log.exists() else ""
        if text in output:
            return output
        assert process.poll() is None, f"the run exited ({process.returncode}) before {text!r}:\n{output}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log} after {WAIT_S} s")


def finish(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=WAIT_S)
    finally:
        process.kill()


def test_a_second_run_on_a_directory_in_use_is_refused_and_the_first_finishes_unharmed(tmp_path, capsys):
    run_dir, hold = tmp_path / "run", tmp_path / "release"
    data = recipe(run_dir)
    first = start_run(data, hold=hold, log=tmp_path / "first.log")
    try:
        wait_for(tmp_path / "first.log", "pretrain: holding until", first)   # the first run is inside its phase
        launch_log = (run_dir / "pretrain" / "logs" / "launch.log").read_text()
        path = tmp_path / "r.json"
        path.write_text(json.dumps(data))
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"run directory {run_dir} is in use by `orchestrate run`, pid {first.pid} on host " \
               f"{socket.gethostname()} (started " in err and "give this run another --run-dir" in err
        assert "Traceback" not in err
        assert (run_dir / "pretrain" / "logs" / "launch.log").read_text() == launch_log   # nothing launched
        assert not (run_dir / "sft").exists()
    finally:
        hold.write_text("")
        code = finish(first)
    output = (tmp_path / "first.log").read_text()
    assert code == 0, output
    assert "[pretrain] complete in" in output and "[sft] complete in" in output
    assert [read_manifest(run_dir / p).status for p in ("pretrain", "sft")] == ["complete", "complete"]
    assert (run_dir / LOCK_FILE).read_text() == ""   # released cleanly: the next run takes it over silently


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_says_so(tmp_path):
    run_dir, hold = tmp_path / "run", tmp_path / "never"
    data = recipe(run_dir)
    killed = start_run(data, hold=hold, log=tmp_path / "killed.log")
    try:
        output = wait_for(tmp_path / "killed.log", "pretrain: holding until", killed)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)          # the runner, as a SIGKILL or a lost node would end it
        killed.wait()
    launcher_group = int(re.search(r"launcher process group (\d+)", output).group(1))
    os.killpg(launcher_group, signal.SIGKILL)          # and the phase it had started, left orphaned
    out = io.StringIO()
    code = run_pipeline(load_run_config(data), entry_module=STAND_IN, with_data=False, out=out)
    assert code == 0, out.getvalue()
    assert (f"[lock] taking over {run_dir / LOCK_FILE} from pid {killed.pid} on host {socket.gethostname()}"
            in out.getvalue()) and "which is no longer running" in out.getvalue()
    assert read_manifest(run_dir / "sft").status == "complete"


def test_two_runs_in_different_directories_at_once_get_different_free_ports(tmp_path):
    holds = tmp_path / "release"
    runs = {name: start_run(recipe(tmp_path / name), hold=holds, log=tmp_path / f"{name}.log") for name in ("a", "b")}
    try:
        for name, process in runs.items():      # both torchrun agents hold their rendezvous port now
            wait_for(tmp_path / f"{name}.log", "pretrain: holding until", process)
    finally:
        holds.write_text("")
        codes = {name: finish(process) for name, process in runs.items()}
    assert codes == {"a": 0, "b": 0}, {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name in runs}
    ports = {name: master_port_of(tmp_path / name / "pretrain") for name in runs}
    assert ports["a"] != ports["b"] and 29500 not in ports.values()


def master_port_of(phase_dir: Path) -> int:
    argv = LaunchPlan.from_json((phase_dir / "launch.json").read_text()).commands[0].argv
    return int(argv[argv.index("--master-port") + 1])


def test_a_recipe_port_is_kept_and_multinode_runs_agree_on_29500(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe(tmp_path / "run", master_port=31234)))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("--master-port 31234") == 2
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    data = recipe(tmp_path / "run", hostfile=str(hostfile), master_addr="node-a", launcher="deepspeed",
                  multinode="no_ssh")
    data["cluster"] = {"nodes": 2, "gpus_per_node": 1}
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--master_port 29500" in out and "MASTER_PORT=29500\n" in out


def test_a_dry_run_warns_that_the_directory_is_in_use(tmp_path, capsys):
    from orchestrator.runner.lock import RunLock

    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe(tmp_path / "run")))
    with RunLock(tmp_path / "run"):
        assert main(["run", str(path), "--dry-run"]) == 0
    assert f"warning: {tmp_path / 'run'} is in use by `orchestrate run`, pid " in capsys.readouterr().out
