"""kitlib.bit.export: the classifier on disk, reloaded offline, found under /kaggle/input, or a stand-in."""

import json
import os
import socket

import numpy as np
import pytest

from kitlib.bit import export
from kitlib.bit.export import load_classifier, save_classifier
from kitlib.compat import keras
from kitlib.data.tfrecords import CLASS_NAMES


def _tiny_classifier(size=16, classes=3):
    inputs = keras.Input([size, size, 3])
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, dtype="float32")(x))

def _images(n=5, size=16, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)

def test_saved_classifier_reloads_offline_and_predicts_the_softmax_of_the_model_logits(tmp_path, monkeypatch):
    model = _tiny_classifier()
    model.compile(keras.optimizers.SGD(0.1), lambda y, p: keras.ops.mean((y - p) ** 2, -1))  # a local loss fn
    model.fit(_images(8), np.eye(3, dtype=np.float32)[np.arange(8) % 3], batch_size=4, verbose=0)
    save_classifier(model, str(tmp_path), ["a", "b", "c"], 16)
    assert sorted(os.listdir(tmp_path)) == ["classifier.json", "classifier.keras"]
    with open(os.path.join(tmp_path, "classifier.json")) as f:
        assert json.load(f) == {"class_names": ["a", "b", "c"], "image_size": 16, "outputs": "logits",
                                "model": "classifier.keras"}

    def no_network(*args, **kwargs):
        raise AssertionError("loading a classifier must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    loaded = load_classifier(str(tmp_path))
    assert loaded.class_names == ("a", "b", "c") and loaded.image_size == 16
    assert getattr(loaded.model, "optimizer", None) is None  # saved without the training state
    images = _images(5)
    np.testing.assert_array_equal(loaded.model.predict_on_batch(images), model.predict_on_batch(images))
    probs = loaded.predict_proba(images, batch_size=2)  # chunks of 2, the last one padded
    np.testing.assert_allclose(probs, keras.ops.softmax(model(images)), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert loaded.predict_proba(np.zeros([0, 16, 16, 3], np.float32)).shape == (0, 3)

def test_a_classifier_that_outputs_probabilities_is_not_softmaxed_twice(tmp_path):
    inputs = keras.Input([8, 8, 3])
    probs_model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inputs)))
    save_classifier(probs_model, str(tmp_path), list("abcd"), 8, from_logits=False)
    images = _images(3, 8)
    np.testing.assert_allclose(load_classifier(str(tmp_path)).predict_proba(images), probs_model(images), atol=1e-6)

def test_a_bfloat16_classifier_is_saved_in_float32_with_the_same_weights(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _tiny_classifier()
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[1].compute_dtype == "bfloat16"
    save_classifier(model, str(tmp_path), list("abc"), 16)
    loaded = load_classifier(str(tmp_path)).model
    assert all(layer.dtype_policy.name == "float32" for layer in loaded.layers[1:])
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # float32 arithmetic on the bfloat16 model's weights: the outputs agree to bfloat16 precision
    np.testing.assert_allclose(loaded(_images()), model(_images()), atol=0.02)

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
    (tmp_path / "saved_model").mkdir()  # what the tf_keras kit exported
    (tmp_path / "classifier.json").write_text(json.dumps({"class_names": ["a"], "image_size": 8}))
    with pytest.raises(FileNotFoundError, match="older kit.*fine-tune again"):
        load_classifier(str(tmp_path))

@pytest.mark.slow
def test_the_stand_in_is_a_seeded_keras_classifier_saved_like_a_fine_tuned_one(tmp_path):
    tiny_model_dir = export.make_stand_in_classifier(str(tmp_path / "model"), image_size=32)
    assert sorted(os.listdir(tiny_model_dir)) == ["classifier.json", "classifier.keras"]
    with open(os.path.join(tiny_model_dir, "classifier.json")) as f:
        assert json.load(f)["class_names"] == list(CLASS_NAMES)
    again = load_classifier(export.make_stand_in_classifier(str(tmp_path / "again"), image_size=32))
    images = np.random.default_rng(0).random([4, 32, 32, 3], dtype=np.float32)
    probs = load_classifier(tiny_model_dir).predict_proba(images)
    np.testing.assert_array_equal(again.predict_proba(images), probs)  # same seed, same weights
    assert np.ptp(probs, axis=0).max() > 1e-4  # the outputs differ from image to image

@pytest.mark.slow
def test_find_classifier_picks_the_one_attached_model_or_writes_a_stand_in(tmp_path):
    attached = tmp_path / "input" / "my-model" / "v1"
    attached.mkdir(parents=True)
    (attached / "classifier.json").write_text("{}")
    assert export.find_classifier(input_root=str(tmp_path / "input")) == str(attached)
    given = save_classifier(_tiny_classifier(), str(tmp_path / "given"), ["a", "b", "c"], 16)
    assert export.find_classifier(given) == given
    with pytest.raises(FileNotFoundError, match="attach the dataset"):
        export.find_classifier(input_root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no classifier.json"):
        export.find_classifier(str(tmp_path / "empty"))
    stand_in = export.find_classifier(input_root=str(tmp_path / "empty"), stand_in_dir=str(tmp_path / "stand-in"))
    assert stand_in == str(tmp_path / "stand-in") and load_classifier(stand_in).class_names == CLASS_NAMES
    (tmp_path / "input" / "other").mkdir()
    (tmp_path / "input" / "other" / "classifier.json").write_text("{}")
    with pytest.raises(ValueError, match="several classifiers"):
        export.find_classifier(input_root=str(tmp_path / "input"))
