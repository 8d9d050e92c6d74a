"""kitlib.export: the saved classifier reloads offline and predicts exactly what the Keras model did."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kitlib.compat import keras
from kitlib.export import load_classifier, save_classifier


def _tiny_classifier(size=16, classes=3):
    inputs = keras.Input([size, size, 3])
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def test_saved_classifier_reloads_with_softmax_of_the_model_logits(tmp_path):
    model = _tiny_classifier()
    images = np.random.default_rng(0).random([5, 16, 16, 3]).astype(np.float32)
    save_classifier(model, str(tmp_path), ["a", "b", "c"], 16)
    loaded = load_classifier(str(tmp_path))
    assert loaded.class_names == ("a", "b", "c") and loaded.image_size == 16
    probs = loaded.predict_proba(images, batch_size=2)
    np.testing.assert_allclose(probs, tf.nn.softmax(model(images)).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with open(os.path.join(tmp_path, "classifier.json")) as f:
        assert json.load(f) == {"class_names": ["a", "b", "c"], "image_size": 16}


def test_wrong_image_size_and_class_count_are_refused(tmp_path):
    model = _tiny_classifier()
    with pytest.raises(ValueError, match="outputs 3 classes but 2 class names"):
        save_classifier(model, str(tmp_path), ["a", "b"], 16)
    save_classifier(model, str(tmp_path), ["a", "b", "c"], 16)
    with pytest.raises(ValueError, match=r"expected images \[N, 16, 16, 3\]"):
        load_classifier(str(tmp_path)).predict_proba(np.zeros([1, 20, 20, 3], np.float32))


def test_loading_a_folder_that_is_not_a_classifier_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="kitlib finetune --out"):
        load_classifier(str(tmp_path))
