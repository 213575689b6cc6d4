"""The pipeline benchmark's arithmetic: micro-batches in flight, idle fractions from timestamps,
and the replay of a pass order, checked against DeepSpeed's own 1F1B TrainSchedule."""
import pytest

from benchmarks.pipeline_bubble import Pass, idle_fractions, peak_in_flight, replay


def deepspeed_order(*, pp: int, m: int, stage: int) -> list[str]:
    from deepspeed.runtime.pipe import schedule

    kinds = {schedule.ForwardPass: "F", schedule.BackwardPass: "B"}
    return [kinds[type(cmd)] for step in schedule.TrainSchedule(micro_batches=m, stages=pp, stage_id=stage)
            for cmd in step if type(cmd) in kinds]


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 4), (4, 8), (4, 16), (3, 2)])
def test_deepspeeds_1f1b_holds_min_of_stages_left_and_micro_batches_where_gpipe_would_hold_m(pp, m):
    for stage in range(pp):
        order = deepspeed_order(pp=pp, m=m, stage=stage)
        assert peak_in_flight(order) == min(pp - stage, m)
    assert peak_in_flight(["F"] * m + ["B"] * m) == m     # GPipe: all forwards, then all backwards


def test_a_backward_before_its_forward_is_refused():
    with pytest.raises(ValueError, match="backward before its forward"):
        peak_in_flight(["B", "F"])


@pytest.mark.parametrize("pp,m", [(2, 4), (2, 16), (4, 4), (4, 8), (4, 16)])
@pytest.mark.parametrize("backward_over_forward", [1.0, 2.0])
def test_replaying_deepspeeds_order_with_equal_stages_gives_narayanans_bubble(pp, m, backward_over_forward):
    costs = {"F": 1.0, "B": backward_over_forward}
    stages = [[(kind, costs[kind]) for kind in deepspeed_order(pp=pp, m=m, stage=s)] for s in range(pp)]
    assert replay(stages) == pytest.approx([(pp - 1) / (m + pp - 1)] * pp)


def test_a_slower_last_stage_leaves_the_others_idle_longer():
    stages = [[(kind, 1.0) for kind in deepspeed_order(pp=2, m=4, stage=s)] for s in range(2)]
    stages[1] = [(kind, 2 * seconds) for kind, seconds in stages[1]]
    first, last = replay(stages)
    assert first > last > 0


def test_pass_orders_that_wait_on_each_other_are_reported_as_a_deadlock():
    with pytest.raises(ValueError, match="deadlock"):
        replay([[("B", 1.0), ("F", 1.0)], [("F", 1.0), ("B", 1.0)]])


def test_idle_fraction_is_the_share_of_the_common_window_a_stage_does_not_compute():
    stage0 = [Pass("F", 0.0, 1.0, 1.0), Pass("B", 3.0, 5.0, 2.0)]
    stage1 = [Pass("F", 1.0, 2.0, 1.0), Pass("B", 2.0, 3.0, 1.0)]
    assert idle_fractions([stage0, stage1], start=0.0) == pytest.approx([1 - 3 / 5, 1 - 2 / 5])
    with pytest.raises(ValueError, match="before the window starts"):
        idle_fractions([stage0], start=10.0)
