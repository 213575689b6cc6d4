import dataclasses
import json

import pytest

from orchestrator.config.loader import to_dict
from orchestrator.config.model import get_model
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.manifest import (Manifest, complete_manifest, failed_manifest, read_manifest,
                                           start_manifest, verified_complete, verify_parent, write_manifest)

MODEL = to_dict(get_model("tiny"))


def finish_phase(run_dir, phase, *, head="lm", model=MODEL, tokenizer_hash="tok" * 10, payload=b"weights"):
    """A phase that ran to completion: consolidated weights on disk and a complete manifest."""
    directory = run_dir / phase
    (directory / "checkpoints" / "final").mkdir(parents=True, exist_ok=True)
    (directory / "checkpoints" / "final" / "model.pt").write_bytes(payload)
    (directory / "plan.json").write_text("{}")
    manifest = start_manifest(run_dir, phase=phase, model=model, tokenizer_hash=tokenizer_hash, pad_id=0,
                              eos_id=1, head=head, layout={"tp": 1, "pp": 1, "dp": 1}, tokenizer_dir="data/tokenizer")
    write_manifest(directory, manifest)
    done = complete_manifest(manifest, directory, step=30, checkpoint="checkpoints/final",
                             metrics={"eval_loss": 2.5}, artifacts=["plan.json"])
    write_manifest(directory, done)
    return done


def expect(run_dir, parent="pretrain", **changes):
    kwargs = dict(parent_phase=parent, expect_head="lm", expect_model=MODEL, expect_tokenizer_hash="tok" * 10)
    return verify_parent(run_dir, **{**kwargs, **changes})


def test_manifest_round_trips_through_json(tmp_path):
    finish_phase(tmp_path, "pretrain")
    sft = finish_phase(tmp_path, "sft")
    again = read_manifest(tmp_path / "sft")
    assert again == sft and again.parent.phase == "pretrain" and again.status == "complete"
    assert set(again.files) == {"checkpoints/final/model.pt", "plan.json"}
    assert json.loads((tmp_path / "sft" / "manifest.json").read_text())["parents"][0]["manifest"] == \
        "pretrain/manifest.json"


def test_ppo_pins_both_parents_in_order(tmp_path):
    for phase, head in (("pretrain", "lm"), ("sft", "lm"), ("reward", "scalar")):
        finish_phase(tmp_path, phase, head=head)
    ppo = start_manifest(tmp_path, phase="ppo", model=MODEL, tokenizer_hash="t", pad_id=0, eos_id=1, head="lm",
                         layout={})
    assert [p.phase for p in ppo.parents] == ["sft", "reward"] and ppo.parent.phase == "sft"


def test_verify_parent_accepts_a_good_parent(tmp_path):
    finish_phase(tmp_path, "pretrain")
    assert expect(tmp_path).checkpoint == "checkpoints/final"


def test_missing_parent_names_the_command_that_produces_it(tmp_path):
    (tmp_path / "run_config.yaml").write_text("name: x\n")
    with pytest.raises(HandoffError) as err:
        expect(tmp_path, parent="sft")
    assert str(err.value) == (f"no complete SFT checkpoint in {tmp_path / 'sft'}: run "
                              f"`orchestrate run {tmp_path / 'run_config.yaml'} --only sft`")


def test_running_or_failed_parent_is_refused(tmp_path):
    done = finish_phase(tmp_path, "pretrain")
    write_manifest(tmp_path / "pretrain", failed_manifest(done, step=12, error="NaN"))
    with pytest.raises(HandoffError, match="manifest says failed at step 12"):
        expect(tmp_path)


def test_wrong_head_is_refused(tmp_path):
    finish_phase(tmp_path, "pretrain")
    finish_phase(tmp_path, "sft")
    finish_phase(tmp_path, "reward", head="scalar")
    with pytest.raises(HandoffError, match="has a scalar head, expected lm"):
        expect(tmp_path, parent="reward")


def test_different_architecture_is_refused_naming_the_fields(tmp_path):
    finish_phase(tmp_path, "pretrain")
    bigger = {**MODEL, "n_layers": MODEL["n_layers"] + 2, "dropout": 0.0}
    with pytest.raises(HandoffError, match=f"n_layers: expected {bigger['n_layers']}, found {MODEL['n_layers']}") as e:
        expect(tmp_path, expect_model=bigger)
    assert "dropout" not in str(e.value)  # not an architecture field


def test_different_tokenizer_is_refused(tmp_path):
    finish_phase(tmp_path, "pretrain")
    with pytest.raises(HandoffError, match="another tokenizer"):
        expect(tmp_path, expect_tokenizer_hash="other")


def test_edited_parent_weights_are_refused_naming_the_file(tmp_path):
    finish_phase(tmp_path, "pretrain")
    (tmp_path / "pretrain" / "checkpoints" / "final" / "model.pt").write_bytes(b"weightz")
    with pytest.raises(HandoffError, match=r"model.pt \(7 bytes\) does not match its recorded sha256"):
        expect(tmp_path)


def test_a_manifest_that_does_not_hash_its_checkpoint_is_refused(tmp_path):
    done = finish_phase(tmp_path, "pretrain")
    write_manifest(tmp_path / "pretrain", dataclasses.replace(done, files={"plan.json": done.files["plan.json"]}))
    with pytest.raises(HandoffError, match="records no hash"):
        expect(tmp_path)


def test_a_malformed_manifest_names_its_path(tmp_path):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "manifest.json").write_text('{"phase": "pretrain", "status": "done"}')
    with pytest.raises(HandoffError, match="manifest.json is not a valid manifest"):
        expect(tmp_path)


def test_verified_complete_detects_a_parent_retrained_after_the_child(tmp_path):
    finish_phase(tmp_path, "pretrain")
    finish_phase(tmp_path, "sft")
    assert verified_complete(tmp_path, "sft").status == "complete"
    assert verified_complete(tmp_path, "reward") is None
    finish_phase(tmp_path, "pretrain", payload=b"retrained")
    with pytest.raises(HandoffError, match="trained from a pretrain that has changed"):
        verified_complete(tmp_path, "sft")


def test_write_manifest_is_atomic_and_leaves_no_temporary_files(tmp_path):
    manifest = Manifest(phase="pretrain", model=MODEL, tokenizer_hash="t", pad_id=0, eos_id=1, head="lm", layout={})
    write_manifest(tmp_path, manifest)
    write_manifest(tmp_path, dataclasses.replace(manifest, step=5))
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert read_manifest(tmp_path).step == 5


def test_a_parent_from_an_earlier_release_with_consolidated_weights_is_refused_with_the_fix(tmp_path):
    directory = tmp_path / "pretrain"
    (directory / "final").mkdir(parents=True)
    (directory / "final" / "model.pt").write_bytes(b"weights")
    manifest = start_manifest(tmp_path, phase="pretrain", model=MODEL, tokenizer_hash="tok" * 10, pad_id=0, eos_id=1,
                              head="lm", layout={"tp": 1, "pp": 1, "dp": 1}, tokenizer_dir="data/tokenizer")
    write_manifest(directory, complete_manifest(manifest, directory, step=30, checkpoint="final/model.pt",
                                                metrics={}, artifacts=[]))
    with pytest.raises(HandoffError, match=rf"one consolidated final/model.pt, written by an earlier release.*"
                                           rf"final/shards\): delete {directory} and run `orchestrate run"):
        expect(tmp_path)
