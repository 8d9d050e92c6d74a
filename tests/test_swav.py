"""SwAV maths and model: Sinkhorn, swapped-prediction loss, prototypes, queue, LARS and schedule."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kitlib import optim, swav
from kitlib.compat import keras


def official_sinkhorn(scores, epsilon, n_iters):
    """facebookresearch/swav ``distributed_sinkhorn`` on one device, line by line, in float64."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # Q is K-by-B
    q /= q.sum()
    k, b = q.shape
    for _ in range(n_iters):
        q /= q.sum(axis=1, keepdims=True)  # total weight per prototype must be 1/K
        q /= k
        q /= q.sum(axis=0, keepdims=True)  # total weight per sample must be 1/B
        q /= b
    return (q * b).T


def cosine_scores(batch, prototypes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (batch, prototypes)).astype(np.float32)


def run_on_replicas(strategy, fn, *batches):
    """Split each [N, ...] array into one contiguous slice per replica, run fn, return per-replica results."""
    n = strategy.num_replicas_in_sync

    def slices(ctx):
        i = ctx.replica_id_in_sync_group
        return tuple(tf.constant(np.split(b, n)[i]) for b in batches)

    inputs = strategy.experimental_distribute_values_from_function(slices)
    out = strategy.run(tf.function(fn), args=inputs)
    return strategy.experimental_local_results(out)


# ============ sinkhorn ============

@pytest.mark.parametrize("epsilon", [0.05, 0.03, 0.01])
def test_sinkhorn_equals_the_official_algorithm_down_to_epsilon_001(epsilon):
    scores = cosine_scores(32, 12)
    codes = swav.sinkhorn(scores, epsilon=epsilon, n_iters=3).numpy()
    np.testing.assert_allclose(codes, official_sinkhorn(scores, epsilon, 3), rtol=2e-4, atol=1e-6)
    assert np.isfinite(codes).all()


def test_sinkhorn_codes_are_distributions_with_equal_prototype_mass():
    scores = cosine_scores(64, 16, seed=1)
    codes = swav.sinkhorn(scores).numpy()
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)  # each sample's code sums to 1
    assert (codes >= 0).all()
    # the equal-partition constraint: every prototype gets about B/K samples (exactly at convergence)
    assert codes.sum() == pytest.approx(64, rel=1e-5)
    np.testing.assert_allclose(codes.sum(axis=0), 64 / 16, rtol=0.35)  # 3 iterations at sharp ε: roughly
    converged = swav.sinkhorn(scores, n_iters=200).numpy()
    np.testing.assert_allclose(converged.sum(axis=0), 64 / 16, rtol=1e-3)


def test_sinkhorn_known_cases():
    # equal scores carry no information: uniform codes
    np.testing.assert_allclose(swav.sinkhorn(np.zeros((6, 3), np.float32)).numpy(), 1 / 3, atol=1e-6)
    # each sample closest to its own prototype, sharp epsilon: a permutation, not all to one prototype
    codes = swav.sinkhorn(np.eye(4, dtype=np.float32) * 0.5, epsilon=0.01).numpy()
    np.testing.assert_allclose(codes, np.eye(4), atol=1e-6)
    # all samples prefer prototype 0: equipartition still spreads them over both prototypes
    codes = swav.sinkhorn(np.array([[0.9, 0.1], [0.8, 0.1]], np.float32), epsilon=0.05, n_iters=50).numpy()
    np.testing.assert_allclose(codes.sum(axis=0), [1.0, 1.0], atol=1e-3)


@pytest.mark.parametrize("dtype, extreme", [(tf.float16, 65504.0), (tf.bfloat16, 1e38)])
def test_sinkhorn_is_finite_float32_for_extreme_low_precision_scores(dtype, extreme):
    scores = tf.cast(cosine_scores(16, 8) * extreme, dtype)
    codes = swav.sinkhorn(scores, epsilon=0.01)
    assert codes.dtype == tf.float32
    assert np.isfinite(codes.numpy()).all()
    np.testing.assert_allclose(codes.numpy().sum(axis=1), 1.0, atol=1e-5)
    # ordinary cosine scores rounded to bfloat16 give the float32 answer up to the rounding
    plain = cosine_scores(16, 8)
    rounded = swav.sinkhorn(tf.cast(plain, dtype), epsilon=0.05).numpy()
    np.testing.assert_allclose(rounded, official_sinkhorn(tf.cast(plain, dtype).numpy(), 0.05, 3),
                               rtol=2e-4, atol=1e-6)


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon > 0"):
        swav.sinkhorn(np.zeros((2, 2), np.float32), epsilon=0.0)
    with pytest.raises(ValueError, match=r"\[batch, prototypes\]"):
        swav.sinkhorn(np.zeros(4, np.float32))


def test_sinkhorn_ignores_invalid_rows():
    scores = cosine_scores(10, 4, seed=3)
    valid = np.array([False] * 4 + [True] * 6)
    codes = swav.sinkhorn(scores, valid=valid).numpy()
    np.testing.assert_allclose(codes[4:], official_sinkhorn(scores[4:], 0.05, 3), rtol=1e-4, atol=1e-6)


def test_sinkhorn_on_two_replicas_equals_one_device_on_the_whole_batch(mirrored_strategy):
    scores = cosine_scores(16, 6, seed=4)
    per_replica = run_on_replicas(mirrored_strategy, lambda s: swav.sinkhorn(s, epsilon=0.03), scores)
    np.testing.assert_allclose(np.concatenate([r.numpy() for r in per_replica]),
                               swav.sinkhorn(scores, epsilon=0.03).numpy(), rtol=1e-5, atol=1e-7)


# ============ swav loss ============

def test_swav_loss_matches_a_hand_computed_example():
    # Symmetric scores keep Sinkhorn's row and column sums equal, so the codes are softmaxes:
    # q = [σ(2a/ε), σ(-2a/ε)] for sample 0 (mirrored for sample 1); likewise the predictions.
    a, b, eps, tau = 0.01, 0.03, 0.05, 0.1
    crop0 = np.array([[a, -a], [-a, a]], np.float32)
    crop1 = np.array([[b, -b], [-b, b]], np.float32)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    q0, q1 = sig(2 * a / eps), sig(2 * b / eps)
    # crop 1 predicts crop 0's codes, crop 0 predicts crop 1's; same value for both samples
    term_a = -(q0 * math.log(sig(2 * b / tau)) + (1 - q0) * math.log(sig(-2 * b / tau)))
    term_b = -(q1 * math.log(sig(2 * a / tau)) + (1 - q1) * math.log(sig(-2 * a / tau)))
    loss = swav.swav_loss([crop0, crop1], crops_for_assign=(0, 1), temperature=tau, epsilon=eps)
    assert float(loss) == pytest.approx((term_a + term_b) / 2, rel=1e-5)


def test_swav_loss_gradient_skips_the_codes_and_averages_over_the_batch():
    s0, s1 = cosine_scores(4, 5, seed=5), cosine_scores(4, 5, seed=6)
    x0, x1 = tf.Variable(s0), tf.Variable(s1)
    with tf.GradientTape() as tape:
        loss = swav.swav_loss([x0, x1], crops_for_assign=(0,))
    g0, g1 = tape.gradient(loss, [x0, x1])
    assert g0 is None  # crop 0 only gives targets, and codes carry no gradient
    q = swav.sinkhorn(s0).numpy()
    p1 = tf.nn.softmax(s1 / 0.1).numpy()
    np.testing.assert_allclose(g1.numpy(), (p1 - q) / 0.1 / 4, rtol=1e-4, atol=1e-7)


def test_swav_loss_summed_over_two_replicas_equals_one_device(mirrored_strategy):
    crops = [cosine_scores(8, 6, seed=s) for s in range(4)]
    per_replica = run_on_replicas(mirrored_strategy, lambda *c: swav.swav_loss(list(c), epsilon=0.03), *crops)
    one_device = swav.swav_loss(crops, epsilon=0.03)
    assert sum(float(r) for r in per_replica) == pytest.approx(float(one_device), rel=1e-5)


def test_swav_loss_rejects_bad_crops_for_assign():
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav.swav_loss([cosine_scores(2, 3)] * 2, crops_for_assign=(2,))
    with pytest.raises(ValueError, match=">= 2 crops"):
        swav.swav_loss([cosine_scores(2, 3)])


def test_uniform_predictions_cost_exactly_ln_k():
    loss = swav.swav_loss([np.zeros((4, 7), np.float32)] * 3)
    assert float(loss) == pytest.approx(math.log(7), rel=1e-6)


def test_suggest_num_prototypes():
    assert swav.suggest_num_prototypes() == 3000
    assert swav.suggest_num_prototypes(5) == 50
    assert swav.suggest_num_prototypes(1000) == 3000


# ============ queue ============

def test_queue_push_puts_newest_embeddings_first():
    queue = tf.reshape(tf.range(2 * 6 * 1, dtype=tf.float32), [2, 6, 1])
    new = tf.fill([2, 2, 1], -1.0)
    pushed = swav.queue_push(queue, new).numpy()[..., 0]
    np.testing.assert_array_equal(pushed, [[-1, -1, 0, 1, 2, 3], [-1, -1, 6, 7, 8, 9]])


def test_queue_is_one_block_per_replica(mirrored_strategy):
    queue = tf.zeros([1, 8, 2])
    emb = np.arange(8, dtype=np.float32).reshape(4, 1, 2)  # [B, A, D]: replica r gets rows 2r, 2r+1

    def push(e):
        pushed = swav.queue_push(queue, tf.transpose(e, [1, 0, 2]))
        return pushed, swav.queue_block(pushed)

    results = run_on_replicas(mirrored_strategy, push, emb)
    (pushed0, block0), (pushed1, block1) = [[t.numpy() for t in r] for r in results]
    np.testing.assert_array_equal(pushed0, pushed1)  # the whole queue is identical on both replicas
    assert block0.shape == (1, 4, 2)
    np.testing.assert_array_equal(block0[0, :2], emb[:2, 0])  # each replica's block starts with its batch
    np.testing.assert_array_equal(block1[0, :2], emb[2:, 0])
    np.testing.assert_array_equal(block0[0, 2:], 0)


# ============ model ============

def tiny_backbone():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, x)


def crop_batches(batch=8, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    crops = tuple(rng.random((batch * steps, s, s, 3)).astype(np.float32) for s in (16, 16, 8, 8))
    return tf.data.Dataset.from_tensor_slices(crops).batch(batch, drop_remainder=True).repeat()


def make_model(strategy=None, steps_per_execution=1, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = swav.SwAVModel(tiny_backbone(), num_prototypes=6, hidden_dim=16, output_dim=4, **kwargs)
        model.compile(optimizer=optim.build_optimizer("sgd", 0.5), steps_per_execution=steps_per_execution)
    return model


def test_prototypes_are_normalised_every_step_and_frozen_for_the_first_niters():
    keras.utils.set_random_seed(0)
    model = make_model(freeze_prototypes_niters=2)
    kernel = model.prototypes.kernel
    direction = tf.math.l2_normalize(kernel, axis=0).numpy()
    for _ in range(2):  # frozen steps: the step starts by normalising, then no gradient reaches them
        kernel.assign(kernel * 3.0)
        model.fit(crop_batches(), epochs=1, steps_per_epoch=1, verbose=0)
        np.testing.assert_allclose(kernel.numpy(), direction, atol=1e-5)
    model.fit(crop_batches(), epochs=1, steps_per_epoch=1, verbose=0)
    assert np.abs(kernel.numpy() - direction).max() > 1e-3  # step 3: trained
    assert model.optimizer.iterations.numpy() == 3


def test_fit_under_mirrored_strategy_logs_global_metrics_and_fills_the_queue(mirrored_strategy):
    keras.utils.set_random_seed(0)
    model = make_model(mirrored_strategy, steps_per_execution=2, freeze_prototypes_niters=1, queue_length=16,
                       queue_start_epoch=1)
    history = model.fit(crop_batches(), epochs=3, steps_per_epoch=2, verbose=0).history
    assert history["ln_k"][0] == pytest.approx(math.log(6), rel=1e-6)  # not summed over replicas
    assert all(np.isfinite(history["loss"])) and all(0 <= h <= math.log(6) + 1e-6 for h in history["usage_entropy"])
    queue = model.queue.numpy()
    assert queue.shape == (2, 16, 4)
    assert (np.abs(np.linalg.norm(queue, axis=-1) - 1) < 1e-5).all()  # 4 pushes x 8 images: full
    assert model.optimizer.iterations.numpy() == 6


def test_forward_passes_are_grouped_by_crop_resolution():
    crops = [tf.zeros([2, s, s, 3]) for s in (224, 224, 96, 96, 96, 224)]
    assert swav._resolution_groups(crops) == [(0, 2), (2, 5), (5, 6)]


def test_batchnorm_follows_the_training_flag():
    model = make_model()
    crops = list(next(iter(crop_batches())))
    bn = model.backbone.layers[2]
    before = bn.moving_mean.numpy().copy()
    model(crops, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)  # inference: moving statistics
    model(crops, training=True)
    assert np.abs(bn.moving_mean.numpy() - before).max() > 0  # training: batch statistics, updated


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_train_step_under_mixed_precision_keeps_codes_and_loss_in_float32(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = make_model(freeze_prototypes_niters=0)  # float16: compile adds loss scaling
    finally:
        keras.mixed_precision.set_global_policy(previous)
    history = model.fit(crop_batches(), epochs=1, steps_per_epoch=2, verbose=0).history
    z, scores = model(list(next(iter(crop_batches()))))
    assert z.dtype == scores.dtype == tf.float32
    assert np.isfinite(history["loss"]).all() and model.optimizer.iterations.numpy() == 2


# ============ optimiser and schedule ============

def test_lars_step_uses_the_trust_ratio_and_skips_decay_for_biases():
    w = tf.Variable([[3.0, 4.0]])  # |w| = 5
    b = tf.Variable([1.0, 0.0])
    gw, gb = tf.constant([[0.6, 0.8]]), tf.constant([0.5, 0.5])
    opt = optim.LARS(learning_rate=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001)
    opt.apply_gradients([(gw, w), (gb, b)])
    ratio_w = 0.001 * 5 / (1.0 + 0.01 * 5 + 1e-8)
    np.testing.assert_allclose(w.numpy(), [[3.0, 4.0]] - 0.1 * ratio_w * (gw.numpy() + 0.01 * np.array([[3, 4]])),
                               rtol=1e-6)
    ratio_b = 0.001 * 1 / (math.sqrt(0.5) + 1e-8)  # no weight decay on a rank-1 variable
    np.testing.assert_allclose(b.numpy(), [1.0, 0.0] - 0.1 * ratio_b * gb.numpy(), rtol=1e-6)


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
