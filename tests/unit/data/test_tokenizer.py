import json
import pytest

import orchestrator.data.tokenizer as tokenizer_module
from orchestrator.data.report import DataError
from orchestrator.data.tokenizer import (EOS_TOKEN, PAD_TOKEN, ensure_trained_tokenizer, load_tokenizer, tokenizer_info,
                                         train_bpe)


def test_trained_bpe_has_eos_and_pad_and_stays_within_the_vocab(tokenizer_dir):
    info = tokenizer_info(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    assert info.vocab_size <= 400
    assert tokenizer.convert_ids_to_tokens([info.eos_id, info.pad_id]) == [EOS_TOKEN, PAD_TOKEN]
    text = "Byte-level BPE encodes anything: naïve café ☕"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert max(tokenizer(text)["input_ids"]) < info.vocab_size


def test_training_is_deterministic(tmp_path, paragraphs):
    texts = paragraphs(120)
    train_bpe(texts, vocab_size=350, out_dir=tmp_path / "a")
    train_bpe(texts, vocab_size=350, out_dir=tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert tokenizer_info(tmp_path / "a").tokenizer_hash == tokenizer_info(tmp_path / "b").tokenizer_hash


def test_the_hash_changes_with_the_tokenizer(tmp_path, tokenizer_dir, paragraphs):
    train_bpe(paragraphs(120), vocab_size=350, out_dir=tmp_path / "other")
    assert tokenizer_info(tmp_path / "other").tokenizer_hash != tokenizer_info(tokenizer_dir).tokenizer_hash


def test_a_trained_tokenizer_is_cached_by_corpus_and_vocab(tmp_path, monkeypatch, paragraphs):
    texts = paragraphs(80)
    first = ensure_trained_tokenizer(texts=texts, n_texts=None, corpus_fingerprints=["abc"], vocab_size=320,
                                     cache_dir=tmp_path)

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokenizer_module, "train_bpe", must_not_train)
    again = ensure_trained_tokenizer(texts=texts, n_texts=None, corpus_fingerprints=["abc"], vocab_size=320,
                                     cache_dir=tmp_path)
    assert again == first
    with pytest.raises(AssertionError, match="should have been reused"):  # another vocab is another entry
        ensure_trained_tokenizer(texts=texts, n_texts=None, corpus_fingerprints=["abc"], vocab_size=330,
                                 cache_dir=tmp_path)


def test_a_local_tokenizer_without_pad_pads_with_eos(tmp_path, tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    tokenizer = load_tokenizer(tokenizer_dir)
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token=EOS_TOKEN)
    bare.save_pretrained(str(tmp_path / "bare"))
    info = tokenizer_info(tmp_path / "bare")
    assert info.pad_id == info.eos_id == tokenizer.convert_tokens_to_ids(EOS_TOKEN)


def test_missing_tokenizer_folder_and_too_small_model_are_refused(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match=f"tokenizer folder {tmp_path / 'none'} not found"):
        load_tokenizer(tmp_path / "none")
    with pytest.raises(DataError, match="model's vocab is 100: set model.vocab >= "):
        tokenizer_info(tokenizer_dir).check_fits(100)


def test_task_words_become_single_tokens_of_the_trained_bpe(tmp_path, paragraphs):
    from orchestrator.config.run import DataConfig, SourceConfig
    from orchestrator.data.pretrain import prepare_tokenizer
    from orchestrator.data.task_words import TOPICS
    from orchestrator.data.tokenizer import load_tokenizer

    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in paragraphs(200)))
    lengths = {}
    for repeats in (0, 1500):
        data = DataConfig(sources=[SourceConfig(name="a", path=str(source))], vocab_size=2048,
                          cache_dir=str(tmp_path / "cache"), tokenizer_task_repeats=repeats)
        tokenizer = load_tokenizer(prepare_tokenizer(data).path)
        words = [" " + w for ws in TOPICS.values() for w in ws]
        lengths[repeats] = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]
    assert max(lengths[1500]) == 1          # every task word is one token, as the RM should see it
    assert sum(lengths[0]) > len(lengths[0])
