import datasets
import numpy as np
import pytest

from orchestrator.data.packing import IGNORE_INDEX, Blocks, ensure_stream
from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir), tokenizer_info(tokenizer_dir)


def pack(docs, tok, tmp_path, key="k"):
    tokenizer, info = tok
    return ensure_stream(datasets.Dataset.from_dict({"text": docs}), tokenizer=tokenizer, eos_id=info.eos_id,
                         vocab_size=info.vocab_size, key={"test": key}, cache_dir=tmp_path)


def test_the_stream_is_every_document_followed_by_eos(tok, tmp_path, paragraphs):
    tokenizer, info = tok
    docs = paragraphs(7)
    stream = pack(docs, tok, tmp_path)
    expected = [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [info.eos_id]]
    assert stream.tokens().tolist() == expected
    assert stream.n_documents == 7 and stream.n_tokens == len(expected) and stream.dtype == "uint16"


@pytest.mark.parametrize("seq_len", [5, 16, 64])
def test_blocks_lose_no_token_and_pad_only_the_end(tok, tmp_path, paragraphs, seq_len):
    stream = pack(paragraphs(5), tok, tmp_path).tokens()
    blocks = Blocks(tokens=stream, seq_len=seq_len)
    inputs, labels = blocks.gather(np.arange(len(blocks)), pad_id=tok[1].pad_id)
    assert inputs.shape == labels.shape == (len(blocks), seq_len)
    targets = labels.reshape(-1)
    n_padded = int((targets == IGNORE_INDEX).sum())
    assert n_padded < seq_len                                               # only the last block is padded
    assert targets[: targets.size - n_padded].tolist() == stream[1:].tolist()  # every target once, in order
    assert inputs.reshape(-1)[: stream.size - 1].tolist() == stream[:-1].tolist()
    assert (inputs[:, 1:] == labels[:, :-1])[labels[:, :-1] != IGNORE_INDEX].all()  # labels = inputs shifted


def test_the_stream_is_cached_by_its_key(tok, tmp_path, paragraphs):
    first = pack(paragraphs(3), tok, tmp_path, key="same")
    again = pack(["different text that the cache must not look at"], tok, tmp_path, key="same")
    other = pack(["different text"], tok, tmp_path, key="other")
    assert again.path == first.path and again.n_tokens == first.n_tokens
    assert other.path != first.path and other.n_documents == 1


def test_a_block_index_out_of_range_is_refused(tok, tmp_path, paragraphs):
    blocks = Blocks(tokens=pack(paragraphs(2), tok, tmp_path).tokens(), seq_len=8)
    with pytest.raises(IndexError, match=f"block {len(blocks)} out of range"):
        blocks.window(len(blocks))
