"""The data-parallel scaling benchmark's arithmetic and tables, on made-up times (no processes)."""
import pytest

from benchmarks.dp_scaling import (CONTENDERS, PEER, Stopwatch, communication_table, core_bound, cpu_per_rank,
                                   paired_ratio, reading, scaling_efficiency, scaling_table, summarise, turn_order)


def fake_run(ranks: int, *, step_s: dict[str, float], tokens_per_rank: int = 512, turns: int = 3) -> dict:
    """What ``rank_worker`` returns, with every turn taking ``step_s[name]`` and 1 CPU second per rank."""
    return dict(ranks=ranks, tokens_per_step=ranks * tokens_per_rank,
                wall={name: [step_s[name]] * turns for name in CONTENDERS},
                cpu={name: [[1.0] * ranks for _ in range(turns)] for name in CONTENDERS},
                reduce={"ours ZeRO-0": [0.1 * (ranks - 1)] * turns, "ours ZeRO-2": [0.2] * turns},
                allreduce_alone_s=0.05 * (ranks - 1), gradient_elements=1000, max_weight_diff=0.0)


def test_efficiency_is_throughput_over_n_times_the_single_rank_throughput():
    assert scaling_efficiency(1600.0, ranks=2, single_rank_tokens_per_s=1000.0) == pytest.approx(0.8)
    assert scaling_efficiency(1000.0, ranks=1, single_rank_tokens_per_s=1000.0) == 1.0
    with pytest.raises(ValueError, match="positive 1-rank throughput"):
        scaling_efficiency(1.0, ranks=2, single_rank_tokens_per_s=0.0)


def test_more_ranks_than_cores_caps_efficiency_at_cores_over_ranks():
    assert [core_bound(n, cores=2) for n in (1, 2, 4, 8)] == [1.0, 1.0, 0.5, 0.25]
    with pytest.raises(ValueError):
        core_bound(0, cores=2)


def test_paired_ratio_is_the_median_of_peer_over_ours_per_turn():
    # turns: ours 1 s vs peer 2 s, ours 2 s vs peer 2 s, ours 4 s vs peer 2 s -> ratios 2, 1, 0.5
    assert paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0
    assert paired_ratio([1.0], [1.5]) == 1.5
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_ratio([1.0], [1.0, 2.0])


def test_turn_order_rotates_so_no_contender_always_goes_first():
    firsts = [turn_order(CONTENDERS, turn)[0] for turn in range(len(CONTENDERS))]
    assert sorted(firsts) == sorted(CONTENDERS)
    assert turn_order(CONTENDERS, len(CONTENDERS)) == list(CONTENDERS)


def test_cpu_per_rank_averages_the_ranks_of_each_turn():
    assert cpu_per_rank([[1.0, 3.0], [2.0, 2.0]]) == [2.0, 2.0]


def test_perfect_weak_scaling_gives_efficiency_one_and_double_time_gives_half():
    runs = {1: fake_run(1, step_s={"ours ZeRO-0": 1.0, "ours ZeRO-2": 1.0, PEER: 1.0}),
            2: fake_run(2, step_s={"ours ZeRO-0": 1.0, "ours ZeRO-2": 2.0, PEER: 1.0})}
    rows = {(r["ranks"], r["contender"]): r for r in summarise(runs, cores=2)}
    assert rows[(2, "ours ZeRO-0")]["efficiency"] == pytest.approx(1.0)
    assert rows[(2, "ours ZeRO-2")]["efficiency"] == pytest.approx(0.5)
    assert rows[(2, "ours ZeRO-2")]["tokens_per_s"] == pytest.approx(512.0)
    assert rows[(2, "ours ZeRO-2")]["vs_peer_wall"] == pytest.approx(0.5)
    assert rows[(2, PEER)]["reduce_s"] is None
    assert rows[(2, PEER)]["bound"] == 1.0


def test_summarise_refuses_runs_without_a_single_rank_baseline():
    with pytest.raises(ValueError, match="add 1 to --ranks"):
        summarise({2: fake_run(2, step_s=dict.fromkeys(CONTENDERS, 1.0))}, cores=2)


def test_tables_and_reading_carry_every_rank_count_and_contender():
    runs = {n: fake_run(n, step_s=dict.fromkeys(CONTENDERS, 1.0)) for n in (1, 2, 4)}
    rows = summarise(runs, cores=2)
    table = scaling_table(rows, cores=2).splitlines()
    assert len(table) == 2 + 3 * len(CONTENDERS)
    assert "2-core bound" in table[0]
    assert table[-1].startswith("| 4 | DDP | 2048 | 1.00 | 2,048 | — | 1.00 | 0.50 |")
    comm = communication_table(rows, gradient_mb=93.0).splitlines()
    assert len(comm) == 2 + 3
    assert "overlapped, not timed" in comm[-1] and "0.300 (30% of the step)" in comm[-1]
    text = reading(rows, cores=2)
    assert "N = 4: efficiency" in text and "bound 0.50" in text


def test_stopwatch_counts_nested_calls_once(monkeypatch):
    import itertools

    import benchmarks.dp_scaling as dp_scaling

    ticks = itertools.count()        # every clock read advances one second
    monkeypatch.setattr(dp_scaling.time, "perf_counter", lambda: float(next(ticks)))

    class Engine:
        def outer(self):
            return self.inner() + 1

        def inner(self):
            return 1

    engine, watch = Engine(), Stopwatch()
    watch.wrap(engine, "outer")
    watch.wrap(engine, "inner")
    assert engine.outer() == 2
    assert watch.take() == 1.0       # outer read the clock twice; inner, nested, not at all
    assert watch.take() == 0.0
    engine.inner()
    assert watch.take() == 1.0       # called alone it is timed


def test_report_is_one_section_with_the_command_machine_and_both_tables():
    from benchmarks.common import MachineInfo, replace_section
    from benchmarks.dp_scaling import HEADING, report

    machine = MachineInfo(cpu_model="Test CPU", cores=2, ram_gib=24.0, python="3.11", torch="2", deepspeed="0.19",
                          transformers="5", load_average=(0.5, 0.6, 0.7))
    runs = {1: fake_run(1, step_s=dict.fromkeys(CONTENDERS, 1.0)),
            2: fake_run(2, step_s={"ours ZeRO-0": 1.2, "ours ZeRO-2": 1.5, PEER: 1.0})}
    section = report(runs, machine=machine, command="python -m benchmarks.dp_scaling --ranks 1 2", steps=3, warmup=1)
    assert section.startswith(HEADING + "\n")
    assert "```bash\npython -m benchmarks.dp_scaling --ranks 1 2\n```" in section
    assert "2-core Test CPU" in section and "load average 0.5" in section
    assert "### Gradient communication" in section
    # our ZeRO-0 step is 0.2 s longer than DDP's and 0.1 s of it is blocked in the reduction
    assert "+0.20 s against DDP's" in section and "accounts for 50% of the gap" in section
    assert [line for line in section.splitlines() if line.startswith("## ")] == [HEADING]
    assert replace_section("# Benchmarks\n", section).count(HEADING) == 1
