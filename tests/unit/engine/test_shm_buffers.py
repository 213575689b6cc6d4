"""DeepSpeed's CPU all-reduce buffers (/dev/shm) are removed by the rank, the runner and the suite."""
import os
from pathlib import Path

from orchestrator.engine.launch.shm import (job_buffers, launcher_port, rank_buffer, remove_job_buffers,
                                            remove_orphaned_buffers, remove_rank_buffer)


def _make(root: Path, addr: str, port: int, rank: int) -> Path:
    path = rank_buffer(addr=addr, port=port, rank=rank, root=root)
    path.write_bytes(b"x")
    return path


def test_the_runner_removes_every_rank_buffer_of_its_port_only(tmp_path):
    mine = [_make(tmp_path, "127.0.0.1", 29533, rank) for rank in range(3)]
    other = _make(tmp_path, "127.0.0.1", 2953, 0)          # a port that is a prefix of ours
    longer = _make(tmp_path, "10.0.0.1", 295330, 1)       # and one that ours is a prefix of
    assert job_buffers(29533, root=tmp_path) == sorted(mine)
    assert remove_job_buffers(29533, root=tmp_path) == 3
    assert not any(path.exists() for path in mine) and other.exists() and longer.exists()


def test_a_rank_removes_its_own_buffer_named_from_its_environment(tmp_path):
    own = _make(tmp_path, "127.0.0.1", 40001, 1)
    peer = _make(tmp_path, "127.0.0.1", 40001, 0)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "40001", "RANK": "1"}
    assert remove_rank_buffer(env, root=tmp_path) == 1
    assert not own.exists() and peer.exists()
    assert remove_rank_buffer({}, root=tmp_path) == 0      # not launched: nothing named, nothing removed


def test_orphans_are_the_buffers_no_live_process_maps(tmp_path):
    mapped, orphan = _make(tmp_path, "127.0.0.1", 1, 0), _make(tmp_path, "127.0.0.1", 1, 1)
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "maps").write_text(f"7f00-7f01 rw-s 00000000 00:1a 12 /dev/shm/{mapped.name}\n")
    assert remove_orphaned_buffers(root=tmp_path, proc=proc) == 1
    assert mapped.exists() and not orphan.exists()


def test_the_port_is_read_from_every_launcher_spelling():
    assert launcher_port(["deepspeed", "--master_port", "29501", "x.py"]) == 29501
    assert launcher_port(["torchrun", "--master-port=29502", "x.py"]) == 29502
    assert launcher_port(["python", "x.py"]) is None
