"""kitlib.bit.training.build_classifier: backbone + zero head (Keras 3 on JAX); the tiny backbones
(kitlib.models.standin); kitlib.models.hub.resolve_backbone."""

import hashlib
import os
import socket
import time

import numpy as np
import pytest

from kitlib.bit import training as bit_training
from kitlib.compat import keras
from kitlib.models import backbones, hub, resnetv2, standin

# ============ backbone + zero head (Keras 3 on JAX) ============


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A small_cnn backbone saved as .keras (F = 128)."""
    return standin.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)


def test_tiny_backbone_file_is_seeded_and_loads_as_a_trainable_keras_model(tiny_backbone, tmp_path):
    again = standin.make_tiny_backbone(str(tmp_path / "again.keras"))
    first, second = backbones.load(tiny_backbone), backbones.load(again)
    assert first.trainable and first.trainable_weights
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert first(_images(2)).shape == (2, 128)
    with pytest.raises(ValueError, match="unknown tiny backbone"):
        standin.make_tiny_backbone(str(tmp_path / "x.keras"), name="vgg")


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


# ============ resolve_backbone: attached / cached copies, offline failures ============


def _fake_saved_model(folder):
    """A folder that looks like a TF2 SavedModel to the resolver (it only checks for saved_model.pb)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "saved_model.pb"), "wb").close()
    return str(folder)


def test_unreachable_handle_fails_fast_with_advice(tmp_path):
    probed = []

    def offline(host):
        probed.append(host)
        return False

    start = time.monotonic()
    with pytest.raises(ValueError, match="Add Input.*Models.*local directory"):
        backbones.load("https://tfhub.dev/google/bit/m-r50x1/1", cache_dir=str(tmp_path),
                       input_root=str(tmp_path), reachable=offline)
    assert probed == ["tfhub.dev"]  # one probe, no retries
    with pytest.raises(ValueError, match="unreachable"):
        hub.resolve_backbone("google/bit/tensorFlow2/m-r50x1", cache_dir=str(tmp_path),
                             input_root=str(tmp_path), reachable=offline)
    assert probed[-1] == "www.kaggle.com"
    with pytest.raises(ValueError, match="unreachable"):
        hub.resolve_backbone("gs://my-bucket/bit_m-r50x1.tar.gz", cache_dir=str(tmp_path), reachable=offline)
    assert probed[-1] == "storage.googleapis.com"
    assert time.monotonic() - start < 5


def test_default_network_probe_is_one_connect_with_a_short_timeout(monkeypatch):
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub.can_connect("tfhub.dev") is False
    assert calls == [(("tfhub.dev", 443), hub.PROBE_TIMEOUT_S)] and hub.PROBE_TIMEOUT_S <= 5


def test_attached_kaggle_model_and_hub_cache_are_used_without_the_network(tmp_path):
    def no_network(host):
        raise AssertionError("the network must not be probed when a local copy exists")

    attached = _fake_saved_model(tmp_path / "input" / "bit" / "tensorflow2" / "m-r50x1" / "1")
    for handle in ("google/bit/tensorFlow2/m-r50x1", "https://tfhub.dev/google/bit/m-r50x1/1",
                   "https://www.kaggle.com/models/google/bit/TensorFlow2/m-r50x1/1"):
        assert hub.resolve_backbone(handle, cache_dir=str(tmp_path), input_root=str(tmp_path / "input"),
                                    reachable=no_network) == attached

    url = "https://tfhub.dev/google/bit/s-r50x1/1"
    cached = _fake_saved_model(tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest())  # tensorflow_hub's layout
    assert hub.resolve_backbone(url, cache_dir=str(tmp_path / "cache"), input_root=str(tmp_path / "input"),
                                reachable=no_network) == cached


def test_local_paths_that_are_not_savedmodels_fail_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        hub.resolve_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="no such directory"):
        hub.resolve_backbone(str(tmp_path / "missing"))
