"""kitlib.models.backbones: the quadrant pooling of small_cnn_grid and the pyramid of small_cnn_pyramid, known cases
and a save/load round trip."""

import numpy as np
import pytest

from kitlib.models import backbones


def test_grid_pool_averages_each_quadrant_overlapping_the_middle_when_odd():
    pool = backbones.GridPool()
    even = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # rows 0-3, columns 0-3
    np.testing.assert_allclose(np.asarray(pool(even)), [[2.5, 4.5, 10.5, 12.5]])
    odd = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)    # the middle row/column is in both halves
    np.testing.assert_allclose(np.asarray(pool(odd)), [[2.0, 3.0, 5.0, 6.0]])
    one = np.full((2, 1, 1, 3), 7.0, np.float32)                # a 1 x 1 map: all four cells are it
    np.testing.assert_allclose(np.asarray(pool(one)), np.full((2, 12), 7.0))


def test_pyramid_pool_is_the_global_average_then_the_quadrants():
    even = np.arange(32, dtype=np.float32).reshape(1, 4, 4, 2)
    pyramid = np.asarray(backbones.PyramidPool()(even))
    np.testing.assert_allclose(pyramid[:, :2], even.mean(axis=(1, 2)))
    np.testing.assert_allclose(pyramid[:, 2:], 0.5 * np.asarray(backbones.GridPool()(even)))  # levels weigh alike
    assert backbones.PyramidPool().compute_output_shape((None, 4, 4, 2)) == (None, 10)


@pytest.mark.slow
@pytest.mark.parametrize("name, cells", [("small_cnn_grid", 4), ("small_cnn_pyramid", 5)])
def test_small_cnn_grid_takes_any_crop_size_and_round_trips(tmp_path, name, cells):
    net = backbones.build(name)
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    features = np.asarray(net(images, training=False))
    assert features.shape == (2, cells * backbones.SMALL_CNN_WIDTHS[-1])
    assert np.asarray(net(images[:, :16, :24], training=False)).shape == features.shape  # a 2 x 3 map
    loaded = backbones.load(backbones.save(net, str(tmp_path / "grid.keras")))
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), features, rtol=1e-5, atol=1e-6)
