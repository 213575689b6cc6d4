"""Benchmark helpers: BENCHMARKS.md sections are replaced in place, tables are checked, and the
saved-tensor meter counts exactly what autograd keeps for backward."""
import pytest
import torch

from benchmarks.common import SavedTensorMeter, markdown_table, replace_section

TEXT = "# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nold b\n"


def test_a_section_is_replaced_up_to_the_next_heading_and_nothing_else_changes():
    out = replace_section(TEXT, "## A\n\nnew a\n")
    assert out == "# Benchmarks\n\nintro\n\n## A\n\nnew a\n\n## B\n\nold b\n"


def test_the_last_section_is_replaced_to_the_end_and_a_new_one_is_appended():
    assert replace_section(TEXT, "## B\n\nnew b") == "# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nnew b\n"
    assert replace_section(TEXT, "## C\n\nc\n").endswith("## B\n\nold b\n\n## C\n\nc\n")


def test_a_section_must_start_with_its_level_two_heading():
    with pytest.raises(ValueError, match="'## ' heading"):
        replace_section(TEXT, "# A\n\nx")


def test_a_table_row_of_the_wrong_width_is_refused():
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="has 1 cells, the header 2"):
        markdown_table(["a", "b"], [[1]])


def test_the_meter_counts_saved_activations_once_skips_parameters_and_frees_after_backward():
    weight = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    meter = SavedTensorMeter(exclude=[weight])
    with meter.hooks():
        hidden = x @ weight                 # saves x (128 bytes) and the parameter (skipped)
        y = torch.tanh(hidden)              # saves its output (128 bytes)
        z = (y * y).sum()                   # saves y twice: one storage, counted once
    assert meter.live_bytes == meter.peak_bytes == 2 * 4 * 8 * 4
    z.backward()
    del hidden, y, z
    assert meter.live_bytes == 0 and meter.peak_bytes == 256


def test_views_of_one_storage_count_the_storage_once():
    base = torch.randn(6, 4, requires_grad=True) * 1.0     # a non-leaf of 96 bytes
    meter = SavedTensorMeter()
    with meter.hooks():
        first, second = base[:3], base[3:]
        out = (first.exp() * second.exp()).sum()          # exp saves its outputs: two new storages
        kept = (first * second).sum()                      # mul saves both views of base's storage
    assert meter.live_bytes == 48 + 48 + 96
    del out, kept
