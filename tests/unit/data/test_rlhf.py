import json

import pytest
import torch

from orchestrator.data.format import SEPARATOR, decode_response, encode_prompt, encode_response
from orchestrator.data.packing import IGNORE_INDEX
from orchestrator.data.report import DataError
from orchestrator.data.rlhf import (collate_prompts, collate_rm, collate_sft, load_prompts, load_rm, load_sft,
                                    position_ids_from_mask)
from orchestrator.data.tokenizer import load_tokenizer, tokenizer_info


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(tokenizer_dir), tokenizer_info(tokenizer_dir)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_and_response_encode_to_the_shared_format(tok):
    tokenizer, info = tok
    prompt, response = encode_prompt(tokenizer, "List two fruits."), encode_response(tokenizer, "apple pear", eos_id=info.eos_id)
    assert tokenizer.decode(prompt) == "List two fruits." + SEPARATOR
    assert response[-1] == info.eos_id and info.eos_id not in response[:-1]
    assert decode_response(tokenizer, response + [info.pad_id, 7], eos_id=info.eos_id) == "apple pear"


def test_sft_labels_are_minus_100_exactly_on_prompt_targets_and_padding(tmp_path, tok):
    tokenizer, info = tok
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "List two fruits.", "response": "apple pear"},
                                               {"prompt": "Name one of the longer prompts here.", "response": "x"}])
    examples, report = load_sft(path, tokenizer=tokenizer, eos_id=info.eos_id, seq_len=64)
    assert report.rows_kept == 2
    batch = collate_sft(examples, pad_id=info.pad_id)
    for row, example in enumerate(examples):
        ids, n, p = list(example.ids), len(example.ids) - 1, example.prompt_len
        labels = batch["labels"][row].tolist()
        assert labels[: p - 1] == [IGNORE_INDEX] * (p - 1)            # targets inside the prompt
        assert labels[p - 1:n] == ids[p:]                              # response tokens and EOS
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)        # padding
        assert batch["input_ids"][row, :n].tolist() == ids[:-1]
        assert batch["attention_mask"][row].sum() == n
    assert collate_sft(examples, pad_id=info.pad_id, pad_to=64)["input_ids"].shape == (2, 64)


def test_sft_rows_longer_than_the_sequence_are_counted_not_cut(tmp_path, tok):
    tokenizer, info = tok
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "Hi.", "response": "a"},
                                               {"prompt": "Hi.", "response": " ".join(["word"] * 50)}])
    examples, report = load_sft(path, tokenizer=tokenizer, eos_id=info.eos_id, seq_len=20)
    assert len(examples) == 1 and report.bad_rows == {"too_long": 1}
    assert report.first_bad["too_long"] == "sft.jsonl:2"


def test_a_file_with_no_usable_row_is_an_error_naming_it(tmp_path, tok):
    tokenizer, info = tok
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "Hi."}])
    with pytest.raises(DataError, match=f"{path} has no usable row.*missing_field 1"):
        load_sft(path, tokenizer=tokenizer, eos_id=info.eos_id, seq_len=20)


def test_rm_batch_holds_all_k_responses_with_their_eos_positions(tmp_path, tok):
    tokenizer, info = tok
    rows = [{"prompt": "List two fruits.", "responses": ["apple pear", "apple dog", "car"], "scores": [1, 0.5, 0.5]},
            {"prompt": "List two colors.", "responses": ["red blue", "red"]}]
    examples, _ = load_rm(write_rows(tmp_path / "rm.jsonl", rows), tokenizer=tokenizer, eos_id=info.eos_id, seq_len=64)
    batch = collate_rm(examples, pad_id=info.pad_id)
    b, k, t = batch["input_ids"].shape
    assert (b, k) == (2, 3) and t == max(len(s) for e in examples for s in e.responses)
    for i, sequence in enumerate(examples[0].responses):
        assert batch["input_ids"][0, i, batch["eos_index"][0, i]] == info.eos_id
        assert batch["attention_mask"][0, i].sum() == len(sequence) == batch["eos_index"][0, i] + 1
    assert batch["scores"][0].tolist() == [1.0, 0.5, 0.5] and batch["scores"][1, :2].tolist() == [1.0, 0.0]
    assert batch["valid"].tolist() == [[True, True, True], [True, True, False]]


def test_ppo_prompts_are_left_padded_with_positions_from_the_mask(tmp_path, tok):
    tokenizer, info = tok
    path = write_rows(tmp_path / "ppo.jsonl", [{"prompt": "List two fruits."}, {"prompt": "Name four of the colors, please."}])
    examples, _ = load_prompts(path, tokenizer=tokenizer, max_prompt_len=40)
    batch = collate_prompts(examples, pad_id=info.pad_id)
    short = len(examples[0].ids)
    pad = batch["input_ids"].shape[1] - short
    assert pad > 0
    assert batch["input_ids"][0, :pad].tolist() == [info.pad_id] * pad
    assert batch["input_ids"][0, pad:].tolist() == list(examples[0].ids)
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * short
    assert batch["position_ids"][0].tolist() == [0] * pad + list(range(short))
    assert batch["position_ids"][1].tolist() == list(range(batch["input_ids"].shape[1]))
    assert batch["prompts"] == ["List two fruits.", "Name four of the colors, please."]


def test_position_ids_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_the_default_template_is_the_fixed_answer_format():
    from orchestrator.data.format import DEFAULT, DEFAULT_TEMPLATE, Template
    assert Template.parse(DEFAULT_TEMPLATE) == DEFAULT
    assert DEFAULT.prompt_text("List two fruits. ") + DEFAULT.response_text(" apple pear") == \
        "List two fruits." + SEPARATOR + " apple pear"


def test_a_template_joins_prompt_and_response_and_its_whitespace_starts_the_response(tok):
    from orchestrator.data.format import Template
    tokenizer, info = tok
    template = Template.parse("Q: {prompt}\n\nA:\t{response} {{end}}")
    assert template.prompt_text("Why?") == "Q: Why?\n\nA:" and template.response_text("Because.") == "\tBecause. {end}"
    prompt = encode_prompt(tokenizer, "Why?", template=template)
    response = encode_response(tokenizer, "Because.", eos_id=info.eos_id, template=template)
    assert tokenizer.decode(prompt + response[:-1]) == "Q: Why?\n\nA:\tBecause. {end}"


@pytest.mark.parametrize("text", ["{prompt}", "{response} {prompt}", "{prompt}{response}{prompt}", "{prompt} {other} {response}"])
def test_a_template_without_one_prompt_then_one_response_is_refused(text):
    from orchestrator.config.loader import FieldError
    from orchestrator.config.run import DataConfig
    with pytest.raises(FieldError, match=r"template=.*must hold \{prompt\} and then \{response\}"):
        DataConfig(template=text)
