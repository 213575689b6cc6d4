"""PPO-ptx (InstructGPT, Ouyang et al. 2022 §3.5, eq. 2) with a per-token KL penalty.

Four models: the actor (policy, from SFT) and the critic (from the RM) are trained; the
reference (SFT) and the reward model are frozen. One step is

    rollout     sample a response per prompt with the actor (KV cache, dropout off);
    score       old log-probs (actor), reference log-probs, old values (critic), RM score at EOS;
    advantages  per-token reward −β·(log π − log π_SFT), + RM score at the last token; GAE (γ, λ);
    update      clipped policy loss + γ_ptx × pretraining LM loss in ONE backward and ONE optimizer
                step of the actor (the paper's objective, not a separate ptx step); clipped value
                loss for the critic.

All four run with dropout off (the ratio π/π_old must compare the same function, and the KL at
step 0 is then exactly 0). PPO needs whole models for sampling, so it refuses pp > 1.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from orchestrator.data.format import decode_response
from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.pretrain import build_pretrain_data
from orchestrator.data.rlhf import collate_prompts, load_prompts
from orchestrator.data.labeller import score as labeller_score
from orchestrator.engine.build import build_runtime
from orchestrator.model.loss import lm_loss
from orchestrator.phases import rl_math
from orchestrator.phases.context import RunTokenizer, load_run_tokenizer, parent_head, parent_shards
from orchestrator.phases.loop import Phase, StepOutcome
from orchestrator.phases.outputs import frozen_model
from orchestrator.phases.pretrain_loss import PretrainLoss
from orchestrator.phases.sampling import Rollout, oracle_evaluation, replica_generator, sample, sums_over_ranks
from orchestrator.phases.sft import load_eval_prompts, phase_file, run_labeller


def response_logprobs(logits: torch.Tensor, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """log π(token) of each response token: logits at t−1 score the token at t. (B, N)."""
    logp = torch.log_softmax(logits[:, prompt_len - 1:-1].float(), dim=-1)
    return logp.gather(-1, sequences[:, prompt_len:, None]).squeeze(-1)


def sample_rollout(actor, prompts: dict, *, sampling, seed: tuple[int, ...], eos_id: int, pad_id: int) -> Rollout:
    """The actor's responses to one micro-batch of prompts (dropout off). The generator is the
    replica's (``seed`` and the data-parallel rank): both TP ranks of a replica draw the same
    tokens; under ZeRO-3 the data-parallel ranks stop together (``Runtime.forward_group``)."""
    model = actor.module_for_inference()
    model.eval()
    generator = replica_generator(*seed, dp_rank=actor.state.dp_rank, device=actor.device)
    try:
        return sample(model, input_ids=prompts["input_ids"].to(actor.device),
                      attention_mask=prompts["attention_mask"].to(actor.device),
                      max_new_tokens=sampling.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                      temperature=sampling.temperature, top_p=sampling.top_p, generator=generator,
                      lockstep_group=actor.forward_group)
    finally:
        model.train()


def forward_rollout(model, batch: dict):
    """A forward over prompt + response, positions from the attention mask (left padding)."""
    return model(batch["sequences"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])


def actor_objective(forward, batch: dict, *, clip_ratio: float, ptx_coef: float):
    """The PPO-ptx objective of one micro-batch (Ouyang et al. 2022, eq. 2, negated to a loss):
    clipped policy loss on the rollout + ptx_coef × LM loss on the attached pretraining batch,
    summed so ONE backward puts both gradients into the same optimizer step."""
    p = int(batch["prompt_len"])
    logits = forward_rollout(forward, batch).logits
    logprobs = response_logprobs(logits, batch["sequences"], p)
    mask = batch["response_mask"]
    loss, stats = rl_math.policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask,
                                      clip_ratio=clip_ratio)
    metrics = {"policy_loss": loss.detach(), **stats,
               "entropy": rl_math.masked_mean(rl_math.entropy_from_logits(logits[:, p - 1:-1].detach()), mask)}
    if ptx_coef and "ptx_input_ids" in batch:
        ptx_loss = lm_loss(forward(batch["ptx_input_ids"]).logits, batch["ptx_labels"])
        loss = loss + ptx_coef * ptx_loss
        metrics["ptx_loss"] = ptx_loss.detach()
    return loss, metrics


class PPO(Phase):
    name = "ppo"
    head = "lm"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.position = 0
        """Prompts consumed by all DP ranks."""
        self.tokenizer: Optional[RunTokenizer] = None
        """The run's tokenizer (``context.load_run_tokenizer``), set by ``setup``."""
        self.reward_units: Optional[rl_math.RewardUnits] = rl_math.RewardUnits()
        """RM units → reward units; None until measured on the first rollouts (``ppo.normalize_reward``)."""

    def setup(self, *, resuming: bool) -> None:
        cfg, ppo = self.ctx.config, self.config
        self.model_config = dataclasses.replace(cfg.model, dropout=0.0)
        self.tokenizer = load_run_tokenizer(self.ctx)
        self.prompts, self.data_report = load_prompts(phase_file(self.ctx, "ppo_train"),
                                                      tokenizer=self.tokenizer.hf(),
                                                      max_prompt_len=self.model_config.ctx - ppo.max_new_tokens,
                                                      template=cfg.data.prompt_template)
        self.eval_prompts = load_eval_prompts(self)
        self.labeller = run_labeller(self.ctx)
        self.pretrain_loss = PretrainLoss.for_run(cfg)
        self.sft_level: Optional[dict[str, float]] = None
        """The SFT policy (the frozen reference) under the evaluation protocol, measured once."""
        self.ptx = build_pretrain_data(cfg.data, seq_len=ppo.loop.seq_len, seed=cfg.seed) if ppo.ptx_coef else None
        self.ptx_position = 0
        self.kl = rl_math.AdaptiveKL(value=ppo.kl_coef, target=ppo.target_kl)
        if ppo.normalize_reward:
            self.reward_units = None
        self._build_models(resuming=resuming)

    def _build_models(self, *, resuming: bool) -> None:
        sft = parent_shards(self.ctx, parent="sft", tokenizer=self.tokenizer)
        rm = parent_shards(self.ctx, parent="reward", tokenizer=self.tokenizer)
        ppo, seed = self.config, self.ctx.config.seed
        common = dict(total_steps=ppo.schedule_steps, seed=seed, ds_config=self.ctx.ds_config(),
                      device_type=self.ctx.config.cluster.device_type,
                      timeout_minutes=self.ctx.config.launch.timeout_minutes)
        actor = build_runtime(self.model_config, ppo.layout, ppo.optim, head="lm", **common)
        critic = build_runtime(self.model_config, ppo.layout, dataclasses.replace(ppo.optim, lr=ppo.critic_lr),
                               head="scalar", **common)
        if not resuming:        # each rank reads its own regions of the parents' shards
            actor.load_weights_sharded(sft, parent_head=parent_head(self.name, "sft"))
            critic.load_weights_sharded(rm, parent_head=parent_head(self.name, "reward"))
        # laid out over the actor's TP group (each rank its TP piece), or whole on the host when offloaded
        tp_group = actor.state.tp_group if actor.layout.tp > 1 and not ppo.offload_frozen else None
        frozen = dict(device=torch.device("cpu") if ppo.offload_frozen else actor.device, dtype=actor.dtype,
                      tp_group=tp_group)
        self.reference = frozen_model(self.model_config, head="lm", shards=sft, **frozen)      # the actor's dtype:
        self.reward_model = frozen_model(self.model_config, head="scalar", shards=rm, **frozen)  # KL 0 at step 1
        self.trained = {"actor": actor, "critic": critic}

    def exported_runtime(self):
        return self.trained["actor"]

    def tokenizer_info(self) -> dict:
        return self.tokenizer.manifest_fields()

    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        rows = shuffled_positions(len(self.prompts), seed=self.ctx.config.seed,
                                  start=position + dp_rank * micro_batch, count=micro_batch)
        return collate_prompts([self.prompts[i] for i in rows], pad_id=self.tokenizer.pad_id)

    # --- one PPO step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> StepOutcome:
        actor, critic = self.trained["actor"], self.trained["critic"]
        layout, minibatches = actor.layout, self.config.minibatches
        prompts = [self.micro_batch_at(self.position + i * layout.micro_batch * layout.dp,
                                       micro_batch=layout.micro_batch, dp_rank=actor.state.dp_rank, dp_size=layout.dp)
                   for i in range(layout.grad_accum * minibatches)]
        self.position += len(prompts) * layout.micro_batch * layout.dp
        experience = [self.score(self.rollout(batch, step=step, index=i)) for i, batch in enumerate(prompts)]
        if self.reward_units is None:
            self.reward_units = self.measure_reward_units(experience)
        stats = self.advantages(experience)
        if self.labeller is not None:
            stats["rollout_oracle_score"] = self.rollout_oracle(prompts, experience)
        groups = [experience[i::minibatches] for i in range(minibatches)]    # each: grad_accum micro-batches
        for _ in range(self.config.ppo_epochs):
            for group in groups:
                actor_result = actor.train_step([self.with_ptx(e) for e in group], loss_fn=self.actor_loss)
                critic_result = critic.train_step(group, loss_fn=self.critic_loss)
        if self.config.adaptive_kl:
            self.kl.update(stats["kl"])
        metrics = {**stats, **actor_result.metrics, **critic_result.metrics, "value_loss": critic_result.loss,
                   "kl_coef": self.kl.value,
                   "lr": actor_result.lr, "grad_norm": actor_result.grad_norm}
        return StepOutcome(loss=actor_result.loss, skipped=actor_result.skipped or critic_result.skipped,
                           tokens=actor_result.tokens, metrics=metrics)

    def rollout(self, prompts: dict, *, step: int, index: int) -> Rollout:
        return sample_rollout(self.trained["actor"], prompts, sampling=self.config.sampling,
                              seed=(self.ctx.config.seed, step, index), eos_id=self.tokenizer.eos_id,
                              pad_id=self.tokenizer.pad_id)

    @torch.no_grad()
    def score(self, rollout: Rollout, *, values: bool = True) -> dict:
        """Old log-probs, reference log-probs, old values and the RM score of one rollout micro-batch
        (without the critic's values when ``values`` is False: evaluation needs only KL and reward)."""
        actor, critic = self.trained["actor"], self.trained["critic"]
        batch = {"sequences": rollout.sequences, "attention_mask": rollout.attention_mask,
                 "position_ids": rollout.position_ids, "response_mask": rollout.response_mask.float()}
        p = rollout.prompt_len
        frozen = {k: v.to(next(self.reference.parameters()).device) for k, v in batch.items()}
        last = p + rl_math.last_token_index(rollout.response_mask)
        rm_values = forward_rollout(self.reward_model, frozen).logits.float()
        batch["score"] = rm_values.gather(1, last.to(rm_values.device)[:, None]).squeeze(1).to(actor.device)
        batch["ref_logprobs"] = response_logprobs(forward_rollout(self.reference, frozen).logits,
                                                  frozen["sequences"], p).to(actor.device)
        forwards = [(actor, "old_logprobs")] + ([(critic, "old_values")] if values else [])
        for runtime, key in forwards:
            model = runtime.module_for_inference()
            model.eval()
            out = forward_rollout(model, batch).logits
            model.train()
            batch[key] = response_logprobs(out, batch["sequences"], p) if key == "old_logprobs" else \
                out[:, p - 1:-1].float()
        batch["prompt_len"] = p          # a Python int: reading it never syncs with the device
        return batch

    def measure_reward_units(self, experience: list[dict]) -> rl_math.RewardUnits:
        """Mean and std of the RM score over the first step's rollouts (the SFT policy's, summed over
        the data-parallel ranks), the origin and unit of the normalized reward."""
        scores = torch.cat([b["score"].double() for b in experience])
        n, total, squares = sums_over_ranks([len(scores), float(scores.sum()), float((scores ** 2).sum())],
                                            device=scores.device, group=self.trained["actor"].state.dp_group)
        mean = total / n
        return rl_math.RewardUnits(offset=mean, scale=max((squares / n - mean ** 2) ** 0.5, 1e-6))

    def advantages(self, experience: list[dict]) -> dict[str, float]:
        """Per-token rewards and GAE for every micro-batch; advantages whitened over the rank's rollout.
        The RM score and the critic's values enter in reward units (``ppo.normalize_reward``)."""
        ppo, totals = self.config, {"kl": 0.0, "reward": 0.0, "response_length": 0.0, "eos_rate": 0.0}
        units = self.reward_units
        for batch in experience:
            mask = batch["response_mask"]
            batch["old_values"] = units.apply(batch["old_values"])
            rewards, kl = rl_math.token_rewards(units.apply(batch["score"]), batch["old_logprobs"],
                                                batch["ref_logprobs"], mask, kl_coef=self.kl.value)
            batch["advantages"], batch["returns"] = rl_math.gae(rewards, batch["old_values"], mask, gamma=ppo.gamma,
                                                                lam=ppo.lam)
            responses = batch["sequences"][:, int(batch["prompt_len"]):]
            totals["kl"] += float(kl.mean())
            totals["reward"] += float(batch["score"].mean())
            totals["response_length"] += float(mask.sum(1).mean())
            totals["eos_rate"] += float(((responses == self.tokenizer.eos_id) & mask.bool()).any(1).float().mean())
        whitened = rl_math.whiten_together([b["advantages"] for b in experience],
                                           [b["response_mask"] for b in experience])
        for batch, adv in zip(experience, whitened):
            batch["advantages"] = adv
        return {key: value / len(experience) for key, value in totals.items()}

    def rollout_oracle(self, prompts: list[dict], experience: list[dict]) -> float:
        """The labeller's mean score of this step's rollouts (a training-set view of the oracle score)."""
        tokenizer, eos, scores = self.tokenizer.hf(), self.tokenizer.eos_id, []
        for batch, scored in zip(prompts, experience):
            responses = scored["sequences"][:, int(scored["prompt_len"]):].cpu()
            scores += [labeller_score(self.labeller, p, decode_response(tokenizer, r, eos_id=eos))
                       for p, r in zip(batch["prompts"], responses)]
        return sum(scores) / len(scores)

    def with_ptx(self, batch: dict) -> dict:
        """Attach a pretraining micro-batch (PPO-ptx) to a rollout micro-batch."""
        if self.ptx is None:
            return batch
        actor = self.trained["actor"]
        size = len(batch["sequences"])
        ptx = self.ptx.train_batch(position=self.ptx_position, micro_batch=size, dp_rank=actor.state.dp_rank,
                                   dp_size=actor.layout.dp)
        self.ptx_position += size * actor.layout.dp
        return {**batch, "ptx_input_ids": ptx["input_ids"], "ptx_labels": ptx["labels"]}

    # --- losses ---------------------------------------------------------------------------------
    def actor_loss(self, forward, batch: dict):
        return actor_objective(forward, batch, clip_ratio=self.config.clip_ratio, ptx_coef=self.config.ptx_coef)

    def critic_loss(self, forward, batch: dict):
        p = int(batch["prompt_len"])
        values = self.reward_units.apply(forward_rollout(forward, batch).logits[:, p - 1:-1].float())
        mask = batch["response_mask"]
        loss = rl_math.value_loss(values, batch["old_values"], batch["returns"], mask, value_clip=self.config.value_clip)
        return loss, {"explained_variance": rl_math.explained_variance(values.detach(), batch["returns"], mask)}

    # --- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """On held-out prompts: the labeller's score (if any), the held-out RM score and the KL to the
        reference of the policy's samples; its pretrain_loss; and the SFT policy's levels (``sft_*``)."""
        actor = self.trained["actor"]

        def kl_and_reward(rollout: Rollout) -> dict[str, float]:
            scored = self.score(rollout, values=False)
            _, kl = rl_math.token_rewards(scored["score"], scored["old_logprobs"], scored["ref_logprobs"],
                                          scored["response_mask"], kl_coef=0.0)
            return {"kl": float(kl.sum()), "reward": float(scored["score"].sum())}

        metrics = self.policy_evaluation(actor.module_for_inference(), device=actor.device, extra_stats=kl_and_reward)
        if (tax := self.pretrain_loss.of_runtime(actor)) is not None:
            metrics["pretrain_loss"] = tax
        return {**metrics, **self.sft_levels()}

    def policy_evaluation(self, model, *, device, extra_stats) -> dict[str, float]:
        """The evaluation protocol (``oracle_eval``) on ``model``'s samples of the held-out prompts."""
        actor, evaluation = self.trained["actor"], self.ctx.config.oracle_eval
        return oracle_evaluation(model, prompts=self.eval_prompts, labeller=self.labeller,
                                 tokenizer=self.tokenizer.hf(), eos_id=self.tokenizer.eos_id,
                                 pad_id=self.tokenizer.pad_id, batch_size=evaluation.batch_size,
                                 max_new_tokens=evaluation.max_new_tokens, temperature=evaluation.temperature,
                                 top_p=evaluation.top_p, seed=evaluation.seed, dp_rank=actor.state.dp_rank,
                                 dp_size=actor.layout.dp, device=device, group=actor.state.dp_group,
                                 lockstep_group=actor.forward_group, extra_stats=extra_stats)

    def sft_levels(self) -> dict[str, float]:
        """The frozen SFT policy's held-out RM score (and labeller score) under the same protocol and
        seed as the actor's: the level PPO must beat (the report's reference line). Measured once."""
        if self.sft_level is None:
            actor = self.trained["actor"]

            def reward(rollout: Rollout) -> dict[str, float]:
                on_actor = dataclasses.replace(rollout, sequences=rollout.sequences.to(actor.device),
                                               attention_mask=rollout.attention_mask.to(actor.device),
                                               response_mask=rollout.response_mask.to(actor.device))
                return {"reward": float(self.score(on_actor, values=False)["score"].sum())}

            levels = self.policy_evaluation(self.reference, device=next(self.reference.parameters()).device,
                                            extra_stats=reward)
            self.sft_level = {f"sft_{key}": levels[key] for key in ("reward", "oracle_score") if key in levels}
        return self.sft_level

    def state(self) -> dict:
        units = self.reward_units
        return {"position": self.position, "ptx_position": self.ptx_position, "kl_coef": self.kl.value,
                "reward_units": None if units is None else dataclasses.asdict(units)}

    def restore(self, state: dict) -> None:
        self.position, self.ptx_position = int(state["position"]), int(state["ptx_position"])
        self.kl.value = float(state["kl_coef"])
        if state.get("reward_units") is not None:
            self.reward_units = rl_math.RewardUnits(**state["reward_units"])

    def flops_per_token(self) -> float:
        """Actor and critic trained (2 × 6N-style), plus forward passes of four models while scoring."""
        train = self.model_config.flops_per_token(self.config.loop.seq_len)
        return 2 * train + 4 * train / 3

