"""Frozen-feature evaluation: weighted kNN, linear probe, feature extraction, per-epoch monitor."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib import data, evaluate
from kitlib.compat import keras


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
    labelled = data.load_dataset(data.list_tfrecords(sample_dir), ordered=True)
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
    result = evaluate.evaluate_backbone(mean_colour_backbone(), labelled, image_size=32)
    assert set(result) == {"knn", "linear"}


def test_extract_features_accepts_image_label_pairs_and_caps_images():
    images = tf.random.uniform([6, 20, 30, 3], maxval=255, dtype=tf.int32)
    pairs = tf.data.Dataset.from_tensor_slices((tf.cast(images, tf.uint8), tf.range(6)))
    x, y = evaluate.extract_features(mean_colour_backbone(), pairs, image_size=16, max_images=4)
    assert x.shape == (4, 3) and list(y) == [0, 1, 2, 3]
