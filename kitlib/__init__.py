"""kitlib: SwAV self-supervised pretraining and BiT fine-tuning for Cassava-style image data.

Importing the package is cheap and changes no global state: no seeds, no matplotlib rcParams,
no logging handlers, no mixed-precision policy. TensorFlow is imported by the submodules that
need it (``kitlib.data``, ``kitlib.augment``, ...), never here.

Modules, one concern each:
    compat      Keras from one place (tf_keras on TF >= 2.16, tf.keras before).
    runtime     distribution strategy, mixed-precision policy, where the data lives.
    data        Cassava TFRecords / JPEG folders / tfds: reading, writing, validating.
    sample      the small synthetic sample in data/sample (``python -m kitlib make-sample``).
    augment     multi-crop SwAV augmentation: every crop of an example from one image.
    swav        SwAV: Sinkhorn, swapped-prediction loss, prototypes, queue, SwAVModel.
    optim       LARS and the warmup-cosine schedule.
    pretrain    SwAV pretraining end to end (``python -m kitlib pretrain``), backbone export.
    evaluate    kNN / linear-probe accuracy of frozen features.
    bit         BiT-HyperRule, MixUp, input pipeline, backbones (TF Hub / Kaggle / local) + zero head.
    losses      cross-entropy with label smoothing, bi-tempered logistic loss.
    finetune    ``python -m kitlib finetune``: data source -> rule -> fit -> evaluate -> export.
    export      the fine-tuned classifier on disk, read back offline.
    submission  ``python -m kitlib predict``: TTA predictions -> validated submission.csv.
    demo        ``python -m kitlib demo``: pretrain -> fine-tune -> submission on the sample.
    viz         the notebooks' plots.
    cli         ``python -m kitlib <command>``.
"""

__version__ = "0.1.0"
