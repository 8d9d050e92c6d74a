"""kitlib.losses: label-smoothed cross-entropy and the bi-tempered logistic loss (Amid et al. 2019)."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib import losses


def _logits(b=6, c=5, scale=3.0, seed=0):
    return tf.random.stateless_normal([b, c], seed=[seed, 1]) * scale


def _soft_labels(b=6, c=5, seed=0):
    return tf.nn.softmax(tf.random.stateless_normal([b, c], seed=[seed, 2]) * 2)


def test_tempered_log_and_exp_are_inverses_and_reduce_to_log_exp_at_t_1():
    x = tf.constant([0.05, 0.3, 1.0, 2.5])
    for t in (0.5, 0.8, 1.0, 1.4):
        np.testing.assert_allclose(losses.exp_t(losses.log_t(x, t), t).numpy(), x.numpy(), rtol=1e-5)
    np.testing.assert_allclose(losses.log_t(x, 1.0).numpy(), np.log(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(losses.exp_t(x, 1.0).numpy(), np.exp(x.numpy()), rtol=1e-6)


@pytest.mark.parametrize("t2", [1.0, 1.2, 1.4, 2.0])
def test_tempered_softmax_rows_sum_to_one(t2):
    probs = losses.tempered_softmax(_logits(scale=5.0), t2)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1).numpy(), 1.0, atol=1e-4)
    assert np.all(probs.numpy() > 0)


def test_tempered_softmax_with_t2_above_1_has_a_heavier_tail_than_softmax():
    logits = tf.constant([[6.0, 0.0, -6.0]])
    soft, tempered = tf.nn.softmax(logits).numpy(), losses.tempered_softmax(logits, 1.4).numpy()
    assert tempered[0, 2] > 10 * soft[0, 2]  # the least likely class keeps much more mass


def test_bi_tempered_at_t1_t2_equal_1_is_cross_entropy():
    logits = _logits()
    one_hot = tf.one_hot([0, 1, 2, 3, 4, 0], 5)
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(one_hot, logits, 1.0, 1.0).numpy(),
                               losses.cross_entropy(one_hot, logits).numpy(), rtol=1e-5, atol=1e-6)
    # soft labels: the Bregman divergence of log is KL(y || p) = CE(y, p) - H(y)
    soft = _soft_labels()
    entropy = -tf.reduce_sum(soft * tf.math.log(soft), -1)
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(soft, logits, 1.0, 1.0).numpy(),
                               (losses.cross_entropy(soft, logits) - entropy).numpy(), rtol=1e-5, atol=1e-5)


def test_bi_tempered_is_nonnegative_and_zero_when_the_prediction_equals_the_label():
    soft = _soft_labels()
    assert np.all(losses.bi_tempered_logistic_loss(soft, _logits(), 0.8, 1.4).numpy() >= -1e-6)
    matching_logits = losses.log_t(soft, 1.4)  # exp_t2(log_t2 y) = y sums to 1, so lambda = 0
    np.testing.assert_allclose(losses.bi_tempered_logistic_loss(soft, matching_logits, 0.8, 1.4).numpy(),
                               0.0, atol=1e-4)


def test_bi_tempered_with_t1_below_1_is_bounded_where_cross_entropy_is_not():
    labels = tf.one_hot([0, 1], 3)
    wrong = tf.constant([[0.0, 200.0, 0.0], [0.0, 0.0, 200.0]])  # confidently wrong, e.g. a noisy label
    bounded = losses.bi_tempered_logistic_loss(labels, wrong, 0.8, 1.4).numpy()
    assert np.all(bounded <= 1 / (1 - 0.8) + 1e-4)
    assert np.all(losses.cross_entropy(labels, wrong).numpy() > 150)


def test_bi_tempered_gradients_are_finite_with_zero_labels_and_half_precision_logits():
    labels = tf.one_hot([0, 2], 3)
    logits = tf.Variable(tf.constant([[2.0, -1.0, 0.5], [30.0, -30.0, 0.0]], tf.bfloat16))
    with tf.GradientTape() as tape:
        loss = losses.bi_tempered_logistic_loss(labels, logits, 0.8, 1.4, label_smoothing=0.1)
    assert loss.dtype == tf.float32  # computed in float32 under any mixed-precision policy
    assert np.all(np.isfinite(tape.gradient(loss, logits).numpy().astype(np.float32)))


def test_label_smoothing_mixes_in_the_uniform_distribution():
    labels = tf.one_hot([1], 4)
    np.testing.assert_allclose(losses.smooth_labels(labels, 0.2).numpy(), [[0.05, 0.85, 0.05, 0.05]], atol=1e-7)
    logits = tf.constant([[0.0, 2.0, -1.0, 0.5]])
    log_p = tf.nn.log_softmax(logits).numpy()[0]
    expected = -(0.85 * log_p[1] + 0.05 * (log_p[0] + log_p[2] + log_p[3]))
    assert float(losses.cross_entropy(labels, logits, 0.2)[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.smooth_labels(labels, 1.0)


def test_make_loss_gives_per_example_losses_and_rejects_unknown_settings():
    labels, logits = tf.one_hot([0, 1, 2], 3), _logits(b=3, c=3)
    for name in losses.LOSSES:
        assert losses.make_loss(name, 0.1)(labels, logits).shape == (3,)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.make_loss("focal")
    with pytest.raises(ValueError, match="t1"):
        losses.make_loss("bitempered", t1=1.5)
    with pytest.raises(ValueError, match="t2"):
        losses.tempered_softmax(logits, 0.5)
