import dataclasses
import json
import os

import pytest

from orchestrator.handoff.checkpoint import (CONSOLIDATED_FILE, LOOP_STATE_FILE, SUMS_FILE, commit, hash_share,
                                             committed_checkpoints, latest_checkpoint, prune_checkpoints,
                                             read_sums, relayout_refusal, staging_dir, step_tag, verify_checkpoint,
                                             write_rank_sums)
from orchestrator.handoff.hashing import sha256_file
from orchestrator.plan.layout import Layout
from orchestrator.handoff.errors import HandoffError


def save(root, step, payload=b"weights", ranks=2):
    """What a multi-rank save does: every rank writes a shard into the shared staging directory."""
    staging = staging_dir(root, step_tag(step))
    for rank in range(ranks):
        (staging / "state").mkdir(exist_ok=True)
        (staging / "state" / f"rank{rank}.pt").write_bytes(payload + bytes([rank]) * 100)
    return staging


def test_commit_renames_staging_writes_sums_and_points_latest(tmp_path):
    final = commit(tmp_path, step_tag(10), save(tmp_path, 10))
    assert final == tmp_path / "step_00000010" and latest_checkpoint(tmp_path) == final
    assert not (tmp_path / ".step_00000010.staging").exists()
    sums = (final / SUMS_FILE).read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == ["state/rank0.pt", "state/rank1.pt"]
    assert set(verify_checkpoint(final)) == {"state/rank0.pt", "state/rank1.pt"}


def test_a_save_that_dies_before_commit_leaves_the_previous_checkpoint_latest(tmp_path):
    good = commit(tmp_path, step_tag(10), save(tmp_path, 10))
    save(tmp_path, 20, payload=b"half")  # the ranks wrote, then the job died before rank 0 committed
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / ".step_00000020.staging").exists()  # stale staging cleaned
    verify_checkpoint(good)


def test_staging_left_over_from_a_crash_does_not_leak_into_the_next_save(tmp_path):
    stale = save(tmp_path, 20, ranks=3)  # a crashed save by a 3-rank job
    assert latest_checkpoint(tmp_path) is None
    final = commit(tmp_path, step_tag(20), save(tmp_path, 20, ranks=2))
    assert sorted(p.name for p in (final / "state").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert not stale.exists()


def test_recommitting_a_tag_replaces_it_and_a_crash_mid_replace_restores_the_old_one(tmp_path):
    commit(tmp_path, step_tag(10), save(tmp_path, 10, payload=b"old"))
    final = commit(tmp_path, step_tag(10), save(tmp_path, 10, payload=b"new"))
    assert (final / "state" / "rank0.pt").read_bytes().startswith(b"new")
    # Simulate death between "move the old one aside" and "rename staging into place".
    os.replace(final, tmp_path / ".step_00000010.replaced")
    restored = latest_checkpoint(tmp_path)
    assert restored == final and (final / "state" / "rank0.pt").read_bytes().startswith(b"new")


@pytest.mark.parametrize("damage,message", [
    (lambda f: f.write_bytes(f.read_bytes()[:10]), r"does not match SHA256SUMS \(truncated or edited\)"),
    (lambda f: f.write_bytes(b"X" + f.read_bytes()[1:]), r"does not match SHA256SUMS \(truncated or edited\)"),
    (lambda f: f.unlink(), "is missing"),
])
def test_verify_refuses_a_damaged_file_and_names_it(tmp_path, damage, message):
    final = commit(tmp_path, step_tag(5), save(tmp_path, 5))
    damage(final / "state" / "rank1.pt")
    with pytest.raises(HandoffError, match=message) as err:
        verify_checkpoint(final)
    assert "rank1.pt" in str(err.value)


def test_verify_refuses_an_uncommitted_directory(tmp_path):
    (tmp_path / "step_00000001").mkdir()
    (tmp_path / "step_00000001" / "x.pt").write_bytes(b"1")
    with pytest.raises(HandoffError, match="never committed"):
        verify_checkpoint(tmp_path / "step_00000001")
    assert latest_checkpoint(tmp_path) is None


def test_latest_falls_back_to_the_newest_commit_when_the_pointer_is_lost(tmp_path):
    commit(tmp_path, step_tag(1), save(tmp_path, 1))
    second = commit(tmp_path, step_tag(2), save(tmp_path, 2))
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == second


def test_prune_keeps_the_newest_n_and_never_the_latest(tmp_path):
    for step in (1, 2, 3, 4):
        commit(tmp_path, step_tag(step), save(tmp_path, step))
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002"]
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    (tmp_path / "latest").write_text("step_00000003\n")  # resumed from an older one
    commit(tmp_path, "final", save_named(tmp_path, "final"))
    (tmp_path / "latest").write_text("step_00000003\n")
    prune_checkpoints(tmp_path, keep=1)
    assert {p.name for p in committed_checkpoints(tmp_path)} == {"step_00000003", "final"}


def save_named(root, tag):
    staging = staging_dir(root, tag)
    (staging / "model.pt").write_bytes(b"m")
    return staging


@pytest.mark.parametrize("tag", ["", ".hidden", "a/b", "latest"])
def test_unusable_tags_are_refused(tmp_path, tag):
    with pytest.raises(HandoffError, match="not usable"):
        staging_dir(tmp_path, tag)


def test_committing_an_empty_staging_directory_is_refused(tmp_path):
    with pytest.raises(HandoffError, match="empty"):
        commit(tmp_path, "step_00000001", staging_dir(tmp_path, "step_00000001"))


@pytest.mark.parametrize("reshardable", ["sharded", "consolidated", None],
                         ids=["with sharded state", "with an older checkpoint's consolidated weights", "without"])
def test_another_layout_may_resume_only_a_checkpoint_holding_sharded_state(tmp_path, reshardable):
    staging = save(tmp_path, 6)
    saved, other = dataclasses.asdict(Layout(dp=2, zero_stage=2)), dataclasses.asdict(Layout(dp=1))
    (staging / LOOP_STATE_FILE).write_text(json.dumps({"layouts": {"state": saved}}))
    if reshardable == "sharded":
        (staging / "state" / "shards").mkdir()
        (staging / "state" / "shards" / "rank00000.json").write_text("{}")
    if reshardable == "consolidated":
        (staging / "state" / CONSOLIDATED_FILE).write_bytes(b"full weights")
    checkpoint = commit(tmp_path, step_tag(6), staging)
    assert relayout_refusal(checkpoint, saved) is None              # its own layout: DeepSpeed's files
    refusal = relayout_refusal(checkpoint, other)
    if reshardable:
        assert refusal is None
    else:
        assert "saved under layout tp=1 pp=1 dp=2 ep=1 zero_stage=2" in refusal
        assert "(loop.reshardable_checkpoints: false), and this run's layout is tp=1 pp=1 dp=1" in refusal
        assert f"resume with the checkpoint's layout, or delete {tmp_path}" in refusal


def test_the_commit_takes_the_digests_each_rank_computed_and_verification_still_checks_them(tmp_path):
    staging = save(tmp_path, 7)
    shard = staging / "state" / "rank1.pt"
    write_rank_sums(staging / "state", "rank00001", {"rank1.pt": sha256_file(shard)})
    hashes = read_sums(commit(tmp_path, step_tag(7), staging))
    assert hashes["state/rank1.pt"] == sha256_file(tmp_path / step_tag(7) / "state" / "rank1.pt")
    assert "state/rank00001.sha256" in hashes and "state/rank0.pt" in hashes   # the rest hashed at commit
    verify_checkpoint(tmp_path / step_tag(7))

    staging = save(tmp_path, 8)       # a digest the rank got wrong (its write was not what it hashed)
    write_rank_sums(staging / "state", "rank00001", {"rank1.pt": "0" * 64})
    assert read_sums(commit(tmp_path, step_tag(8), staging))["state/rank1.pt"] == "0" * 64   # not re-read
    with pytest.raises(HandoffError, match="rank1.pt .* does not match SHA256SUMS"):
        verify_checkpoint(tmp_path / step_tag(8))


def test_ranks_hash_disjoint_shares_that_cover_every_file(tmp_path):
    staging = save(tmp_path, 9, ranks=5)
    shares = [hash_share(staging, "state", rank=rank, world=2) for rank in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted({**shares[0], **shares[1]}) == [f"state/rank{r}.pt" for r in range(5)]
    for rank, share in enumerate(shares):
        write_rank_sums(staging, f"rank{rank:05d}.deepspeed", share)
    hashes = verify_checkpoint(commit(tmp_path, step_tag(9), staging))
    assert {name: hashes[name] for name in shares[0]} == shares[0]
