"""kitlib: SwAV self-supervised pretraining and BiT fine-tuning for Cassava-style image data.

Importing the package is cheap and changes no global state: no seeds, no matplotlib rcParams,
no logging handlers, no mixed-precision policy. TensorFlow is imported by the submodules that
need it (``kitlib.data``, ``kitlib.augment``, ...), never here.

Modules, one concern each:
    compat      Keras from one place (tf_keras on TF >= 2.16, tf.keras before).
    runtime     distribution strategy, mixed-precision policy, where the data lives.
    data        Cassava TFRecords / JPEG folders / tfds: reading, writing, validating.
    sample      the small synthetic sample in data/sample (``python -m kitlib make-sample``).
    cli         ``python -m kitlib <command>``.
"""

__version__ = "0.1.0"
