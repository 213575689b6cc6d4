"""The RLHF objectives learn, in seconds and in one process: the K-way ranking loss teaches a tiny
GPT's scalar head to rank the word-list task's answers, and PPO's pieces (sampling, per-token KL
reward, GAE, whitened advantages, the clipped surrogate, the clipped value loss) raise a toy reward
while the KL to the frozen reference stays bounded. Plain torch AdamW stands in for the DeepSpeed
engine (the distributed and e2e tests run that); the losses are the phases' own functions."""
import dataclasses
import random

import pytest
import torch

from orchestrator.config.model import tiny
from orchestrator.data.rlhf import RMExample, collate_rm
from orchestrator.data.task import TaskConfig, response_words, rm_rows
from orchestrator.data.task_words import NUMBER_WORDS, TOPICS
from orchestrator.model.gpt import GPT
from orchestrator.model.params import init_parameters, materialize, param_shards
from orchestrator.phases import rl_math
from orchestrator.phases.ppo import actor_objective, forward_rollout, response_logprobs
from orchestrator.phases.reward import ranking_loss_fn, rewards_at_eos
from orchestrator.phases.sampling import sample, sampling_generator

EOS, PAD = 0, 1


@pytest.fixture(autouse=True)
def one_thread():
    """Small matmuls: one thread is fastest, and threads spinning on a shared machine are not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(config, *, head: str, seed: int) -> GPT:
    with torch.device("meta"):
        model = GPT(config, head=head)
    model = materialize(model, torch.device("cpu"))
    init_parameters(param_shards(model), config=config, seed=seed)
    return model


# --- the reward model ---------------------------------------------------------------------------
def word_vocabulary(topics: tuple[str, ...]) -> dict[str, int]:
    """One token per word (what the run's BPE gives every task word), after EOS and PAD."""
    words = [w for t in topics for w in t.split()] + [w for t in topics for w in TOPICS[t]] + list(NUMBER_WORDS)
    words += ["list", "name", "write", "down", "give", "me", "of", "answer:"]
    return {w: i + 2 for i, w in enumerate(dict.fromkeys(words))}


def rm_examples(rows: list[dict], vocab: dict[str, int]) -> list[RMExample]:
    def ids(text: str) -> tuple[int, ...]:
        return tuple(vocab[w] for w in response_words(text))

    return [RMExample(prompt=r["prompt"], scores=tuple(r["scores"]),
                      responses=tuple(ids(r["prompt"]) + (vocab["answer:"],) + ids(resp) + (EOS,)
                                      for resp in r["responses"])) for r in rows]


def test_a_reward_model_trained_on_a_small_slice_of_rankings_ranks_held_out_answers_well_above_chance():
    torch.manual_seed(0)
    task = TaskConfig(n_topics=2, response_words=3)
    vocab = word_vocabulary(task.topics)
    config = dataclasses.replace(tiny(), vocab=len(vocab) + 2, ctx=16)
    train = rm_examples(rm_rows(task, k=4, rng=random.Random(1), n=256), vocab)
    held_out = collate_rm(rm_examples(rm_rows(task, k=4, rng=random.Random(2), n=128), vocab), pad_id=PAD)
    model = make_model(config, head="scalar", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            _, metrics = ranking_loss_fn(model, held_out)
        model.train()
        return float(metrics["pairwise_accuracy"])

    before = accuracy()
    for step in range(100):
        batch = collate_rm([train[(step * 16 + i) % len(train)] for i in range(16)], pad_id=PAD)
        loss, _ = ranking_loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after >= 0.85, (before, after)                          # chance is 0.5; untrained ≈ chance
    assert after - before >= 0.25, (before, after)
    rewards = rewards_at_eos(model, held_out)
    best, worst = rewards[:, 0], rewards[:, -1]                    # rankings are best first
    assert (best > worst).float().mean() >= 0.8


# --- PPO on a toy reward ------------------------------------------------------------------------
TARGET = 5
"""The toy reward: the share of a response's tokens that are this token."""


def toy_reward(responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((responses == TARGET).float() * mask).sum(1) / mask.sum(1).clamp(min=1)


def ppo_iteration(actor, critic, reference, optimizers, prompts, *, generator, kl_coef: float) -> dict[str, float]:
    """rollout → score → advantages → update, as ``phases/ppo.PPO.train_step`` runs them."""
    actor.eval()
    rollout = sample(actor, input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=8,
                     eos_id=EOS, pad_id=PAD, generator=generator)
    batch = {"sequences": rollout.sequences, "attention_mask": rollout.attention_mask,
             "position_ids": rollout.position_ids, "response_mask": rollout.response_mask.float(),
             "prompt_len": rollout.prompt_len}
    p, mask = rollout.prompt_len, batch["response_mask"]
    with torch.no_grad():
        batch["old_logprobs"] = response_logprobs(forward_rollout(actor, batch).logits, rollout.sequences, p)
        ref_logprobs = response_logprobs(forward_rollout(reference, batch).logits, rollout.sequences, p)
        batch["old_values"] = forward_rollout(critic, batch).logits[:, p - 1:-1].float()
    score = toy_reward(rollout.responses, mask)
    rewards, kl = rl_math.token_rewards(score, batch["old_logprobs"], ref_logprobs, mask, kl_coef=kl_coef)
    advantages, batch["returns"] = rl_math.gae(rewards, batch["old_values"], mask, gamma=1.0, lam=0.95)
    batch["advantages"] = rl_math.masked_whiten(advantages, mask)
    actor.train()
    for _ in range(4):
        loss, _ = actor_objective(actor, batch, clip_ratio=0.2, ptx_coef=0.0)
        values = forward_rollout(critic, batch).logits[:, p - 1:-1].float()
        loss = loss + rl_math.value_loss(values, batch["old_values"], batch["returns"], mask, value_clip=0.2)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    return {"reward": float(score.mean()), "kl": float(kl.mean())}


def test_ppo_on_a_toy_reward_raises_it_several_fold_at_a_bounded_kl_to_the_reference():
    torch.manual_seed(0)
    config = dataclasses.replace(tiny(), vocab=16, ctx=16, dropout=0.0)
    actor, reference = make_model(config, head="lm", seed=0), make_model(config, head="lm", seed=0).eval()
    critic = make_model(config, head="scalar", seed=1)
    optimizers = [torch.optim.AdamW(actor.parameters(), lr=3e-3), torch.optim.AdamW(critic.parameters(), lr=3e-3)]
    prompts = torch.randint(2, config.vocab, (32, 4), generator=torch.Generator().manual_seed(0))
    generator = sampling_generator(seed=0, device=torch.device("cpu"))
    history = [ppo_iteration(actor, critic, reference, optimizers, prompts, generator=generator, kl_coef=0.05)
               for _ in range(25)]
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert history[0]["kl"] == 0.0                                  # the actor starts as the reference
    assert last >= 3 * first and last >= 0.4, (first, last)         # 1/16 of tokens at the start
    # the KL penalty holds the policy well short of always emitting TARGET (8 tokens × ln 16 = 22 nats)
    assert max(h["kl"] for h in history) <= 10.0, [round(h["kl"], 2) for h in history]
