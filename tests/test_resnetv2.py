"""BiT ResNet-v2 on Keras 3 (kitlib.models.resnetv2): names, architecture, weight standardisation, GroupNorm,
an independent numpy forward pass, and the weight routes (.npz, TF2 SavedModel, .keras) agreeing.

Most tests share one small variant (``SMALL``: 32 root channels so GroupNorm keeps BiT's 32 groups, one
unit per stage) with random weights, run eagerly on one image batch: JAX compiles each op once."""

import os

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from kitlib.compat import keras
from kitlib.models import bit_weights, resnetv2, resnetv2_layers

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


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, expected", [
    ("BiT-M-R50x1", (50, 1)), ("BiT-S-R101x3", (101, 3)), ("R50x1", (50, 1)), ("r152x4", (152, 4)),
    ("BiT-M-R50x1.npz", (50, 1)), ("/kaggle/input/bit/BiT-M-R152x2.npz", (152, 2)),
    ("BiT-M-R50x1-ILSVRC2012.npz", (50, 1)), ("m-r50x3", (50, 3)), ((101, 1), (101, 1)),
])
def test_parse_name(name, expected):
    assert resnetv2.parse_name(name) == expected


@pytest.mark.parametrize("name", ["resnet50", "small_cnn", "R34x1", "R50x5", "BiT-M-R50", "R50x1x", "",
                                  "weights.npz", (50, 5)])
def test_parse_name_rejects(name):
    assert resnetv2.parse_name(name, default=None) is None
    with pytest.raises(ValueError, match="BiT-M-R50x1"):
        resnetv2.parse_name(name)


@pytest.mark.parametrize("raw, key", [
    ("resnet/block1/unit01/a/standardized_conv2d_1/kernel:0", "resnet/block1/unit01/a/standardized_conv2d/kernel"),
    ("keras_layer/resnet/group_norm/gamma:0", "resnet/group_norm/gamma"),
    ("block2/unit03/b/group_norm_4/beta", "resnet/block2/unit03/b/group_norm/beta"),
    ("resnet/block4/unit01/a/proj/standardized_conv2d_7/kernel", "resnet/block4/unit01/a/proj/standardized_conv2d/kernel"),
    ("dense/kernel:0", "dense/kernel"),
])
def test_normalize_key(raw, key):
    assert bit_weights.normalize_key(raw) == key


# ------------------------------------------------------------------------------------ architecture
@pytest.mark.slow
def test_tiny_variant_shapes_and_npz_groups(tmp_path):
    model = resnetv2.build_tiny()
    assert model.output_shape == (None, int(2048 * resnetv2.TINY["width"]))
    assert all(w.trainable for w in model.weights) and all(w.dtype == "float32" for w in model.weights)
    images = np.random.default_rng(0).random((2, 37, 45, 3), dtype=np.float32)
    out = np.asarray(model.predict(images, verbose=0))
    assert out.shape == (2, 256) and np.isfinite(out).all()
    weights = randomize(model)
    path = bit_weights.save_npz(model, str(tmp_path / "tiny.npz"))  # groups=4 recorded, read back
    again = bit_weights.from_npz(path)
    assert {layer.groups for layer in again.layers if isinstance(layer, resnetv2_layers.GroupNorm)} == {4}
    for key, variable in bit_weights.official_variables(again).items():
        np.testing.assert_array_equal(np.asarray(variable.value), weights[key])
    with pytest.raises(ValueError, match="groups"):
        resnetv2.build((None, 0.125), num_units=(1, 1, 1, 1))  # 8 channels, 32 groups


def expected_params(units, width):
    """Parameters of the BiT feature extractor, counted from the architecture by hand."""
    root = 64 * width
    total, channels = 7 * 7 * 3 * root, root
    for stage, n in enumerate(units):
        f = root * 2 ** stage
        for unit in range(n):
            total += 2 * channels + channels * f                 # a: GN(in), 1x1 in -> f
            total += 2 * f + 9 * f * f + 2 * f + f * 4 * f         # b: GN, 3x3 f -> f; c: GN, 1x1 f -> 4f
            if unit == 0:
                total += channels * 4 * f                         # projection 1x1 in -> 4f
            channels = 4 * f
    return total + 2 * channels                                   # pre-head GN


@pytest.mark.slow
def test_r50x1_parameter_count():
    model = resnetv2.build("BiT-M-R50x1")  # built once, never run
    assert model.output_shape == (None, 2048) and model.name == "BiT-M-R50x1"
    assert model.count_params() == expected_params((3, 4, 6, 3), 1) == 23_500_352  # ~23.5 M
    assert len(bit_weights.official_variables(model)) == 1 + 3 * (3 + 4 + 6 + 3) * 3 + 4 + 2
    assert model.get_layer("block2_unit01_b_conv").strides == (2, 2)
    assert model.get_layer("block2_unit02_b_conv").strides == (1, 1)


def test_weight_standardisation():
    rng = np.random.default_rng(3)
    layer = resnetv2_layers.StandardizedConv2D(6, 3, strides=2)
    x = rng.standard_normal((2, 9, 11, 4)).astype(np.float32)
    layer.build(x.shape)
    raw = (rng.standard_normal((3, 3, 4, 6)) * 0.2 + 0.5).astype(np.float32)
    layer.kernel.assign(raw)
    kernel = np.asarray(layer.standardized_kernel())
    assert kernel.dtype == np.float32 and kernel.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(kernel.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(kernel.var(axis=(0, 1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(kernel, (raw - raw.mean((0, 1, 2))) / np.sqrt(raw.var((0, 1, 2)) + 1e-10),
                               atol=1e-5)
    out = np.asarray(layer(x))
    assert out.shape == (2, 4, 5, 6) == layer.compute_output_shape(x.shape)
    layer.kernel.assign(raw * rng.uniform(0.2, 5, 6).astype(np.float32) + rng.standard_normal(6).astype(np.float32))
    np.testing.assert_allclose(np.asarray(layer(x)), out, atol=1e-4)  # affine per out-channel: no effect


def np_group_norm(x, gamma, beta, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    g = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + eps)
    return g.reshape(x.shape) * gamma + beta


def test_group_norm_against_numpy():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 5, 6, 16)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    layer = resnetv2_layers.GroupNorm(4)
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    np.testing.assert_allclose(np.asarray(layer(x)), np_group_norm(x.astype(np.float64), gamma, beta, 4),
                               atol=1e-5)
    x[:, :, :, :4] = 2.0  # a constant group: (x - mean) = 0 -> beta, no NaN (eps 1e-5)
    np.testing.assert_allclose(np.asarray(layer(x))[..., :4], np.broadcast_to(beta[:4], (2, 5, 6, 4)), atol=1e-5)
    config = layer.get_config()
    assert config["groups"] == 4 and config["epsilon"] == 1e-5


# ------------------------------------------------------------------ independent numpy forward pass
def np_conv(x, w, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, w.shape[:2], axis=(1, 2))[:, ::stride, ::stride]  # N H W C kh kw
    return np.einsum("nhwcij,ijco->nhwo", windows, w)


def np_ws(w):
    return (w - w.mean(axis=(0, 1, 2))) / np.sqrt(w.var(axis=(0, 1, 2)) + 1e-10)


def np_bit_features(weights, images, groups=32):
    """BiT's forward pass from the official-named arrays, written from the paper's description."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = 2.0 * images.astype(np.float64) - 1.0                                   # (x - 127.5) / 127.5
    x = np_conv(x, np_ws(w["resnet/root_block/standardized_conv2d/kernel"]), stride=2, pad=3)
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))                              # zero pad, then pool
    x = sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))
    for block in range(1, 5):
        unit = 1
        while f"resnet/block{block}/unit{unit:02d}/a/group_norm/gamma" in w:
            p = f"resnet/block{block}/unit{unit:02d}/"
            stride = 2 if block > 1 and unit == 1 else 1
            gn = lambda t, part: np_group_norm(t, w[p + part + "/group_norm/gamma"],  # noqa: E731
                                               w[p + part + "/group_norm/beta"], groups)
            pre = relu(gn(x, "a"))
            proj = p + "a/proj/standardized_conv2d/kernel"
            shortcut = np_conv(pre, np_ws(w[proj]), stride=stride) if proj in w else x
            y = np_conv(pre, np_ws(w[p + "a/standardized_conv2d/kernel"]))
            y = np_conv(relu(gn(y, "b")), np_ws(w[p + "b/standardized_conv2d/kernel"]), stride=stride, pad=1)
            y = np_conv(relu(gn(y, "c")), np_ws(w[p + "c/standardized_conv2d/kernel"]))
            x = shortcut + y
            unit += 1
    x = relu(np_group_norm(x, w["resnet/group_norm/gamma"], w["resnet/group_norm/beta"], groups))
    return x.mean(axis=(1, 2))


@pytest.mark.slow
def test_matches_numpy_reference(small):
    model, weights, images, feats, _ = small
    assert feats.shape == (2, 1024) and np.isfinite(feats).all()
    reference = np_bit_features(weights, images)
    np.testing.assert_allclose(feats, reference, rtol=1e-4, atol=1e-4)
    assert np.abs(reference).mean() > 1e-2  # not trivially zero


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


# ------------------------------------------------------------------------------------- bfloat16
@pytest.mark.slow
def test_bfloat16_policy(small):
    model, weights, images, feats, _ = small
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = resnetv2.build(**SMALL)
    finally:
        keras.config.set_dtype_policy(previous)
    bit_weights.assign_weights(mixed, weights)
    conv = mixed.get_layer("block3_unit01_b_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert str(conv.standardized_kernel().dtype) == "float32"
    out = np.asarray(mixed.predict(images, verbose=0))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - feats).max() < 0.1 * np.abs(feats).max()  # bfloat16 convs, float32 statistics
