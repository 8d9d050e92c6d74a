"""kitlib.models.resnetv2_layers: weight-standardised convolution and GroupNorm against NumPy."""


import numpy as np

from kitlib.models import resnetv2_layers


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
