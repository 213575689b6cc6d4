import math

import pytest

from orchestrator.scaling.lr_rule import SweepError, fit_lr_rule, rung_optimum

MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)
WIDTHS = (12, 16, 20, 24, 32)
TRUE_LR, TRUE_EXPONENT = 4e-3, 1.2  # at width 64


def swept_losses(d_model, *, base_lr, base_exponent=0.5, sharpness=0.15):
    """A rung whose loss is a parabola in ln lr about the true rule's LR, swept about the base rule's."""
    best = TRUE_LR * (64 / d_model) ** TRUE_EXPONENT
    lrs = [base_lr * (64 / d_model) ** base_exponent * m for m in MULTIPLIERS]
    return lrs, [3.0 + sharpness * math.log(lr / best) ** 2 for lr in lrs]


def test_a_rungs_best_lr_is_the_vertex_of_its_parabola_in_log_lr():
    optimum = rung_optimum("r1", 16, [1e-3, 2e-3, 4e-3, 8e-3], [4.0 + 0.2 * math.log(lr / 3e-3) ** 2
                                                               for lr in (1e-3, 2e-3, 4e-3, 8e-3)])
    assert optimum.best_lr == pytest.approx(3e-3, rel=1e-9) and optimum.best_loss == pytest.approx(4.0)


def test_the_rule_fitted_to_the_rungs_best_lrs_recovers_the_true_lr_and_exponent():
    optima = [rung_optimum(f"r{i}", d, *swept_losses(d, base_lr=6e-3)) for i, d in enumerate(WIDTHS)]
    rule = fit_lr_rule(optima, lr_width=64)
    assert rule.lr == pytest.approx(TRUE_LR, rel=1e-6) and rule.lr_exponent == pytest.approx(TRUE_EXPONENT, rel=1e-6)
    assert rule.lr_for(16) == pytest.approx(TRUE_LR * 4 ** TRUE_EXPONENT) and rule.residual_sd < 1e-9
    assert [row["best_lr"] for row in rule.to_dict()["rungs"]] == pytest.approx([o.best_lr for o in optima])


def test_a_best_lr_outside_the_swept_range_asks_for_a_wider_sweep():
    with pytest.raises(SweepError, match="lies above the swept .* add a multiplier further above"):
        rung_optimum("r5", 32, *swept_losses(32, base_lr=6e-4))
    with pytest.raises(SweepError, match="lies below"):
        rung_optimum("r1", 12, *swept_losses(12, base_lr=6e-1))


def test_a_sweep_without_a_minimum_or_with_too_few_lrs_is_refused():
    with pytest.raises(SweepError, match="no minimum"):
        rung_optimum("r1", 12, [1e-3, 2e-3, 4e-3], [4.0, 4.2, 4.3])
    with pytest.raises(SweepError, match="2 distinct LRs"):
        rung_optimum("r1", 12, [1e-3, 2e-3, 2e-3], [4.0, 3.9, 3.9])
    with pytest.raises(SweepError, match="no finite loss"):
        rung_optimum("r1", 12, [1e-3, 2e-3, 4e-3], [4.0, 3.9, math.nan])
    one_width = [rung_optimum("r", 16, *swept_losses(16, base_lr=6e-3))] * 2
    with pytest.raises(SweepError, match="1 width"):
        fit_lr_rule(one_width, lr_width=64)
