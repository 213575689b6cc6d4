"""The reward model (InstructGPT, Ouyang et al. 2022 §3.5): the SFT model with its LM head
replaced by a scalar head read at each response's EOS, trained on K-way rankings.

All K responses of a prompt form one batch element: each is run forward once and the
K·(K−1)/2 pairs are formed from the K rewards (``rl_math.ranking_loss``), so a prompt costs K
forwards, not one per pair — InstructGPT's reason for batching rankings this way (it also keeps
the correlated pairs of one prompt from overfitting).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from orchestrator.config.run import SamplingConfig
from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.rlhf import collate_rm, load_rm
from orchestrator.phases import outputs, rl_math
from orchestrator.phases.context import load_run_tokenizer, parent_head, parent_shards
from orchestrator.phases.outputs import frozen_model, phase_device, run_dtype
from orchestrator.phases.pretrain_loss import PretrainLoss
from orchestrator.phases.sampling import rank_batches, sample, sampling_generator, sums_over_ranks
from orchestrator.phases.sft import phase_file, run_labeller
from orchestrator.phases.supervised import SupervisedPhase


def rewards_at_eos(forward, batch: dict) -> torch.Tensor:
    """(B, K) rewards in fp32 (the ranking loss and accuracy are computed in fp32 whatever the
    model's dtype): one forward over the B·K responses, the scalar head read at each EOS."""
    batch_size, k, seq = batch["input_ids"].shape
    values = forward(batch["input_ids"].view(batch_size * k, seq)).logits        # (B·K, T)
    eos = batch["eos_index"].view(batch_size * k, 1)
    return values.gather(1, eos).view(batch_size, k).float()


def ranking_loss_fn(forward, batch: dict):
    rewards = rewards_at_eos(forward, batch)
    loss, accuracy = rl_math.ranking_loss(rewards, rl_math.preference_matrix(batch["scores"], batch["valid"]))
    return loss, {"pairwise_accuracy": accuracy.detach(), "reward_mean": rewards.detach().mean()}


def write_policy_rankings(model, *, prompts: list[str], out: Path, k: int, labeller, tokenizer, eos_id: int,
                          pad_id: int, sampling: SamplingConfig, seed: int, template=None,
                          batch_prompts: int = 32) -> None:
    """K samples per prompt from ``model``, ranked best first by ``labeller``, as RM JSONL.

    Written atomically, so a resumed reward phase reads the same rankings instead of sampling again.
    """
    from orchestrator.data.format import DEFAULT, decode_response, encode_prompts
    from orchestrator.data.labeller import rank
    from orchestrator.data.rlhf import PromptExample, collate_prompts
    from orchestrator.handoff.hashing import atomic_write_text

    device = next(model.parameters()).device
    generator = sampling_generator(seed=seed, device=device)
    rows = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        ids = encode_prompts(tokenizer, chunk, template=template or DEFAULT)
        examples = [PromptExample(prompt=p, ids=tuple(i)) for p, i in zip(chunk, ids) for _ in range(k)]
        batch = collate_prompts(examples, pad_id=pad_id)
        rollout = sample(model, input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         max_new_tokens=sampling.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                         temperature=sampling.temperature, top_p=sampling.top_p, generator=generator)
        texts = [decode_response(tokenizer, r, eos_id=eos_id) or "..." for r in rollout.responses.cpu()]
        for i, prompt in enumerate(chunk):
            ranked, scores = rank(labeller, prompt, texts[i * k:(i + 1) * k])
            rows.append({"prompt": prompt, "responses": ranked, "scores": scores})
    atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))


class Reward(SupervisedPhase):
    name = "reward"
    head = "scalar"
    loss_fn = staticmethod(ranking_loss_fn)

    def setup(self, *, resuming: bool) -> None:
        self.tokenizer = load_run_tokenizer(self.ctx)
        sft = parent_shards(self.ctx, parent="sft", tokenizer=self.tokenizer)
        files = self.ranking_files(sft)
        tokenizer, seq_len, eos = self.tokenizer.hf(), self.config.loop.seq_len, self.tokenizer.eos_id
        template = self.ctx.config.data.prompt_template
        self.train_examples, self.data_report = load_rm(files["train"], tokenizer=tokenizer, eos_id=eos,
                                                        seq_len=seq_len, template=template)
        self.eval_examples, _ = load_rm(files["eval"], tokenizer=tokenizer, eos_id=eos, seq_len=seq_len,
                                        template=template)
        self.pretrain_loss = PretrainLoss.for_run(self.ctx.config)
        # the SFT weights; the scalar head (which the LM parent lacks) keeps its initial values
        self.build(parent=None if resuming else sft, parent_head=parent_head(self.name, "sft"))

    def ranking_files(self, sft: Path) -> dict[str, Path]:
        """The RM's train and eval rankings: the task files, or (``candidates: policy``) the SFT
        model's own samples ranked by the labeller, written once by rank 0 into the phase directory."""
        given = {split: phase_file(self.ctx, f"rm_{split}") for split in ("train", "eval")}
        if self.config.candidates == "file":
            return given
        files = {split: self.ctx.phase_dir / f"rm_policy_{split}.jsonl" for split in given}
        if self.ctx.is_main and not all(path.is_file() for path in files.values()):
            model = frozen_model(self.ctx.config.model, head="lm", shards=sft, device=phase_device(self.ctx),
                                 dtype=run_dtype(self.ctx.config))
            for index, (split, path) in enumerate(files.items()):
                prompts = [json.loads(line)["prompt"] for line in given[split].read_text().splitlines() if line.strip()]
                write_policy_rankings(model, prompts=prompts, out=path, k=self.config.k, labeller=run_labeller(self.ctx),
                                      tokenizer=self.tokenizer.hf(), eos_id=self.tokenizer.eos_id,
                                      pad_id=self.tokenizer.pad_id, sampling=self.config.sampling,
                                      seed=self.ctx.config.seed + index, template=self.ctx.config.data.prompt_template)
        outputs.barrier()
        return files

    def handoff_metrics(self, shards: Path) -> dict[str, float]:
        """``pretrain_loss`` of the reward model's trunk read through its tied token embedding (the
        scalar head has no vocabulary), from the sharded weights handed on, on rank 0."""
        loss = self.pretrain_loss.of_shards(shards, self.ctx.config.model, device=phase_device(self.ctx))
        return {} if loss is None else {"pretrain_loss": loss}

    def micro_batch_at(self, position: int, *, micro_batch: int, dp_rank: int, dp_size: int) -> dict:
        rows = shuffled_positions(len(self.train_examples), seed=self.ctx.config.seed,
                                  start=position + dp_rank * micro_batch, count=micro_batch)
        return collate_rm([self.train_examples[i] for i in rows], pad_id=self.tokenizer.pad_id)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pairwise accuracy and ranking loss over every rm_eval prompt (ties dropped)."""
        runtime = self.runtime
        model = runtime.module_for_inference()
        model.eval()
        batches = rank_batches(self.eval_examples, dp_rank=runtime.state.dp_rank, dp_size=runtime.layout.dp,
                               batch_size=runtime.layout.micro_batch, lockstep=runtime.forward_group is not None)
        correct = pairs = loss_sum = prompts = 0.0
        for chunk in batches:
            batch = {k: v.to(runtime.device) for k, v in collate_rm(chunk or self.eval_examples[:1],
                                                                     pad_id=self.tokenizer.pad_id).items()}
            rewards = rewards_at_eos(model, batch)       # a placeholder batch (None) keeps ZeRO-3 ranks in step
            if chunk is None:
                continue
            preferred = rl_math.preference_matrix(batch["scores"], batch["valid"])
            loss, accuracy = rl_math.ranking_loss(rewards, preferred)
            n_pairs = float(preferred.sum())
            correct, pairs = correct + float(accuracy) * n_pairs, pairs + n_pairs
            loss_sum, prompts = loss_sum + float(loss) * len(batch["scores"]), prompts + len(batch["scores"])
        model.train()
        correct, pairs, loss_sum, prompts = sums_over_ranks([correct, pairs, loss_sum, prompts], device=runtime.device,
                                                            group=runtime.state.dp_group)
        return {"pairwise_accuracy": correct / max(pairs, 1.0), "eval_loss": loss_sum / max(prompts, 1.0),
                "eval_pairs": pairs}
