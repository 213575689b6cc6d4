import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.engine import peak

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """The cache's decisions read the load average; tests set it (idle unless a test says otherwise)."""
    load = {"per_core": 0.0}
    monkeypatch.setattr(peak, "load_per_core", lambda: load["per_core"])
    return load


class FakeProbe:
    """A ``measure_peak`` stand-in: returns the figures it is given, one per call, and records the calls."""

    def __init__(self, *results: float):
        self.results, self.calls = list(results), []

    def __call__(self, *, dtype, device, sizes=None, seconds):
        self.calls.append({"dtype": dtype, "sizes": sizes, "seconds": seconds})
        return self.results.pop(0), (sizes or (1024,))[0]


@pytest.mark.parametrize("n", [1, 3, 64])
def test_one_matmul_is_two_n_cubed_flops_as_torchs_flop_counter_counts_it(n):
    a, b = torch.randn(n, n), torch.randn(n, n)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(a, b)
    assert peak.matmul_flops(n) == counter.get_total_flops() == 2 * n**3


def test_the_probe_rate_is_matmul_flops_times_repeats_over_elapsed_time(monkeypatch):
    ticks = iter([0.0, 0.25, 0.5, 0.75, 1.0])  # start, then one tick per timed matmul
    monkeypatch.setattr(peak.time, "perf_counter", lambda: next(ticks))
    rate = peak.time_matmuls(16, dtype=torch.float32, device=CPU, seconds=1.0)
    assert rate == peak.matmul_flops(16) * 4 / 1.0


def test_a_real_probe_measures_a_positive_rate_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    flops, size = peak.measure_peak(dtype=torch.float32, device=CPU, seconds=0.02, sizes=(32, 64))
    assert flops > 0 and size in (32, 64)
    assert torch.get_num_threads() == threads


def test_the_second_call_reads_the_cache_instead_of_measuring(tmp_path):
    cache, probe = tmp_path / "peak.json", FakeProbe(3e11)
    first = peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe)
    second = peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe)
    assert len(probe.calls) == 1
    assert (first.flops, first.measured) == (3e11, True) and (second.flops, second.measured) == (3e11, False)
    [entry] = json.loads(cache.read_text())["peaks"].values()
    assert entry["flops"] == 3e11


@pytest.mark.parametrize("change", ["dtype", "torch", "threads", "host"])
def test_a_change_of_dtype_torch_threads_or_host_measures_again(tmp_path, monkeypatch, change):
    cache, probe = tmp_path / "peak.json", FakeProbe(3e11, 2e12)
    peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe)
    dtype = torch.float32
    if change == "dtype":
        dtype = torch.bfloat16
    elif change == "torch":
        monkeypatch.setattr(peak.torch, "__version__", "0.0.0-other")
    elif change == "threads":
        monkeypatch.setattr(peak, "usable_cores", lambda: 999)
    else:
        monkeypatch.setattr(peak.socket, "gethostname", lambda: "another-host")
    again = peak.cached_peak(dtype=dtype, device=CPU, cache_file=cache, measure=probe)
    assert len(probe.calls) == 2 and again.flops == 2e12 and again.measured
    assert len(json.loads(cache.read_text())["peaks"]) == 2  # the first machine's entry is kept


def test_a_figure_taken_on_a_busy_machine_is_measured_again_once_the_machine_is_quieter(
        tmp_path, idle_machine):
    cache, probe = tmp_path / "peak.json", FakeProbe(4e10, 3e11)
    idle_machine["per_core"] = 4.0                 # measured while others ran
    peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe)
    idle_machine["per_core"] = 3.0                 # not much quieter: the cache stands
    assert peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe).flops == 4e10
    idle_machine["per_core"] = 0.1                 # quiet now: measured again
    assert peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe).flops == 3e11
    assert peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=probe).flops == 3e11
    assert len(probe.calls) == 2                   # a quiet figure is not measured again


def test_an_unreadable_cache_is_measured_again_and_rewritten(tmp_path):
    cache = tmp_path / "peak.json"
    cache.write_text("{not json")
    result = peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=cache, measure=FakeProbe(1e11))
    assert result.measured and json.loads(cache.read_text())["peaks"]


def test_an_unwritable_cache_still_gives_the_measured_peak(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=blocker / "peak.json",
                              measure=FakeProbe(1e11))
    assert result.flops == 1e11


def test_the_cache_directory_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peak.default_cache_file() == tmp_path / "gpt-orchestrator" / peak.CACHE_FILE_NAME


def test_mfu_is_model_flops_over_the_peak_of_all_devices(tmp_path):
    meter = peak.MFUMeter(dtype=torch.float32, device=CPU, devices=4, cache_file=tmp_path / "p.json",
                          measure=FakeProbe(1e12))
    assert meter.mfu(2e12) == pytest.approx(0.5)


def test_mfu_above_the_peak_reprobes_with_larger_matmuls_and_keeps_the_higher_figure(tmp_path):
    probe = FakeProbe(1e12, 3e12)
    meter = peak.MFUMeter(dtype=torch.float32, device=CPU, devices=1, cache_file=tmp_path / "p.json", measure=probe,
                          report=pytest.fail)
    assert meter.mfu(1.5e12) == pytest.approx(0.5)
    assert probe.calls[1]["sizes"] == (1024 * peak.REPROBE_SCALE,)
    assert peak.cached_peak(dtype=torch.float32, device=CPU, cache_file=tmp_path / "p.json",
                            measure=pytest.fail).flops == 3e12


def test_mfu_is_never_above_one_and_an_unexplained_excess_is_reported_once(tmp_path):
    reports, probe = [], FakeProbe(1e12, 0.9e12)
    meter = peak.MFUMeter(dtype=torch.float32, device=CPU, devices=1, cache_file=tmp_path / "p.json", measure=probe,
                          report=reports.append)
    assert [meter.mfu(x) for x in (2e12, 5e12, 0.5e12)] == [1.0, 1.0, 0.5]
    assert len(probe.calls) == 2  # one re-probe, not one per log line
    assert len(reports) == 1 and "exceed the measured float32 matmul peak" in reports[0]
    assert str(tmp_path / "p.json") in reports[0]
