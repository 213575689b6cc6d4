import json
import math

import pytest
import torch

from orchestrator.config.loader import to_dict
from orchestrator.config.model import get_model
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.export import export_phase
from orchestrator.handoff.final import FINAL_WEIGHTS, write_whole_tensors
from orchestrator.handoff.manifest import complete_manifest, start_manifest, write_manifest
from orchestrator.model.params import plain_parameter_shapes


def random_state(config, *, zero_query_bias=False, seed=0):
    """Every parameter random, biases and LayerNorms included, so the mapping of each one is tested."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in plain_parameter_shapes(config, head="lm").items():
        base = 1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight" else 0.0
        state[name] = base + 0.1 * torch.randn(shape, generator=generator)
    if zero_query_bias:
        for i in range(config.n_layers):
            state[f"h.{i}.attn.c_attn.bias"][: config.d_attn] = 0.0
    return state


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>")
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    fast.save_pretrained(str(path))
    return path


def make_phase(run_dir, tokenizer_dir, config, state, *, phase="pretrain", head="lm"):
    from transformers import AutoTokenizer

    from orchestrator.data.tokenizer import tokenizer_hash
    import shutil

    shutil.copytree(tokenizer_dir, run_dir / "data" / "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    directory = run_dir / phase
    write_whole_tensors(directory / FINAL_WEIGHTS, state.items())
    manifest = start_manifest(run_dir, phase=phase, model=to_dict(config), tokenizer_hash=tokenizer_hash(tok),
                              pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, head=head, layout={},
                              tokenizer_dir="data/tokenizer")
    write_manifest(directory, complete_manifest(manifest, directory, step=1, checkpoint=FINAL_WEIGHTS, metrics={}))
    return directory


def test_gpt2_export_loads_offline_and_matches_our_logits(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = get_model("tiny")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config))
    result = export_phase(phase, tmp_path / "hf")
    assert result.architecture == "GPT2LMHeadModel" and result.max_abs_logit_diff < 1e-5
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == config.n_layers
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert tokenizer.eos_token == "<|endoftext|>" and model.config.eos_token_id == tokenizer.eos_token_id
    assert json.loads((tmp_path / "hf" / "export.json").read_text())["source_manifest"].endswith("pretrain/manifest.json")


def test_export_streams_into_several_safetensors_shards_with_an_index(tmp_path, tokenizer_dir):
    """A shard limit below the model's size: every file under it, the index maps every tensor, and
    ``from_pretrained`` reads the folder to our logits."""
    from safetensors import safe_open

    config = get_model("tiny")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config))
    limit = 64 * 1024
    result = export_phase(phase, tmp_path / "hf", max_shard_bytes=limit)
    assert result.max_abs_logit_diff < 1e-5
    files = sorted((tmp_path / "hf").glob("model-*.safetensors"))
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and set(index["weight_map"].values()) == {f.name for f in files}
    stored = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            stored.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
    assert set(stored) == set(index["weight_map"])
    assert stored["transformer.h.0.attn.c_attn.weight"] == [config.d_model, 3 * config.d_attn]   # Conv1D (in, out)
    assert all(f.stat().st_size <= limit + 4096 or len(json.loads(_header(f))) == 2 for f in files)


def _header(path):
    """A safetensors file's JSON header (its tensors and ``__metadata__``)."""
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[8:8 + length].decode()


def test_alternating_attention_exports_to_gpt_neo_with_its_window_and_unscaled_attention(tmp_path, tokenizer_dir):
    config = get_model("tiny-local")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config, zero_query_bias=True))
    result = export_phase(phase, tmp_path / "hf")
    assert result.architecture == "GPTNeoForCausalLM" and result.max_abs_logit_diff < 1e-5


def test_gpt_neo_refuses_a_query_bias_it_cannot_hold_unless_approximate(tmp_path, tokenizer_dir):
    config = get_model("tiny-local")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config))
    with pytest.raises(HandoffError, match="non-zero query bias .* --approximate"):
        export_phase(phase, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    result = export_phase(phase, tmp_path / "hf", approximate=True)
    assert result.approximate and 0 < result.max_abs_logit_diff and math.isfinite(result.max_abs_logit_diff)


def test_export_refuses_an_edited_checkpoint_and_a_scalar_head(tmp_path, tokenizer_dir):
    config = get_model("tiny")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config))
    with open(phase / FINAL_WEIGHTS / "rank00000.safetensors", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(HandoffError, match="rank00000.safetensors .* does not match its recorded sha256"):
        export_phase(phase, tmp_path / "hf")
    reward = make_phase(tmp_path / "run2", tokenizer_dir, config, random_state(config), phase="pretrain", head="scalar")
    with pytest.raises(HandoffError, match="scalar head: GPT-2 / GPT-Neo carry an LM head only"):
        export_phase(reward, tmp_path / "hf")


def test_export_refuses_a_tokenizer_other_than_the_one_trained_with(tmp_path, tokenizer_dir):
    config = get_model("tiny")
    phase = make_phase(tmp_path / "run", tokenizer_dir, config, random_state(config))
    other = tmp_path / "other"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok.eos_token = "<|pad|>"
    tok.save_pretrained(str(other))
    with pytest.raises(HandoffError, match="is not the one pretrain was trained with"):
        export_phase(phase, tmp_path / "hf", tokenizer_dir=str(other))
