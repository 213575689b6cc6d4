import numpy as np
import pytest

from orchestrator.scaling.analysis import Check, choose_form, leave_top_out, predict
from orchestrator.scaling.fit import FitError

COMPUTE = list(np.geomspace(1e10, 3e11, 5))


def power(compute, c=0.0):
    return [30.0 * x ** -0.1 + c for x in compute]


def test_leave_top_out_fits_the_smaller_runs_and_predicts_the_largest():
    check = leave_top_out(COMPUTE, power(COMPUTE), form="zero", level=0.95)
    assert check.measured == power(COMPUTE)[-1]
    assert abs(check.error) < 1e-9 and check.inside


def test_a_check_whose_fit_fails_records_why_and_gives_no_number():
    check = leave_top_out(COMPUTE, power(COMPUTE, c=-2.0), form="free", level=0.95)
    assert check.predicted is None and check.error is None and "c =" in check.failure


def test_auto_takes_the_form_whose_check_erred_least_and_says_so():
    checks = (Check("zero", 3.05, 2.9, 3.2, measured=3.0), Check("free", 3.01, 2.8, 3.3, measured=3.0))
    form, reason = choose_form("auto", checks)
    assert form == "free" and "+0.33%" in reason and "zero-c +1.67%" in reason
    assert choose_form("zero", checks)[0] == "zero"


def test_auto_with_no_usable_check_is_a_fit_error():
    checks = (Check("zero", None, None, None, 3.0, failure="a"), Check("free", None, None, None, 3.0, failure="b"))
    with pytest.raises(FitError, match="zero: a; free: b"):
        choose_form("auto", checks)


def test_a_ladder_with_a_real_floor_is_predicted_by_the_free_c_law():
    prediction = predict(COMPUTE, power(COMPUTE, c=1.0), target_compute=1e13, form="auto", level=0.95)
    assert prediction.law.form == "free" and prediction.loss == pytest.approx(30 * 1e13 ** -0.1 + 1.0, rel=1e-6)
    assert prediction.other["law"]["form"] == "zero"


def test_a_target_not_above_the_ladder_is_refused():
    with pytest.raises(ValueError, match="not above the ladder's largest run"):
        predict(COMPUTE, power(COMPUTE), target_compute=COMPUTE[-1], form="auto", level=0.95)
