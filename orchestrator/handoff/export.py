"""A phase's sharded weights as a Hugging Face model: ``GPT2LMHeadModel``, or
``GPTNeoForCausalLM`` when the model alternates dense and local attention.

Export reads the phase only through its verified manifest, maps each plain-GPT tensor onto the
Hugging Face layout as it streams from the phase's ``final/shards`` into safetensors shards (one
tensor in memory at a time), writes the config beside the run's tokenizer, reloads the folder
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
from typing import Callable, Optional

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


Get = Callable[[str], Tensor]
"""``get(name)``: our plain fp32 tensor ``name`` (from a state dict, or read from the shards)."""


@dataclass(frozen=True)
class HFTensor:
    """One tensor of the Hugging Face model: its name, shape, and how to make it from ours."""

    name: str
    shape: tuple[int, ...]
    make: Callable[[Get], Tensor]


def _copy(ours: str) -> Callable[[Get], Tensor]:
    return lambda get: get(ours)


def _transposed(ours: str) -> Callable[[Get], Tensor]:
    return lambda get: get(ours).t().contiguous()


def _qkv_part(layer: int, part: int, d_attn: int, scale: float) -> Callable[[Get], Tensor]:
    return lambda get: (get(f"h.{layer}.attn.c_attn.weight")[part * d_attn:(part + 1) * d_attn] * scale).contiguous()


def _neo_out_bias(layer: int, d_attn: int) -> Callable[[Get], Tensor]:
    def make(get: Get) -> Tensor:
        b_v = get(f"h.{layer}.attn.c_attn.bias")[2 * d_attn:]
        return get(f"h.{layer}.attn.c_proj.bias") + get(f"h.{layer}.attn.c_proj.weight") @ b_v   # Σ_j p_ij = 1
    return make


def hf_tensors(config: GPTConfig, shapes: dict[str, tuple[int, ...]]) -> list[HFTensor]:
    """Every tensor of the Hugging Face model, in order, from ours of ``shapes`` (the plain LM's):
    GPT-2: rename, Linear (out, in) → Conv1D (in, out); GPT-Neo: the attention scale folded into
    ``q_proj``, the value bias into ``out_proj.bias`` (module docstring). The LM head is tied to
    ``wte`` (``tie_word_embeddings``), so it is not stored."""
    specs = [HFTensor(theirs, shapes[ours], _copy(ours)) for ours, theirs in shared_names(config).items()]
    if config.attention != "alternating":
        for ours, theirs in module_names(config, GPT2_LINEARS).items():
            weight = ours.endswith(".weight")
            shape = tuple(reversed(shapes[ours])) if weight else shapes[ours]
            specs.append(HFTensor(theirs, shape, _transposed(ours) if weight else _copy(ours)))
        return specs
    d, d_model = config.d_attn, config.d_model
    for i in range(config.n_layers):
        prefix = f"transformer.h.{i}.{NEO_ATTENTION}"
        for part, (proj, scale) in enumerate((("q_proj", 1 / math.sqrt(config.d_head)), ("k_proj", 1.0),
                                              ("v_proj", 1.0))):         # GPT-Neo does not scale q·k
            specs.append(HFTensor(f"{prefix}.{proj}.weight", (d, d_model), _qkv_part(i, part, d, scale)))
        specs.append(HFTensor(f"{prefix}.out_proj.weight", shapes[f"h.{i}.attn.c_proj.weight"],
                              _copy(f"h.{i}.attn.c_proj.weight")))
        specs.append(HFTensor(f"{prefix}.out_proj.bias", (d_model,), _neo_out_bias(i, d)))
    specs += [HFTensor(theirs, shapes[ours], _copy(ours)) for ours, theirs in module_names(config, NEO_MLP).items()]
    return specs


def check_query_bias(get: Get, config: GPTConfig, *, approximate: bool) -> None:
    """GPT-Neo's q_proj has no bias: refuse a non-zero one (it adds b_q·k_j, different per key)
    unless ``approximate``. The key bias is dropped exactly (softmax-invariant)."""
    if config.attention != "alternating" or approximate:
        return
    for i in range(config.n_layers):
        b_q = get(f"h.{i}.attn.c_attn.bias")[:config.d_attn]
        if b_q.abs().max() > 0:
            raise HandoffError(f"layer {i} has a non-zero query bias (max |b_q| = {b_q.abs().max():.3g}); GPT-Neo's "
                               f"q_proj has no bias, so GPTNeoForCausalLM cannot reproduce this model exactly: "
                               f"export with --approximate to accept (and report) the logit difference")


def hf_state(state: dict[str, Tensor], config: GPTConfig, *, approximate: bool = False) -> dict[str, Tensor]:
    """A plain-GPT LM state dict under Hugging Face names (in memory: for tests and benchmarks)."""
    check_query_bias(state.__getitem__, config, approximate=approximate)
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    mapped = {spec.name: spec.make(state.__getitem__) for spec in hf_tensors(config, shapes)}
    mapped["lm_head.weight"] = state["wte.weight"]
    return mapped


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
    mapped = hf_state(state, config, approximate=approximate)
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


MAX_SHARD_BYTES = 2 * 1024**3
"""Largest safetensors file the export writes (Hugging Face's sharded layout beyond it)."""


def write_hf_weights(out_dir: Path, specs: list[HFTensor], get: Get, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """The Hugging Face weights as safetensors shards, streamed: each file's header first (names
    and shapes are known), then its tensors made and written one at a time, so one tensor (plus
    the few of ours a GPT-Neo attention tensor is made from) is in memory. One file is
    ``model.safetensors``; more are ``model-0000i-of-0000n.safetensors`` with the index
    ``model.safetensors.index.json`` that ``from_pretrained`` reads. Returns the file names."""
    from orchestrator.handoff.sharded import stream_safetensors

    groups, size = [[]], 0
    for spec in specs:
        nbytes = 4 * math.prod(spec.shape)
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += nbytes
    names = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    for name, group in zip(names, groups):
        header, offset = {}, 0
        for spec in group:
            nbytes = 4 * math.prod(spec.shape)
            header[spec.name] = {"dtype": "F32", "shape": list(spec.shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}            # what from_pretrained requires of a safetensors file
        stream_safetensors(out_dir / name, header, (_checked(spec, get) for spec in group))
    if len(groups) > 1:
        weight_map = {spec.name: name for name, group in zip(names, groups) for spec in group}
        total = sum(4 * math.prod(spec.shape) for spec in specs)
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names


def _checked(spec: HFTensor, get: Get) -> Tensor:
    tensor = spec.make(get).to(torch.float32).contiguous()
    if tuple(tensor.shape) != spec.shape:
        raise HandoffError(f"{spec.name}: made a tensor of shape {tuple(tensor.shape)}, expected {spec.shape}")
    return tensor


def export_phase(phase_dir: Path | str, out_dir: Path | str, *, tokenizer_dir: Optional[str] = None,
                 approximate: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> ExportResult:
    """Export a complete LM phase to ``out_dir`` and prove the export computes our logits.

    The weights stream from the phase's sharded ``final/shards`` (``handoff.final``) into
    safetensors shards one tensor at a time (``write_hf_weights``): nothing builds the whole
    state dict. The proof then loads both models whole in this one process — ours from the
    shards, tensor by tensor, and the export with ``from_pretrained`` — and compares logits."""
    import shutil

    from transformers import AutoModelForCausalLM

    from orchestrator.handoff.final import check_weights, parent_reader, read_tensor
    from orchestrator.model.params import plain_parameter_shapes

    phase_dir, out_dir = Path(phase_dir), Path(out_dir)
    if out_dir.exists():
        raise HandoffError(f"{out_dir} already exists: choose a new directory or delete it")
    manifest = exportable_manifest(phase_dir)
    config = from_dict(GPTConfig, manifest.model, "manifest.model")
    hf_cfg = hf_config(config, eos_id=manifest.eos_id, pad_id=manifest.pad_id)
    reader = parent_reader(phase_dir, checkpoint=manifest.checkpoint, files=manifest.files)
    shapes = plain_parameter_shapes(config, head="lm")
    check_weights(reader, shapes)
    get = lambda name: read_tensor(reader, name, shapes[name])        # noqa: E731  one tensor, read when needed
    check_query_bias(get, config, approximate=approximate)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        hf_cfg.save_pretrained(str(partial))
        write_hf_weights(partial, hf_tensors(config, shapes), get, max_shard_bytes=max_shard_bytes)
        tokenizer = save_tokenizer(manifest, run_dir=phase_dir.parent, out_dir=partial, override=tokenizer_dir)
        reloaded = AutoModelForCausalLM.from_pretrained(str(partial), local_files_only=True).eval()
        diff = _logit_diff(phase_dir / manifest.checkpoint, config, reloaded, vocab_limit=len(tokenizer))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if diff > LOGIT_TOLERANCE and not approximate:
        shutil.rmtree(partial, ignore_errors=True)
        raise HandoffError(f"the exported {type(reloaded).__name__} differs from ours by {diff:.3g} in its logits "
                           f"(tolerance {LOGIT_TOLERANCE:g}): nothing was written")
    source = manifest_path(phase_dir.parent, phase_dir.name)
    result = ExportResult(out_dir=str(out_dir), architecture=type(reloaded).__name__, max_abs_logit_diff=diff,
                          source_manifest=str(source), source_sha256=sha256_file(source), approximate=approximate)
    (partial / "export.json").write_text(json.dumps(to_dict(result), indent=2) + "\n")
    partial.rename(out_dir)
    return result


def _logit_diff(shards: Path, config: GPTConfig, reloaded, *, vocab_limit: int) -> float:
    """Ours (built from the shards) against the reloaded export, on ``probe_ids``."""
    from orchestrator.phases.outputs import frozen_model

    ours = frozen_model(config, head="lm", shards=shards, device=torch.device("cpu"), dtype=torch.float32)
    ids = probe_ids(config, vocab_limit=vocab_limit)
    with torch.no_grad():
        return max_logit_diff(ours(ids).logits, reloaded(ids).logits)
