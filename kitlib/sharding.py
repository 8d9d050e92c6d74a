"""Batches laid out over the devices of the Keras distribution in force (``runtime.setup``'s DataParallel).

Used outside ``fit`` (prediction, feature extraction), where Keras does not split a batch itself. In a run of
several processes (`kitlib.hosts`) every process passes the same whole batch; each device computes its rows
and every process gets all the outputs back (`predict_padded`).
"""

import contextlib
import weakref

import numpy as np

from kitlib import hosts
from kitlib.compat import keras

_FORWARD = weakref.WeakKeyDictionary()  # model -> its compiled forward pass with replicated outputs


def device_count():
    """Devices of the Keras distribution in force (``runtime.setup``'s DataParallel), 1 without one:
    every batch a model sees must split evenly over them."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    return int(np.prod(mesh.shape)) if mesh is not None else 1


@contextlib.contextmanager
def undistributed():
    """No Keras distribution inside: new variables live on this process's first device only.

    For building a host copy of a model (an export): under a distribution over several processes a new
    variable's random initial value would have to agree on every process before its weights arrive."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


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
    if hosts.process_count() > 1:
        return np.asarray(_forward_everywhere(model, padded), np.float32)[:len(batch)]
    return np.asarray(model.predict_on_batch(shard_batch(padded)), np.float32)[:len(batch)]


def _forward_everywhere(model, batch):
    """``model(batch)`` (inference) over the global devices of several processes, each holding the same numpy
    `batch` [B, ...]: the rows split over the devices as ``fit`` splits them, the outputs [B, ...] gathered
    onto every process (Keras's ``predict_on_batch`` would hand each process only the rows it can address)."""
    import jax  # noqa: PLC0415
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    layout = keras.distribution.distribution().get_data_layout(batch.shape).backend_layout
    inputs = jax.make_array_from_callback(batch.shape, layout, lambda index: batch[index])
    if model not in _FORWARD:
        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        _FORWARD[model] = jax.jit(forward, out_shardings=NamedSharding(layout.mesh, PartitionSpec()))
    return _FORWARD[model]([v.value for v in model.trainable_variables],
                           [v.value for v in model.non_trainable_variables], inputs)
