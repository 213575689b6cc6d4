"""An imported model is one plain state dict, so every layout computes its logits: a GPT-2 and a
GPT-Neo (alternating local attention) folder, imported in this process, are loaded under TP2 and
PP2 by one two-rank torchrun job and give the Hugging Face model's logits (fp32, ≤ 1e-4 relative
to max(1, |logit|), the export / import tolerance). The round trip too: our own random GPT (every
tensor random), exported by ``orchestrate export``'s mapping, imported back and loaded under TP2
and PP2, gives the logits our GPT computed before the export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.config.model import get_model
from orchestrator.engine.launch.ports import free_port
from orchestrator.handoff import export
from orchestrator.handoff.hf_import import import_folder

WORKER = Path(__file__).with_name("import_worker.py")
TOL = export.LOGIT_TOLERANCE
LAYOUTS = ("tp2", "pp2")

pytestmark = pytest.mark.distributed


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["a small corpus for a small tokenizer"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")


def hf_model(preset: str):
    """A random GPT2LMHeadModel (tiny) or GPTNeoForCausalLM (tiny-local: local layers of 16 tokens)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(5)
    c = get_model(preset)
    if preset == "tiny-local":
        return GPTNeoForCausalLM(GPTNeoConfig(vocab_size=c.vocab, max_position_embeddings=c.ctx, hidden_size=c.d_model,
                                              num_layers=c.n_layers, num_heads=c.n_heads, window_size=c.local_window,
                                              attention_types=export.attention_types(c.n_layers))).eval()
    return GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab, n_positions=c.ctx, n_embd=c.d_model, n_layer=c.n_layers,
                                      n_head=c.n_heads)).eval()


def exported_gpt(root: Path) -> torch.Tensor:
    """Our random tiny GPT exported to ``root/hf`` (export's mapping); returns our logits on the probe ids."""
    from orchestrator.model.params import plain_parameter_shapes

    config, generator = get_model("tiny"), torch.Generator().manual_seed(9)
    layer_norm = ("ln_1.weight", "ln_2.weight", "ln_f.weight")
    state = {name: (1.0 if name.endswith(layer_norm) else 0.0) + 0.1 * torch.randn(shape, generator=generator)
             for name, shape in plain_parameter_shapes(config, head="lm").items()}
    model = export.build_hf_model(state, config, eos_id=0, pad_id=1)
    model.save_pretrained(str(root / "hf"))
    tokenizer().save_pretrained(str(root / "hf"))
    return export.ours_logits(state, config, export.probe_ids(config, vocab_limit=300))


CASES = ("tiny", "tiny-local", "exported")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Import the three folders, run the two-rank job once; {(case, layout): (ours, expected)}."""
    root = tmp_path_factory.mktemp("import_layouts")
    cases, expected = [], {}
    for preset in CASES:
        if preset == "exported":
            expected[preset] = exported_gpt(root / preset)
        else:
            model = hf_model(preset)
            model.save_pretrained(str(root / preset / "hf"))
            tokenizer().save_pretrained(str(root / preset / "hf"))
        result = import_folder(root / preset / "hf", root / preset / "run")
        ids = export.probe_ids(result.model, vocab_limit=300)
        torch.save(ids, root / preset / "ids.pt")
        if preset != "exported":
            with torch.no_grad():
                expected[preset] = model(ids).logits
        cases += [[result.phase_dir, layout, str(root / preset / "ids.pt"), str(root / preset / f"{layout}.pt")]
                  for layout in LAYOUTS]
    (root / "job.json").write_text(json.dumps({"cases": cases}))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            str(WORKER), "--job", str(root / "job.json")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {(preset, layout): (torch.load(root / preset / f"{layout}.pt"), expected[preset])
            for preset in CASES for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_then_import_gives_our_original_logits_under_tp2_and_pp2(job, layout):
    ours, before_export = job[("exported", layout)]
    assert ours.shape == before_export.shape
    assert export.max_logit_diff(ours, before_export) <= TOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("preset", ["tiny", "tiny-local"])
def test_an_imported_model_gives_the_hf_logits_under_tp2_and_pp2(job, preset, layout):
    ours, theirs = job[(preset, layout)]
    assert ours.shape == theirs.shape
    assert export.max_logit_diff(ours, theirs) <= TOL
