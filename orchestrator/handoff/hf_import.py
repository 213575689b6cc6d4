"""A local Hugging Face ``GPT2LMHeadModel`` or ``GPTNeoForCausalLM`` folder as the complete
``pretrain`` phase of a run (``orchestrate import HF_DIR RUN_DIR``).

The exact inverse of ``export.py``, through the same name table: GPT-2's ``Conv1D`` weights are
transposed back to our (out, in) ``nn.Linear``; GPT-Neo's unscaled attention gets the 1/√d_head
scale un-folded from ``q_proj`` (W_q = √d_head · q_proj), and the q/k/v biases it does not have
are zeros in our ``c_attn.bias``. Only models we compute exactly are accepted: the checks below
name every Hugging Face option whose function our GPT does not have. The result is proved, not
assumed: our GPT with the mapped weights and the folder's model give the same logits on fixed ids
(``export.LOGIT_TOLERANCE``), or nothing is written.

The phase holds what a trained pretrain phase holds — ``final/shards`` (the plain-GPT fp32
weights as one rank's shard file, ``handoff.final``), a complete manifest with the model config, tokenizer hash, pad / EOS ids and head ``lm`` —
plus ``model.yaml`` (the model for ``--set model=...``) and ``source`` (the folder's file hashes).
The tokenizer goes where phases read it, ``RUN_DIR/data/tokenizer``.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from orchestrator.config.loader import to_dict
from orchestrator.config.model import GPTConfig
from orchestrator.handoff import export
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import atomic_write_text, files_under, sha256_file
from orchestrator.handoff.manifest import Manifest, Source, complete_manifest, start_manifest, write_manifest

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neo": "GPTNeoForCausalLM"}
"""Hugging Face ``model_type`` → the class we import."""
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
"""Hugging Face names of the tanh-approximated GELU, the one our MLP computes."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
MODEL_FILE = "model.yaml"
TOKENIZER_DIR = "data/tokenizer"


@dataclass(frozen=True)
class ImportResult:
    phase_dir: str
    architecture: str
    model: GPTConfig
    model_file: str
    tokenizer_dir: str
    max_abs_logit_diff: float


# --- the folder -------------------------------------------------------------------------------
def check_folder(hf_dir: Path) -> None:
    """Refuse a folder without a config, weights or a tokenizer, naming what is missing."""
    if not hf_dir.is_dir():
        raise HandoffError(f"{hf_dir} is not a folder: give a folder written by save_pretrained")
    missing = []
    if not (hf_dir / "config.json").is_file():
        missing.append("config.json")
    if not any((hf_dir / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if not (hf_dir / "tokenizer.json").is_file() and not all((hf_dir / n).is_file() for n in ("vocab.json", "merges.txt")):
        missing.append("a tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if missing:
        raise HandoffError(f"{hf_dir} lacks {'; '.join(missing)}: save the model and its tokenizer into it with "
                           f"save_pretrained")


def folder_hashes(hf_dir: Path) -> dict[str, str]:
    return {path.relative_to(hf_dir).as_posix(): sha256_file(path) for path in files_under(hf_dir)}


# --- the config -------------------------------------------------------------------------------
def gpt_config(hf_cfg, *, name: str) -> GPTConfig:
    """Our GPTConfig computing what ``hf_cfg`` computes, or HandoffError listing every difference."""
    model_type = getattr(hf_cfg, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise HandoffError(f"model_type {model_type!r} is not supported: import reads "
                           f"{' or '.join(ARCHITECTURES.values())} folders")
    problems, config = (gpt2_config if model_type == "gpt2" else gpt_neo_config)(hf_cfg, name=name)
    if problems:
        raise HandoffError(f"{ARCHITECTURES[model_type]} {name!r} cannot be represented exactly by our GPT: "
                           + "; ".join(problems))
    return config


def _mlp_mult(inner, d_model: int, key: str, problems: list) -> int:
    inner = inner or 4 * d_model
    if inner % d_model:
        problems.append(f"{key}={inner} is not a multiple of the hidden size {d_model} (our MLP is ffn_mult × d_model)")
    return max(1, inner // d_model)


def _head_size(d_model: int, n_heads: int, problems: list) -> int:
    if d_model % n_heads:
        problems.append(f"hidden size {d_model} is not divisible by {n_heads} heads")
    return max(1, d_model // n_heads)


def gpt2_config(hf, *, name: str) -> tuple[list[str], GPTConfig | None]:
    problems = []
    if hf.activation_function not in TANH_GELU:
        problems.append(f"activation_function={hf.activation_function!r} (ours is the tanh GELU, gelu_new)")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if bool(getattr(hf, flag, want)) != want:
            problems.append(f"{flag}={getattr(hf, flag)} (ours: {want})")
    ffn_mult = _mlp_mult(hf.n_inner, hf.n_embd, "n_inner", problems)
    d_head = _head_size(hf.n_embd, hf.n_head, problems)
    if problems:
        return problems, None
    return [], GPTConfig(name=name, n_layers=hf.n_layer, d_model=hf.n_embd, n_heads=hf.n_head, d_head=d_head,
                         ctx=hf.n_positions, vocab=hf.vocab_size, ffn_mult=ffn_mult, dropout=hf.resid_pdrop,
                         layer_norm_eps=hf.layer_norm_epsilon, init_std=hf.initializer_range)


def gpt_neo_config(hf, *, name: str) -> tuple[list[str], GPTConfig | None]:
    problems = []
    if hf.activation_function not in TANH_GELU:
        problems.append(f"activation_function={hf.activation_function!r} (ours is the tanh GELU, gelu_new)")
    layers = list(hf.attention_layers)
    alternating = [kind for pair in export.attention_types(hf.num_layers) for kind in pair[0] * pair[1]]
    if all(kind == "global" for kind in layers):
        attention = "dense"
    elif layers == alternating:
        attention = "alternating"
    else:
        attention = "dense"
        problems.append(f"attention_layers={layers}: ours are all global, or global and local alternating from "
                        f"layer 0 ({alternating})")
    ffn_mult = _mlp_mult(hf.intermediate_size, hf.hidden_size, "intermediate_size", problems)
    d_head = _head_size(hf.hidden_size, hf.num_heads, problems)
    if problems:
        return problems, None
    window = hf.window_size if attention == "alternating" else GPTConfig.local_window
    return [], GPTConfig(name=name, n_layers=hf.num_layers, d_model=hf.hidden_size, n_heads=hf.num_heads,
                         d_head=d_head, ctx=hf.max_position_embeddings, vocab=hf.vocab_size, ffn_mult=ffn_mult,
                         dropout=hf.resid_dropout, layer_norm_eps=hf.layer_norm_epsilon,
                         init_std=hf.initializer_range, attention=attention, local_window=window)


# --- the weights: export's name table read backwards -------------------------------------------
def check_tied(hf_state: dict[str, Tensor]) -> None:
    """Our LM head is the token embedding; an untied head must hold the same numbers."""
    head, wte = hf_state.get("lm_head.weight"), hf_state["transformer.wte.weight"]
    if head is not None and not torch.equal(head, wte):
        raise HandoffError(f"lm_head.weight differs from transformer.wte.weight (max |Δ| "
                           f"{float((head - wte).abs().max()):.3g}): our LM head is tied to the token embedding, so "
                           f"an untied head cannot be represented")


def plain_from_gpt2(hf_state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """GPT2LMHeadModel → plain GPT: the names back, Conv1D (in, out) → Linear (out, in)."""
    state = {ours: hf_state[theirs] for ours, theirs in export.shared_names(config).items()}
    for ours, theirs in export.module_names(config, export.GPT2_LINEARS).items():
        state[ours] = hf_state[theirs].t().contiguous() if ours.endswith(".weight") else hf_state[theirs]
    return state


def plain_from_gpt_neo(hf_state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """GPTNeoForCausalLM → plain GPT: W_q = √d_head · q_proj (GPT-Neo leaves q·k unscaled, we scale
    by 1/√d_head), zero q/k/v biases (GPT-Neo has none), out_proj as our c_proj."""
    state = {ours: hf_state[theirs] for ours, theirs in export.shared_names(config).items()}
    state.update({ours: hf_state[theirs] for ours, theirs in export.module_names(config, export.NEO_MLP).items()})
    for i in range(config.n_layers):
        prefix = f"transformer.h.{i}.{export.NEO_ATTENTION}"
        w_q = hf_state[f"{prefix}.q_proj.weight"] * math.sqrt(config.d_head)
        state[f"h.{i}.attn.c_attn.weight"] = torch.cat([w_q, hf_state[f"{prefix}.k_proj.weight"],
                                                        hf_state[f"{prefix}.v_proj.weight"]], dim=0)
        state[f"h.{i}.attn.c_attn.bias"] = torch.zeros(3 * config.d_attn, dtype=w_q.dtype)
        state[f"h.{i}.attn.c_proj.weight"] = hf_state[f"{prefix}.out_proj.weight"]
        state[f"h.{i}.attn.c_proj.bias"] = hf_state[f"{prefix}.out_proj.bias"]
    return state


def plain_state(hf_model, config: GPTConfig) -> dict[str, Tensor]:
    """The plain-GPT LM state dict (fp32, contiguous) holding ``hf_model``'s weights."""
    hf_state = {name: tensor.detach().float() for name, tensor in hf_model.state_dict().items()}
    check_tied(hf_state)
    convert = plain_from_gpt_neo if hf_model.config.model_type == "gpt_neo" else plain_from_gpt2
    return {name: tensor.contiguous().clone() for name, tensor in convert(hf_state, config).items()}


# --- the whole import ----------------------------------------------------------------------------
def load_hf_model(hf_dir: Path):
    """The folder's config, checked against what we represent, and its model in fp32 eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(str(hf_dir), local_files_only=True)
    config = gpt_config(hf_cfg, name=hf_dir.name)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True, dtype=torch.float32)
    return config, model.eval()


def check_tokenizer_fits(tokenizer, config: GPTConfig, hf_dir: Path) -> None:
    if len(tokenizer) > config.vocab:
        raise HandoffError(f"the tokenizer in {hf_dir} has {len(tokenizer)} ids but the model's vocab_size is "
                           f"{config.vocab}: ids above {config.vocab - 1} would have no embedding; save the "
                           f"tokenizer the model was trained with")


def import_folder(hf_dir: Path | str, run_dir: Path | str) -> ImportResult:
    """Check, map and verify ``hf_dir``; then write ``RUN_DIR/pretrain`` and ``RUN_DIR/data/tokenizer``."""
    from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info

    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    target, tokenizer_target = run_dir / "pretrain", run_dir / TOKENIZER_DIR
    if target.exists():
        raise HandoffError(f"{target} already exists: import into a new run directory, or delete it to replace it")
    check_folder(hf_dir)
    config, hf_model = load_hf_model(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    check_tokenizer_fits(tokenizer, config, hf_dir)
    state = plain_state(hf_model, config)
    ids = export.probe_ids(config, vocab_limit=len(tokenizer))
    with torch.no_grad():
        diff = export.max_logit_diff(export.ours_logits(state, config, ids), hf_model(ids).logits)
    if diff > export.LOGIT_TOLERANCE:
        raise HandoffError(f"our GPT with the imported weights differs from {type(hf_model).__name__} by {diff:.3g} "
                           f"in its logits (tolerance {export.LOGIT_TOLERANCE:g}): nothing was written")
    info = _place_tokenizer(tokenizer, tokenizer_target, tokenizer_info)
    source = Source(kind="hf", path=str(hf_dir), architecture=type(hf_model).__name__,
                    files=folder_hashes(hf_dir), max_abs_logit_diff=diff)
    _write_phase(run_dir, target, config=config, state=state, info=info, source=source)
    return ImportResult(phase_dir=str(target), architecture=source.architecture, model=config,
                        model_file=str(target / MODEL_FILE), tokenizer_dir=str(tokenizer_target),
                        max_abs_logit_diff=diff)


def _place_tokenizer(tokenizer, target: Path, tokenizer_info):
    """Save the tokenizer at ``target``, or keep the one there if it is the same tokenizer."""
    staging = target.with_name(f".{target.name}.import")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    info = tokenizer_info(staging)
    if target.exists():
        existing = tokenizer_info(target)
        shutil.rmtree(staging)
        if existing.tokenizer_hash != info.tokenizer_hash:
            raise HandoffError(f"{target} holds another tokenizer (hash {existing.tokenizer_hash[:12]}…, the "
                               f"model's is {info.tokenizer_hash[:12]}…): import into a new run directory")
        return existing
    staging.rename(target)
    return dataclasses.replace(info, path=str(target))


def _write_phase(run_dir: Path, target: Path, *, config: GPTConfig, state: dict, info, source: Source) -> Manifest:
    """The complete pretrain phase, built in a staging folder and renamed into place."""
    import yaml

    from orchestrator.handoff.final import FINAL_WEIGHTS, write_whole_tensors

    staging = target.with_name(f".{target.name}.import")
    shutil.rmtree(staging, ignore_errors=True)
    hashes = write_whole_tensors(staging / FINAL_WEIGHTS, state.items())       # one process: rank 0's file
    atomic_write_text(staging / MODEL_FILE, yaml.safe_dump(to_dict(config), sort_keys=False))
    manifest = start_manifest(run_dir, phase="pretrain", model=to_dict(config), tokenizer_hash=info.tokenizer_hash,
                              pad_id=info.pad_id, eos_id=info.eos_id, head="lm", layout={},
                              tokenizer_dir=TOKENIZER_DIR)
    manifest = complete_manifest(dataclasses.replace(manifest, source=source), staging, step=0,
                                 checkpoint=FINAL_WEIGHTS, metrics={}, artifacts=[MODEL_FILE],
                                 checkpoint_files={f"{FINAL_WEIGHTS}/{name}": digest for name, digest in hashes.items()})
    write_manifest(staging, manifest)
    staging.rename(target)
    return manifest
