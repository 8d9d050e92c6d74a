"""Keras from one place.

TF Hub layers and TensorFlow Probability work only with Keras 2. On TF >= 2.16 ``tf.keras`` is
Keras 3, so Keras 2 comes from the ``tf_keras`` package; on older TF (still found on some Kaggle
images) ``tf.keras`` *is* Keras 2. Every kitlib module does ``from kitlib.compat import keras``.
"""

import tensorflow as tf


def _tf_version():
    major, minor = tf.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


if _tf_version() >= (2, 16):
    try:
        import tf_keras as keras
    except ImportError as err:  # pragma: no cover - depends on the installed environment
        raise ImportError(
            f"TensorFlow {tf.__version__} ships Keras 3, but kitlib needs Keras 2 (TF Hub layers and "
            "TensorFlow Probability require it). Install the matching tf-keras: "
            f"pip install 'tf-keras=={tf.__version__.rsplit('.', 1)[0]}.*'"
        ) from err
else:  # pragma: no cover - older TF on Kaggle images
    keras = tf.keras

__all__ = ["keras", "tf"]
