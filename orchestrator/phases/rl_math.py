"""The losses and estimators of the RLHF phases, as plain tensor functions.

Shapes: B prompts, K responses per prompt, T response tokens. ``mask`` is 1 on real response
tokens and 0 on padding. Every function is pure so tests can check it on hand-worked numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# --- reward model: K-way rankings (Ouyang et al. 2022, eq. 1) ---------------------------------
def preference_matrix(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) scores → (B, K, K) bool, [b, i, j] = response i strictly preferred to j.

    Ties carry no preference (both directions are False), and padded responses take part in
    no pair. Rankings given best-first can be turned into scores as K-1, K-2, …, 0.
    """
    both_valid = valid[:, :, None] & valid[:, None, :]
    return (scores[:, :, None] > scores[:, None, :]) & both_valid


def ranking_loss(rewards: torch.Tensor, preferred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """−(1/pairs)·Σ log σ(r_w − r_l) per prompt, averaged over prompts; and the pairwise accuracy.

    ``rewards`` (B, K) come from ONE forward pass per response; all pairs of a prompt are formed
    from them here, so a prompt with K responses costs K forwards, not K·(K−1). InstructGPT
    normalises by C(K, 2); with tied pairs dropped the number of remaining pairs takes its place.
    """
    margins = rewards[:, :, None] - rewards[:, None, :]            # (B, K, K): r_i − r_j
    weights = preferred.to(rewards.dtype)
    pairs = weights.sum(dim=(1, 2))                                 # (B,)
    has_pairs = (pairs > 0).to(rewards.dtype)
    per_prompt = -(F.logsigmoid(margins) * weights).sum(dim=(1, 2)) / pairs.clamp(min=1)
    # the mean over prompts that have pairs (0, still in the graph, when none has): no host sync
    loss = (per_prompt * has_pairs).sum() / has_pairs.sum().clamp(min=1)
    correct = ((margins > 0).to(rewards.dtype) * weights).sum()
    accuracy = correct / pairs.sum().clamp(min=1)
    return loss, accuracy


# --- PPO (Schulman et al. 2017) with the InstructGPT reward (Ouyang et al. 2022, eq. 2) -------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def whiten_together(values: list[torch.Tensor], masks: list[torch.Tensor], eps: float = 1e-8) -> list[torch.Tensor]:
    """``masked_whiten`` over several (B_i, T_i) micro-batches at once: one mean and variance over
    every real token of all of them (rollout micro-batches stop at their own longest response, so
    their widths differ and they cannot be concatenated)."""
    real = torch.cat([v[m.bool()] for v, m in zip(values, masks)])
    mean = real.mean()
    scale = torch.rsqrt(((real - mean) ** 2).mean() + eps)
    return [(v - mean) * scale * m for v, m in zip(values, masks)]


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −β·(log π − log π_SFT) at every response token, plus the RM score at the last.

    Returns (rewards (B, T), per-sequence KL (B,)) where KL is Σ_t (log π − log π_SFT), the
    sampled estimate of KL(π ‖ π_SFT) for each response.
    """
    log_ratio = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * log_ratio
    last = last_token_index(mask)                                   # (B,)
    rewards[torch.arange(score.shape[0], device=rewards.device), last] += score
    return rewards * mask, log_ratio.sum(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded (B, T) mask."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): A_t = Σ_l (γλ)^l δ_{t+l},
    δ_t = r_t + γ·V_{t+1} − V_t, with V = 0 after the last response token. Returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * live
        next_value = torch.where(live.bool(), values[:, t], next_value)
        next_advantage = torch.where(live.bool(), advantage, next_advantage)
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, clip_ratio: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate, max(−A·ρ, −A·clip(ρ, 1±ε)), with clip fraction and approx-KL (k3 estimator)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               *, value_clip: float) -> torch.Tensor:
    """½·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²), the clipped value loss of PPO2."""
    clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical over the vocabulary: (…, V) → (…)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V)/Var(R) over response tokens: 1 is a perfect critic, 0 no better than a constant."""
    residual = returns - values
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1.0 - var_residual / var_returns.clamp(min=1e-8)


@dataclass(frozen=True)
class RewardUnits:
    """x ↦ (x − offset) / scale: the RM's (and the RM-initialised critic's) outputs in reward units.
    Identity by default; with the SFT rollouts' mean and std as offset and scale, SFT's samples score
    0 on average (InstructGPT §C.3's RM bias) with unit spread."""

    offset: float = 0.0
    scale: float = 1.0

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.offset) / self.scale


@dataclass
class AdaptiveKL:
    """Ziegler et al. 2019, §2.2: β ← β·(1 + K_β·e), e = clip(KL/KL_target − 1, −0.2, 0.2), K_β = 0.1."""

    value: float
    target: float
    gain: float = 0.1

    def update(self, kl: float) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + self.gain * error
        return self.value
