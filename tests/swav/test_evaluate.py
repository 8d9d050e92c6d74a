"""Frozen-feature evaluation: weighted kNN, linear probe, feature extraction with a Keras 3 model (JAX) fed
from tf.data (1 and 8 devices), the per-epoch monitor inside a real fit()."""

import csv

import numpy as np
import pytest

from kitlib.compat import keras, tf
from kitlib.data import tfrecords
from kitlib.swav import evaluate
from tests.conftest import run_on_devices


def blobs(per_class=10, classes=3, dim=8, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x = np.concatenate([c + spread * rng.normal(size=(per_class, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(classes), per_class)


def test_knn_classifies_separated_clusters_perfectly():
    x, y = blobs()
    xt, yt = blobs(seed=0, spread=0.06)
    assert evaluate.knn_accuracy(x, y, xt, yt, k=5) == 1.0
    assert evaluate.knn_accuracy(x, y, k=5) == 1.0  # leave-one-out


def test_knn_leave_one_out_never_lets_an_image_vote_for_itself():
    # each point's nearest *other* point has the other label
    x = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]], np.float32)
    y = np.array([0, 1, 0, 1])
    assert evaluate.knn_accuracy(x, y, k=1) == 0.0
    assert evaluate.knn_accuracy(x, y, x, y, k=1) == 1.0  # with a separate query set it may match itself


def test_knn_votes_are_weighted_by_similarity():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]], np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.05]], np.float32)
    # two weak votes for class 1 lose to one close vote for class 0 at T = 0.07
    assert evaluate.knn_accuracy(train, labels, query, [0], k=3) == 1.0


def test_knn_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one label each"):
        evaluate.knn_accuracy(np.zeros((3, 2)), [0, 1])


def test_linear_probe_separates_clusters_and_needs_two_per_class():
    x, y = blobs(per_class=10, spread=0.3)
    assert evaluate.linear_probe_accuracy(x, y) > 0.9
    assert evaluate.linear_probe_accuracy(x, y, *blobs(per_class=5, spread=0.3, seed=0)) > 0.9
    with pytest.raises(ValueError, match=">= 2 images of every class"):
        evaluate.linear_probe_accuracy(x[:11], y[:11])


def mean_colour_backbone():
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))


def test_extract_features_reads_the_sample_and_monitor_logs_knn(sample_dir):
    labelled = tfrecords.load_dataset(tfrecords.list_tfrecords(sample_dir), ordered=True)
    x, y = evaluate.extract_features(mean_colour_backbone(), labelled, image_size=32)
    assert x.shape == (100, 3) and y.shape == (100,)
    assert set(y) == set(range(5))
    assert (x >= 0).all() and (x <= 1).all()  # images reach the backbone in [0, 1]
    monitor = evaluate.KNNMonitor(mean_colour_backbone(), labelled, image_size=32, every=2)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert "knn_acc" not in logs  # only every second epoch
    monitor.on_epoch_end(1, logs)
    assert 0.2 < logs["knn_acc"] <= 1.0  # mean colour alone beats chance on the sample
    # mean colour on the sample: 60 of 100 leave-one-out kNN hits, a cross-validated linear probe near 0.8
    result = evaluate.evaluate_backbone(mean_colour_backbone(), labelled, image_size=32)
    assert result == {"knn": pytest.approx(0.6), "linear": pytest.approx(0.8, abs=0.05)}
    assert evaluate.evaluate_backbone(mean_colour_backbone(), labelled, image_size=32, probe=False) == {"knn": 0.6}


def test_extract_features_accepts_image_label_pairs_and_caps_images():
    images = tf.random.uniform([6, 20, 30, 3], maxval=255, dtype=tf.int32)
    pairs = tf.data.Dataset.from_tensor_slices((tf.cast(images, tf.uint8), tf.range(6)))
    x, y = evaluate.extract_features(mean_colour_backbone(), pairs, image_size=16, max_images=4)
    assert x.shape == (4, 3) and list(y) == [0, 1, 2, 3]


def test_extract_features_equals_the_model_on_the_same_resized_images_in_inference_mode():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, [7, 24, 24, 3], dtype=np.uint8)
    pairs = tf.data.Dataset.from_tensor_slices((images, np.arange(7)))
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization(moving_mean_initializer="ones")(x)  # inference mode: uses these
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    features, labels = evaluate.extract_features(backbone, pairs, image_size=24, batch_size=3)  # 3 + 3 + 1 padded
    assert features.shape == (7, 4) and list(labels) == list(range(7))
    expected = backbone(images.astype(np.float32) / 255.0, training=False)  # 24 px already: no resize
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.mark.slow
def test_knn_monitor_logs_knn_acc_from_inside_fit_into_the_history_and_csv(sample_dir, tmp_path):
    labelled = tfrecords.load_dataset(tfrecords.list_tfrecords(sample_dir), ordered=True)
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    backbone = keras.Model(inputs, features)
    model = keras.Sequential([backbone, keras.layers.Dense(5)])
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = str(tmp_path / "history.csv")
    callbacks = [evaluate.KNNMonitor(backbone, labelled, image_size=32, max_images=40),
                 keras.callbacks.CSVLogger(log)]
    images = np.random.default_rng(0).random([16, 32, 32, 3], dtype=np.float32)
    history = model.fit(images, np.arange(16) % 5, batch_size=8, epochs=2, callbacks=callbacks, verbose=0)
    assert len(history.history["knn_acc"]) == 2 and all(0 <= a <= 1 for a in history.history["knn_acc"])
    with open(log) as f:
        assert [float(row["knn_acc"]) for row in csv.DictReader(f)] == history.history["knn_acc"]


_FEATURES_RUN = """
import json
from kitlib import runtime
from kitlib.data import tfrecords
from kitlib.swav import evaluate
from kitlib.compat import keras
runtime.setup(allow_cpu=True, verbose=False)
inputs = keras.Input((None, None, 3))
conv = keras.layers.Conv2D(3, 3, kernel_initializer="ones", bias_initializer="zeros")
backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv(inputs)))
labelled = tfrecords.load_dataset(tfrecords.list_tfrecords({sample!r}), ordered=True)
x, y = evaluate.extract_features(backbone, labelled, image_size=32, batch_size=12)  # 100 = 8 x 12 + 4 padded
print(json.dumps({{"devices": keras.distribution.distribution() is not None, "x": x.tolist(), "y": y.tolist()}}))
"""


@pytest.mark.slow
@pytest.mark.matrix
def test_features_on_eight_devices_equal_those_on_one(sample_dir):
    eight = run_on_devices(_FEATURES_RUN.format(sample=sample_dir), devices=8)
    assert eight["devices"] and len(eight["y"]) == 100
    labelled = tfrecords.load_dataset(tfrecords.list_tfrecords(sample_dir), ordered=True)
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 3, kernel_initializer="ones", bias_initializer="zeros")
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv(inputs)))
    x, y = evaluate.extract_features(backbone, labelled, image_size=32, batch_size=12)
    assert eight["y"] == y.tolist()
    np.testing.assert_allclose(eight["x"], x, rtol=1e-5)
