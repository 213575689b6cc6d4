"""The phase objectives on a real (tiny) GPT, without processes: SFT masking, the K-way RM
batch, PPO-ptx linearity in its coefficient, and KL = 0 between identical policies."""
import math

import pytest
import torch

from orchestrator.config.model import tiny
from orchestrator.data.rlhf import SFTExample, collate_sft
from orchestrator.model.gpt import GPT
from orchestrator.model.loss import lm_loss
from orchestrator.model.params import init_parameters, materialize, param_shards
from orchestrator.phases import rl_math
from orchestrator.phases.ppo import actor_objective, response_logprobs
from orchestrator.phases.reward import ranking_loss_fn
from orchestrator.phases.sampling import sample, sampling_generator


def make_model(head="lm", seed=0):
    with torch.device("meta"):
        model = GPT(tiny(), head=head)
    model = materialize(model, torch.device("cpu"))
    init_parameters(param_shards(model), config=tiny(), seed=seed)
    return model.eval()


def sft_batch():
    examples = [SFTExample(ids=(5, 6, 7, 8, 9, 10, 0), prompt_len=4), SFTExample(ids=(11, 12, 13, 14, 0), prompt_len=3)]
    return collate_sft(examples, pad_id=1)


def test_sft_loss_ignores_prompt_tokens_and_reads_response_tokens():
    batch = sft_batch()                                         # row 0: prompt 5 6 7 8 | response 9 10 EOS
    logits = torch.randn(*batch["input_ids"].shape, tiny().vocab)
    base = lm_loss(logits, batch["labels"])
    at_prompt = logits.clone()
    at_prompt[0, :3] = torch.randn(3, tiny().vocab)            # predictions of prompt tokens: not scored
    assert lm_loss(at_prompt, batch["labels"]).item() == base.item()
    other_prompt = collate_sft([SFTExample(ids=(99, 98, 97, 8, 9, 10, 0), prompt_len=4)], pad_id=1)
    assert torch.equal(other_prompt["labels"][0], batch["labels"][0])   # another prompt, the same targets
    at_response = logits.clone()
    at_response[0, 4] = torch.randn(tiny().vocab)              # the prediction of response token 10: scored
    assert lm_loss(at_response, batch["labels"]).item() != base.item()


def test_reward_batch_runs_each_of_k_responses_forward_once_and_averages_all_pairs():
    model = make_model("scalar")
    k, seq = 4, 6
    batch = {"input_ids": torch.randint(2, 100, (2, k, seq)), "eos_index": torch.full((2, k), seq - 1),
             "scores": torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.5]]),
             "valid": torch.ones(2, k, dtype=torch.bool)}
    calls = []

    def forward(input_ids, **kwargs):
        calls.append(input_ids.shape[0])
        return model(input_ids, **kwargs)

    loss, metrics = ranking_loss_fn(forward, batch)
    assert calls == [2 * k]                                     # one forward over B·K responses
    with torch.no_grad():
        rewards = model(batch["input_ids"].view(-1, seq)).logits[:, -1].view(2, k)
    per_prompt = []
    for b in range(2):
        pairs = [(i, j) for i in range(k) for j in range(k) if batch["scores"][b, i] > batch["scores"][b, j]]
        per_prompt.append(-sum(math.log(torch.sigmoid(rewards[b, i] - rewards[b, j])) for i, j in pairs) / len(pairs))
    assert loss.item() == pytest.approx(sum(per_prompt) / 2, rel=1e-5)
    assert 0.0 <= float(metrics["pairwise_accuracy"]) <= 1.0


def rollout_batch(model):
    prompts = torch.tensor([[1, 1, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    rollout = sample(model, input_ids=prompts, attention_mask=mask, max_new_tokens=4, eos_id=0, pad_id=1,
                     generator=sampling_generator(seed=0, device=torch.device("cpu")))
    batch = {"sequences": rollout.sequences, "attention_mask": rollout.attention_mask,
             "position_ids": rollout.position_ids, "response_mask": rollout.response_mask.float(),
             "prompt_len": torch.tensor(rollout.prompt_len)}
    with torch.no_grad():
        out = model(batch["sequences"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    batch["old_logprobs"] = response_logprobs(out.logits, batch["sequences"], rollout.prompt_len)
    batch["advantages"] = torch.randn_like(batch["old_logprobs"]) * batch["response_mask"]
    return batch


def test_kl_to_an_identical_reference_is_exactly_zero():
    actor, reference = make_model(seed=3), make_model(seed=3)
    batch = rollout_batch(actor)
    with torch.no_grad():
        ref = reference(batch["sequences"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    ref_logprobs = response_logprobs(ref.logits, batch["sequences"], int(batch["prompt_len"]))
    _, kl = rl_math.token_rewards(torch.zeros(2), batch["old_logprobs"], ref_logprobs, batch["response_mask"],
                                  kl_coef=0.02)
    assert kl.abs().max().item() == 0.0


def gradient(model, batch, ptx_coef):
    model.zero_grad()
    loss, _ = actor_objective(model, batch, clip_ratio=0.2, ptx_coef=ptx_coef)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def test_ptx_changes_the_update_only_through_its_coefficient():
    model = make_model(seed=1)
    batch = rollout_batch(model)
    ptx_ids = torch.randint(2, 100, (2, 8))
    batch.update(ptx_input_ids=ptx_ids, ptx_labels=ptx_ids.roll(-1, 1))
    model.train()
    g0, g1, g3 = gradient(model, batch, 0.0), gradient(model, batch, 1.0), gradient(model, batch, 3.0)
    without_ptx = {k: v for k, v in batch.items() if not k.startswith("ptx_")}
    assert torch.allclose(g0, gradient(model, without_ptx, 27.8))      # coef 0 == no ptx batch at all
    assert torch.allclose(g3 - g0, 3 * (g1 - g0), atol=1e-6)           # linear in the coefficient
    assert not torch.allclose(g1, g0)
