"""SwAV maths and model on Keras 3 + JAX: Sinkhorn, swapped-prediction loss, prototypes, queue; the same
training on 8 simulated devices as on 1."""

import math

import jax
import numpy as np
import pytest

from kitlib.compat import keras, tf
from kitlib.swav import model as swav_model
from kitlib.swav import optim
from tests.conftest import run_on_devices

ops = keras.ops


def official_sinkhorn(scores, epsilon, sinkhorn_iters):
    """facebookresearch/swav ``distributed_sinkhorn`` on one device, line by line, in float64."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T  # Q is K-by-B
    q /= q.sum()
    k, b = q.shape
    for _ in range(sinkhorn_iters):
        q /= q.sum(axis=1, keepdims=True)  # total weight per prototype must be 1/K
        q /= k
        q /= q.sum(axis=0, keepdims=True)  # total weight per sample must be 1/B
        q /= b
    return (q * b).T


def cosine_scores(batch, prototypes, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (batch, prototypes)).astype(np.float32)


# ============ sinkhorn ============

@pytest.mark.parametrize("epsilon", [0.05, 0.03, 0.01])
def test_sinkhorn_equals_the_official_algorithm_down_to_epsilon_001(epsilon):
    scores = cosine_scores(32, 12)
    codes = np.asarray(swav_model.sinkhorn(scores, epsilon=epsilon, sinkhorn_iters=3))
    np.testing.assert_allclose(codes, official_sinkhorn(scores, epsilon, 3), rtol=2e-4, atol=1e-6)
    assert np.isfinite(codes).all()


def test_sinkhorn_codes_are_distributions_with_equal_prototype_mass():
    scores = cosine_scores(64, 16, seed=1)
    codes = np.asarray(swav_model.sinkhorn(scores))
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)  # each sample's code sums to 1
    assert (codes >= 0).all()
    # the equal-partition constraint: every prototype gets about B/K samples (exactly at convergence)
    assert codes.sum() == pytest.approx(64, rel=1e-5)
    np.testing.assert_allclose(codes.sum(axis=0), 64 / 16, rtol=0.35)  # 3 iterations at sharp ε: roughly
    converged = np.asarray(swav_model.sinkhorn(scores, sinkhorn_iters=200))
    np.testing.assert_allclose(converged.sum(axis=0), 64 / 16, rtol=1e-3)


def test_sinkhorn_known_cases():
    # equal scores carry no information: uniform codes
    np.testing.assert_allclose(np.asarray(swav_model.sinkhorn(np.zeros((6, 3), np.float32))), 1 / 3, atol=1e-6)
    # each sample closest to its own prototype, sharp epsilon: a permutation, not all to one prototype
    codes = np.asarray(swav_model.sinkhorn(np.eye(4, dtype=np.float32) * 0.5, epsilon=0.01))
    np.testing.assert_allclose(codes, np.eye(4), atol=1e-6)
    # all samples prefer prototype 0: equipartition still spreads them over both prototypes
    prefer_0 = np.array([[0.9, 0.1], [0.8, 0.1]], np.float32)
    codes = np.asarray(swav_model.sinkhorn(prefer_0, epsilon=0.05, sinkhorn_iters=50))
    np.testing.assert_allclose(codes.sum(axis=0), [1.0, 1.0], atol=1e-3)


@pytest.mark.parametrize("dtype, extreme", [("float16", 65504.0), ("bfloat16", 1e38)])
def test_sinkhorn_is_finite_float32_for_extreme_low_precision_scores(dtype, extreme):
    scores = ops.cast(cosine_scores(16, 8) * extreme, dtype)
    codes = swav_model.sinkhorn(scores, epsilon=0.01)
    assert codes.dtype == "float32"
    codes = np.asarray(codes)
    assert np.isfinite(codes).all()
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    # ordinary cosine scores rounded to bfloat16 give the float32 answer up to the rounding
    plain = ops.cast(cosine_scores(16, 8), dtype)
    rounded = np.asarray(swav_model.sinkhorn(plain, epsilon=0.05))
    np.testing.assert_allclose(rounded, official_sinkhorn(np.asarray(ops.cast(plain, "float32")), 0.05, 3),
                               rtol=2e-4, atol=1e-6)


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon > 0"):
        swav_model.sinkhorn(np.zeros((2, 2), np.float32), epsilon=0.0)
    with pytest.raises(ValueError, match=r"\[batch, prototypes\]"):
        swav_model.sinkhorn(np.zeros(4, np.float32))


def test_sinkhorn_ignores_invalid_rows():
    scores = cosine_scores(10, 4, seed=3)
    valid = np.array([False] * 4 + [True] * 6)
    codes = np.asarray(swav_model.sinkhorn(scores, valid=valid))
    np.testing.assert_allclose(codes[4:], official_sinkhorn(scores[4:], 0.05, 3), rtol=1e-4, atol=1e-6)


def test_sinkhorn_inside_jit_on_a_sharded_batch_equals_one_device():
    # the batch sharded over the devices JAX has (8 under XLA_FLAGS, else 1): sums stay global
    scores = cosine_scores(16, 6, seed=4)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharded = jax.device_put(scores, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))
    codes = jax.jit(lambda s: swav_model.sinkhorn(s, epsilon=0.03))(sharded)
    np.testing.assert_allclose(np.asarray(codes), official_sinkhorn(scores, 0.03, 3), rtol=2e-4, atol=1e-6)


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
    loss = swav_model.swav_loss([crop0, crop1], crops_for_assign=(0, 1), temperature=tau, epsilon=eps)
    assert float(loss) == pytest.approx((term_a + term_b) / 2, rel=1e-5)


def test_swav_loss_gradient_skips_the_codes_and_averages_over_the_batch():
    s0, s1 = cosine_scores(4, 5, seed=5), cosine_scores(4, 5, seed=6)
    g0, g1 = jax.grad(lambda a, b: swav_model.swav_loss([a, b], crops_for_assign=(0,)), argnums=(0, 1))(s0, s1)
    np.testing.assert_array_equal(np.asarray(g0), 0.0)  # crop 0 only gives targets; codes carry no gradient
    q = np.asarray(swav_model.sinkhorn(s0))
    p1 = np.asarray(jax.nn.softmax(s1 / 0.1, axis=1))
    np.testing.assert_allclose(np.asarray(g1), (p1 - q) / 0.1 / 4, rtol=1e-4, atol=1e-7)


def test_swav_loss_rejects_bad_crops_for_assign():
    with pytest.raises(ValueError, match="crops_for_assign"):
        swav_model.swav_loss([cosine_scores(2, 3)] * 2, crops_for_assign=(2,))
    with pytest.raises(ValueError, match=">= 2 crops"):
        swav_model.swav_loss([cosine_scores(2, 3)])


def test_uniform_predictions_cost_exactly_ln_k():
    loss = swav_model.swav_loss([np.zeros((4, 7), np.float32)] * 3)
    assert float(loss) == pytest.approx(math.log(7), rel=1e-6)


# ============ model ============

def tiny_backbone():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, x)


def crop_arrays(batch=8, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.random((batch * steps, s, s, 3)).astype(np.float32) for s in (16, 16, 8, 8))


def crop_batches(batch=8, steps=4, seed=0):
    """Endless batches ((crop_1, ..., crop_4),) as the kit's input pipeline yields them."""
    crops = crop_arrays(batch, steps, seed)
    return tf.data.Dataset.from_tensor_slices(crops).batch(batch, drop_remainder=True).map(
        lambda *c: (tuple(c),)).repeat()


def make_model(steps_per_execution=1, **kwargs):
    model = swav_model.SwAVModel(tiny_backbone(), num_prototypes=6, hidden_dim=16, output_dim=4, **kwargs)
    model.compile(optimizer=optim.build_optimizer("sgd", 0.5), steps_per_execution=steps_per_execution)
    return model


def column_norms(kernel):
    return np.linalg.norm(np.asarray(kernel), axis=0)


@pytest.mark.slow
def test_prototypes_are_unit_norm_every_step_and_frozen_for_the_first_niters():
    keras.utils.set_random_seed(0)
    model = make_model(freeze_prototypes_niters=2)
    kernel = model.prototypes.kernel
    np.testing.assert_allclose(column_norms(kernel), 1.0, atol=1e-6)  # unit from the start
    start = np.asarray(kernel).copy()
    for step in (1, 2):  # frozen: no gradient reaches them
        model.fit(crop_batches(), epochs=1, steps_per_epoch=1, verbose=0)
        np.testing.assert_allclose(np.asarray(kernel), start, atol=1e-6)
        assert int(model.step) == step
    model.fit(crop_batches(), epochs=1, steps_per_epoch=2, verbose=0)
    assert np.abs(np.asarray(kernel) - start).max() > 1e-3  # steps 3-4: trained
    np.testing.assert_allclose(column_norms(kernel), 1.0, atol=1e-5)  # and unit again after each update
    assert int(model.optimizer.iterations) == 4


@pytest.mark.slow
def test_fit_logs_usage_and_fills_the_queue_from_its_start_step():
    keras.utils.set_random_seed(0)
    model = make_model(steps_per_execution=2, freeze_prototypes_niters=1, queue_length=16, queue_start_step=2)
    history = model.fit(crop_batches(), epochs=2, steps_per_epoch=2, verbose=0).history
    assert all(np.isfinite(history["loss"])) and all(0 <= h <= math.log(6) + 1e-6 for h in history["usage_entropy"])
    queue = np.asarray(model.queue)
    assert queue.shape == (2, 16, 4)
    assert (np.abs(np.linalg.norm(queue, axis=-1) - 1) < 1e-5).all()  # steps 3 and 4 pushed 2 x 8 rows: full
    assert int(model.step) == int(model.optimizer.iterations) == 4


@pytest.mark.slow
def test_queue_push_puts_the_newest_assigned_embeddings_first_and_is_used_once_full():
    model = make_model(queue_length=4, queue_start_step=0)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 2, 4)).astype(np.float32)  # V=3 crops, B=2 images, D=4
    scores = rng.uniform(-1, 1, (3, 2, 6)).astype(np.float32)
    plain = float(swav_model.swav_loss(scores, (0, 1)))
    assert float(model.compute_loss(y_pred={"z": z, "scores": scores}, training=True)) == pytest.approx(plain)
    queue = np.asarray(model.queue)
    np.testing.assert_array_equal(queue[:, :2], z[:2])  # crops 0 and 1, newest first
    np.testing.assert_array_equal(queue[:, 2:], 0.0)    # not full yet: the loss ignored it
    model.compute_loss(y_pred={"z": z[::-1].copy(), "scores": scores}, training=True)
    queue = np.asarray(model.queue)
    np.testing.assert_array_equal(queue[:, :2], z[::-1][:2])
    np.testing.assert_array_equal(queue[:, 2:], z[:2])  # shifted back by one batch
    with_queue = float(model.compute_loss(y_pred={"z": z, "scores": scores}, training=False))
    kernel = np.asarray(model.prototypes.kernel)
    expected = float(swav_model.swav_loss(scores, (0, 1), queue_scores=queue @ kernel, queue_valid=True))
    assert with_queue == pytest.approx(expected, rel=1e-5) and with_queue != pytest.approx(plain)
    assert int(model.step) == 2  # evaluation (training=False) neither pushes nor counts


def test_forward_passes_are_grouped_by_crop_resolution():
    crops = [np.zeros([2, s, s, 3]) for s in (224, 224, 96, 96, 96, 224)]
    assert swav_model._resolution_groups(crops) == [(0, 2), (2, 5), (5, 6)]


@pytest.mark.slow
def test_batchnorm_follows_the_training_flag():
    model = make_model()
    crops = list(crop_arrays(steps=1))
    bn = model.backbone.layers[2]
    before = np.asarray(bn.moving_mean).copy()
    model(crops, training=False)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), before)  # inference: moving statistics
    model(crops, training=True)
    assert np.abs(np.asarray(bn.moving_mean) - before).max() > 0  # training: batch statistics, updated


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_train_step_under_mixed_precision_keeps_codes_and_loss_in_float32(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = make_model(freeze_prototypes_niters=0)  # float16: compile adds loss scaling
        history = model.fit(crop_batches(), epochs=1, steps_per_epoch=2, verbose=0).history
        out = model(list(crop_arrays(steps=1)), training=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert out["z"].dtype == out["scores"].dtype == "float32"
    assert model.backbone.layers[1].compute_dtype == policy.split("_")[1]
    # (float16's dynamic loss scaling may skip its first updates; the model still counts its steps)
    assert np.isfinite(history["loss"]).all() and int(model.step) == 2


_SAME_RUN = """
import json, numpy as np
from kitlib import runtime
from kitlib.swav import color
import keras
from tests.swav import test_model as t
rt = runtime.setup(verbose=False)
keras.utils.set_random_seed(0)
model = t.make_model(steps_per_execution=2, freeze_prototypes_niters=2, queue_length=32, queue_start_step=1,
                     crop_augment=color.ColorAugment(seed=3))  # colour augmentation inside the step
history = model.fit(t.crop_batches(batch=16), epochs=3, steps_per_epoch=2, verbose=0).history
print(json.dumps({"devices": rt.num_devices, "distributed": rt.distribution is not None,
                  "loss": history["loss"], "usage": history["usage_entropy"],
                  "kernel": np.asarray(model.prototypes.kernel).tolist(), "queue": np.asarray(model.queue).tolist(),
                  "bn": np.asarray(model.head.layers[1].moving_variance).tolist()}))
"""


@pytest.mark.slow
@pytest.mark.matrix
def test_eight_devices_train_to_the_same_losses_weights_and_queue_as_one():
    # queue, frozen prototypes, several steps per execution and the device colour augmentation included
    one, eight = run_on_devices(_SAME_RUN, devices=1), run_on_devices(_SAME_RUN, devices=8)
    assert (one["devices"], one["distributed"], eight["devices"], eight["distributed"]) == (1, False, 8, True)
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=2e-4)
    np.testing.assert_allclose(eight["usage"], one["usage"], rtol=2e-4)
    np.testing.assert_allclose(eight["kernel"], one["kernel"], atol=2e-4)
    np.testing.assert_allclose(eight["queue"], one["queue"], atol=2e-4)
    # the projection head's BatchNorm saw the global batch of 16 on every device (SyncBN), not 2 images
    np.testing.assert_allclose(eight["bn"], one["bn"], rtol=1e-3)


def test_prototype_usage_is_ln_k_when_every_prototype_is_used_and_resets_to_nothing():
    usage = swav_model.PrototypeUsage(4)
    usage.update_state(np.array([[0, 1], [2, 3]]))
    assert float(usage.result()) == pytest.approx(np.log(4), rel=1e-6)
    usage.update_state(np.array([0, 0, 0, 0]))  # prototype 0 now takes 5 of the 8 matches
    p = np.array([5, 1, 1, 1]) / 8
    assert float(usage.result()) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-6)
    usage.reset_state()  # once an epoch (Keras 3.15 cannot zeros_like a Variable: the bug this guards)
    np.testing.assert_array_equal(np.asarray(usage.counts), np.zeros(4))
    assert float(usage.result()) == 0.0
