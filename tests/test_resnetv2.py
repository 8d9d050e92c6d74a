"""BiT ResNet-v2 on Keras 3 (kitlib.resnetv2): names, architecture, weight standardisation, GroupNorm."""

import numpy as np
import pytest

from kitlib import resnetv2


@pytest.mark.parametrize("name, expected", [
    ("BiT-M-R50x1", (50, 1)), ("BiT-S-R101x3", (101, 3)), ("R50x1", (50, 1)), ("r152x4", (152, 4)),
    ("BiT-M-R50x1.npz", (50, 1)), ("/kaggle/input/bit/BiT-M-R152x2.npz", (152, 2)),
    ("BiT-M-R50x1-ILSVRC2012.npz", (50, 1)), ("m-r50x3", (50, 3)), ((101, 1), (101, 1)),
])
def test_parse_name(name, expected):
    assert resnetv2.parse_name(name) == expected


@pytest.mark.parametrize("name", ["resnet50", "small_cnn", "R34x1", "R50x5", "BiT-M-R50", "R50x1x", "", "weights.npz"])
def test_parse_name_rejects(name):
    assert resnetv2.parse_name(name, default=None) is None
    with pytest.raises(ValueError, match="BiT-M-R50x1"):
        resnetv2.parse_name(name)


def test_tiny_shapes():
    model = resnetv2.build_tiny()
    images = np.random.default_rng(0).random((2, 37, 45, 3), dtype=np.float32)
    features = np.asarray(model.predict(images, verbose=0))
    assert features.shape == (2, 256) and np.isfinite(features).all()
    assert all(w.trainable for w in model.weights)
