"""One rank of a sampling test job: what PPO rollouts and oracle evaluation draw under a layout,
written as JSON by rank 0. Started by torchrun from ``test_sampling_layouts.py``; not collected.

Cases (each builds the tiny GPT with the same seed, so every layout holds the same weights):

- ``rollout``: PPO's rollout of one prompt micro-batch (``phases.ppo.sample_rollout``, nucleus
  sampling at temperature 1) and the SFT/PPO held-out oracle evaluation
  (``phases.sampling.oracle_evaluation``) — under tp=1 (one rank) or tp=2 (two ranks), each rank
  reporting its own tokens;
- ``zero3_eos``: ZeRO-3 over two data-parallel ranks whose prompts end at different steps:
  rank 0's only row draws EOS first (greedy decoding, EOS chosen as its first token), rank 1's
  does not. Every rank reports how many forwards it ran;
- ``zero3_uneven``: ZeRO-3 over two ranks evaluating 5 prompts in batches of 2 (rank 0 holds 3,
  rank 1 holds 2).

    python -m torch.distributed.run --nproc_per_node 2 sampling_worker.py --out r.json --cases rollout
"""
from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from orchestrator.config.model import get_model
from orchestrator.data.labeller import resolve
from orchestrator.config.run import OptimConfig, SamplingConfig
from orchestrator.data.format import encode_prompts
from orchestrator.data.rlhf import PromptExample, collate_prompts
from orchestrator.data.task import make_prompt
from orchestrator.data.tokenizer import load_tokenizer, train_bpe
from orchestrator.engine.build import build_runtime, init_distributed
from orchestrator.engine.parallel import shutdown_distributed
from orchestrator.phases.ppo import sample_rollout
from orchestrator.phases.sampling import oracle_evaluation, sample, sampling_generator
from orchestrator.plan.layout import Layout

SEED = 11
HANG_S = 420
"""Seconds after which a rank prints its stack and exits (the test's own timeout is longer)."""
OPTIM = OptimConfig(lr=1e-3, warmup_steps=0)
TOPICS = ("fruits", "colors", "animals", "tools", "drinks")
PROMPTS = [make_prompt(topic=topic, count=count) for topic in TOPICS for count in (2, 3, 4)]


def tokenizer(directory: Path):
    """A small byte-level BPE trained on the prompts (rank 0 writes it, the others wait)."""
    if dist.get_rank() == 0:
        train_bpe(PROMPTS * 20, vocab_size=400, out_dir=directory)
    dist.barrier()
    return load_tokenizer(directory)


def runtime(layout: Layout, vocab: int):
    config = dataclasses.replace(get_model("tiny"), vocab=vocab, dropout=0.0)
    return build_runtime(config, layout, OPTIM, total_steps=1, seed=SEED, timeout_minutes=3)


def prompt_examples(tok, prompts: list[str]) -> list[PromptExample]:
    return [PromptExample(prompt=p, ids=tuple(ids)) for p, ids in zip(prompts, encode_prompts(tok, prompts))]


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def case_rollout(tok, tp: int) -> dict:
    rt = runtime(Layout(tp=tp), vocab=len(tok))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batch = collate_prompts(prompt_examples(tok, PROMPTS[:4]), pad_id=pad)
    rollout = sample_rollout(rt, batch, sampling=SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9),
                             seed=(SEED,), eos_id=eos, pad_id=pad)
    scores = oracle_evaluation(rt.module_for_inference(), prompts=prompt_examples(tok, PROMPTS),
                               labeller=resolve("wordlist"), tokenizer=tok,
                               eos_id=eos, pad_id=pad, batch_size=4, max_new_tokens=10, temperature=1.0, top_p=1.0,
                               seed=SEED, dp_rank=rt.state.dp_rank, dp_size=rt.layout.dp, device=rt.device,
                               group=rt.state.dp_group, lockstep_group=rt.forward_group)
    return {"tokens": rollout.sequences.tolist(), "response_mask": rollout.response_mask.tolist(), "oracle": scores}


def case_zero3_eos(tok) -> dict:
    rt = runtime(Layout(zero_stage=3, dp=2), vocab=len(tok))
    model = rt.module_for_inference().eval()
    batch = collate_prompts(prompt_examples(tok, [PROMPTS[rt.state.dp_rank]]), pad_id=tok.pad_token_id)

    def draw(eos: int):                                 # each rank its own random stream, as PPO's replicas
        return sample(model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                      eos_id=eos, pad_id=tok.pad_token_id, generator=sampling_generator(seed=rt.state.dp_rank,
                                                                                        device=rt.device),
                      lockstep_group=rt.forward_group)

    probe = draw(eos=-1).responses[0]                   # no EOS: both ranks draw all 6 tokens
    probes = [torch.zeros_like(probe) for _ in range(2)]
    dist.all_gather(probes, probe)
    eos = int(probes[0][0])                             # rank 0's first token: it stops there, rank 1 goes on
    calls = count_forwards(model)
    rollout = draw(eos=eos)
    return {"forwards": calls[0], "response_mask": rollout.response_mask.tolist(),
            "probes": [p.tolist() for p in probes]}


def case_zero3_uneven(tok) -> dict:
    rt = runtime(Layout(zero_stage=3, dp=2), vocab=len(tok))
    model = rt.module_for_inference()
    calls = count_forwards(model)
    scores = oracle_evaluation(model, prompts=prompt_examples(tok, PROMPTS[:5]), labeller=resolve("wordlist"),
                               tokenizer=tok,
                               eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, batch_size=2, max_new_tokens=4,
                               temperature=1.0, top_p=1.0, seed=SEED, dp_rank=rt.state.dp_rank, dp_size=2,
                               device=rt.device, group=rt.state.dp_group, lockstep_group=rt.forward_group)
    return {"forwards": calls[0], "oracle": scores}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True)
    args = parser.parse_args()
    faulthandler.dump_traceback_later(HANG_S, exit=True)   # a rank stuck in a collective says where, then exits
    init_distributed(timeout_minutes=3)
    world, results = dist.get_world_size(), {}
    with tempfile.TemporaryDirectory() as scratch:
        shared = [scratch]
        dist.broadcast_object_list(shared, src=0)
        tok = tokenizer(Path(shared[0]) / "tokenizer")
        for case in args.cases.split(","):
            if case == "rollout":
                mine = case_rollout(tok, tp=world)
            elif case == "zero3_eos":
                mine = case_zero3_eos(tok)
            else:
                mine = case_zero3_uneven(tok)
            gathered = [None] * world
            dist.all_gather_object(gathered, mine)
            results[case] = gathered
        dist.barrier()
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"results": results}))
    shutdown_distributed()


if __name__ == "__main__":
    main()
