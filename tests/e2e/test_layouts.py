"""Pretraining through the runner under TP2, PP2 and ZeRO-2 (two CPU ranks each), the handoff of
a TP2 parent to an SFT phase under ZeRO-2 data parallelism, and the Hugging Face export of models
trained under TP2 and PP2 (SPEC §5, §8).

Every layout reads the same 4 sequences per step as the one-process tiny pipeline, so their first
steps give the same losses to fp32 round-off (only reduction orders differ). The learning rates
agree through step 3 (warm-up, then the peak; the short runs then decay over 6 steps instead of
24), so the losses of steps 1-4 compare; the ZeRO-2 run has the pipeline's 24 steps and compares
throughout.
"""
import re

import pytest
import torch

import e2e_support as e2e
from orchestrator.cli import main
from orchestrator.config.loader import from_dict
from orchestrator.config.model import GPTConfig
from orchestrator.config.run import load_run_config
from orchestrator.data.rlhf import collate_sft, load_sft
from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info
from orchestrator.handoff.checkpoint import read_latest, verify_checkpoint
from orchestrator.handoff.export import LOGIT_TOLERANCE, max_logit_diff, ours_logits
from orchestrator.model.gpt import GPT
from orchestrator.model.loss import lm_loss
from orchestrator.model.params import materialize

COMPARABLE_STEPS = 4
"""Steps whose loss depends only on updates made at learning rates both schedules share."""
LAYOUT_FIELDS = {"tp2": {"tp": 2, "pp": 1, "dp": 1, "zero_stage": 0},
                 "pp2": {"tp": 1, "pp": 2, "dp": 1, "zero_stage": 0},
                 "zero2": {"tp": 1, "pp": 1, "dp": 2, "zero_stage": 2}}
# Files that show the layout in its checkpoint: one model shard per TP rank (or pipeline stage),
# DeepSpeed's per-layer pipeline files, one ZeRO optimizer partition per data-parallel rank.
SHARD_FILES = {"tp2": ("mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"),
               "pp2": ("mp_rank_01_model_states.pt", "layer_00-model_00-model_states.pt"),
               "zero2": ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt")}


def plain_gpt(config: GPTConfig, state: dict) -> GPT:
    with torch.device("meta"):
        model = GPT(config, head="lm")
    materialize(model, torch.device("cpu")).load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["tp2", "pp2", "zero2"])
def test_pretraining_runs_under_a_two_rank_layout_and_matches_one_process(layout, pretrained, tiny_pipeline):
    run = pretrained(layout)
    done = e2e.manifest(run.run_dir, "pretrain")
    assert done.status == "complete"
    assert {key: done.layout[key] for key in LAYOUT_FIELDS[layout]} == LAYOUT_FIELDS[layout]
    assert e2e.read_json(run.run_dir / "pretrain" / "plan.json")["world"] == 2
    files = verify_checkpoint(read_latest(run.run_dir / "pretrain" / "checkpoints"))
    for name in SHARD_FILES[layout]:
        assert any(path.endswith(name) for path in files), (name, sorted(files))

    ours = e2e.records(run.run_dir, "pretrain", "train")
    one_process = e2e.records(tiny_pipeline.run_dir, "pretrain", "train")
    # zero2 runs all 24 steps on the same schedule, so its whole curve compares (measured: within 1.4e-7)
    steps = len(one_process) if layout == "zero2" else COMPARABLE_STEPS
    assert [e["loss"] for e in ours[:steps]] == pytest.approx([e["loss"] for e in one_process[:steps]], rel=1e-5)
    assert ours[-1]["loss"] < ours[0]["loss"]
    # the sharded final weights read back as one plain GPT whatever the layout: they load into one process
    config = from_dict(GPTConfig, done.model, "manifest.model")
    plain_gpt(config, e2e.final_weights(run.run_dir, "pretrain"))


def sft_eval_loss_in_one_process(run_dir, state: dict, config: GPTConfig, *, chunks: int, micro_batch: int,
                                 seq_len: int) -> float:
    """The mean LM loss of the first ``chunks`` consecutive ``micro_batch``-example chunks of
    sft_eval.jsonl: what the SFT phase's data-parallel evaluation averages (rank r takes chunks
    r, r + dp, ...; the mean of the ranks' means is the mean over all chunks)."""
    info = tokenizer_info(run_dir / "data" / "tokenizer")
    examples, _ = load_sft(run_dir / "data" / "sft_eval.jsonl", tokenizer=load_tokenizer(info.path),
                           eos_id=info.eos_id, seq_len=seq_len)
    model = plain_gpt(config, state)
    losses = []
    with torch.no_grad():
        for index in range(chunks):
            batch = collate_sft(examples[index * micro_batch:(index + 1) * micro_batch], pad_id=info.pad_id)
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses.append(float(lm_loss(logits, batch["labels"])))
    return sum(losses) / len(losses)


@pytest.mark.e2e
def test_sft_under_zero2_data_parallel_starts_from_its_tp2_parent(pretrained):
    parent = pretrained("tp2")
    run_dir = parent.run_dir
    # lr 0: the SFT weights never move, so what it hands on is exactly what it loaded
    code, output = e2e.run_recipe(run_dir, [*parent.sets, "sft.layout.zero_stage=2", "sft.optim.lr=0"],
                                  "--only", "sft", log_name="sft.log")
    assert code == 0, output[-5000:]
    sft = e2e.manifest(run_dir, "sft")
    assert sft.status == "complete" and [p.phase for p in sft.parents] == ["pretrain"]
    assert {key: sft.layout[key] for key in ("tp", "pp", "dp", "zero_stage")} == {"tp": 1, "pp": 1, "dp": 2,
                                                                                  "zero_stage": 2}
    assert e2e.manifest(run_dir, "pretrain").layout["tp"] == 2
    parent_state = e2e.final_weights(run_dir, "pretrain")
    e2e.assert_same_weights(e2e.final_weights(run_dir, "sft"), parent_state)

    # ... and the ZeRO-2 ranks computed with those weights: their eval loss is the parent's in one process
    config = from_dict(GPTConfig, sft.model, "manifest.model")
    loop = load_run_config(run_dir / "run_config.yaml").sft.loop
    expected = sft_eval_loss_in_one_process(run_dir, parent_state, config, chunks=loop.eval_batches * sft.layout["dp"],
                                            micro_batch=sft.layout["micro_batch"], seq_len=loop.seq_len)
    assert sft.metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_a_model_trained_under_a_parallel_layout_exports_to_hugging_face_with_our_logits(layout, pretrained,
                                                                                         tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = pretrained(layout)
    out = tmp_path / f"hf-{layout}"
    assert main(["export", str(run.run_dir / "pretrain"), str(out)]) == 0
    printed = capsys.readouterr().out
    reported = float(re.search(r"max \|Δlogit\| vs ours ([0-9.e+-]+)", printed).group(1))
    record = e2e.read_json(out / "export.json")
    assert record["architecture"] == "GPT2LMHeadModel"
    assert record["max_abs_logit_diff"] <= LOGIT_TOLERANCE and reported <= LOGIT_TOLERANCE

    # an independent check: load OUT offline and compare on real text
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = tokenizer(["List six fruits.\nAnswer: apple pear plum fig kiwi lime",
                     "The interpreter reads a line of input, parses it and runs it."],
                    return_tensors="pt", padding=True)["input_ids"]
    config = from_dict(GPTConfig, e2e.manifest(run.run_dir, "pretrain").model, "manifest.model")
    with torch.no_grad():
        diff = max_logit_diff(ours_logits(e2e.final_weights(run.run_dir, "pretrain"), config, ids), hf(ids).logits)
    assert diff <= LOGIT_TOLERANCE
