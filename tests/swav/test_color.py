"""kitlib.swav.color: ColorConfig and the ColorAugment layer (colour distortion inside the compiled step)."""


import numpy as np
import pytest
import tensorflow as tf

from kitlib.swav import color, color_host
from kitlib.swav.color import ColorConfig

OFF = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)

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

@pytest.mark.parametrize("side, kernel", [(224, 23), (96, 9), (160, 17), (32, 3)])
def test_blur_kernel_follows_the_crop_size(side, kernel):
    assert color.blur_kernel_size(side) == kernel
    impulse = np.zeros([1, side, side, 3], np.float32)
    impulse[0, side // 2, side // 2] = 1.0
    blurred = color_host.gaussian_blur(tf.constant(impulse[0]), 2.0).numpy()[None]
    assert (blurred[0, side // 2, :, 0] > 0).sum() == kernel       # the impulse spreads over the kernel
    np.testing.assert_allclose(blurred.sum(), 3.0, rtol=1e-4)       # normalised taps keep the mean
    flat = color_host.gaussian_blur(tf.fill([side, side, 3], 0.5), 1.0)  # reflected borders: no dark frame
    np.testing.assert_allclose(flat, 0.5, atol=1e-5)

N_LAYER = 600      # images per rate estimate of the layer: binomial standard error <= 0.021

STD_TOL = 4.5      # tolerance in binomial standard errors

def _binomial_tol(p, n=N_LAYER):
    return STD_TOL * np.sqrt(p * (1 - p) / n)

def _pattern_batch(n, side=32):
    """n copies of a colourful image with an edge: every jitter, grayscale or blur changes it."""
    pattern = np.zeros([side, side, 3], np.float32)
    pattern[:, :side // 2], pattern[:, side // 2:] = [0.9, 0.3, 0.1], [0.1, 0.5, 0.8]
    return np.ascontiguousarray(np.broadcast_to(pattern, [n, side, side, 3]))

def _changed(y, x):
    return np.abs(np.asarray(y) - x).max(axis=(1, 2, 3)) > 1e-4

def _is_gray(y):
    y = np.asarray(y)
    return np.abs(y - y.mean(-1, keepdims=True)).max(axis=(1, 2, 3)) < 1e-6

@pytest.mark.slow  # the first eager call compiles every op: 3-7 s on 2 shared cores
def test_color_augment_layer_keeps_inputs_when_not_training_and_shape_dtype_range_when_training():
    import jax.numpy as jnp

    from kitlib.compat import keras

    crops = [np.random.default_rng(s).random([N_LAYER, s, s, 3]).astype(np.float32) for s in (32, 16)]
    layer = color.ColorAugment(seed=3)
    assert layer.compute_dtype == "float32" and layer.color_config == color.SWAV_COLOR
    same = layer(crops, training=False)
    assert isinstance(same, list) and all(np.array_equal(a, b) for a, b in zip(same, crops))
    one = jnp.asarray(crops[0])
    assert layer(one, training=False) is one
    np.testing.assert_array_equal(layer(one, training=jnp.asarray(False)), one)  # a tensor learning phase
    out = layer(tuple(crops), training=True)
    assert isinstance(out, tuple) and [o.shape for o in out] == [c.shape for c in crops]
    for o, c in zip(out, crops):
        assert o.dtype == "float32" and float(o.min()) >= 0.0 and float(o.max()) <= 1.0
        assert _changed(o, c).mean() > 0.5
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = color.ColorAugment(seed=3)
        out = mixed([jnp.asarray(c, "bfloat16") for c in crops], training=True)
        assert mixed.compute_dtype == "float32" and all(o.dtype == "float32" for o in out)
        assert all(float(o.min()) >= 0.0 and float(o.max()) <= 1.0 for o in out)
    finally:
        keras.mixed_precision.set_global_policy(previous)

@pytest.mark.slow
def test_color_augment_layer_fires_with_the_configured_probabilities():
    x = _pattern_batch(N_LAYER)                                       # 32 px: 3 blur taps
    off = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    for i, (name, p) in enumerate([("jitter_p", 0.8), ("gray_p", 0.2), ("blur_p", 0.5), ("blur_p", 0.3)]):
        layer = color.ColorAugment(seed=i, sigma=(1.0, 2.0), **{**off, name: p})
        rate = _changed(layer(x, training=True), x).mean()
        assert abs(rate - p) < _binomial_tol(p), (name, p, rate)
    full = color.ColorAugment(seed=7)(x, training=True)            # SwAV defaults
    gray = _is_gray(full)  # only the grayscale coin grays: saturation factors are >= 0.2
    assert abs(gray.mean() - color.SWAV_COLOR.gray_p) < _binomial_tol(color.SWAV_COLOR.gray_p)
    assert abs(_changed(full, x).mean() - (1 - 0.2 * 0.8 * 0.5)) < _binomial_tol(0.92)  # untouched: no op fired

@pytest.mark.slow
def test_color_augment_layer_probabilities_zero_and_one_are_exact():
    x = _pattern_batch(N_LAYER)                                       # the shapes of the tests above
    off = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    np.testing.assert_array_equal(color.ColorAugment(seed=0, **off)(x, training=True), x)
    assert _changed(color.ColorAugment(seed=1, **{**off, "jitter_p": 1.0})(x, training=True), x).all()
    assert _is_gray(color.ColorAugment(seed=2, **{**off, "gray_p": 1.0})(x, training=True)).all()
    blurred = color.ColorAugment(seed=3, sigma=(1.0, 2.0), **{**off, "blur_p": 1.0})(x, training=True)
    assert _changed(blurred, x).all() and not _is_gray(blurred).any()
    tiny = np.random.default_rng(0).random([N_LAYER, 16, 16, 3]).astype(np.float32)  # 16 px: 1 tap, no blur
    np.testing.assert_array_equal(color.ColorAugment(seed=4, **{**off, "blur_p": 1.0})(tiny, training=True), tiny)

@pytest.mark.slow
def test_color_augment_layer_matches_the_host_grayscale_and_blur():
    x = np.random.default_rng(1).random([4, 40, 56, 3]).astype(np.float32)
    luma = np.repeat((x @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)   # ITU-R 601
    np.testing.assert_allclose(color.ColorAugment(jitter_p=0.0, gray_p=1.0, blur_p=0.0)(x), luma, atol=1e-6)
    host_gray = color_host.augment_crops(tf.unstack(tf.constant(x)), ColorConfig(jitter_p=0.0, gray_p=1.0, blur_p=0.0))
    np.testing.assert_allclose(np.stack(host_gray), luma, atol=1e-6)
    for side, sigma in ((32, 0.8), (96, 1.7), (40, 1.3)):                       # 3, 9 and 3 taps
        x = np.random.default_rng(side).random([3, side, side if side != 40 else 56, 3]).astype(np.float32)
        layer = color.ColorAugment(jitter_p=0.0, gray_p=0.0, blur_p=1.0, sigma=(sigma, sigma), seed=0)
        host = np.stack([color_host.gaussian_blur(tf.constant(image), sigma) for image in x])  # reflect padded
        np.testing.assert_allclose(layer(x, training=True), host, atol=1e-5)

@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation", "hue"),
                                   ("hue", "saturation", "contrast", "brightness"),
                                   ("contrast", "hue", "brightness", "saturation")])
def test_color_augment_layer_jitter_runs_the_given_order_with_a_clip_after_each_op(order):
    names = ("brightness", "contrast", "saturation", "hue")
    x = np.random.default_rng(2).random([2, 8, 8, 3])
    b, c, s, d = 1.7, 0.6, 1.5, 0.12                                 # strong: ops leave [0, 1] and clip
    expected = x.copy()
    for i in range(2):                                                # per image: contrast's mean is its own
        for name in order:                                            # torchvision: clip after every op
            expected[i] = np.clip(_jitter_ops_in_order(expected[i], b, c, s, d, [name]), 0.0, 1.0)
    factors = [np.full([2], v, np.float32) for v in (b, c, s, d)]
    out = color.jitter_batch(np.float32(x), *factors, np.array([[names.index(n) for n in order]] * 2))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    unclipped = _jitter_ops_in_order(x[0], b, c, s, d, order)
    assert np.abs(np.clip(unclipped, 0, 1) - expected[0]).max() > 1e-2  # the clips between ops matter
    still = color.ColorAugment(strength=0.0, seed=0, **{**OFF, "jitter_p": 1.0})(np.float32(x), training=True)
    np.testing.assert_allclose(still, x, atol=1e-5)  # the layer's draws at strength 0: factors 1, hue 0

@pytest.mark.slow
def test_color_augment_layer_draws_fresh_parameters_every_jitted_step_and_repeats_with_a_seed():
    import jax

    from kitlib.compat import keras

    crops = [_pattern_batch(8, 32), _pattern_batch(8, 16)]
    layer = color.ColorAugment(seed=5)
    step = jax.jit(lambda state, c: layer.stateless_call([], state, c, training=True))  # as Keras's trainer

    def start(seed):  # the initial SeedGenerator state of a fresh layer
        return [v.value for v in color.ColorAugment(seed=seed).non_trainable_variables]

    first, state = step(start(5), crops)
    second, _ = step(state, crops)
    again, _ = step(start(5), crops)
    other, _ = step(start(6), crops)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)), "same seed, same draws"
    assert all(_changed(a, b).any() for a, b in zip(first, second)), "each step draws anew"
    assert all(_changed(a, b).any() for a, b in zip(first, other))

    class Model(keras.Model):  # as SwAVModel: the layer at the start of the forward pass, in Keras's jit
        def __init__(self):
            super().__init__()
            self.crop_augment = color.ColorAugment(seed=5)

        def call(self, x, training=False):
            return self.crop_augment(x, training=True)

    model = Model()
    one, two = (model.predict(crops[0], batch_size=8, verbose=0) for _ in range(2))
    np.testing.assert_allclose(one, first[0], atol=1e-6)              # a fresh layer, seed 5: the same draws
    assert _changed(one, two).any()

def test_color_config_validates_and_round_trips_through_the_layer():
    layer = color.ColorAugment(color.ColorConfig(gray_p=0.5), seed=9, blur_p=0.1)
    assert layer.color_config == color.ColorConfig(gray_p=0.5, blur_p=0.1)
    clone = color.ColorAugment.from_config(layer.get_config())
    assert clone.color_config == layer.color_config and clone.seed == 9
    with pytest.raises(ValueError, match="probability"):
        color.ColorConfig(gray_p=1.5)
    with pytest.raises(ValueError, match="sigma"):
        color.ColorConfig(sigma=(2.0, 1.0))
