"""Bring your own model and data: a random GPT-2 saved by ``transformers`` and preference data this
test writes (pairwise, a made-up preference, no labeller) go through import → SFT → RM → PPO with
the shipped ``recipes/byod-example.yaml``, its paths and fields pointed at the test's files.

The preference: a reply is four words, each "on" or "off", and more "on" is better. The SFT
demonstrations are coin flips (no preference in them), so only the comparisons teach it: the RM
must rank held-out pairs well above chance, and PPO must raise the held-out RM score of its samples
above the SFT policy's (measured by PPO with the same prompts and seed) at a bounded KL. The three
phases read three forms: parquet (SFT), gzipped JSONL (RM, with bad rows to count) and a
``save_to_disk`` DatasetDict whose ``test`` split is PPO's held-out prompts.
"""
import gzip
import json
import random

import pytest

import e2e_support as e2e
from orchestrator.engine.launch.ports import free_port

pytestmark = pytest.mark.e2e

RECIPE = e2e.REPO / "recipes" / "byod-example.yaml"
SIZES = dict(demonstrations=320, questions=240, prompts=160)


def reply(rng, ons: int) -> str:
    words = ["on"] * ons + ["off"] * (4 - ons)
    rng.shuffle(words)
    return " ".join(words)


def ask(rng) -> str:
    return f"Switch report {rng.randrange(10_000)}, please:"


def write_data(root):
    """SFT parquet, RM pairwise JSONL.gz (3 consistent pairs per prompt, some single pairs, 3 bad rows),
    PPO save_to_disk DatasetDict (train / test)."""
    import datasets

    rng = random.Random(7)
    sft = [{"q": ask(rng), "a": " ".join(rng.choice(["on", "off"]) for _ in range(4))}
           for _ in range(SIZES["demonstrations"])]
    datasets.Dataset.from_list(sft).to_parquet(str(root / "sft.parquet"))
    lines = []
    for _ in range(SIZES["questions"]):
        q = ask(rng)
        best, middle, worst = (reply(rng, n) for n in sorted(rng.sample(range(5), 3), reverse=True))
        pairs = [(best, middle), (middle, worst), (best, worst)] if rng.random() < 0.7 else [(best, worst)]
        lines += [json.dumps({"q": q, "good": b, "bad": w}) for b, w in pairs]
    lines += [json.dumps({"q": "Switch report?", "good": "on on"}),            # missing_field
              json.dumps({"q": "Switch report!", "good": "on", "bad": "on"}),  # tied_pair
              "{not json"]                                                      # bad_json
    (root / "rm.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    prompts = [{"q": ask(rng)} for _ in range(SIZES["prompts"])]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(prompts[:120]),
                          "test": datasets.Dataset.from_list(prompts[120:])}).save_to_disk(str(root / "ppo"))


def data_sets(root) -> list[str]:
    return [f"data.sft.path={root / 'sft.parquet'}", "data.sft.prompt_field=q", "data.sft.response_field=a",
            f"data.reward.path={root / 'rm.jsonl.gz'}", "data.reward.prompt_field=q", "data.reward.chosen_field=good",
            "data.reward.rejected_field=bad", f"data.ppo.path={root / 'ppo'}", "data.ppo.prompt_field=q"]


# Small and quick: a short SFT, RM and PPO on the tiny GPT-2 (every other setting is the recipe's).
FAST_SETS = ("sft.loop.steps=60", "sft.loop.save_every=0", "sft.layout.micro_batch=16",
             "reward.loop.steps=60", "reward.loop.eval_every=0", "reward.loop.save_every=0",
             "ppo.loop.steps=12", "ppo.loop.eval_every=0", "ppo.loop.save_every=0",
             "oracle_eval.prompts=40", "data.pretrain_loss_blocks=16")


def test_a_user_gpt2_and_pairwise_data_go_through_sft_rm_and_ppo_without_a_labeller(prepared):
    root = prepared.root / "byod"
    root.mkdir()
    write_data(root)
    hf_dir, run_dir = root / "hf-gpt2", root / "run"
    e2e.save_random_gpt2(prepared.data / "tokenizer", hf_dir)
    code, output = e2e.run(e2e.orchestrate("import", str(hf_dir), str(run_dir)), log=root / "import.log", cwd=root)
    assert code == 0, output[-3000:]

    sets = [f"run_dir={run_dir}", f"data.cache_dir={prepared.root / 'cache'}",
            f"data.tokenizer={run_dir / 'data' / 'tokenizer'}", *data_sets(root), *FAST_SETS,
            f"launch.master_port={free_port()}"]
    code, output = e2e.run(e2e.orchestrate("run", str(RECIPE), "--from", "sft", *e2e.as_set_flags(sets)),
                           log=root / "run.log", cwd=e2e.REPO)
    assert code == 0, output[-6000:]
    assert "pairwise: " in output and "merged into one K-way element" in output

    summary = json.loads((run_dir / "data" / "data.json").read_text())["own_data"]
    rm_report = summary["reward"]["reports"][0]
    assert rm_report["bad_rows"] == {"missing_field": 1, "tied_pair": 1, "bad_json": 1}
    assert summary["reward"]["pairwise"]["elements_by_k"].get("3", 0) > 100      # 3 pairs of a prompt → one 3-way
    assert summary["ppo"]["eval_from"] == "split test" and summary["ppo"]["eval_rows"] == 40

    manifests = {phase: e2e.manifest(run_dir, phase) for phase in ("sft", "reward", "ppo")}
    assert all(m.status == "complete" for m in manifests.values())
    for phase, m in manifests.items():
        assert m.metrics["pretrain_loss"] > 0, phase
    assert "oracle_score" not in manifests["ppo"].metrics                      # no labeller, no labeller score
    accuracy = manifests["reward"].metrics["pairwise_accuracy"]
    assert accuracy > 0.75, accuracy
    ppo = manifests["ppo"].metrics
    assert ppo["reward"] > ppo["sft_reward"] + 0.2, ppo
    assert ppo["kl"] < 3.0, ppo
