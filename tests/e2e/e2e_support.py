"""What the end-to-end tests share: the tiny recipe's overrides, and starting, watching and
killing real phase processes (the ``orchestrate`` runner, or ``python -m orchestrator.phases.entry``).

Every process gets ``WANDB_MODE=disabled`` and ``OMP_NUM_THREADS=1`` (so runs started by
different paths compute with the same thread count and compare bit for bit), runs in its own
session, and is killed by process group if a test gives up on it.

DeepSpeed JIT-builds its CPU shared-memory op into ``TORCH_EXTENSIONS_DIR``, which
``tests/conftest.py`` points into the virtualenv (``make install`` builds it there): the shared
``~/.cache/torch_extensions`` is rebuilt whenever processes of other virtualenvs, or with another
ninja (1.11 in ``/usr/bin`` and the venv's 1.13 record different command hashes), use it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from orchestrator.config.run import load_run_config, save_run_config
from orchestrator.handoff.checkpoint import read_latest
from orchestrator.handoff.manifest import Manifest, read_manifest
from orchestrator.handoff.metrics import read_metrics
from orchestrator.engine.launch.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "recipes" / "tiny.yaml"
PROCESS_TIMEOUT = 900
"""Seconds before a test gives up on a process (a hang guard, not a timing assertion)."""

# Tiny numbers for every phase; the kill tests need pretrain's first checkpoint well before its end.
PHASE_SETS = (
    "pretrain.layout.micro_batch=4", "pretrain.optim.warmup_steps=2",
    "pretrain.loop.steps=24", "pretrain.loop.seq_len=64", "pretrain.loop.save_every=4",
    "pretrain.loop.eval_every=12", "pretrain.loop.log_every=1", "pretrain.loop.eval_batches=2",
    "sft.layout.micro_batch=4", "sft.optim.warmup_steps=1", "sft.loop.steps=3", "sft.loop.log_every=1",
    "sft.loop.eval_batches=2",
    "reward.layout.micro_batch=2", "reward.optim.warmup_steps=1", "reward.loop.steps=3", "reward.loop.log_every=1",
    "ppo.layout.micro_batch=4", "ppo.loop.steps=2", "ppo.loop.log_every=1", "ppo.loop.seq_len=64",
    "ppo.ptx_coef=27.8",  # InstructGPT's γ_ptx: the real run goes through the PPO-ptx path
    "oracle_eval.prompts=8", "oracle_eval.batch_size=8",
)
TASK_SETS = ("data.task.sft_train=200", "data.task.sft_eval=32", "data.task.rm_train=100",
             "data.task.rm_eval=32", "data.task.ppo_train=100", "data.task.ppo_eval=16")


def base_sets(cache_dir: Path) -> list[str]:
    """Overrides every e2e run shares (the data ones must match the shared prepared data)."""
    return [f"data.cache_dir={cache_dir}", *TASK_SETS, *PHASE_SETS]


def as_set_flags(sets: Sequence[str]) -> list[str]:
    return [flag for item in sets for flag in ("--set", item)]


def process_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# --- processes -------------------------------------------------------------------------------
def start(argv: Sequence[str], *, log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``argv`` in its own session with stdout+stderr going to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        return subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=process_env(), start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process's whole group (launcher and ranks) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def finish(process: subprocess.Popen) -> int:
    """Wait for the process (killing its group if it outlives the hang guard) and any ranks it left."""
    try:
        return process.wait(timeout=PROCESS_TIMEOUT)
    finally:
        kill_group(process)


def run(argv: Sequence[str], *, log: Path, cwd: Path) -> tuple[int, str]:
    """Run to the end; (exit code, this run's output)."""
    before = log.stat().st_size if log.exists() else 0
    code = finish(start(argv, log=log, cwd=cwd))
    return code, log.read_bytes()[before:].decode("utf-8", errors="replace")


def orchestrate(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def entry(phase: str, run_dir: Path) -> list[str]:
    """The phase process itself, as one plain ``python`` rank (a world of one)."""
    return [sys.executable, "-m", "orchestrator.phases.entry", "--phase", phase, "--run-dir", str(run_dir)]


def run_recipe(run_dir: Path, sets: Sequence[str], *extra: str, log_name: str = "orchestrate.log") -> tuple[int, str]:
    """``orchestrate run recipes/tiny.yaml --run-dir RUN_DIR --set ...`` on a free master port."""
    argv = orchestrate("run", str(TINY_RECIPE), "--run-dir", str(run_dir), *extra,
                       *as_set_flags([*sets, f"launch.master_port={free_port()}"]))
    return run(argv, log=run_dir.parent / f"{run_dir.name}.{log_name}", cwd=run_dir.parent)


def wait_for_checkpoint(root: Path, process: subprocess.Popen) -> Path:
    """Poll ``root/latest`` until a checkpoint is committed; fail if the process ends first."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        latest = read_latest(root)
        if latest is not None:
            return latest
        if process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before committing a checkpoint in {root}")
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint committed in {root} within {PROCESS_TIMEOUT} s")


def rank_process(run_dir: Path, *, rank: int) -> int:
    """The pid of the phase process of ``rank`` working on ``run_dir`` (found in /proc)."""
    wanted = str(run_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"orchestrator.phases.entry" in cmdline and wanted in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no phase process of rank {rank} is working on {run_dir}")


def save_random_gpt2(tokenizer_dir, out):
    """A random GPT2LMHeadModel of the tiny preset's shape, dropout off, with the run's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(3)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return model.eval()


# --- run directories -------------------------------------------------------------------------
def new_run_dir(path: Path, *, data: Path) -> Path:
    """An empty run directory holding a copy of the prepared data (so the runner skips that step)."""
    path.mkdir(parents=True)
    shutil.copytree(data, path / "data")
    return path


def write_run_config(run_dir: Path, sets: Sequence[str]) -> None:
    """``RUN_DIR/run_config.yaml`` as ``orchestrate run`` writes it, for starting a phase entry directly."""
    from orchestrator.engine.precision import resolve_run_precision

    config = load_run_config(TINY_RECIPE, [*sets, f"run_dir={run_dir}"])
    save_run_config(resolve_run_precision(config), run_dir / "run_config.yaml")   # auto → fp32 / bf16, as the runner


def copy_run(source: Path, target: Path, *, phases: Sequence[str]) -> Path:
    """A copy of a run directory with its data, run config and the given phases' folders."""
    target.mkdir(parents=True)
    for name in ("data", *phases):
        shutil.copytree(source / name, target / name, symlinks=True)
    shutil.copy2(source / "run_config.yaml", target / "run_config.yaml")
    return target


def manifest(run_dir: Path, phase: str) -> Manifest:
    return read_manifest(run_dir / phase)


def records(run_dir: Path, phase: str, kind: Optional[str] = None) -> list[dict]:
    events = read_metrics(run_dir / phase / "metrics.jsonl")
    return [e for e in events if kind is None or e["kind"] == kind]


def last_per_step(events: list[dict], keys: Sequence[str]) -> dict[int, dict]:
    """The last event of each step (a resumed run logs again the steps after its checkpoint)."""
    return {e["step"]: {k: e.get(k) for k in keys} for e in events}


def final_weights(run_dir: Path, phase: str) -> dict[str, torch.Tensor]:
    """A phase's handed-on weights as one plain state dict, read back from every rank's shards
    (the test's independent view: no phase ever assembles this dict)."""
    from orchestrator.handoff.final import FINAL_WEIGHTS, read_tensor
    from orchestrator.handoff.sharded import ShardedReader

    reader = ShardedReader(run_dir / phase / FINAL_WEIGHTS)
    return {name: read_tensor(reader, name, sources[0].region.global_shape) for name, sources in reader.sources.items()}


def assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}: " + ", ".join(
        f"{n} max |Δ| {float((ours[n] - theirs[n]).abs().max()):.3g}" for n in different[:3])


def flip_byte(path: Path, *, offset: int = -100) -> None:
    """Edit one byte in place (same size, different content)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
