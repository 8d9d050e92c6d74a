"""kitlib: SwAV self-supervised pretraining and BiT fine-tuning for Cassava-style image data.

Importing the package is cheap and changes one thing only: ``KERAS_BACKEND`` defaults to ``jax`` (when
the shell set none), because Keras fixes its backend on first import and ``import tensorflow`` imports
Keras. Any ``import kitlib...``, in any order, therefore gives Keras on JAX. Nothing else: no seeds, no
matplotlib rcParams, no logging handlers, no mixed-precision policy, no distribution. TensorFlow only
reads data and is imported through ``kitlib.compat`` by the submodules that need it, never here.

Subpackages, one stage of the pipeline each (their docstrings list their modules):
    data        the competition's TFRecords read and written, JPEG folders, tfds, the layout, the sample.
    models      every backbone (small CNN, ResNet-50, BiT ResNet-v2) built, saved and loaded from any source.
    swav        SwAV pretraining: multi-crop, colour, the model and loss, the rule, ``python -m kitlib pretrain``.
    bit         BiT fine-tuning: the HyperRule, inputs, losses, training, export, TTA, ``finetune`` and ``predict``.
    kaggle      ``python -m kitlib kaggle``: download, publish-kit, push, status, output.

Modules:
    compat      Keras 3 on JAX from one place; TensorFlow for input only.
    runtime     devices, DataParallel, precision policy, seeds, refusing a hidden accelerator.
    locations   where things are: ``/kaggle/input``, the competition, the kit's checkout, the data to use.
    sharding    batches laid over the devices outside ``fit`` (prediction, features).
    command     one pattern for every command: config -> plan -> run.
    preflight   ``--preflight TARGET``: a run's step compiled for a TPU that is not here; memory and speed.
    viz         the notebooks' plots.
    demo        ``python -m kitlib demo``: pretrain -> fine-tune -> submission on the sample.
    cli         ``python -m kitlib <command>``.
"""

import os as _os

if not _os.environ.get("KERAS_BACKEND"):  # before any submodule (or TensorFlow) imports Keras
    _os.environ["KERAS_BACKEND"] = "jax"

__version__ = "0.1.0"
