"""kitlib.bit.training: backbone + zero head, the compiled classifier, fitting for the rule's steps in rounds, the report."""


import csv
import os

import numpy as np
import pytest

from kitlib.bit import training
from kitlib.bit import training as bit_training
from kitlib.compat import keras
from kitlib.models import backbones, resnetv2, standin


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A small_cnn backbone saved as .keras (F = 128)."""
    return standin.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))

def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)

@pytest.mark.slow
def test_classifier_head_starts_at_zero_and_fit_moves_every_backbone_weight(tiny_backbone):
    model = bit_training.build_classifier(tiny_backbone, num_classes=3, image_size=32)
    head, backbone = model.get_layer("head"), model.layers[1]
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    images = _images(24)
    np.testing.assert_allclose(keras.ops.softmax(model(images)), 1 / 3, atol=1e-6)  # uniform at start

    before = [w.numpy().copy() for w in backbone.trainable_weights]
    labels = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    changed = [np.abs(w.numpy() - b).max() for w, b in zip(backbone.trainable_weights, before)]
    assert len(changed) == 9 and min(changed) > 0  # every backbone variable moved: full fine-tuning
    assert np.any(head.kernel.numpy())

@pytest.mark.slow
def test_float32_backbone_computes_in_bfloat16_under_a_mixed_policy_with_float32_logits(tiny_backbone):
    keras.config.set_dtype_policy("mixed_bfloat16")  # what runtime.setup sets on a TPU
    try:
        model = bit_training.build_classifier(tiny_backbone, num_classes=3, image_size=32)
        backbone = model.layers[1]
        convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
        assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
        assert backbone(_images(2)).dtype == "float32"  # the pooled features stay float32 (FLOAT32_LAYERS)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy(from_logits=True))
        history = model.fit(_images(8), np.eye(3, dtype=np.float32)[np.arange(8) % 3], batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        assert model(_images(1)).dtype == "float32"  # the head's logits
        # before training, the rebuilt backbone holds the file's weights: its bfloat16 features are the
        # float32 ones to bfloat16 precision
        features = np.asarray(bit_training.build_classifier(tiny_backbone, 3, 32).layers[1](_images(4)), np.float32)
    finally:
        keras.config.set_dtype_policy("float32")
    reference = np.asarray(backbones.load(tiny_backbone)(_images(4)))
    np.testing.assert_allclose(features, reference, rtol=0.05, atol=0.02 * np.abs(reference).max())

@pytest.mark.slow
def test_bit_tiny_resnetv2_backbone_trains_in_the_classifier(tmp_path):
    path = standin.make_tiny_backbone(str(tmp_path / "hub.keras"), name="bit_tiny")
    keras.config.set_dtype_policy("mixed_bfloat16")  # a float32 file fine-tuned on a TPU
    try:
        mixed = bit_training.build_classifier(path, num_classes=2, image_size=32).layers[1]
    finally:
        keras.config.set_dtype_policy("float32")
    policies = {layer.name: layer.compute_dtype for layer in mixed.layers}
    assert policies["block1_unit01_b_conv"] == "bfloat16"
    assert [policies[name] for name in resnetv2.FLOAT32_LAYERS] == ["float32"] * 3  # pinned, as resnetv2 builds
    model = bit_training.build_classifier(path, num_classes=2, image_size=32)
    assert model.output_shape == (None, 2)
    before = [w.numpy().copy() for w in model.layers[1].trainable_weights]
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(_images(8), np.eye(2, dtype=np.float32)[np.arange(8) % 2], batch_size=4, epochs=2, verbose=0)
    assert all(np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.layers[1].trainable_weights, before))


@pytest.mark.parametrize("total, wanted, rounds", [
    (500, 10, (10, 50)), (4000, 10, (10, 400)), (20, 4, (4, 5)), (37, 10, (1, 37)), (7, 10, (7, 1))])
def test_evaluation_rounds_cover_exactly_the_rule_steps(total, wanted, rounds):
    assert training.evaluation_rounds(total, wanted) == rounds  # (epochs, steps per epoch): the divisor nearest


def _tiny_model():
    inputs = keras.Input([2])
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), "categorical_crossentropy", metrics=["accuracy"])
    return model


def test_callbacks_keep_the_best_validation_weights_and_log_every_round(tmp_path):
    model = _tiny_model()
    x, y = np.array([[1, 0], [0, 1]] * 4, np.float32), np.eye(2, dtype=np.float32)[[0, 1] * 4]
    callbacks = training.training_callbacks(str(tmp_path))
    model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=4, verbose=0, callbacks=callbacks)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and "val_accuracy" in rows[0]
    best = max(float(r["val_accuracy"]) for r in rows)
    assert callbacks[0].best == best and len(callbacks[0].best_weights) == len(model.get_weights())
    fresh = _tiny_model()
    done, saved_best, weights = training.resume(fresh, str(tmp_path))  # the whole state, read back
    assert (done, saved_best) == (3, best) and int(fresh.optimizer.iterations) == int(model.optimizer.iterations)
    for a, b in zip(model.get_weights() + [weights[0]], fresh.get_weights() + [callbacks[0].best_weights[0]]):
        np.testing.assert_array_equal(a, b)
    assert training.resume(_tiny_model(), str(tmp_path / "nothing")) == (0, -np.inf, None)
    os.remove(training.state_path(str(tmp_path)))  # killed after the first round's row, before its state
    assert training.resume(_tiny_model(), str(tmp_path))[0] == 0 and not (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("kind, steps_per_epoch, wanted, expected", [
    ("CPU", 50, None, 1), ("GPU", 50, None, 1), ("TPU", 50, None, 25), ("TPU", 64, None, 32), ("TPU", 7, None, 7),
    ("TPU", 37, None, 1), ("CPU", 50, 10, 10), ("CPU", 50, 8, 5)])
def test_steps_per_execution_divides_the_round_and_is_large_only_on_tpu(kind, steps_per_epoch, wanted, expected):
    assert training.steps_per_execution_for(kind, steps_per_epoch, wanted) == expected
