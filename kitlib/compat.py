"""Keras 3 on the JAX backend, and TensorFlow for input only, from one place.

The kit computes with Keras 3 + JAX on every device (TPU v5e, GPUs, CPU) and reads data with
``tf.data`` (TFRecords, JPEG decode, multi-crop), the way google-research/big_vision feeds JAX.
Every kitlib module does ``from kitlib.compat import keras`` (and ``tf`` where it reads data), so:

- ``KERAS_BACKEND`` defaults to ``jax`` (``kitlib/__init__`` sets it before any submodule imports Keras).
  If the variable names another backend, the import fails with the fix. If Keras was loaded before the
  variable was set: when only ``import tensorflow`` loaded it (on Keras's default backend, ``tensorflow``),
  Keras is reloaded on JAX (``keras.config.set_backend``) with a note; when the user's code holds Keras
  itself (``import keras`` first), reloading would leave those names on the old backend, so the import
  fails with the fix instead.
- TensorFlow is told to leave accelerators alone (``tf.config.set_visible_devices([], "GPU")``):
  it only feeds JAX, which owns the GPU; otherwise TF would reserve the GPU's memory first.
- Where TensorFlow is missing (Colab's TPU runtime) ``tf`` raises the one command that brings it.
"""

import os
import sys
import types
import warnings

BACKEND = "jax"
TF_INSTALL_HINT = "pip install tensorflow-cpu==2.20.0"


def _keras():
    if not os.environ.get("KERAS_BACKEND"):
        os.environ["KERAS_BACKEND"] = BACKEND
    wanted = os.environ["KERAS_BACKEND"]
    if wanted != BACKEND:
        raise ImportError(
            f"kitlib computes with Keras 3 on JAX, but KERAS_BACKEND={wanted!r}. Set it before anything "
            f"imports Keras: os.environ['KERAS_BACKEND'] = 'jax' (first cell), or `export KERAS_BACKEND=jax`.")
    try:
        import keras
    except ImportError as err:  # pragma: no cover - depends on the installed environment
        raise ImportError("kitlib needs Keras 3 and JAX: pip install 'keras>=3.8' 'jax>=0.4.30'") from err
    if not keras.__version__.startswith("3."):  # pragma: no cover
        raise ImportError(f"kitlib needs Keras 3; this environment has Keras {keras.__version__}.")
    if keras.backend.backend() != BACKEND:  # loaded before KERAS_BACKEND was set: its default backend
        loaded, holders = keras.backend.backend(), _keras_names_in_callers()
        if holders:  # the user's code holds that Keras: reloading would leave those names on the old backend
            raise ImportError(
                f"Keras was imported with its default {loaded!r} backend before kitlib (your code holds it as "
                f"{', '.join(holders[:3])}); kitlib needs 'jax'. Restart the kernel and import kitlib (or set "
                "os.environ['KERAS_BACKEND'] = 'jax') before keras.")
        with warnings.catch_warnings():  # its warning is the note below, in one line
            warnings.simplefilter("ignore", UserWarning)
            keras.config.set_backend(BACKEND)  # drops every keras module and imports Keras again on JAX
        import keras  # noqa: PLC0415 - the reloaded package
        print(f"kitlib: `import tensorflow` had loaded Keras on its default backend {loaded!r}; reloaded it on "
              "'jax' (import keras after kitlib).", file=sys.stderr)
    return keras


def _keras_names_in_callers():
    """Names in the importing code's globals (every frame up the stack) bound to a Keras module."""
    names, frame = [], sys._getframe(1)
    while frame is not None:
        for name, value in list(frame.f_globals.items()):
            if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] == "keras" and name not in names:
                names.append(name)
        frame = frame.f_back
    return names


def _tensorflow():
    try:
        import tensorflow
    except ImportError as err:
        raise ImportError(
            "kitlib reads data with TensorFlow (tf.data, TFRecords, JPEG decode), which this runtime lacks "
            f"(Colab's TPU runtime ships none). Install the CPU build: {TF_INSTALL_HINT}") from err
    hide_accelerators_from_tf(tensorflow)
    return tensorflow


def hide_accelerators_from_tf(tensorflow):
    """Keep TensorFlow off GPUs/TPUs (it only feeds JAX). Returns False when TF had already started
    and the devices could not be hidden any more."""
    hidden = True
    for kind in ("GPU", "TPU"):
        if not tensorflow.config.list_physical_devices(kind):
            continue
        try:
            tensorflow.config.set_visible_devices([], kind)
        except RuntimeError:  # TensorFlow's runtime already started: too late
            hidden = False
    return hidden


_KERAS_SEED_STATE = ("global_random_seed", "global_seed_generator")


def library_seed_state():
    """Keras's global seed state and TensorFlow's global seed: the two pieces of random state neither library
    lets a caller read or restore through its public API, so they are read here and nowhere else (with
    `restore_library_seed_state`, what `kitlib.runtime.seeded` uses to give the caller's state back)."""
    from keras.src.backend.common import global_state  # noqa: PLC0415 - Keras keeps its seed state here
    from tensorflow.python.eager import context  # noqa: PLC0415 - TF's global seed, readable only here

    return [global_state.get_global_attribute(k) for k in _KERAS_SEED_STATE], context.global_seed()


def restore_library_seed_state(state):
    """Put back what `library_seed_state` returned."""
    from keras.src.backend.common import global_state  # noqa: PLC0415
    from tensorflow.python.eager import context  # noqa: PLC0415

    for key, value in zip(_KERAS_SEED_STATE, state[0]):
        global_state.set_global_attribute(key, value)
    context.set_global_seed(state[1])


keras = _keras()


def __getattr__(name):  # ``from kitlib.compat import tf`` imports TensorFlow only when asked
    if name == "tf":
        tf = _tensorflow()
        setattr(sys.modules[__name__], "tf", tf)
        return tf
    raise AttributeError(name)


__all__ = ["keras", "tf", "BACKEND", "TF_INSTALL_HINT"]
