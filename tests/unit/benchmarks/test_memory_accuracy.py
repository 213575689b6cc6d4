"""The memory benchmark finds every tensor an object holds, each storage once, and reads which
attention kernel the GPT runs from its autograd graph."""
import dataclasses

import torch

from benchmarks.memory_accuracy import attention_is_fused, ratio, reachable_tensors


class Holder:  # a plain object: only torch / deepspeed / orchestrator objects are walked into
    pass


def test_each_storage_is_found_once_with_gradients_and_views_but_foreign_objects_are_not_entered():
    layer = torch.nn.Linear(4, 3)                                  # weight 48 bytes, bias 12 bytes
    layer(torch.randn(2, 4)).sum().backward()                      # .grad of each: 48 + 12 bytes
    flat = torch.zeros(10)
    hidden = Holder()
    hidden.tensor = torch.zeros(1000)
    found = reachable_tensors({"layer": layer, "views": [flat[:5], flat[5:]], "foreign": hidden, "again": flat})
    assert sorted(size for size, _ in found.values()) == [12, 12, 40, 48, 48]
    assert any(path.endswith(".grad") for _, path in found.values())


def test_the_attention_kernel_is_fused_without_dropout_and_unfused_with_it_on_cpu(monkeypatch):
    from orchestrator.config import model as catalog

    without = dataclasses.replace(catalog.get_model("tiny"), name="probe", dropout=0.0)
    monkeypatch.setitem(catalog.PRESETS, "probe", lambda: without)
    monkeypatch.setitem(catalog.PRESETS, "probe-dropout", lambda: dataclasses.replace(without, dropout=0.1))
    assert attention_is_fused("probe")
    assert not attention_is_fused("probe-dropout")


def test_a_ratio_of_nothing_to_nothing_is_a_dash_even_with_a_few_bytes_of_flags():
    assert ratio(8, 0) == "—" and ratio(2**20, 0) == "∞" and ratio(3, 2) == "1.500"
