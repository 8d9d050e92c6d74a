"""kitlib.models.resnetv2: BiT's ResNet-v2 as a Keras 3 model: names, shapes, the reference forward pass, bfloat16."""


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

def np_group_norm(x, gamma, beta, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    g = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + eps)
    return g.reshape(x.shape) * gamma + beta

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
