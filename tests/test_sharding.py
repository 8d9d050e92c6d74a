"""kitlib.sharding: batches rounded up to and laid out over the devices of the distribution in force."""

import numpy as np

from kitlib import sharding
from kitlib.compat import keras


def test_rows_per_pass_round_up_to_the_devices():
    assert [sharding.rows_per_pass(b, 8) for b in (1, 8, 9, 32)] == [8, 8, 16, 32]
    assert sharding.rows_per_pass(5) == 5 * sharding.device_count() // sharding.device_count()
    assert sharding.device_count() == 1  # this process has no distribution


def test_predict_padded_returns_the_real_rows_of_one_compiled_shape():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(inputs))
    batch = np.arange(9, dtype=np.float32).reshape(3, 3)
    out = sharding.predict_padded(model, batch, rows=8)
    assert out.shape == (3, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.stack([batch.sum(1)] * 2, axis=1), rtol=1e-6)
    assert sharding.shard_batch(batch) is batch  # no distribution: unchanged


def test_undistributed_clears_the_distribution_inside_and_gives_it_back():
    import jax

    distribution = keras.distribution.DataParallel(devices=jax.devices()[:1])
    keras.distribution.set_distribution(distribution)
    try:
        with sharding.undistributed():
            assert keras.distribution.distribution() is None and sharding.device_count() == 1
        assert keras.distribution.distribution() is distribution
        try:
            with sharding.undistributed():
                raise KeyError("inside")
        except KeyError:
            pass
        assert keras.distribution.distribution() is distribution  # also after an error
    finally:
        keras.distribution.set_distribution(None)
