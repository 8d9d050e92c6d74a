"""Small stand-in backbones, saved as a model file: what tests, the demo and CPU smoke runs load in place of BiT."""

import os

import numpy as np

TINY_BACKBONES = ("small_cnn", "bit_tiny")


def make_tiny_backbone(path, name="small_cnn", seed=0):
    """Save a small randomly initialised Keras 3 backbone as ``path`` (.keras) and return the path.

    For tests, CPU smoke runs and notebooks without a real BiT: [N, H, W, 3] in [0, 1] -> [N, F].
    ``small_cnn``: three stride-2 conv-BN-ReLU blocks, F = 128 (``kitlib.models.backbones``); ``bit_tiny``:
    BiT's ResNet-v2 (GroupNorm + WS) with few channels and one unit per stage, F = 256
    (``kitlib.models.resnetv2.build_tiny``). Kernels are He-normal from a local numpy generator seeded with
    ``seed`` (no global seed is touched), so the file holds the same weights every time.
    """
    if name not in TINY_BACKBONES:
        raise ValueError(f"unknown tiny backbone {name!r}; choose one of {', '.join(TINY_BACKBONES)}")
    from kitlib.models import backbones, resnetv2  # noqa: PLC0415

    model = resnetv2.build_tiny() if name == "bit_tiny" else backbones.build(name)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim >= 2:  # conv / dense kernels; BatchNorm and Normalization values stay as built
            fan_in = int(np.prod(w.shape[:-1]))
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(w.dtype)
        weights.append(w)
    model.set_weights(weights)
    return backbones.save(model, os.fspath(path))
