"""kitlib.swav.color_host: SwAV's colour distortion in tf.data: probabilities, range, the fused colour map and the blur."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kitlib.swav import color, color_host, geometry, multicrop
from kitlib.swav.color import ColorConfig

N_DRAWS = 4000     # draws per probability estimate: the standard error of a rate is <= 0.008

RATE_TOL = 0.03    # ~4 standard errors

RATE_CROPS = geometry.MultiCropConfig.from_spec("4x32@0.3-1")  # 32 px: a 3-tap blur kernel

OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)

def _rate(flags):
    return float(np.mean(np.asarray(flags)))

def _texture(dtype=np.float32):
    """A colourful noise image: every jitter, grayscale, blur or flip of a window of it changes it."""
    noise = np.random.default_rng(0).random([48, 64, 3])
    return (noise * 255).round().astype(np.uint8) if dtype == np.uint8 else (noise * 255).round().astype(dtype) / 255

def _host_crops(augment, color_config=color.SWAV_COLOR, image=None, n=N_DRAWS // 4, seed=3):
    """[n * 4, 32, 32, 3]: the crops multicrop cuts from n copies of one image (the same seed: the same windows)."""
    images = tf.data.Dataset.from_tensors(_texture() if image is None else image).repeat(n)
    batch = next(iter(multicrop.multicrop(images, RATE_CROPS, augment, seed, color=color_config).batch(n)))
    return np.concatenate([np.asarray(c) for c in batch])

def _per_crop(flags_of, y, x):
    return flags_of(np.abs(y - x).max(axis=(1, 2, 3)))

@pytest.mark.slow
def test_host_path_fires_each_augmentation_with_its_probability():
    plain, flipped = _host_crops("none"), _host_crops("device")        # crops; crops + flips (no colour)
    assert abs(_rate(_per_crop(lambda d: d > 1e-4, flipped, plain)) - 0.5) < RATE_TOL
    for name, p in (("jitter_p", 0.8), ("gray_p", 0.2), ("blur_p", 0.5), ("blur_p", 0.3)):
        host = _host_crops("host", ColorConfig(sigma=(1.0, 2.0), **{**OFF, name: p}))
        assert abs(_rate(_per_crop(lambda d: d > 1e-4, host, flipped)) - p) < RATE_TOL, (name, p)
    np.testing.assert_allclose(_host_crops("host", ColorConfig(**OFF)), flipped, atol=1e-6)  # all off: flips only
    full = _host_crops("host")                                           # SwAV's settings
    assert full.min() >= 0.0 and full.max() <= 1.0
    is_gray = np.abs(full - full.mean(-1, keepdims=True)).max(axis=(1, 2, 3)) < 1e-5
    assert abs(_rate(is_gray) - 0.2) < RATE_TOL                       # saturation factors are >= 0.2
    assert abs(_rate(_per_crop(lambda d: d > 1e-4, full, flipped)) - (1 - 0.2 * 0.8 * 0.5)) < RATE_TOL
    assert dataclasses.asdict(color.SWAV_COLOR) == dict(strength=1.0, jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                                                        sigma=(0.1, 2.0))
    assert geometry.SWAV_PAPER.flip_p == 0.5

def test_host_jitter_keeps_range_gray_stays_gray_and_strength_zero_is_identity():
    flipped = _host_crops("device", n=50)
    jittered = _host_crops("host", ColorConfig(**{**OFF, "jitter_p": 1.0}), n=50)
    assert jittered.min() >= 0.0 and jittered.max() <= 1.0 and np.abs(jittered - flipped).max() > 1e-2
    np.testing.assert_allclose(_host_crops("host", ColorConfig(strength=0.0, **{**OFF, "jitter_p": 1.0}), n=50),
                               flipped, atol=1e-5)
    gray = np.repeat(_texture()[..., :1], 3, axis=-1)                 # saturation and hue act on chroma only
    out = _host_crops("host", ColorConfig(**{**OFF, "jitter_p": 1.0}), image=gray, n=50)
    np.testing.assert_allclose(out, np.repeat(out[..., :1], 3, axis=-1), atol=1e-5)

def test_host_path_gives_the_same_crops_from_uint8_and_from_float_pixels():
    from_uint8 = _host_crops("host", image=_texture(np.uint8), n=50)     # the 1/255 scale folded into the map
    np.testing.assert_allclose(from_uint8, _host_crops("host", image=_texture(), n=50), atol=1e-4)

def _jitter_ops_in_order(x, b, c, s, d, order):
    """torchvision's four jitter ops as maps in RGB (hue: the YIQ rotation), in ``order``, no clipping."""
    luma = np.array([0.299, 0.587, 0.114])
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = 2 * np.pi * d
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    ops = {"brightness": lambda y: b * y,
           "contrast": lambda y: c * y + (1 - c) * (y @ luma).mean(),
           "saturation": lambda y: s * y + (1 - s) * (y @ luma)[..., None],
           "hue": lambda y: y @ (np.linalg.inv(yiq) @ rotation @ yiq).T}
    for name in order:
        x = ops[name](x)
    return x

@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation", "hue"),
                                   ("hue", "saturation", "contrast", "brightness"),
                                   ("contrast", "hue", "brightness", "saturation")])
def test_fused_jitter_map_equals_the_four_ops_in_any_order_when_nothing_clips(order):
    x = 0.4 + 0.2 * np.random.default_rng(1).random((12, 12, 3))       # mid-range: no op leaves [0, 1]
    b, c, s, d = 1.15, 0.8, 1.2, 0.05
    maps, weight = color_host.jitter_map(*[tf.constant([v], tf.float32) for v in (b, c, s, d)], tf.constant([False]))
    fused = color_host.apply_color_map(tf.constant(x * 255.0, tf.float32), maps[0], weight[0], 1 / 255)
    np.testing.assert_allclose(fused, _jitter_ops_in_order(x, b, c, s, d, order), atol=1e-5)
    maps, weight = color_host.jitter_map(*[tf.constant([v], tf.float32) for v in (b, c, s, d)], tf.constant([True]))
    gray = color_host.apply_color_map(tf.constant(x, tf.float32), maps[0], weight[0], 1.0)
    expected = _jitter_ops_in_order(x, b, c, s, d, order) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(expected[..., None], 3, -1), atol=1e-5)

@pytest.mark.parametrize("height, width, k", [(30, 40, 7), (4, 4, 3), (5, 9, 5)])
def test_gaussian_blur_equals_a_reflect_padded_2d_convolution(height, width, k):
    # (4, 4, 3), (5, 9, 5): the reflection reaches across the whole image from both ends
    x = tf.random.stateless_uniform([3, height, width, 3], [5, 6])
    out = tf.stack([color_host.gaussian_blur(image, 1.5, kernel_size=k) for image in x])
    taps = np.exp(-np.arange(-(k // 2), k // 2 + 1) ** 2 / (2 * 1.5 ** 2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = tf.pad(x, [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]], mode="REFLECT")
    expected = tf.nn.depthwise_conv2d(padded, np.tile(kernel[:, :, None, None], [1, 1, 3, 1]).astype(np.float32),
                                      [1, 1, 1, 1], "VALID")
    np.testing.assert_allclose(out, expected, atol=1e-5)

@pytest.mark.parametrize("height, width", [(96, 96), (40, 72), (160, 160)])
def test_host_blur_by_matrices_or_convolution_equals_the_2d_convolution(height, width):
    # the matrix route up to MATRIX_BLUR_MAX_SIDE, the depthwise one above it
    x = tf.random.stateless_uniform([height, width, 3], [7, height])
    one_d = np.exp(-np.arange(-4, 5) ** 2 / (2 * 1.3 ** 2))
    one_d /= one_d.sum()
    padded = tf.pad(x[None], [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
    kernel = np.tile(np.outer(one_d, one_d)[:, :, None, None], [1, 1, 3, 1]).astype(np.float32)
    expected = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    np.testing.assert_allclose(color_host.gaussian_blur(x, 1.3, kernel_size=9), expected, atol=1e-5)
