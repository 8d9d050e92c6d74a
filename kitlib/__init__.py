"""kitlib: SwAV self-supervised pretraining and BiT fine-tuning for Cassava-style image data.

Importing the package is cheap and changes one thing only: ``KERAS_BACKEND`` defaults to ``jax`` (when
the shell set none), because Keras fixes its backend on first import and ``import tensorflow`` imports
Keras. Any ``import kitlib...``, in any order, therefore gives Keras on JAX. Nothing else: no seeds, no
matplotlib rcParams, no logging handlers, no mixed-precision policy, no distribution. TensorFlow only
reads data and is imported through ``kitlib.compat`` by the submodules that need it, never here.

Modules, one concern each:
    compat      Keras 3 on JAX from one place; TensorFlow for input only.
    runtime     devices, DataParallel, precision policy, refusing a hidden accelerator, data paths.
    backbones   every backbone (small CNN, ResNet-50, BiT) built, saved and loaded from any source.
    resnetv2    BiT ResNet-v2 (GroupNorm + weight standardisation) and the official weights.
    resnetv2_layers  its layers: weight-standardised conv, float32 GroupNorm, the host initializer.
    data        the competition layout; Cassava TFRecords read, validated and written.
    sources     JPEG folder + CSV, class folders, tfds; a training source split train/val (load_source) and
                the test images wherever they are (open_test_source).
    sample      the small synthetic sample in data/sample (``python -m kitlib make-sample``).
    multicrop   SwAV multi-crop geometry and tf.data pipeline: every crop of an example from one image.
    color       SwAV colour jitter, grayscale and blur: ColorConfig and the ColorAugment layer (accelerator).
    color_host  the same augmentation on the host (TensorFlow, in the multicrop map), the gallery.
    swav        SwAV: Sinkhorn, swapped-prediction loss, prototypes, queue, SwAVModel.
    optim       LARS, Adam and the warmup-cosine schedule.
    recipe      SwAV's settings chosen from the data (``rule``): the paper's at scale, a small-data recipe below.
    pretrain    SwAV pretraining end to end (``python -m kitlib pretrain``), backbone export.
    checkpoint  a run's state.npz (every variable, atomic) and history.csv.
    evaluate    kNN / linear-probe accuracy of frozen features.
    bit_hyperrule  the BiT-HyperRule: resolution, MixUp, schedule and lr from the data's size.
    bit_input   BiT's tf.data pipeline: crops, flips, MixUp, static-shape batches.
    bit         backbone + zero head, tiny backbones, resolving TF-Hub / Kaggle handles.
    losses      cross-entropy with label smoothing, bi-tempered logistic loss.
    finetune    ``python -m kitlib finetune``: data source -> rule -> fit -> evaluate -> export.
    training    the classifier's compile, fit rounds, callbacks, predictions and validation report.
    export      the fine-tuned classifier on disk, read back offline.
    submission  ``python -m kitlib predict``: TTA predictions -> validated submission.csv.
    demo        ``python -m kitlib demo``: pretrain -> fine-tune -> submission on the sample.
    kaggle_cli  ``python -m kitlib kaggle``: download, publish-kit, push, status, output.
    kaggle_api  Kaggle credentials, the authenticated API, API failures as one line with the fix.
    kaggle_kernels  a notebook as a kernel folder, the kit as a dataset (what is uploaded).
    layout      does a folder hold the competition's files (check_layout).
    viz         the notebooks' plots.
    cli         ``python -m kitlib <command>``.
"""

import os as _os

if not _os.environ.get("KERAS_BACKEND"):  # before any submodule (or TensorFlow) imports Keras
    _os.environ["KERAS_BACKEND"] = "jax"

__version__ = "0.1.0"
