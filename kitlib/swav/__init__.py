"""SwAV self-supervised pretraining (Caron et al. 2020, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", arXiv 2006.09882).

    model       the method: prototypes, Sinkhorn-Knopp codes, the swapped-prediction loss, ``SwAVModel``
    geometry    random resized crop windows and the multi-crop spec ``COUNTxSIZE@MIN-MAX,...``
    multicrop   the tf.data pipeline: each image to its V crops, batched
    color       colour distortion (jitter, grey, blur) on the accelerator, inside the train step
    color_host  the same distortion in tf.data, on the host CPU
    optim       LARS, the warmup-cosine schedule, the paper's learning rates
    survey      what the plan reads from the images (their typical size)
    recipe      the rule that chooses SwAV's settings from the data (the paper's, or the small-data recipe)
    budget      the run sized to a wall-clock budget: a few timed steps fix the crop size and the epochs
    monitors    callbacks that stop on NaN and warn at the collapse floor ln K
    checkpoint  resumable state (every variable, the epoch) and history.csv
    evaluate    frozen-feature kNN and linear-probe accuracy
    pretrain    the ``pretrain`` command: config -> plan -> run
"""
