"""``orchestrate import``: a Hugging Face GPT-2 / GPT-Neo folder becomes a verified pretrain phase
computing the folder's logits, and every model we cannot represent exactly is refused with nothing written."""
import json

import pytest
import torch

from orchestrator.cli import main
from orchestrator.config.loader import to_dict
from orchestrator.config.model import get_model
from orchestrator.config.run import resolve_model
from orchestrator.handoff import export
from orchestrator.handoff.errors import HandoffError
from orchestrator.handoff.hf_import import folder_hashes, import_folder
from orchestrator.handoff.manifest import read_manifest, verify_parent
from orchestrator.model.params import plain_parameter_shapes

TOL = 1e-4


def random_state(config, seed=0, zero_query_bias=False):
    """Every plain-GPT tensor random (biases and LayerNorms too), so each mapping is exercised."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in plain_parameter_shapes(config, head="lm").items():
        base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight" else 0.0
        state[name] = base + 0.1 * torch.randn(shape, generator=generator)
    if zero_query_bias:
        for i in range(config.n_layers):
            state[f"h.{i}.attn.c_attn.bias"][: config.d_attn] = 0.0
    return state


def make_tokenizer(vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 3] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def save_folder(model, tokenizer, path):
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def exported_folder(config, tokenizer, path, **state_args):
    """Our random model exported with export.py's mapping: the round trip's first half."""
    state = random_state(config, **state_args)
    model = export.build_hf_model(state, config, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    return state, model, save_folder(model, tokenizer, path)


def imported_state(run_dir):
    """The imported phase's weights as a plain state dict (read back from its shard file)."""
    from orchestrator.handoff.final import FINAL_WEIGHTS, read_tensor
    from orchestrator.handoff.sharded import ShardedReader

    reader = ShardedReader(run_dir / "pretrain" / FINAL_WEIGHTS)
    return {name: read_tensor(reader, name, sources[0].region.global_shape) for name, sources in reader.sources.items()}


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("preset", ["tiny", "tiny-local"])
def test_export_then_import_computes_the_same_logits(preset, tokenizer, tmp_path):
    config = get_model(preset)       # tiny-local: GPTNeoForCausalLM with alternating local attention
    state, model, folder = exported_folder(config, tokenizer, tmp_path / "hf", zero_query_bias=preset == "tiny-local")
    result = import_folder(folder, tmp_path / "run")
    ids = export.probe_ids(config, vocab_limit=len(tokenizer))
    ours = export.ours_logits(imported_state(tmp_path / "run"), config, ids)
    assert result.architecture == ("GPTNeoForCausalLM" if preset == "tiny-local" else "GPT2LMHeadModel")
    assert export.max_logit_diff(ours, hf_logits(model, ids)) <= TOL
    assert export.max_logit_diff(ours, export.ours_logits(state, config, ids)) <= TOL
    assert result.max_abs_logit_diff <= TOL


def test_gpt2_import_is_the_exact_inverse_of_export(tokenizer, tmp_path):
    config = get_model("tiny")
    state, _, folder = exported_folder(config, tokenizer, tmp_path / "hf")
    import_folder(folder, tmp_path / "run")
    back = imported_state(tmp_path / "run")
    assert set(back) == set(state)
    assert all(torch.equal(back[name], state[name]) for name in state)


def test_gpt_neo_import_unfolds_the_scale_and_zeroes_the_missing_biases(tokenizer, tmp_path):
    config = get_model("tiny-local")
    state, _, folder = exported_folder(config, tokenizer, tmp_path / "hf", zero_query_bias=True)
    import_folder(folder, tmp_path / "run")
    back, d = imported_state(tmp_path / "run"), config.d_attn
    for i in range(config.n_layers):
        assert torch.allclose(back[f"h.{i}.attn.c_attn.weight"], state[f"h.{i}.attn.c_attn.weight"], atol=1e-6)
        assert torch.equal(back[f"h.{i}.attn.c_attn.bias"], torch.zeros(3 * d))
        assert torch.equal(back[f"h.{i}.mlp.c_fc.weight"], state[f"h.{i}.mlp.c_fc.weight"])


def test_a_dense_gpt_neo_imports_as_dense_attention(tokenizer, tmp_path):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    hf = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=320, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                        num_heads=4, attention_types=[[["global"], 2]], intermediate_size=128)).eval()
    result = import_folder(save_folder(hf, tokenizer, tmp_path / "hf"), tmp_path / "run")
    ids = export.probe_ids(result.model, vocab_limit=len(tokenizer))
    assert result.model.attention == "dense" and result.model.ffn_mult == 4
    assert export.max_logit_diff(export.ours_logits(imported_state(tmp_path / "run"), result.model, ids),
                                 hf_logits(hf, ids)) <= TOL


def small_gpt2(tokenizer, path, **fields):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = dict(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(GPT2Config(**{**cfg, **fields})).eval()
    return model, save_folder(model, tokenizer, path)


def test_the_phase_is_a_complete_verified_pretrain_with_its_source(tokenizer, tmp_path):
    model, folder = small_gpt2(tokenizer, tmp_path / "hf")
    result = import_folder(folder, tmp_path / "run")
    manifest = verify_parent(tmp_path / "run", parent_phase="pretrain", expect_head="lm",
                             expect_model=to_dict(result.model), expect_tokenizer_hash=None)
    from orchestrator.data.tokenizer import tokenizer_info

    info = tokenizer_info(tmp_path / "run" / "data" / "tokenizer")
    assert manifest.status == "complete" and manifest.head == "lm" and manifest.parents == ()
    assert (manifest.tokenizer_hash, manifest.pad_id, manifest.eos_id) == (info.tokenizer_hash, info.pad_id, info.eos_id)
    assert manifest.tokenizer_dir == "data/tokenizer" and manifest.checkpoint == "final/shards"
    assert set(manifest.files) == {"final/shards/rank00000.safetensors", "final/shards/rank00000.json", "model.yaml"}
    assert manifest.source.kind == "hf" and manifest.source.architecture == "GPT2LMHeadModel"
    assert manifest.source.files == folder_hashes(folder) and "config.json" in manifest.source.files
    assert (result.model.n_layers, result.model.d_model, result.model.n_heads, result.model.d_head,
            result.model.ctx, result.model.vocab) == (2, 32, 4, 8, 64, 320)
    assert resolve_model(result.model_file) == result.model      # --set model=RUN_DIR/pretrain/model.yaml


def test_an_untied_head_with_the_embeddings_numbers_is_accepted(tokenizer, tmp_path):
    model, folder = small_gpt2(tokenizer, tmp_path / "hf", tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.transformer.wte.weight)
    save_folder(model, tokenizer, folder)
    assert import_folder(folder, tmp_path / "run").max_abs_logit_diff <= TOL


def nothing_written(run_dir):
    return not run_dir.exists() or not any(run_dir.rglob("*"))


@pytest.mark.parametrize("fields, reason", [
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"n_inner": 100}, "n_inner=100 is not a multiple"),
])
def test_gpt2_options_we_do_not_compute_are_refused_with_nothing_written(fields, reason, tokenizer, tmp_path):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf", **fields)
    with pytest.raises(HandoffError, match=reason.replace("(", r"\(")):
        import_folder(folder, tmp_path / "run")
    assert nothing_written(tmp_path / "run")


def test_a_gpt2_wider_mlp_that_is_a_multiple_of_the_hidden_size_is_accepted(tokenizer, tmp_path):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf", n_inner=64)
    assert import_folder(folder, tmp_path / "run").model.ffn_mult == 2


def test_an_untied_head_with_other_weights_is_refused(tokenizer, tmp_path):
    model, folder = small_gpt2(tokenizer, tmp_path / "hf", tie_word_embeddings=False)
    with pytest.raises(HandoffError, match="lm_head.weight differs from transformer.wte.weight"):
        import_folder(folder, tmp_path / "run")
    assert nothing_written(tmp_path / "run")


def test_a_gpt_neo_layer_pattern_we_cannot_express_is_refused(tokenizer, tmp_path):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    hf = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=320, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                        num_heads=4, attention_types=[[["local", "global"], 1]]))
    with pytest.raises(HandoffError, match=r"attention_layers=\['local', 'global'\]"):
        import_folder(save_folder(hf, tokenizer, tmp_path / "hf"), tmp_path / "run")
    assert nothing_written(tmp_path / "run")


def test_a_tokenizer_larger_than_the_vocab_is_refused(tokenizer, tmp_path):
    ids = len(tokenizer)
    _, folder = small_gpt2(tokenizer, tmp_path / "hf", vocab_size=ids - 1)
    with pytest.raises(HandoffError, match=f"has {ids} ids but the model's vocab_size is {ids - 1}"):
        import_folder(folder, tmp_path / "run")
    assert nothing_written(tmp_path / "run")


@pytest.mark.parametrize("remove, reason", [("config.json", "lacks config.json"),
                                            ("model.safetensors", "lacks weights"),
                                            ("tokenizer.json", "lacks a tokenizer")])
def test_a_folder_missing_a_file_is_refused_naming_it(remove, reason, tokenizer, tmp_path):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf")
    (folder / remove).unlink()
    with pytest.raises(HandoffError, match=reason):
        import_folder(folder, tmp_path / "run")
    assert nothing_written(tmp_path / "run")


def test_another_model_type_is_refused(tokenizer, tmp_path):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gptj", "architectures": ["GPTJForCausalLM"]}))
    with pytest.raises(HandoffError, match="model_type 'gptj' is not supported"):
        import_folder(folder, tmp_path / "run")


def test_an_existing_pretrain_phase_or_another_tokenizer_is_never_replaced(tokenizer, tmp_path):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf")
    import_folder(folder, tmp_path / "run")
    with pytest.raises(HandoffError, match="pretrain already exists"):
        import_folder(folder, tmp_path / "run")
    other = tmp_path / "other"
    make_tokenizer(262).save_pretrained(str(other / "data" / "tokenizer"))
    with pytest.raises(HandoffError, match="holds another tokenizer"):
        import_folder(folder, other)
    assert not (other / "pretrain").exists()


def test_the_cli_imports_and_prints_the_run_that_continues(tokenizer, tmp_path, capsys):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf")
    run_dir = tmp_path / "run"
    assert main(["import", str(folder), str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "imported GPT2LMHeadModel" in out
    assert (f"orchestrate run RECIPE --run-dir {run_dir} --from sft --set model={run_dir}/pretrain/model.yaml "
            f"--set data.tokenizer={run_dir}/data/tokenizer") in out
    assert read_manifest(run_dir / "pretrain").status == "complete"


def test_the_cli_refuses_with_exit_2_and_the_reason(tokenizer, tmp_path, capsys):
    _, folder = small_gpt2(tokenizer, tmp_path / "hf", activation_function="relu")
    assert main(["import", str(folder), str(tmp_path / "run")]) == 2
    assert "orchestrate import: error:" in capsys.readouterr().err
    assert nothing_written(tmp_path / "run")
