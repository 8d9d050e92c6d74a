"""Batches laid out over the devices of the Keras distribution in force (``runtime.setup``'s DataParallel).

Used outside ``fit`` (prediction, feature extraction), where Keras does not split a batch itself.
"""

import numpy as np

from kitlib.compat import keras


def device_count():
    """Devices of the Keras distribution in force (``runtime.setup``'s DataParallel), 1 without one:
    every batch a model sees must split evenly over them."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    return int(np.prod(mesh.shape)) if mesh is not None else 1


def shard_batch(batch):
    """A numpy batch [B, ...] laid out over the distribution's devices along B (as ``fit`` does with
    its batches), so ``predict_on_batch`` runs data-parallel; unchanged without a distribution."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return batch
    return keras.distribution.distribute_tensor(batch, distribution.get_data_layout(batch.shape))


def rows_per_pass(batch_size, devices=None):
    """``batch_size`` rounded up to a multiple of the device count (`devices`, default this process's):
    every forward pass splits evenly."""
    multiple = device_count() if devices is None else int(devices)
    return -(-max(1, int(batch_size)) // multiple) * multiple


def predict_padded(model, batch, rows):
    """``model`` on a numpy batch [n, ...] (n <= rows) zero-padded to ``rows`` and laid out over the
    devices, so every pass has one compiled shape; returns float32 numpy outputs of the n real rows."""
    batch = np.asarray(batch)
    padded = np.concatenate([batch, np.zeros((rows - len(batch),) + batch.shape[1:], batch.dtype)])
    return np.asarray(model.predict_on_batch(shard_batch(padded)), np.float32)[:len(batch)]
