"""kitlib.bit.hyperrule: the BiT-HyperRule against big_transfer's bit_hyperrule.py, batch scaling, the Keras 3
schedule inside the optimizer."""

import numpy as np
import pytest

from kitlib.bit import hyperrule
from kitlib.compat import keras

# ============ the rule, value by value (google-research/big_transfer hyperrule.py) ============


@pytest.mark.parametrize("hw, expected", [
    ((95, 97), (160, 128)),   # area 9215 < 9216: small, although the 97 edge is >= 96
    ((97, 95), (160, 128)),
    ((96, 96), (512, 480)),   # area 9216: not below 96*96
    ((95, 200), (512, 480)),  # an edge < 96 but a large area: the seed's edge test got this wrong
    ((32, 32), (160, 128)),
    ((600, 800), (512, 480)),  # Cassava
    ((1, 9215), (160, 128)),
])
def test_resolution_is_decided_by_area_below_96x96(hw, expected):
    assert hyperrule.get_resolution(hw) == expected


@pytest.mark.parametrize("size, alpha", [(1, 0.0), (17_117, 0.0), (19_999, 0.0), (20_000, 0.1),
                                         (21_397, 0.1), (1_281_167, 0.1)])
def test_mixup_alpha_is_0_below_20k_examples_else_0_1(size, alpha):
    assert hyperrule.get_mixup(size) == alpha


@pytest.mark.parametrize("size, supports", [
    (19_999, [100, 200, 300, 400, 500]),
    (20_000, [500, 3000, 6000, 9000, 10_000]),
    (21_397, [500, 3000, 6000, 9000, 10_000]),
    (499_999, [500, 3000, 6000, 9000, 10_000]),
    (500_000, [500, 6000, 12_000, 18_000, 20_000]),
])
def test_schedule_tiers_match_the_official_table(size, supports):
    assert hyperrule.get_schedule(size) == supports


@pytest.mark.parametrize("step, lr", [(0, 0.0), (50, 0.0015), (99, 0.00297), (100, 0.003), (200, 0.003),
                                      (201, 0.0003), (300, 0.0003), (301, 0.00003), (401, 0.000003),
                                      (499, 0.000003), (500, None), (10_000, None)])
def test_get_lr_warms_up_then_divides_by_10_after_each_support(step, lr):
    got = hyperrule.get_lr(step, 1_000)
    assert got == pytest.approx(lr, rel=1e-9) if lr is not None else got is None


def test_keras_schedule_at_batch_512_equals_get_lr_at_every_step():
    rule = hyperrule.HyperRule((600, 800), 17_117, batch_size=512)
    steps = np.arange(rule.total_steps)
    expected = np.array([hyperrule.get_lr(int(s), 17_117) for s in steps])
    np.testing.assert_allclose(np.asarray(rule.lr_schedule(steps)), expected, rtol=1e-6, atol=0)
    assert hyperrule.get_lr(rule.total_steps, 17_117) is None


def test_cassava_full_set_gets_10k_steps_with_mixup_but_an_80_percent_split_500_without():
    full = hyperrule.HyperRule((600, 800), 21_397)
    split = hyperrule.HyperRule((600, 800), int(21_397 * 0.8))
    assert (full.total_steps, full.mixup_alpha, full.warmup_steps) == (10_000, 0.1, 500)
    assert (split.total_steps, split.mixup_alpha, split.warmup_steps) == (500, 0.0, 100)
    assert (full.resize, full.crop) == (512, 480)


# ============ batch scaling: every phase at the same fraction of the run ============


@pytest.mark.parametrize("size", [5_000, 21_397, 1_000_000])
def test_warmup_and_decays_fall_at_the_same_fraction_for_batch_64_128_512(size):
    rules = {b: hyperrule.HyperRule((600, 800), size, batch_size=b) for b in (64, 128, 512)}
    for b, rule in rules.items():
        assert rule.total_steps == rules[512].total_steps * 512 // b
        assert rule.warmup_steps / rule.total_steps == rules[512].warmup_steps / rules[512].total_steps
        assert [x / rule.total_steps for x in rule.boundaries] == \
               [x / rules[512].total_steps for x in rules[512].boundaries]
        assert rule.base_lr == pytest.approx(0.003 * b / 512)  # linear lr scaling
    # the whole normalised curve lr(f * T) / peak is the same at every batch size (f on the B=512 step grid)
    fractions = np.arange(rules[512].total_steps) / rules[512].total_steps
    curves = [np.asarray(rule.lr_schedule(np.round(fractions * rule.total_steps))) / rule.base_lr
              for rule in rules.values()]
    for curve in curves[1:]:
        np.testing.assert_allclose(curve, curves[0], rtol=1e-5, atol=1e-7)


def test_at_batch_64_most_of_the_run_is_not_at_a_thousandth_of_the_lr():
    rule = hyperrule.HyperRule((600, 800), 10_000, batch_size=64)  # the colab's slip put ~90 % at lr / 1000 here
    lr = np.asarray(rule.lr_schedule(np.arange(rule.total_steps)))
    assert np.mean(lr <= rule.base_lr / 1000 * 1.001) == pytest.approx(0.2, abs=0.01)
    assert np.mean(lr >= rule.base_lr * 0.999) == pytest.approx(0.2, abs=0.01)


def test_steps_override_keeps_phase_fractions_and_optimizer_is_sgd_momentum_0_9():
    rule = hyperrule.HyperRule((600, 800), 100, batch_size=16, total_steps=20, resolution=(160, 128))
    assert (rule.warmup_steps, rule.boundaries, rule.total_steps) == (4, [8, 12, 16], 20)
    assert (rule.resize, rule.crop) == (160, 128)
    opt = rule.optimizer()
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    assert opt.get_config()["learning_rate"]["config"] == rule.lr_schedule.get_config()  # the rule's schedule
    assert float(rule.lr_schedule(2)) == pytest.approx(rule.base_lr / 2)


def test_the_optimizer_steps_with_the_rule_learning_rate_at_its_iteration():
    rule = hyperrule.HyperRule((600, 800), 100, batch_size=512, total_steps=500)  # the 500-step tier, unscaled
    opt = rule.optimizer()
    variable = keras.Variable(np.zeros(3, np.float32))
    opt.build([variable])
    seen = {}
    for step in range(301):
        if step in (0, 50, 100, 200, 201, 300):
            seen[step] = float(opt.learning_rate)  # the schedule at the optimizer's iteration count
        opt.apply_gradients([(np.ones(3, np.float32), variable)])
    assert seen == pytest.approx({0: 0.0, 50: 0.0015, 100: 0.003, 200: 0.003, 201: 0.0003, 300: 0.0003}, rel=1e-6)
    assert seen == pytest.approx({s: hyperrule.get_lr(s, 100) for s in seen}, rel=1e-6)


def test_rule_rejects_impossible_arguments_with_a_message():
    with pytest.raises(ValueError, match="dataset_size"):
        hyperrule.HyperRule((600, 800), 0)
    with pytest.raises(ValueError, match="crop"):
        hyperrule.HyperRule((600, 800), 100, resolution=(64, 128))


def test_rule_table_is_computed_from_the_rule():
    table = hyperrule.rule_table([("all", (600, 800), 21_397, 512), ("80 %", (600, 800), 17_117, 512)])
    assert "| all | 600×800 | 21,397 | 512 | 512→480 | 0.1 | 500 | 3,000, 6,000, 9,000 | 10,000 |" in table
    assert "| 80 % | 600×800 | 17,117 | 512 | 512→480 | 0 | 100 | 200, 300, 400 | 500 |" in table
