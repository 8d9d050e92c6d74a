"""SwAV's optimiser and schedule on Keras 3 (kitlib.swav.optim): LARS's trust ratio and decay, warmup + cosine,
the learning rate through both official operating points."""

import math

import numpy as np
import pytest

from kitlib.compat import keras
from kitlib.swav import optim


def test_lars_step_uses_the_trust_ratio_and_skips_decay_for_biases():
    w = keras.Variable([[3.0, 4.0]])  # |w| = 5
    b = keras.Variable([1.0, 0.0])
    gw, gb = np.array([[0.6, 0.8]], np.float32), np.array([0.5, 0.5], np.float32)
    opt = optim.LARS(learning_rate=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001)
    opt.apply_gradients([(gw, w), (gb, b)])
    ratio_w = 0.001 * 5 / (1.0 + 0.01 * 5 + 1e-8)
    np.testing.assert_allclose(np.asarray(w), [[3.0, 4.0]] - 0.1 * ratio_w * (gw + 0.01 * np.array([[3, 4]])),
                               rtol=1e-6)
    ratio_b = 0.001 * 1 / (math.sqrt(0.5) + 1e-8)  # no weight decay on a rank-1 variable
    np.testing.assert_allclose(np.asarray(b), [1.0, 0.0] - 0.1 * ratio_b * gb, rtol=1e-6)


def test_warmup_cosine_schedule_follows_the_swav_formula():
    sched = optim.WarmupCosine(base_lr=4.8, total_steps=100, warmup_steps=10, start_lr=0.3, final_lr=0.0048)
    assert float(sched(0)) == pytest.approx(0.3)
    assert float(sched(5)) == pytest.approx(0.3 + 4.5 / 2)
    assert float(sched(10)) == pytest.approx(4.8)
    assert float(sched(55)) == pytest.approx(0.0048 + (4.8 - 0.0048) / 2, rel=1e-5)
    assert float(sched(100)) == pytest.approx(0.0048, rel=1e-4)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.WarmupCosine(1.0, total_steps=10, warmup_steps=10)


def test_swav_learning_rate_goes_through_both_official_settings():
    assert optim.swav_learning_rate(256) == pytest.approx((0.6, 0.0006))
    assert optim.swav_learning_rate(4096) == pytest.approx((4.8, 0.0048))


def test_lars_inside_fit_moves_weights_by_the_trust_ratio_and_momentum():
    # one Dense weight w, loss = w·x with x = 1: gradient 1 every step, two steps through fit (compiled on JAX)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(2.0))
    model = keras.Model(inputs, dense(inputs))
    model.compile(optimizer=optim.LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.0, trust_coefficient=0.1),
                  loss=lambda y, p: keras.ops.sum(p))
    x, y = np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32)
    model.fit(x, y, epochs=2, batch_size=1, verbose=0)
    w1 = 2.0 - 0.5 * (0.1 * 2.0 / 1.0)                # ratio = trust * |w| / |g|
    m2 = 0.9 * (0.1 * 2.0) + 0.1 * w1                 # momentum carries the first step
    assert float(np.asarray(dense.kernel)[0, 0]) == pytest.approx(w1 - 0.5 * m2, rel=1e-5)
