"""GPT-3's learning-rate schedule (Brown et al. 2020, §B): linear warm-up, cosine to 10%."""
import pytest

from orchestrator.config.run import OptimConfig
from orchestrator.engine.optim import learning_rate


def test_warmup_is_linear_then_cosine_reaches_the_floor_at_total_steps_and_stays():
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [learning_rate(s, optim=optim, total_steps=14) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.55)             # half-way through the decay: (1 + 0.1) / 2
    assert lrs[14:] == pytest.approx([0.1] * 6)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_no_warmup_starts_at_the_peak():
    assert learning_rate(0, optim=OptimConfig(lr=2e-4, warmup_steps=0), total_steps=10) == pytest.approx(2e-4)
