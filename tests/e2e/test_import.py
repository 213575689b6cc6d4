"""``orchestrate import`` then ``orchestrate run --only sft``: SFT starts from the imported
GPT-2's exact weights, with the data step run on the imported tokenizer (no file edited by hand).

The Hugging Face folder is a small random ``GPT2LMHeadModel`` of the tiny shape saved by
``save_pretrained`` with the run's tokenizer. The proof that SFT started from it: SFT's manifest
pins the imported pretrain manifest as its parent, and SFT's first logged loss (the loss of its
first batch before any update, dropout off) equals the loss ``transformers`` computes with the
folder's model on that same batch.
"""
import pytest
import torch

import e2e_support as e2e
from orchestrator.data.mixture import shuffled_positions
from orchestrator.data.rlhf import collate_sft, load_sft
from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info
from orchestrator.handoff.hashing import sha256_file

pytestmark = pytest.mark.e2e


def first_batch_loss(model, run_dir, *, seed, micro_batch, seq_len):
    """The HF model's mean token loss on SFT's first micro-batch (the SFT phase's batch order)."""
    info = tokenizer_info(run_dir / "data" / "tokenizer")
    examples, _ = load_sft(run_dir / "data" / "sft_train.jsonl", tokenizer=load_tokenizer(info.path),
                           eos_id=info.eos_id, seq_len=seq_len)
    rows = shuffled_positions(len(examples), seed=seed, start=0, count=micro_batch)
    batch = collate_sft([examples[i] for i in rows], pad_id=info.pad_id)
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100))


def test_sft_continues_from_an_imported_gpt2(prepared):
    root = prepared.root / "imported"
    root.mkdir()
    hf_dir, run_dir = root / "hf-gpt2", root / "run"
    model = e2e.save_random_gpt2(prepared.data / "tokenizer", hf_dir)

    code, output = e2e.run(e2e.orchestrate("import", str(hf_dir), str(run_dir)), log=root / "import.log", cwd=root)
    assert code == 0, output[-3000:]
    assert "continue with:" in output

    sets = [*prepared.sets, f"model={run_dir / 'pretrain' / 'model.yaml'}",
            f"data.tokenizer={run_dir / 'data' / 'tokenizer'}",
            "sft.pretrain_mix=0"]                      # the first batch: SFT rows only, to recompute it here
    code, output = e2e.run_recipe(run_dir, sets, "--only", "sft")
    assert code == 0, output[-5000:]
    assert "[data] $ " in output                       # the data step ran, on the imported tokenizer

    sft = e2e.manifest(run_dir, "sft")
    assert sft.status == "complete"
    assert sft.parent.phase == "pretrain"
    assert sft.parent.sha256 == sha256_file(run_dir / "pretrain" / "manifest.json")
    assert sft.tokenizer_hash == e2e.manifest(run_dir, "pretrain").tokenizer_hash

    first = e2e.records(run_dir, "sft", "train")[0]
    assert first["step"] == 1
    expected = first_batch_loss(model, run_dir, seed=1234, micro_batch=4, seq_len=64)
    assert first["loss"] == pytest.approx(expected, abs=1e-5, rel=0)
