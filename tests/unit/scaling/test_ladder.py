import dataclasses
import math

import pytest

from orchestrator.config.model import gpt3_175b, tiny
from orchestrator.scaling.ladder import family_model, make_rung, non_embedding_flops_per_token, parse_shape, plan_ladder

FAMILY = dataclasses.replace(tiny(), n_heads=16, d_head=4)


def ladder(target="3x64", **kwargs):
    options = dict(points=5, max_fraction=1 / 32, spacing=2.0, seq_len=128, tokens_per_step=2048,
                   tokens_per_param=20.0, lr_for=lambda d: 6e-3 * (64 / d) ** 0.5, warmup_fraction=0.05)
    options.update(kwargs)
    model = parse_shape(target, FAMILY) if isinstance(target, str) else target
    return plan_ladder(model, **options)


def test_every_run_trains_20_tokens_per_parameter_rounded_up_to_whole_steps():
    plan = ladder()
    for rung in (*plan.rungs, plan.target):
        assert rung.tokens == rung.steps * 2048
        assert 20 * rung.params <= rung.tokens < 20 * rung.params + 2048


def test_compute_is_the_models_flops_per_token_times_its_tokens():
    plan = ladder()
    for rung in (*plan.rungs, plan.target):
        model = family_model(FAMILY, n_layers=rung.n_layers, d_model=rung.d_model, name=rung.name)
        assert rung.flops == model.flops_per_token(128) * rung.tokens
        assert rung.flops_6nd == 6 * rung.params * rung.tokens


def test_rungs_grow_in_compute_and_the_largest_stays_under_the_fraction():
    for fraction in (1 / 32, 1 / 100):
        plan = ladder("4x80", max_fraction=fraction, spacing=1.6)
        flops = [r.flops for r in plan.rungs]
        assert flops == sorted(flops) and len(set(flops)) == 5
        assert plan.fraction(plan.rungs[-1]) <= fraction
        assert all(b / a >= math.sqrt(1.6) for a, b in zip(flops, flops[1:]))


def test_rungs_are_members_of_the_targets_family():
    plan = ladder("4x80")
    assert all(r.d_model % FAMILY.d_head == 0 and r.n_heads * FAMILY.d_head == r.d_model for r in plan.rungs)
    assert all(r.n_layers <= 4 and r.d_model < 80 for r in plan.rungs)
    model = family_model(FAMILY, n_layers=2, d_model=24, name="x")
    assert (model.vocab, model.ctx, model.d_head, model.ffn_mult) == (FAMILY.vocab, FAMILY.ctx, 4, FAMILY.ffn_mult)


def test_the_largest_rung_is_the_shape_nearest_its_budget():
    plan = ladder()
    top = plan.rungs[-1]
    budget = plan.target.flops / 32
    others = [make_rung(family_model(FAMILY, n_layers=layers, d_model=width, name="x"), name="x", seq_len=128,
                        tokens_per_step=2048, tokens_per_param=20, lr=1e-3, warmup_fraction=0.05)
              for layers in (1, 2, 3) for width in range(4, 64, 4)]
    under = [r for r in others if r.flops <= budget]
    nearest = max(r.flops for r in under)
    assert top.flops >= nearest / 1.5


def test_each_run_gets_the_width_rules_lr_and_a_warm_up_of_5_percent_of_its_steps():
    plan = ladder()
    for rung in (*plan.rungs, plan.target):
        assert rung.lr == pytest.approx(6e-3 * (64 / rung.d_model) ** 0.5)
        assert rung.warmup_steps == max(1, round(0.05 * rung.steps))


def test_a_target_too_small_for_the_ladder_is_refused_with_the_fixes():
    with pytest.raises(ValueError, match="too small for a ladder of 5 runs.*bigger target.*fewer points"):
        ladder("2x16")


def test_target_tokens_override_the_compute_optimal_count():
    plan = ladder(target_tokens=1e7)
    assert plan.target.tokens == math.ceil(1e7 / 2048) * 2048


def test_a_gpt3_175b_ladder_keeps_its_family_and_aspect_ratio():
    plan = ladder(gpt3_175b(), seq_len=2048, tokens_per_step=2048 * 1024)
    assert plan.target.params == gpt3_175b().params()
    for rung in plan.rungs:
        assert rung.d_model % 128 == 0 and 64 <= rung.d_model / rung.n_layers <= 256
    assert 1 / 40 < plan.fraction(plan.rungs[-1]) <= 1 / 32


def test_shapes_parse_in_the_family_and_widths_off_the_head_grid_are_refused():
    model = parse_shape("3x64", FAMILY)
    assert (model.n_layers, model.d_model, model.n_heads) == (3, 64, 16)
    assert parse_shape("gpt3-small", FAMILY) is None
    with pytest.raises(ValueError, match="not a multiple of the family's head size 4: use 64 or 68"):
        parse_shape("3x66", FAMILY)


def test_non_embedding_compute_is_the_layers_matmuls_and_attention_without_the_logit_layer():
    # 1 x 16 of the heads-of-4 family at seq 128, forward + backward (x 3): attention 4·16², MLP 2·16·64,
    # 2 FLOPs a multiply-add, plus 4·s·h for the scores; the logit layer 2·16·2048 is left out.
    model = family_model(FAMILY, n_layers=1, d_model=16, name="x")
    layers = 2 * (4 * 16 ** 2 + 2 * 16 * 64) + 4 * 128 * 16
    assert non_embedding_flops_per_token(model, 128) == 3 * layers == 43008
    assert model.flops_per_token(128) - 43008 == 3 * 2 * 16 * 2048
    rung = make_rung(model, name="x", seq_len=128, tokens_per_step=2048, tokens_per_param=20, lr=1e-3,
                     warmup_fraction=0.05)
    assert rung.flops_non_embedding == 43008 * rung.tokens


def test_min_layers_keeps_shallower_shapes_out_of_the_ladder():
    plan = ladder("4x80", min_layers=2, spacing=1.6)
    assert len(plan.rungs) == 5 and all(r.n_layers >= 2 for r in plan.rungs)
    with pytest.raises(ValueError, match="min_layers=5 must be in 1..4"):
        ladder("4x80", min_layers=5)


def test_a_rung_micro_batch_trains_the_rungs_in_more_steps_at_a_square_root_lr_and_leaves_the_target_alone():
    plain, small = ladder(), ladder(rung_micro_batch=4, rung_tokens_per_step=512)
    assert small.target == plain.target and small.target.micro_batch is None
    assert [r.name for r in small.rungs] == [r.name for r in plain.rungs]
    for before, rung in zip(plain.rungs, small.rungs):
        assert rung.micro_batch == 4 and rung.tokens == rung.steps * 512
        assert 20 * rung.params <= rung.tokens < 20 * rung.params + 512
        assert rung.steps >= 4 * before.steps - 3 and rung.lr == pytest.approx(before.lr / 2)  # √(512 / 2048)
        assert rung.warmup_steps == round(0.05 * rung.steps)
    with pytest.raises(ValueError, match="go together"):
        ladder(rung_micro_batch=4)
