"""Activation memory per rank: Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", §4 and Table 2.

Per layer and micro-batch of b sequences of length s (hidden h, a heads, 16-bit activations):

    no parallelism                 s·b·h·(34 + 5·a·s/h)
    tensor parallel t              s·b·h·(10 + 24/t + 5·a·s/(h·t))
    tensor + sequence parallel     s·b·h·(34/t + 5·a·s/(h·t))
    selective recompute            the 5·a·s/h term (attention scores, softmax, dropout) is dropped
    full recompute                 2·s·b·h (only the layer input; /t with sequence parallel)

Of the 34, 24 are tensor-parallel activations (Q, K, V, attention-out input, the two MLP
matrices' inputs) and 10 are replicated without sequence parallelism (LayerNorms, dropout masks,
the QKV input and the MLP input). Worked example: gpt3-175b, s = 2048, b = 1, t = 8 with
sequence parallel: 2048 · 12288 · (34/8 + 5 · 96 · 2048 / (12288 · 8)) = 0.36 GiB per layer.

Our extension for MoE layers (stated, not from the paper): the MLP's 18·s·b·h of expert inputs and
GeLU activations grow with the tokens each expert processes, top_k × capacity_factor.

The cross-entropy's logits are fp32 (4 bytes each) whatever the activation precision, so they are
not scaled with ``activation_bytes`` (measured with saved-tensors hooks: ``benchmarks/memory_accuracy.py``).

Dropout masks (2·s·b·h per layer, a·s²·b more unless the attention core is recomputed, s·b·h for
the embedding) are 1 byte each in the paper: CUDA's fused dropout keeps a bool mask. On a CPU,
``F.dropout`` multiplies by a mask of the activations' own dtype and keeps that (4 bytes in fp32):
``dropout_mask_bytes`` says which, from the device kind, and only the masks change with it.
"""
from __future__ import annotations

from orchestrator.config.model import GPTConfig
from orchestrator.plan.layout import Layout
from orchestrator.plan.partition import Stage, moe_layers_in, padded_vocab

SHARDED, REPLICATED, ATTENTION_CORE = 24, 10, 5  # Korthikanti et al. 2022, §4.1


def layer_bytes(model: GPTConfig, *, seq: int, micro_batch: int, tp: int, sequence_parallel: bool,
                recompute: str, moe: bool = False) -> float:
    """Bytes of 16-bit activations one layer keeps for backward, per micro-batch, on one tp rank."""
    sbh = seq * micro_batch * model.d_model
    if recompute == "full":
        return 2 * sbh / (tp if sequence_parallel else 1)
    sharded, replicated = float(SHARDED), float(REPLICATED)
    if moe:  # tokens reach top_k experts, padded to capacity: 16 sharded + 2 input bytes per h grow
        extra = min(model.top_k, model.n_experts) * model.capacity_factor - 1
        sharded, replicated = sharded + 16 * extra, replicated + 2 * extra
    per_layer = sbh * (sharded + replicated) / tp if sequence_parallel else sbh * (replicated + sharded / tp)
    if recompute != "selective":
        per_layer += ATTENTION_CORE * model.n_heads * seq * seq * micro_batch / tp  # 5·a·s²·b / t
    return per_layer


def layer_mask_elements(model: GPTConfig, *, seq: int, micro_batch: int, tp: int, sequence_parallel: bool,
                        recompute: str) -> float:
    """Dropout-mask elements among ``layer_bytes`` (each counted there as 1 byte): the attention-out
    and MLP dropouts' 2·s·b·h (replicated over tp without sequence parallel) and the attention
    probabilities' a·s²·b / t, which selective recompute drops; none under full recompute."""
    if recompute == "full":
        return 0.0
    sbh = seq * micro_batch * model.d_model
    replicated = 2 * sbh / (tp if sequence_parallel else 1)
    core = 0.0 if recompute == "selective" else model.n_heads * seq * seq * micro_batch / tp
    return replicated + core


def dropout_mask_bytes(device_kind: str, activation_bytes: int) -> int:
    """Bytes of one dropout-mask element: CUDA's fused dropout keeps bool masks (Korthikanti's 1
    byte); on a CPU ``F.dropout`` keeps a mask of the activations' dtype."""
    return activation_bytes if device_kind == "cpu" else 1


def micro_batches_in_flight(layout: Layout, *, stage: Stage) -> float:
    """Micro-batches whose activations a stage holds at its peak under 1F1B.

    The first stage holds min(pp, m) (Narayanan et al. 2021, §2.2.1); the interleaved schedule adds
    a factor 1 + (p − 1)/(p · v) (Korthikanti et al. 2022, §4.2.3). The last stage, and a model
    without a pipeline, hold one.
    """
    if stage != "first":
        return 1.0
    in_flight = min(layout.pp, layout.grad_accum)
    if layout.interleave > 1:
        in_flight *= 1 + (layout.pp - 1) / (layout.pp * layout.interleave)
    return float(in_flight)


def stage_activation_bytes(model: GPTConfig, layout: Layout, *, seq: int, stage: Stage, layers: range,
                           activation_bytes: int = 2, mask_bytes: int = 1) -> float:
    """All activations a rank of ``stage`` (holding ``layers``) keeps at its peak.

    Layers × in-flight micro-batches, plus the embedding's dropout mask (first stage), the final
    LayerNorm, LM-head input and fp32 logits of the cross-entropy, 4·s·b·V/t (last stage,
    Korthikanti §4.3), and under full recompute the one layer being recomputed. Activations take
    ``activation_bytes`` per element, dropout masks ``mask_bytes`` (``dropout_mask_bytes``).
    """
    kwargs = dict(seq=seq, micro_batch=layout.micro_batch, tp=layout.tp,
                  sequence_parallel=layout.sequence_parallel)
    moe_layers = moe_layers_in(model, layers)
    per_micro_batch = (moe_layers * layer_bytes(model, recompute=layout.recompute, moe=True, **kwargs)
                       + (len(layers) - moe_layers) * layer_bytes(model, recompute=layout.recompute, **kwargs))
    in_flight = micro_batches_in_flight(layout, stage=stage)
    sbh_rank = seq * layout.micro_batch * model.d_model / (layout.tp if layout.sequence_parallel else 1)
    total = per_micro_batch * in_flight
    masks = len(layers) * layer_mask_elements(model, recompute=layout.recompute, **kwargs) * in_flight
    if stage in ("only", "first"):
        total += sbh_rank * in_flight  # embedding dropout mask, 1 byte per element
        masks += sbh_rank * in_flight
    logits = 0.0
    if stage in ("only", "last"):
        total += 4 * sbh_rank  # final LayerNorm input and LM-head input, 2 16-bit tensors
        logits = 4 * seq * layout.micro_batch * padded_vocab(model.vocab, layout.tp) / layout.tp  # fp32 in any precision
    if layout.recompute == "full" and layers:
        total += layer_bytes(model, recompute="none", moe=model.is_moe, **kwargs)
        masks += layer_mask_elements(model, recompute="none", **kwargs)
    # the formula's bytes scale with the activations' width; the masks then take their own
    return total * activation_bytes / 2 + masks * (mask_bytes - activation_bytes / 2) + logits
