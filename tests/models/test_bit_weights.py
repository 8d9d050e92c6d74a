"""kitlib.models.bit_weights: the official .npz and SavedModel weights in and out, by the official names."""

import os

import numpy as np
import pytest

from kitlib.models import bit_weights, resnetv2

SMALL = {"name_or_arch": (None, 0.5), "num_units": (1, 1, 1, 1)}  # 32..256 channels, 1024 features

def randomize(model, seed=0):
    """Random values for every BiT weight (GroupNorm gamma/beta too); returns them by official name."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, variable in bit_weights.official_variables(model).items():
        shape = tuple(variable.shape)
        if key.endswith("/gamma"):
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif key.endswith("/beta"):
            value = 0.2 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) * 0.1 + 0.05 * rng.standard_normal(shape[-1])  # off-centre
        variable.assign(value.astype(np.float32))
        weights[key] = value.astype(np.float32)
    return weights

def features(model, images):
    return np.asarray(model(images, training=False), dtype=np.float32)

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(model, official weights, images in [0, 1], features, path of an .npz with those weights)."""
    model = resnetv2.build(**SMALL)
    weights = randomize(model, seed=1)
    images = np.random.default_rng(2).random((2, 40, 36, 3), dtype=np.float32)
    path = str(tmp_path_factory.mktemp("bit") / "weights.npz")
    bit_weights.save_npz(model, path)
    return model, weights, images, features(model, images), path

@pytest.mark.parametrize("raw, key", [
    ("resnet/block1/unit01/a/standardized_conv2d_1/kernel:0", "resnet/block1/unit01/a/standardized_conv2d/kernel"),
    ("keras_layer/resnet/group_norm/gamma:0", "resnet/group_norm/gamma"),
    ("block2/unit03/b/group_norm_4/beta", "resnet/block2/unit03/b/group_norm/beta"),
    ("resnet/block4/unit01/a/proj/standardized_conv2d_7/kernel", "resnet/block4/unit01/a/proj/standardized_conv2d/kernel"),
    ("dense/kernel:0", "dense/kernel"),
])
def test_normalize_key(raw, key):
    assert bit_weights.normalize_key(raw) == key

# --------------------------------------------------------------------------------- .npz round trip
@pytest.mark.slow
def test_npz_round_trip_official_names(small, tmp_path):
    model, weights, images, feats, path = small
    with np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    assert set(stored) == set(weights)  # official names only (32 groups: no kitlib/ key)
    assert stored["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"].shape == (1, 1, 32, 128)  # HWIO
    assert stored["resnet/root_block/standardized_conv2d/kernel"].shape == (7, 7, 3, 32)
    loaded = bit_weights.from_npz(path)  # "weights.npz": architecture from the shapes alone
    np.testing.assert_array_equal(features(loaded, images), feats)

    renamed = {k.replace("/b/standardized_conv2d/", "/b/standardized_conv2d_1/"): v for k, v in stored.items()}
    renamed["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 1024, 10), np.float32)  # the head is ignored
    renamed["resnet/head/conv2d/bias"] = np.zeros((10,), np.float32)
    renamed["resnet/group_norm/gamma"] = renamed["resnet/group_norm/gamma"].reshape(1, 1, 1, -1)
    np.savez(tmp_path / "renamed.npz", **renamed)
    np.testing.assert_array_equal(features(bit_weights.from_npz(tmp_path / "renamed.npz"), images), feats)

def test_npz_rejects_files_that_are_not_bit(tmp_path):
    np.savez(tmp_path / "classifier.npz", **{"dense/kernel": np.zeros((3, 4)), "dense/bias": np.zeros(4)})
    with pytest.raises(ValueError, match=r"classifier\.npz.*dense/kernel"):
        bit_weights.from_npz(tmp_path / "classifier.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        bit_weights.from_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        bit_weights.from_npz(tmp_path / "missing.npz")

# ------------------------------------------------------------ SavedModel, backbones.load, .keras
def write_bit_saved_model(weights, folder):
    """A stand-in for the TF-Hub BiT module: a tf.Module whose variables carry the official names."""
    from kitlib.compat import tf

    class BitModule(tf.Module):
        def __init__(self):
            super().__init__(name=None)
            self.weights = [tf.Variable(value, name=key) for key, value in weights.items()]

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):  # not used by the loader; a hub module is callable
            return tf.reduce_mean(images * 2.0 - 1.0, axis=[1, 2])

    tf.saved_model.save(BitModule(), str(folder))
    return str(folder)

@pytest.mark.slow
def test_saved_model_and_every_route_agree(small, tmp_path):
    from kitlib.models import backbones

    model, weights, images, feats, path = small
    folder = write_bit_saved_model(weights, tmp_path / "bit_m-r50x1_like")
    from_sm = bit_weights.from_saved_model(folder)
    np.testing.assert_allclose(features(from_sm, images), feats, atol=1e-5)
    np.testing.assert_allclose(features(backbones.load(folder), images), feats, atol=1e-5)
    np.testing.assert_allclose(features(backbones.load(path), images), feats, atol=1e-5)
    # the handle route: a Kaggle Models handle resolved to the model attached as a notebook input
    attached = write_bit_saved_model(weights, tmp_path / "input" / "bit" / "tensorflow2" / "m-r50x1" / "1")
    via_handle = backbones.load("google/bit/tensorFlow2/m-r50x1", input_root=str(tmp_path / "input"),
                                reachable=lambda host: False)
    assert os.path.isdir(attached)
    np.testing.assert_allclose(features(via_handle, images), feats, atol=1e-5)
    keras_file = backbones.save(from_sm, str(tmp_path / "x.keras"))
    reloaded = backbones.load(keras_file)
    assert all(w.trainable for w in reloaded.weights) and len(reloaded.trainable_weights) == len(model.weights)
    np.testing.assert_allclose(features(reloaded, images), feats, atol=1e-5)

@pytest.mark.slow
def test_saved_model_that_is_not_bit(tmp_path):
    from kitlib.compat import tf

    module = tf.Module()
    module.kernel = tf.Variable(np.zeros((3, 4), np.float32), name="dense/kernel")
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"other.*dense/kernel"):
        bit_weights.from_saved_model(str(tmp_path / "other"))
