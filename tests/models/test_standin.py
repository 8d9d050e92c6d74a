"""kitlib.models.standin: small random backbones saved to a file, the same weights every time."""


import numpy as np
import pytest

from kitlib.models import backbones, standin


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A small_cnn backbone saved as .keras (F = 128)."""
    return standin.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))

def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)

def test_tiny_backbone_file_is_seeded_and_loads_as_a_trainable_keras_model(tiny_backbone, tmp_path):
    again = standin.make_tiny_backbone(str(tmp_path / "again.keras"))
    first, second = backbones.load(tiny_backbone), backbones.load(again)
    assert first.trainable and first.trainable_weights
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert first(_images(2)).shape == (2, 128)
    with pytest.raises(ValueError, match="unknown tiny backbone"):
        standin.make_tiny_backbone(str(tmp_path / "x.keras"), name="vgg")
