"""kitlib.bit.losses (keras.ops on JAX): label-smoothed cross-entropy and the bi-tempered logistic loss
(Amid et al. 2019), against float64 numpy references and their known properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kitlib.bit import losses


def _logits(b=6, c=5, scale=3.0, seed=0):
    return (np.random.default_rng(seed).normal(size=(b, c)) * scale).astype(np.float32)


def _soft_labels(b=6, c=5, seed=0):
    return _np_softmax(np.random.default_rng(seed + 100).normal(size=(b, c)) * 2).astype(np.float32)


# ============ float64 numpy references, written from the paper's definitions ============


def _np_softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_log_t(x, t):
    return np.log(x) if t == 1 else (x ** (1 - t) - 1) / (1 - t)


def _np_exp_t(x, t):
    return np.exp(x) if t == 1 else np.maximum(1 + (1 - t) * x, 0) ** (1 / (1 - t))


def _np_tempered_softmax(a, t):
    """exp_t(a - lambda) with lambda found by bisection: sum exp_t(a - lambda) is decreasing in lambda."""
    a = np.asarray(a, np.float64)
    out = np.empty_like(a)
    for row, x in enumerate(a):
        lo, hi = x.max() - 1e3, x.max() + 1e3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _np_exp_t(x - mid, t).sum() > 1 else (lo, mid)
        out[row] = _np_exp_t(x - (lo + hi) / 2, t)
    return out


def _np_bi_tempered(y, a, t1, t2, eps=0.0):
    y = np.asarray(y, np.float64)
    y = y * (1 - eps) + eps / y.shape[-1]
    p = _np_tempered_softmax(a, t2)
    with np.errstate(divide="ignore", invalid="ignore"):
        label_term = np.where(y > 0, y * _np_log_t(np.where(y > 0, y, 1), t1), 0.0)
    return np.sum(label_term - y * _np_log_t(p, t1) - y ** (2 - t1) / (2 - t1) + p ** (2 - t1) / (2 - t1), -1)


# ============ tempered log / exp / softmax ============


def test_tempered_log_and_exp_are_inverses_match_their_formulas_and_reduce_to_log_exp_at_t_1():
    x = np.array([0.05, 0.3, 1.0, 2.5], np.float32)
    for t in (0.5, 0.8, 1.0, 1.4):
        np.testing.assert_allclose(losses.exp_t(losses.log_t(x, t), t), x, rtol=1e-5)
        np.testing.assert_allclose(losses.log_t(x, t), _np_log_t(x.astype(np.float64), t), rtol=1e-5)
        z = np.array([-1.0, -0.3, 0.0, 0.5, 1.2], np.float32)  # inside exp_t's support 1 + (1 - t) z > 0
        np.testing.assert_allclose(losses.exp_t(z, t), _np_exp_t(z.astype(np.float64), t), rtol=1e-5)
    np.testing.assert_allclose(losses.log_t(x, 1.0), np.log(x), rtol=1e-6)


@pytest.mark.parametrize("t2", [1.0, 1.2, 1.4, 2.0])
def test_tempered_softmax_matches_a_bisection_reference_and_rows_sum_to_one(t2):
    logits = _logits(scale=5.0)
    probs = np.asarray(losses.tempered_softmax(logits, t2))
    assert probs.dtype == np.float32 and np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(probs, _np_tempered_softmax(logits, t2), atol=2e-5)


def test_tempered_softmax_with_t2_above_1_has_a_heavier_tail_than_softmax():
    logits = np.array([[6.0, 0.0, -6.0]], np.float32)
    soft, tempered = _np_softmax(logits), np.asarray(losses.tempered_softmax(logits, 1.4))
    assert tempered[0, 2] > 10 * soft[0, 2]  # the least likely class keeps much more mass
    with pytest.raises(ValueError, match="t2"):
        losses.tempered_softmax(logits, 0.5)


# ============ the bi-tempered loss ============


@pytest.mark.parametrize("t1, t2, eps", [(0.8, 1.4, 0.0), (0.8, 1.4, 0.1), (0.5, 2.0, 0.0), (1.0, 1.2, 0.05)])
def test_bi_tempered_matches_the_numpy_reference(t1, t2, eps):
    labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    logits = _logits()
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(labels, logits, t1, t2, eps),
                               _np_bi_tempered(labels, logits, t1, t2, eps), rtol=1e-4, atol=2e-5)
    soft = _soft_labels()
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(soft, logits, t1, t2, eps),
                               _np_bi_tempered(soft, logits, t1, t2, eps), rtol=1e-4, atol=2e-5)


def test_bi_tempered_at_t1_t2_equal_1_is_cross_entropy():
    logits = _logits()
    one_hot = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(one_hot, logits, 1.0, 1.0),
                               losses.cross_entropy(one_hot, logits), rtol=1e-5, atol=1e-6)
    # soft labels: the Bregman divergence of log is KL(y || p) = CE(y, p) - H(y)
    soft = _soft_labels()
    entropy = -np.sum(soft * np.log(soft), -1)
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(soft, logits, 1.0, 1.0),
                               np.asarray(losses.cross_entropy(soft, logits)) - entropy, rtol=1e-5, atol=1e-5)


def test_bi_tempered_is_nonnegative_and_zero_when_the_prediction_equals_the_label():
    soft = _soft_labels()
    assert np.all(np.asarray(losses.bi_tempered_logistic_loss(soft, _logits(), 0.8, 1.4)) >= -1e-6)
    matching_logits = losses.log_t(soft, 1.4)  # exp_t2(log_t2 y) = y sums to 1, so lambda = 0
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(soft, matching_logits, 0.8, 1.4), 0.0, atol=1e-4)


def test_bi_tempered_with_t1_below_1_is_bounded_where_cross_entropy_is_not():
    labels = np.eye(3, dtype=np.float32)[[0, 1]]
    wrong = np.array([[0.0, 200.0, 0.0], [0.0, 0.0, 200.0]], np.float32)  # confidently wrong: a noisy label
    assert np.all(np.asarray(losses.bi_tempered_logistic_loss(labels, wrong, 0.8, 1.4)) <= 1 / (1 - 0.8) + 1e-4)
    assert np.all(np.asarray(losses.cross_entropy(labels, wrong)) > 150)


def test_losses_are_float32_with_finite_gradients_for_bfloat16_logits_and_zero_labels():
    labels = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 2]])
    logits = jnp.asarray([[2.0, -1.0, 0.5], [30.0, -30.0, 0.0]], jnp.bfloat16)
    for fn in (lambda z: losses.bi_tempered_logistic_loss(labels, z, 0.8, 1.4),  # zero labels, no smoothing
               lambda z: losses.bi_tempered_logistic_loss(labels, z, 0.8, 1.4, label_smoothing=0.1),
               lambda z: losses.cross_entropy(labels, z, 0.1)):
        assert fn(logits).dtype == jnp.float32  # computed in float32 under any mixed-precision policy
        grad = jax.grad(lambda z: jnp.sum(fn(z)))(logits)
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_label_smoothing_mixes_in_the_uniform_distribution():
    labels = np.eye(4, dtype=np.float32)[[1]]
    np.testing.assert_allclose(losses.smooth_labels(labels, 0.2), [[0.05, 0.85, 0.05, 0.05]], atol=1e-7)
    logits = np.array([[0.0, 2.0, -1.0, 0.5]], np.float32)
    log_p = np.log(_np_softmax(logits.astype(np.float64)))[0]
    expected = -(0.85 * log_p[1] + 0.05 * (log_p[0] + log_p[2] + log_p[3]))
    assert float(losses.cross_entropy(labels, logits, 0.2)[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.smooth_labels(labels, 1.0)


def test_make_loss_gives_per_example_losses_and_rejects_unknown_settings():
    labels, logits = np.eye(3, dtype=np.float32), _logits(b=3, c=3)
    for name in losses.LOSSES:
        assert losses.make_loss(name, 0.1)(labels, logits).shape == (3,)
    np.testing.assert_allclose(losses.make_loss("bitempered", 0.1)(labels, logits),
                               _np_bi_tempered(labels, logits, 0.8, 1.4, 0.1), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.make_loss("focal")
    with pytest.raises(ValueError, match="t1"):
        losses.make_loss("bitempered", t1=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.make_loss("ce", label_smoothing=-0.1)
