"""The mixture-of-experts FFN: DeepSpeed's ``MoE`` layer around copies of the dense MLP.

Top-k gating with a capacity factor and the load-balancing loss of GShard / Switch Transformer
(Lepikhin et al. 2020; Fedus et al. 2021, eq. 4: aux = E · Σ_e f_e · P_e). ``ep_size`` ranks share
the experts (expert parallelism, DeepSpeed-MoE, Rajbhandari et al. 2022): each holds
``n_experts / ep_size`` of them and tokens travel by all-to-all.

Routing is made deterministic (no random token selection, no sampled second expert) so that the
same data gives the same routing under every layout; that is what lets an EP=2 run reproduce the
single-process losses.

Under tensor parallelism the experts are **split over the TP group**, like the dense MLP
(DeepSpeed's ``enable_expert_tensor_parallelism``; ``apply_tp`` makes each expert's c_fc
column-parallel and its c_proj row-parallel), not replicated: the planner counts
n_experts / ep experts of (8h² + 5h) / tp parameters per rank (``plan.partition``). DeepSpeed then
builds the expert groups from the grid (``groups._create_expert_data_and_model_parallel``): the ep
ranks of an expert group are consecutive data-parallel ranks of one TP slice and one stage, and
each TP rank sends only 1/tp of the tokens through the all-to-all (its ``drop_tokens``), gathering
them back within the TP group around the experts.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from orchestrator.config.model import GPTConfig
from orchestrator.model.gpt import MLP


def local_expert_offset(*, n_experts: int, ep_size: int, ep_rank: int) -> int:
    """Global index of this rank's first expert: experts are dealt out in contiguous blocks."""
    return ep_rank * (n_experts // ep_size)


class ExpertMLP(MLP):
    """One expert: the dense MLP (same parameters, same names), run on DeepSpeed's dispatched
    block (ep, local experts, capacity, h) as (tokens, 1, h) — the 3-D shape Megatron's
    tensor-parallel linears expect in their backward when the experts are split over tp."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, 1, x.shape[-1])).reshape(x.shape)


def build_moe_ffn(config: GPTConfig, *, ep_size: int) -> nn.Module:
    """An MoE FFN with ``config.n_experts`` copies of the MLP, ``ep_size``-way expert parallel."""
    if config.n_experts % ep_size:
        raise ValueError(f"model {config.name}: n_experts={config.n_experts} is not divisible by ep={ep_size}: "
                         f"use ep in {[d for d in range(1, config.n_experts + 1) if config.n_experts % d == 0]}")
    from deepspeed.moe.layer import MoE  # imported here: dense models never need DeepSpeed's MoE

    class MoEFeedForward(MoE):
        """DeepSpeed's MoE returning (output, aux loss); the expert counts are dropped."""

        def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
            output, aux_loss, _expert_counts = super().forward(hidden)
            return output, aux_loss

    _use_gloo_safe_token_gather()
    if config.top_k > 2:
        raise ValueError(f"model {config.name}: top_k={config.top_k}: DeepSpeed's MoE gate routes to 1 or 2 experts")
    ffn = MoEFeedForward(
        hidden_size=config.d_model, expert=ExpertMLP(config), num_experts=config.n_experts, ep_size=ep_size,
        k=config.top_k, capacity_factor=config.capacity_factor, eval_capacity_factor=config.capacity_factor,
        min_capacity=4, drop_tokens=True, use_rts=False, noisy_gate_policy=None,
        top2_2nd_expert_sampling=False, enable_expert_tensor_parallelism=True,
    )
    ffn.register_state_dict_post_hook(_drop_empty_extra_state)
    return ffn


def _drop_empty_extra_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """Megatron's tensor-parallel linears put ``_extra_state: None`` in their state dict (TE
    compatibility); DeepSpeed's per-expert checkpoint (``_save_moe_checkpoint``) clones every
    expert entry and fails on it once the experts are split over tp. The entry carries nothing, and
    Megatron's own load pre-hook puts it back (``state_dict.setdefault(prefix + "_extra_state")``)."""
    empty = [key for key, value in state_dict.items()
             if key.startswith(prefix) and key.endswith("_extra_state") and value is None]
    for key in empty:
        del state_dict[key]


def _use_gloo_safe_token_gather() -> None:
    """DeepSpeed's ``moe.mappings._gather_tokens`` (the all-gather over the TP group around the
    experts) hands ``all_gather_into_tensor`` a flat output buffer and a shaped input; gloo checks
    each chunk of the output against the input's shape and refuses ("invalid tensor size ...
    expected (4, 32, 64), got (8192)"). The same gather with the input flattened moves the same
    bytes into the same buffer, so DeepSpeed's function is swapped for it (NCCL accepts either)."""
    import deepspeed
    from deepspeed.moe import mappings
    from deepspeed.utils.bwc import bwc_tensor_model_parallel_group, bwc_tensor_model_parallel_world_size

    if getattr(mappings._gather_tokens, "gloo_safe", False):
        return

    def gather_tokens(input_: Tensor, dim: int = 0) -> Tensor:
        mpu = deepspeed.utils.groups.mpu
        input_ = input_.contiguous()
        world_size = bwc_tensor_model_parallel_world_size(mpu)
        if world_size == 1:
            return input_
        gathered = input_.new_empty(world_size * input_.numel())
        deepspeed.comm.all_gather_into_tensor(gathered, input_.reshape(-1), group=bwc_tensor_model_parallel_group(mpu))
        pieces = [part.view_as(input_) for part in gathered.chunk(world_size)]
        return torch.cat(pieces, dim=dim)

    gather_tokens.gloo_safe = True  # type: ignore[attr-defined]
    mappings._gather_tokens = gather_tokens
