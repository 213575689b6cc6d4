"""``data.labeller``: the word-list oracle is one labeller among others, a user's callable is
imported by name, and a labeller's bad answer names the row."""
import pytest

from orchestrator.data import labeller as labellers
from orchestrator.data.task import oracle_score


def test_wordlist_is_the_oracle_and_none_is_no_labeller():
    assert labellers.resolve("wordlist") is oracle_score
    assert labellers.resolve("none") is None


def test_a_module_function_is_imported_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_judge.py").write_text("def length(prompt, response):\n    return float(len(response))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    judge = labellers.resolve("my_judge:length")
    assert judge("p", "abc") == 3.0
    assert labellers.rank(judge, "p", ["a", "abc", "ab", "xy"]) == (["abc", "ab", "xy", "a"], [3.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("spec, message", [
    ("judge", "give wordlist, none, or 'module:function'"),
    ("judge:", "give wordlist, none, or 'module:function'"),
    ("no_such_module_h16:score", "cannot import 'no_such_module_h16'.*PYTHONPATH"),
    ("json:no_such_function", "json has no callable 'no_such_function'"),
])
def test_a_labeller_that_cannot_be_found_is_refused_with_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        labellers.resolve(spec)


@pytest.mark.parametrize("value", [float("nan"), "0.5", None, True])
def test_a_labeller_must_return_a_finite_number(value):
    with pytest.raises(ValueError, match="must return a finite number"):
        labellers.score(lambda prompt, response: value, "List six fruits.", "apple")
