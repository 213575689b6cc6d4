"""The sharded final weights a phase hands on (``handoff.final``): committed from the hashes each
rank computed, listed file by file in the manifest, verified as strictly as a single file was."""
import pytest
import torch

from orchestrator.config.loader import to_dict
from orchestrator.config.model import get_model
from orchestrator.handoff import final
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.manifest import complete_manifest, start_manifest, verify_parent, write_manifest
from orchestrator.handoff.sharded import MASTER, Region, ShardedReader, write_rank_shards
from orchestrator.model.params import Shard, initial_value, plain_parameter_shapes

CONFIG = get_model("tiny")


def plain_weights(seed=0):
    return {name: initial_value(name, shape, config=CONFIG, seed=seed)
            for name, shape in plain_parameter_shapes(CONFIG, head="lm").items()}


def two_ranks(directory, weights):
    """Rank 0 writes the first half of every tensor's flat range, rank 1 the rest (as ZeRO-3 does)."""
    hashes = []
    for rank in (0, 1):
        fragments = []
        for name, tensor in weights.items():
            flat, half = tensor.reshape(-1), (tensor.numel() + 1) // 2
            start, numel = (0, half) if rank == 0 else (half, tensor.numel() - half)
            region = Region(Shard(name), tuple(tensor.shape), tuple(tensor.shape), start, numel)
            fragments.append((region, {MASTER: flat[start:start + numel]}))
        hashes.append(write_rank_shards(directory, rank=rank, fragments=fragments, metadata={"adam_step": 0}))
    return hashes


def handed_on(run_dir, weights):
    """A complete pretrain phase whose final weights two ranks wrote, committed as the loop does."""
    phase_dir = run_dir / "pretrain"
    final.clear_staging(phase_dir)
    files = final.commit_final(phase_dir, two_ranks(final.staging_shards(phase_dir), weights))
    manifest = start_manifest(run_dir, phase="pretrain", model=to_dict(CONFIG), tokenizer_hash="t" * 64, pad_id=1,
                              eos_id=0, head="lm", layout={})
    write_manifest(phase_dir, complete_manifest(manifest, phase_dir, step=1, checkpoint=final.FINAL_WEIGHTS,
                                                metrics={}, checkpoint_files=files))
    return phase_dir


def verify(run_dir):
    return verify_parent(run_dir, parent_phase="pretrain", expect_head="lm", expect_model=to_dict(CONFIG),
                         expect_tokenizer_hash=None)


def test_the_manifest_lists_every_rank_file_and_a_whole_tensor_reads_back_across_ranks(tmp_path):
    weights = plain_weights()
    phase_dir = handed_on(tmp_path, weights)
    manifest = verify(tmp_path)
    assert sorted(manifest.files) == [f"final/shards/rank0000{r}.{ext}" for r in (0, 1) for ext in ("json", "safetensors")]
    assert not (phase_dir / final.STAGING).exists()
    reader = final.parent_reader(phase_dir, checkpoint=manifest.checkpoint, files=manifest.files)
    final.check_weights(reader, plain_parameter_shapes(CONFIG, head="lm"))
    for name, tensor in weights.items():
        assert torch.equal(final.read_tensor(reader, name, tuple(tensor.shape)), tensor)


@pytest.mark.parametrize("damage", ["edited", "missing"])
def test_an_edited_or_missing_shard_is_refused_naming_the_file(tmp_path, damage):
    phase_dir = handed_on(tmp_path, plain_weights())
    shard = phase_dir / "final" / "shards" / "rank00001.safetensors"
    if damage == "edited":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
        match = r"rank00001.safetensors \(\d+ bytes\) does not match its recorded sha256"
    else:
        shard.unlink()
        match = r"file .*rank00001.safetensors is missing"
    with pytest.raises(HandoffError, match=match):
        verify(tmp_path)


def test_a_shard_file_the_manifest_does_not_list_is_refused(tmp_path):
    phase_dir = handed_on(tmp_path, plain_weights())
    manifest = verify(tmp_path)
    stray = phase_dir / "final" / "shards"
    write_rank_shards(stray, rank=7, fragments=[], metadata={"adam_step": 0})
    with pytest.raises(HandoffError, match=r"does not list \(rank00007.json, rank00007.safetensors\)"):
        final.parent_reader(phase_dir, checkpoint=manifest.checkpoint, files=manifest.files)


def test_a_commit_refuses_files_no_rank_reported(tmp_path):
    phase_dir = tmp_path / "pretrain"
    hashes = two_ranks(final.staging_shards(phase_dir), plain_weights())
    with pytest.raises(HandoffError, match="holds files no rank reported"):
        final.commit_final(phase_dir, hashes[:1])


def test_shards_of_another_head_or_model_are_refused_and_a_new_head_is_allowed(tmp_path):
    write_rank_shards(tmp_path, rank=0, metadata={"adam_step": 0},
                      fragments=[(final.whole(n, tuple(t.shape)), {MASTER: t.reshape(-1)}) for n, t in plain_weights().items()])
    reader = ShardedReader(tmp_path)
    scalar = plain_parameter_shapes(CONFIG, head="scalar")
    with pytest.raises(HandoffError, match=r"missing \['value_head.bias', 'value_head.weight'\]"):
        final.check_weights(reader, scalar)
    final.check_weights(reader, scalar, fresh=frozenset({"value_head.weight", "value_head.bias"}))
    wider = {**plain_parameter_shapes(CONFIG, head="lm"), "wpe.weight": (1, CONFIG.d_model)}
    with pytest.raises(HandoffError, match="wpe.weight: the sharded weights have shape"):
        final.check_weights(reader, wider)


def test_each_rank_hashes_its_share_of_the_parent_and_the_shares_cover_every_file(tmp_path):
    """Rank r of w checks every w-th file: the one share holding an edited file refuses it, the
    others pass, so together (``outputs.agree``) the ranks are as strict as one full pass."""
    phase_dir = handed_on(tmp_path, plain_weights())
    files = sorted(verify(tmp_path).files)
    edited = phase_dir / files[2]
    edited.write_bytes(edited.read_bytes() + b"x")
    outcomes = []
    for rank in range(3):
        try:
            verify_parent(tmp_path, parent_phase="pretrain", expect_head="lm", expect_model=to_dict(CONFIG),
                          expect_tokenizer_hash=None, share=(rank, 3))
            outcomes.append(None)
        except HandoffError as error:
            outcomes.append(str(error))
    assert outcomes[0] is None and outcomes[1] is None and files[2].rsplit("/", 1)[1] in outcomes[2]
