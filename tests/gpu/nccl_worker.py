"""A world of one on NCCL (run by test_cuda.py in its own process, so no other test's process
group is in the way): an all-reduce of a GPU tensor, then consolidation's host-side stream, which
must build its gloo group beside NCCL and move only CPU tensors."""
import sys

import torch
import torch.distributed as dist

from orchestrator.engine.consolidate import _host_group, stream_to_rank0


def main(port: int) -> None:
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    assert dist.get_backend() == "nccl"
    x = torch.full((4,), 2.0, device="cuda")
    dist.all_reduce(x)
    torch.cuda.synchronize()
    assert x.tolist() == [2.0] * 4
    group = _host_group()
    assert group is not None and dist.get_backend(group) == "gloo"
    state = stream_to_rank0({"w": torch.arange(6.0).view(2, 3)}, rank=0, world=1, group=group)
    assert state["w"].device.type == "cpu" and state["w"].sum().item() == 15.0
    dist.destroy_process_group(group)
    dist.destroy_process_group()
    print("nccl ok")


if __name__ == "__main__":
    main(int(sys.argv[1]))
