"""The bring-your-own example (``recipes/byod-example.yaml``): its data and a stand-in GPT-2 folder.

    python scripts/make_byod_example.py runs/byod-hf          # the GPT-2 folder (the data ships)
    python scripts/make_byod_example.py runs/byod-hf --data   # also rewrite recipes/data/byod/

The data is a made-up preference with nothing of the shipped word-list task in it: a question asks
for a 4-word market forecast, each word "up" or "down", and a forecast with more "up" is better.
Demonstrations are written without that preference (each word a coin flip); comparisons hold, for
most questions, three forecasts as three pairwise rows (which merge into one 3-way ranking) and
for the rest one pair. Fields are named as a user's file might name them (question, answer,
better, worse). The GPT-2 folder is a random ``GPT2LMHeadModel`` of the ``tiny`` shape saved with
``save_pretrained`` and the project's BPE tokenizer (trained on the embedded corpus, cached).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "recipes" / "data" / "byod"
WORDS = ("up", "down")


def question(rng: random.Random) -> str:
    return f"What will stock {rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randrange(100)} do next week?"


def forecast(rng: random.Random, ups: int) -> str:
    words = ["up"] * ups + ["down"] * (4 - ups)
    rng.shuffle(words)
    return " ".join(words)


def example_rows(seed: int = 0, *, demonstrations: int = 800, questions: int = 500, prompts: int = 400):
    """(demonstrations, pairwise comparisons, prompts) rows."""
    rng = random.Random(seed)
    sft = [{"question": question(rng), "answer": " ".join(rng.choice(WORDS) for _ in range(4))}
           for _ in range(demonstrations)]
    pairs = []
    for _ in range(questions):
        q = question(rng)
        ups = sorted(rng.sample(range(5), 3), reverse=True)
        best, middle, worst = (forecast(rng, n) for n in ups)
        chosen = [(best, middle), (middle, worst), (best, worst)] if rng.random() < 0.7 else [(best, worst)]
        pairs += [{"question": q, "better": b, "worse": w} for b, w in chosen]
    ppo = [{"question": question(rng)} for _ in range(prompts)]
    return sft, pairs, ppo


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_data(out: Path = DATA_DIR) -> None:
    sft, pairs, ppo = example_rows()
    write_jsonl(out / "demonstrations.jsonl", sft)
    write_jsonl(out / "comparisons.jsonl", pairs)
    write_jsonl(out / "prompts.jsonl", ppo)


def save_gpt2(out: Path, *, seed: int = 0) -> None:
    """A random tiny-shape GPT2LMHeadModel and the project's trained BPE, as ``save_pretrained`` writes them."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.config.run import DataConfig
    from orchestrator.data.pretrain import prepare_tokenizer
    from orchestrator.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(prepare_tokenizer(DataConfig()).path)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_dir", help="where to save the random GPT-2 folder")
    parser.add_argument("--data", action="store_true", help=f"also rewrite the example data in {DATA_DIR}")
    args = parser.parse_args()
    if args.data:
        write_data()
        print(f"wrote {DATA_DIR}/{{demonstrations,comparisons,prompts}}.jsonl")
    save_gpt2(Path(args.hf_dir))
    print(f"saved a random GPT2LMHeadModel and its tokenizer in {args.hf_dir}; next: orchestrate import {args.hf_dir} "
          f"runs/byod")


if __name__ == "__main__":
    main()
