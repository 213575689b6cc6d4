"""The sharded checkpoint's regions: a fragment written under one layout (TP piece + ZeRO flat
range) is read back exactly under any other, without processes.

Each case cuts a random "plain" tensor into the fragments a source layout holds — ``Shard.take``
for the TP piece, a flat ZeRO range of it — writes them with ``write_rank_shards``, and reads the
target layout's fragments with ``ShardedReader``: they must equal ``Shard.take`` of the plain
tensor cut by the target layout, bit for bit.
"""
import hashlib
import json
import math

import pytest
import torch
from safetensors import safe_open

from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.sharded import (KINDS, Region, ShardedReader, global_to_local, local_to_global,
                                          write_rank_shards)
from orchestrator.model.params import Shard
from orchestrator.plan.partition import padded_vocab

# name → (plain shape, split dim, stride, real rows for a padded vocabulary)
TENSORS = {
    "h.0.attn.c_attn.weight": ((24, 8), 0, 3, None),     # fused QKV: column-parallel with stride 3
    "h.0.attn.c_proj.weight": ((8, 8), 1, 1, None),      # row-parallel
    "h.0.mlp.c_fc.bias": ((32,), 0, 1, None),
    "ln_f.weight": ((8,), None, 1, None),                # replicated
    "wte.weight": ((19, 8), 0, 1, 19),                   # vocabulary 19 padded for tp
}


def tp_region(name: str, *, tp: int, tp_rank: int, dp: int = 1, dp_rank: int = 0) -> Region:
    """The region TP rank ``tp_rank`` / ZeRO partition ``dp_rank`` of ``dp`` holds (ZeRO-3's
    ceil(numel / dp) split of the TP piece)."""
    shape, dim, stride, rows = TENSORS[name]
    split = tp > 1 and dim is not None
    shard = Shard(name, dim=dim, parts=tp, index=tp_rank, stride=stride, rows=rows) if split else Shard(name)
    local = list(shape)
    if split:
        if rows is not None:
            local[0] = padded_vocab(rows, tp)
        local[dim] //= tp
    numel = math.prod(local)
    per_rank = math.ceil(numel / dp)
    start = min(numel, dp_rank * per_rank)
    return Region(shard, tuple(shape), tuple(local), start, min(per_rank, numel - start))


def plain_tensors(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {name: {kind: torch.randn(shape, generator=generator) for kind in KINDS}
            for name, (shape, *_) in TENSORS.items()}


def fragment(plain: torch.Tensor, region: Region) -> torch.Tensor:
    return region.shard.take(plain).reshape(-1)[region.start:region.start + region.numel]


def write_layout(directory, plain, *, tp: int, dp: int) -> None:
    for tp_rank in range(tp):
        for dp_rank in range(dp):
            regions = [tp_region(name, tp=tp, tp_rank=tp_rank, dp=dp, dp_rank=dp_rank) for name in TENSORS]
            write_rank_shards(directory, rank=tp_rank * dp + dp_rank, metadata={"adam_step": 3},
                              fragments=[(r, {k: fragment(plain[r.name][k], r) for k in KINDS}) for r in regions
                                         if r.numel])


@pytest.mark.parametrize("source,target", [((1, 2), (2, 1)), ((2, 2), (1, 4)), ((2, 1), (2, 3)),
                                           ((1, 3), (2, 2)), ((2, 2), (1, 1))])
def test_any_tp_and_zero_split_reads_back_exactly_under_any_other(tmp_path, source, target):
    plain = plain_tensors()
    write_layout(tmp_path, plain, tp=source[0], dp=source[1])
    reader = ShardedReader(tmp_path)
    tp, dp = target
    for name in TENSORS:
        for tp_rank in range(tp):
            for dp_rank in range(dp):
                region = tp_region(name, tp=tp, tp_rank=tp_rank, dp=dp, dp_rank=dp_rank)
                for kind in KINDS:
                    assert torch.equal(reader.read(region, kind), fragment(plain[name][kind], region)), \
                        (name, kind, tp_rank, dp_rank)


def test_local_and_global_indices_are_inverse_on_a_strided_padded_piece():
    region = tp_region("wte.weight", tp=2, tp_rank=1)                   # rows 10..19 of 20, row 19 is padding
    local = torch.arange(math.prod(region.local_shape))
    glob = local_to_global(region, local)
    assert int((glob < 0).sum()) == 8                                    # the one padded row of 8 columns
    assert torch.equal(global_to_local(region, glob[glob >= 0]), local[glob >= 0])
    qkv = tp_region("h.0.attn.c_attn.weight", tp=2, tp_rank=1)           # chunks of 4 rows: q1 k1 v1
    rows = local_to_global(qkv, torch.arange(0, 96, 8)) // 8
    assert rows.tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]
    assert global_to_local(qkv, torch.tensor([0, 4 * 8])).tolist() == [-1, 0]   # row 0 is rank 0's


def test_rank_files_are_safetensors_with_the_hashes_they_report(tmp_path):
    plain = plain_tensors()
    region = tp_region("h.0.attn.c_proj.weight", tp=2, tp_rank=0)
    hashes = write_rank_shards(tmp_path, rank=0, metadata={"adam_step": 5},
                               fragments=[(region, {k: fragment(plain[region.name][k], region) for k in KINDS})])
    assert hashes == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in hashes}
    with safe_open(str(tmp_path / "rank00000.safetensors"), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("h.0.attn.c_proj.weight/exp_avg"),
                           fragment(plain[region.name]["exp_avg"], region))
    index = json.loads((tmp_path / "rank00000.json").read_text())
    assert index["adam_step"] == 5 and index["entries"][0]["tp"]["dim"] == 1


def test_a_missing_rank_file_or_another_model_is_refused(tmp_path):
    plain = plain_tensors()
    write_layout(tmp_path, plain, tp=1, dp=2)
    (tmp_path / "rank00001.json").unlink()
    reader = ShardedReader(tmp_path)
    with pytest.raises(HandoffError, match="held by no rank's file"):
        reader.read(tp_region("h.0.mlp.c_fc.bias", tp=1, tp_rank=0), "master")
    other = Region(Shard("h.0.mlp.c_fc.bias"), (64,), (64,), 0, 64)
    with pytest.raises(HandoffError, match=r"shape \(32,\), the model \(64,\)"):
        reader.read(other, "master")
    with pytest.raises(HandoffError, match="no tensor 'h.9.mlp.c_fc.bias'"):
        reader.read(Region(Shard("h.9.mlp.c_fc.bias"), (32,), (32,), 0, 32), "master")


def test_a_reader_opens_only_the_rank_files_that_hold_part_of_its_region(tmp_path):
    plain = plain_tensors()
    write_layout(tmp_path, plain, tp=1, dp=2)
    (tmp_path / "rank00001.safetensors").unlink()          # rank 1 holds the second half of every tensor
    reader = ShardedReader(tmp_path)
    first_half = tp_region("h.0.attn.c_attn.weight", tp=1, tp_rank=0, dp=2, dp_rank=0)
    assert torch.equal(reader.read(first_half, "exp_avg"), fragment(plain[first_half.name]["exp_avg"], first_half))
    assert [path.name for path in reader._open] == ["rank00000.safetensors"]
    with pytest.raises(Exception, match="rank00001.safetensors|No such file"):
        reader.read(tp_region("h.0.attn.c_attn.weight", tp=2, tp_rank=0), "exp_avg")   # needs both halves
