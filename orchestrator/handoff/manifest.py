"""``PHASE/manifest.json``: what a phase produced, and the only way the next phase reads it.

A phase writes its manifest when it starts (``running``), and again when it ends (``complete``
with the sha256 of every file it hands on, or ``failed``). A child phase never trusts a directory
because it exists: ``verify_parent`` checks the parent's status, every file hash, the model
architecture, the tokenizer and the head, and refuses a mismatch with the command that produces
the right parent.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from orchestrator import __version__
from orchestrator.config.loader import ConfigError, from_dict, to_dict
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import atomic_write_text, check_hashes, hash_tree, sha256_file

Status = Literal["running", "complete", "failed"]
Head = Literal["lm", "scalar"]
MANIFEST_FILE = "manifest.json"

# Which phases each phase loads, and the head each parent must carry (InstructGPT, Ouyang et al.
# 2022 §3.5: SFT from the pretrained LM; RM from SFT; PPO's actor and reference from SFT, its
# critic and reward model from the RM).
PARENTS: dict[str, tuple[tuple[str, Head], ...]] = {
    "pretrain": (),
    "sft": (("pretrain", "lm"),),
    "reward": (("sft", "lm"),),
    "ppo": (("sft", "lm"), ("reward", "scalar")),
}
LABELS = {"pretrain": "pretrain", "sft": "SFT", "reward": "reward model", "ppo": "PPO"}

# GPTConfig fields that decide the weights' shapes or the function they compute; a parent that
# differs in any of them cannot be loaded (name, dropout, init and the paper's numbers may differ).
ARCHITECTURE_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "ctx", "vocab", "ffn_mult", "layer_norm_eps",
                     "attention", "local_window", "n_experts", "top_k", "moe_every")


@dataclass(frozen=True)
class ParentRef:
    """A parent phase's manifest as it was when this phase started."""

    phase: str
    manifest: str
    """Path of the parent's manifest.json relative to the run directory."""
    sha256: str


@dataclass(frozen=True)
class Source:
    """Where an imported phase's weights came from (``orchestrate import``): nothing was trained."""

    kind: Literal["hf"]
    path: str
    """The Hugging Face folder, as given."""
    architecture: str
    """``GPT2LMHeadModel`` or ``GPTNeoForCausalLM``."""
    files: dict[str, str]
    """sha256 of every file of the folder, by path relative to it."""
    max_abs_logit_diff: float
    """Ours vs the folder's model on fixed ids, relative to max(1, |logit|) (fp32)."""


@dataclass(frozen=True)
class Manifest:
    """Everything a later phase (or a person) needs to trust and load this phase's output."""

    phase: str
    model: dict[str, Any]
    """The GPTConfig as a dict."""
    tokenizer_hash: str
    pad_id: int
    eos_id: int
    head: Head
    layout: dict[str, Any]
    """The resolved Layout this phase was trained with."""
    status: Status = "running"
    step: int = 0
    parents: tuple[ParentRef, ...] = ()
    """Empty for pretrain; sft and reward have one; ppo has sft then reward."""
    tokenizer_dir: Optional[str] = None
    """The tokenizer directory, relative to the run directory (what export ships with the model)."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of every file this phase hands on, by path relative to the phase directory."""
    checkpoint: Optional[str] = None
    """The weights the next phase loads, relative to the phase directory: ``final/shards``
    (every rank's fp32 master shards, ``handoff.final``)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    finished: Optional[str] = None
    error: Optional[str] = None
    source: Optional[Source] = None
    """None: trained here; else the imported model this phase holds (``orchestrate import``)."""
    version: str = __version__

    @property
    def parent(self) -> Optional[ParentRef]:
        """The first parent (the one whose weights this phase starts from), None for pretrain."""
        return self.parents[0] if self.parents else None

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        try:
            return from_dict(cls, json.loads(text), where)
        except (json.JSONDecodeError, ConfigError) as err:
            raise HandoffError(f"{where} is not a valid manifest: {err}") from None


def now() -> str:
    """An ISO-8601 UTC timestamp, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def phase_dir(run_dir: Path | str, phase: str) -> Path:
    return Path(run_dir) / phase


def manifest_path(run_dir: Path | str, phase: str) -> Path:
    return phase_dir(run_dir, phase) / MANIFEST_FILE


def write_manifest(phase_directory: Path | str, manifest: Manifest) -> Path:
    """Write ``phase_directory/manifest.json`` atomically (tmp, fsync, rename)."""
    path = Path(phase_directory) / MANIFEST_FILE
    atomic_write_text(path, manifest.to_json())
    return path


def read_manifest(path: Path | str) -> Manifest:
    """Read a manifest file, or the ``manifest.json`` of a phase directory."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise HandoffError(f"no manifest at {path}")
    return Manifest.from_json(path.read_text(), str(path))


def parent_ref(run_dir: Path | str, phase: str) -> ParentRef:
    """Pin a parent phase's manifest by its hash, to record in the child's manifest."""
    path = manifest_path(run_dir, phase)
    if not path.is_file():
        raise HandoffError(f"no {LABELS.get(phase, phase)} manifest at {path}: run `{rerun_hint(run_dir, phase)}`")
    return ParentRef(phase=phase, manifest=f"{phase}/{MANIFEST_FILE}", sha256=sha256_file(path))


def start_manifest(run_dir: Path | str, *, phase: str, model: dict, tokenizer_hash: str, pad_id: int,
                   eos_id: int, head: Head, layout: dict, tokenizer_dir: Optional[str] = None) -> Manifest:
    """A ``running`` manifest for ``phase`` with its parents pinned (verify them first)."""
    if phase not in PARENTS:
        raise HandoffError(f"unknown phase {phase!r}: choose from {', '.join(PARENTS)}")
    parents = tuple(parent_ref(run_dir, name) for name, _ in PARENTS[phase])
    return Manifest(phase=phase, model=dict(model), tokenizer_hash=tokenizer_hash, pad_id=pad_id, eos_id=eos_id,
                    head=head, layout=dict(layout), parents=parents, tokenizer_dir=tokenizer_dir, started=now())


def complete_manifest(manifest: Manifest, phase_directory: Path | str, *, step: int, checkpoint: str,
                      metrics: dict, artifacts: Sequence[str] = (),
                      checkpoint_files: Optional[dict[str, str]] = None) -> Manifest:
    """The ``complete`` manifest: the hashes of ``checkpoint`` (file or directory) and ``artifacts``.
    ``checkpoint_files``: {path: sha256} of the checkpoint's files as the ranks that wrote them
    computed them (the sharded final weights); None hashes ``checkpoint`` here."""
    if checkpoint_files is None:
        files = hash_tree(Path(phase_directory), [checkpoint, *artifacts])
    else:
        files = {**checkpoint_files, **hash_tree(Path(phase_directory), artifacts)}
    files = dict(sorted(files.items()))
    return dataclasses.replace(manifest, status="complete", step=step, checkpoint=checkpoint, files=files,
                               metrics=dict(metrics), finished=now(), error=None)


def failed_manifest(manifest: Manifest, *, step: int, error: str) -> Manifest:
    return dataclasses.replace(manifest, status="failed", step=step, finished=now(), error=error)


def rerun_hint(run_dir: Path | str, phase: str) -> str:
    """The command that (re)produces ``phase`` of this run."""
    config = Path(run_dir) / "run_config.yaml"
    if config.is_file():
        return f"orchestrate run {config} --only {phase}"
    return f"orchestrate run RECIPE --run-dir {run_dir} --only {phase}"


def architecture_diff(expected: dict, found: dict) -> list[str]:
    """``["n_layers: expected 4, found 2", ...]`` for the architecture fields that differ."""
    return [f"{key}: expected {expected.get(key)!r}, found {found.get(key)!r}" for key in ARCHITECTURE_KEYS
            if key in expected and expected.get(key) != found.get(key)]


LEGACY_FINAL_WEIGHTS = "final/model.pt"
"""What phases handed on before the sharded handoff: the whole model gathered on rank 0."""


def verify_parent(run_dir: Path | str, *, parent_phase: str, expect_head: Head, expect_model: Optional[dict],
                  expect_tokenizer_hash: Optional[str], share: tuple[int, int] = (0, 1)) -> Manifest:
    """The parent's manifest, once its status, files, architecture, tokenizer and head all check out.
    ``share=(rank, world)``: hash only this rank's share of the files (``hashing.check_hashes``)."""
    directory, label = phase_dir(run_dir, parent_phase), LABELS.get(parent_phase, parent_phase)
    hint = f"run `{rerun_hint(run_dir, parent_phase)}`"
    if not manifest_path(run_dir, parent_phase).is_file():
        raise HandoffError(f"no complete {label} checkpoint in {directory}: {hint}")
    manifest = read_manifest(manifest_path(run_dir, parent_phase))
    if manifest.status != "complete" or not manifest.checkpoint:
        raise HandoffError(f"no complete {label} checkpoint in {directory} (its manifest says {manifest.status} "
                           f"at step {manifest.step}): {hint}")
    if manifest.head != expect_head:
        raise HandoffError(f"the {label} checkpoint in {directory} has a {manifest.head} head, expected "
                           f"{expect_head}: {hint}")
    if manifest.checkpoint == LEGACY_FINAL_WEIGHTS:
        raise HandoffError(f"the {label} checkpoint in {directory} is one consolidated {LEGACY_FINAL_WEIGHTS}, written "
                           f"by an earlier release; phases now hand their weights on as every rank's shards "
                           f"(final/shards): delete {directory} and {hint}")
    diff = architecture_diff(expect_model or {}, manifest.model)
    if diff:
        raise HandoffError(f"the {label} checkpoint in {directory} has a different model ({'; '.join(diff)}): "
                           f"use the parent's model, or retrain it: {hint}")
    if expect_tokenizer_hash and expect_tokenizer_hash != manifest.tokenizer_hash:
        raise HandoffError(f"the {label} checkpoint in {directory} was trained with another tokenizer "
                           f"(hash {manifest.tokenizer_hash[:12]}…, this run's is {expect_tokenizer_hash[:12]}…): "
                           f"{hint}")
    _check_checkpoint_listed(manifest, directory, hint)
    check_hashes(directory, manifest.files, fix=f"the {label} output is corrupt; {hint}", share=share)
    return manifest


def _check_checkpoint_listed(manifest: Manifest, directory: Path, hint: str) -> None:
    checkpoint = manifest.checkpoint or ""
    if not any(name == checkpoint or name.startswith(checkpoint.rstrip("/") + "/") for name in manifest.files):
        raise HandoffError(f"the manifest in {directory} names checkpoint {checkpoint!r} but records no hash "
                           f"for it: {hint}")


def verified_complete(run_dir: Path | str, phase: str) -> Optional[Manifest]:
    """The phase's manifest if it is complete and still valid; None if it has not completed.

    Raises when a complete phase no longer verifies (a file changed, or a parent was retrained
    after it): rerunning would silently build on a different history.
    """
    path = manifest_path(run_dir, phase)
    if not path.is_file():
        return None
    manifest = read_manifest(path)
    if manifest.status != "complete":
        return None
    directory, label = phase_dir(run_dir, phase), LABELS.get(phase, phase)
    fix = f"delete {directory} and run `{rerun_hint(run_dir, phase)}`"
    check_hashes(directory, manifest.files, fix=f"the complete {label} output changed; {fix}")
    for ref in manifest.parents:
        current = Path(run_dir) / ref.manifest
        if not current.is_file() or sha256_file(current) != ref.sha256:
            raise HandoffError(f"the {label} phase in {directory} was trained from a {ref.phase} that has "
                               f"changed or gone since (manifest {current}): {fix}")
    return manifest
