"""A phase's consolidated weights as a Hugging Face model: ``GPT2LMHeadModel``, or
``GPTNeoForCausalLM`` when the model alternates dense and local attention.

Export reads the phase only through its verified manifest, maps the plain-GPT state dict onto
the Hugging Face layout, saves it with ``save_pretrained`` beside the run's tokenizer, reloads it
offline and compares its logits with ours on the same ids; ``export.json`` records the result.

GPT-2 is a rename plus a transpose: our ``nn.Linear`` weights are (out, in), GPT-2's ``Conv1D``
weights are (in, out). GPT-Neo (Black et al. 2021) differs in three places:

- it does not scale attention scores (no 1/√d_head), so the scale is folded into ``q_proj``;
- ``q/k/v_proj`` have no bias. A key bias adds q_i·b_k to every score of query i, which softmax
  ignores, so it is dropped exactly. A value bias passes through attention unchanged (each row
  of probabilities sums to 1), so it is folded into the output bias: b_o + W_o·b_v. A query
  bias adds b_q·k_j, which differs per key: it cannot be expressed, and a model with a non-zero
  query bias is refused unless ``approximate=True`` (the logit difference is then reported);
- its local layers see ``window_size`` tokens, i − w < j ≤ i, as our banded layers do.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from orchestrator.config.loader import from_dict, to_dict
from orchestrator.config.model import GPTConfig
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hashing import sha256_file
from orchestrator.handoff.manifest import Manifest, manifest_path, verify_parent

LOGIT_TOLERANCE = 1e-4
"""Largest |Δlogit| accepted between ours and the exported model in fp32 (relative to max(1, |logit|))."""


@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    architecture: str
    max_abs_logit_diff: float
    source_manifest: str
    source_sha256: str
    approximate: bool = False


def check_exportable(config: GPTConfig) -> None:
    if config.is_moe:
        raise HandoffError(f"model {config.name} has {config.n_experts} experts: GPT-2 / GPT-Neo have no MoE layers, "
                           f"so it cannot be exported to them")
    if config.d_attn != config.d_model:
        raise HandoffError(f"model {config.name}: n_heads × d_head = {config.d_attn} != d_model {config.d_model}; "
                           f"Hugging Face GPT-2 / GPT-Neo require them equal")
    if config.ffn_mult * config.d_model != config.d_ffn:
        raise HandoffError(f"model {config.name}: unexpected MLP width {config.d_ffn}")


def attention_types(n_layers: int) -> list:
    """GPT-Neo's layer pattern for ours: even layers dense ("global"), odd ones local."""
    pattern: list = [[["global", "local"], n_layers // 2]]
    return pattern + [[["global"], 1]] if n_layers % 2 else pattern


def hf_config(config: GPTConfig, *, eos_id: int, pad_id: int):
    """The Hugging Face config of the same shape (GPT2Config or GPTNeoConfig)."""
    check_exportable(config)
    common = dict(vocab_size=config.vocab, activation_function="gelu_new", layer_norm_epsilon=config.layer_norm_eps,
                  initializer_range=config.init_std, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                  tie_word_embeddings=True)
    if config.attention == "alternating":
        from transformers import GPTNeoConfig

        return GPTNeoConfig(max_position_embeddings=config.ctx, hidden_size=config.d_model, num_layers=config.n_layers,
                            num_heads=config.n_heads, intermediate_size=config.d_ffn, window_size=config.local_window,
                            attention_types=attention_types(config.n_layers), resid_dropout=config.dropout,
                            embed_dropout=config.dropout, attention_dropout=config.dropout, **common)
    from transformers import GPT2Config

    return GPT2Config(n_positions=config.ctx, n_embd=config.d_model, n_layer=config.n_layers, n_head=config.n_heads,
                      n_inner=config.d_ffn, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                      attn_pdrop=config.dropout, **common)


# --- the name table, used in both directions (export here, import in hf_import.py) --------------
GPT2_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
"""Our ``nn.Linear`` modules that GPT-2 holds as ``Conv1D`` (weight transposed, same names)."""
NEO_MLP = ("mlp.c_fc", "mlp.c_proj")
"""GPT-Neo's MLP: ``nn.Linear`` under our names, nothing transposed."""
NEO_ATTENTION = "attn.attention"
"""GPT-Neo's attention module below ``transformer.h.{i}`` (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""


def shared_names(config: GPTConfig) -> dict[str, str]:
    """ours → Hugging Face for the embeddings and LayerNorms: the same in GPT-2 and GPT-Neo
    (the LM head is tied to ``wte``)."""
    names = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias"}
    for i in range(config.n_layers):
        for norm in ("ln_1", "ln_2"):
            for kind in ("weight", "bias"):
                names[f"h.{i}.{norm}.{kind}"] = f"transformer.h.{i}.{norm}.{kind}"
    return names


def module_names(config: GPTConfig, modules: tuple[str, ...]) -> dict[str, str]:
    """ours → Hugging Face for the weight and bias of ``modules`` in every block (same suffix)."""
    return {f"h.{i}.{module}.{kind}": f"transformer.h.{i}.{module}.{kind}"
            for i in range(config.n_layers) for module in modules for kind in ("weight", "bias")}


def _shared(state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """Embeddings, LayerNorms and the tied head: the same names in both architectures."""
    out = {theirs: state[ours] for ours, theirs in shared_names(config).items()}
    out["lm_head.weight"] = state["wte.weight"]
    return out


def gpt2_state(state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """GPT2LMHeadModel names; Linear (out, in) → Conv1D (in, out)."""
    out = _shared(state, config)
    for ours, theirs in module_names(config, GPT2_LINEARS).items():
        out[theirs] = state[ours].t().contiguous() if ours.endswith(".weight") else state[ours]
    return out


def gpt_neo_state(state: dict[str, Tensor], config: GPTConfig, *, approximate: bool) -> dict[str, Tensor]:
    """GPTNeoForCausalLM names with the attention scale and the k/v biases folded (module docstring)."""
    out, d = _shared(state, config), config.d_attn
    for i in range(config.n_layers):
        w_q, w_k, w_v = state[f"h.{i}.attn.c_attn.weight"].split(d, dim=0)      # each (d_attn, d_model)
        b_q, _b_k, b_v = state[f"h.{i}.attn.c_attn.bias"].split(d, dim=0)        # b_k: softmax-invariant
        if b_q.abs().max() > 0 and not approximate:
            raise HandoffError(f"layer {i} has a non-zero query bias (max |b_q| = {b_q.abs().max():.3g}); GPT-Neo's "
                               f"q_proj has no bias, so GPTNeoForCausalLM cannot reproduce this model exactly: "
                               f"export with --approximate to accept (and report) the logit difference")
        w_o, b_o = state[f"h.{i}.attn.c_proj.weight"], state[f"h.{i}.attn.c_proj.bias"]
        prefix = f"transformer.h.{i}.{NEO_ATTENTION}"
        out[f"{prefix}.q_proj.weight"] = w_q / math.sqrt(config.d_head)      # GPT-Neo does not scale q·k
        out[f"{prefix}.k_proj.weight"] = w_k.clone()
        out[f"{prefix}.v_proj.weight"] = w_v.clone()
        out[f"{prefix}.out_proj.weight"] = w_o
        out[f"{prefix}.out_proj.bias"] = b_o + w_o @ b_v                     # Σ_j p_ij = 1 carries b_v through
    out.update({theirs: state[ours] for ours, theirs in module_names(config, NEO_MLP).items()})
    return out


def build_hf_model(state: dict[str, Tensor], config: GPTConfig, *, eos_id: int, pad_id: int,
                   approximate: bool = False):
    """The Hugging Face model holding ``state`` (a plain-GPT LM state dict), in eval mode."""
    from transformers import GPT2LMHeadModel, GPTNeoForCausalLM

    expected = set(plain_lm_names(config))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise HandoffError(f"the checkpoint is not a plain {config.name} LM state dict (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}): export needs an LM-head phase (pretrain, sft, ppo)")
    hf_cfg = hf_config(config, eos_id=eos_id, pad_id=pad_id)
    neo = config.attention == "alternating"
    mapped = gpt_neo_state(state, config, approximate=approximate) if neo else gpt2_state(state, config)
    model = (GPTNeoForCausalLM if neo else GPT2LMHeadModel)(hf_cfg)
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    model.tie_weights()
    return model.eval()


def plain_lm_names(config: GPTConfig) -> list[str]:
    from orchestrator.model.params import plain_parameter_shapes

    return list(plain_parameter_shapes(config, head="lm"))


def ours_logits(state: dict[str, Tensor], config: GPTConfig, ids: Tensor) -> Tensor:
    from orchestrator.model.gpt import GPT
    from orchestrator.model.params import materialize

    with torch.device("meta"):
        model = GPT(config, head="lm")
    materialize(model, torch.device("cpu")).load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model.eval()(ids).logits


def probe_ids(config: GPTConfig, *, vocab_limit: int) -> Tensor:
    """Two fixed rows long enough to cross the local window (when there is one)."""
    length = min(config.ctx, config.local_window + 32 if config.attention == "alternating" else 64)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, max(2, min(vocab_limit, config.vocab)), (2, length), generator=generator)


def max_logit_diff(ours: Tensor, theirs: Tensor) -> float:
    """max |Δ| / max(1, max |logit|): fp32 round-off scales with the logits' size."""
    return float((ours - theirs).abs().max() / max(1.0, float(ours.abs().max())))


def exportable_manifest(phase_dir: Path) -> Manifest:
    """The phase's manifest once it is complete, verified, and carries an LM head."""
    from orchestrator.handoff.manifest import read_manifest

    path = manifest_path(phase_dir.parent, phase_dir.name)
    if path.is_file():
        head = read_manifest(path).head
        if head != "lm":
            raise HandoffError(f"{phase_dir} has a {head} head: GPT-2 / GPT-Neo carry an LM head only; export an "
                               f"LM phase (pretrain, sft or ppo)")
    return verify_parent(phase_dir.parent, parent_phase=phase_dir.name, expect_head="lm", expect_model=None,
                         expect_tokenizer_hash=None)


def save_tokenizer(manifest: Manifest, *, run_dir: Path, out_dir: Path, override: Optional[str]):
    """Copy the run's tokenizer (checked against the manifest's hash) next to the model."""
    from transformers import AutoTokenizer

    from orchestrator.data.tokenizer import tokenizer_hash

    source = Path(override) if override else (run_dir / manifest.tokenizer_dir if manifest.tokenizer_dir else None)
    if source is None or not source.is_dir():
        raise HandoffError(f"no tokenizer for {manifest.phase}: its manifest names {manifest.tokenizer_dir!r} in "
                           f"{run_dir}; pass --tokenizer DIR (a Hugging Face tokenizer folder)")
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    if tokenizer_hash(tokenizer) != manifest.tokenizer_hash:
        raise HandoffError(f"the tokenizer in {source} is not the one {manifest.phase} was trained with "
                           f"(hash {tokenizer_hash(tokenizer)[:12]}…, manifest {manifest.tokenizer_hash[:12]}…)")
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def export_phase(phase_dir: Path | str, out_dir: Path | str, *, tokenizer_dir: Optional[str] = None,
                 approximate: bool = False) -> ExportResult:
    """Export a complete LM phase to ``out_dir`` and prove the export computes our logits."""
    import shutil

    from transformers import AutoModelForCausalLM

    phase_dir, out_dir = Path(phase_dir), Path(out_dir)
    if out_dir.exists():
        raise HandoffError(f"{out_dir} already exists: choose a new directory or delete it")
    manifest = exportable_manifest(phase_dir)
    config = from_dict(GPTConfig, manifest.model, "manifest.model")
    state = torch.load(phase_dir / manifest.checkpoint, map_location="cpu", weights_only=True)
    model = build_hf_model(state, config, eos_id=manifest.eos_id, pad_id=manifest.pad_id, approximate=approximate)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    tokenizer = save_tokenizer(manifest, run_dir=phase_dir.parent, out_dir=partial, override=tokenizer_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(str(partial), local_files_only=True).eval()
    ids = probe_ids(config, vocab_limit=len(tokenizer))
    with torch.no_grad():
        diff = max_logit_diff(ours_logits(state, config, ids), reloaded(ids).logits)
    if diff > LOGIT_TOLERANCE and not approximate:
        shutil.rmtree(partial, ignore_errors=True)
        raise HandoffError(f"the exported {type(model).__name__} differs from ours by {diff:.3g} in its logits "
                           f"(tolerance {LOGIT_TOLERANCE:g}): nothing was written")
    source = manifest_path(phase_dir.parent, phase_dir.name)
    result = ExportResult(out_dir=str(out_dir), architecture=type(model).__name__, max_abs_logit_diff=diff,
                          source_manifest=str(source), source_sha256=sha256_file(source), approximate=approximate)
    (partial / "export.json").write_text(json.dumps(to_dict(result), indent=2) + "\n")
    partial.rename(out_dir)
    return result
