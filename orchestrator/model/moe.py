"""The mixture-of-experts FFN: DeepSpeed's ``MoE`` layer around copies of the dense MLP.

Top-k gating with a capacity factor and the load-balancing loss of GShard / Switch Transformer
(Lepikhin et al. 2020; Fedus et al. 2021, eq. 4: aux = E · Σ_e f_e · P_e). ``ep_size`` ranks share
the experts (expert parallelism, DeepSpeed-MoE, Rajbhandari et al. 2022): each holds
``n_experts / ep_size`` of them and tokens travel by all-to-all.

Routing is made deterministic (no random token selection, no sampled second expert) so that the
same data gives the same routing under every layout; that is what lets an EP=2 run reproduce the
single-process losses.
"""
from __future__ import annotations

from torch import Tensor, nn

from orchestrator.config.model import GPTConfig


def local_expert_offset(*, n_experts: int, ep_size: int, ep_rank: int) -> int:
    """Global index of this rank's first expert: experts are dealt out in contiguous blocks."""
    return ep_rank * (n_experts // ep_size)


def build_moe_ffn(config: GPTConfig, expert: nn.Module, *, ep_size: int) -> nn.Module:
    """An MoE FFN with ``config.n_experts`` copies of ``expert``, ``ep_size``-way expert parallel."""
    if config.n_experts % ep_size:
        raise ValueError(f"model {config.name}: n_experts={config.n_experts} is not divisible by ep={ep_size}: "
                         f"use ep in {[d for d in range(1, config.n_experts + 1) if config.n_experts % d == 0]}")
    from deepspeed.moe.layer import MoE  # imported here: dense models never need DeepSpeed's MoE

    class MoEFeedForward(MoE):
        """DeepSpeed's MoE returning (output, aux loss); the expert counts are dropped."""

        def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
            output, aux_loss, _expert_counts = super().forward(hidden)
            return output, aux_loss

    if config.top_k > 2:
        raise ValueError(f"model {config.name}: top_k={config.top_k}: DeepSpeed's MoE gate routes to 1 or 2 experts")
    return MoEFeedForward(
        hidden_size=config.d_model, expert=expert, num_experts=config.n_experts, ep_size=ep_size,
        k=config.top_k, capacity_factor=config.capacity_factor, eval_capacity_factor=config.capacity_factor,
        min_capacity=4, drop_tokens=True, use_rts=False, noisy_gate_policy=None,
        top2_2nd_expert_sampling=False,
    )
