"""kitlib.data.sample: the bundled synthetic sample, regenerated the same on any CPU (names, labels, records exact; pixels within a few levels)."""

import csv
import filecmp
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kitlib.data import tfrecords as data_tfrecords
from kitlib.data.tfrecords import explain_errors


def _collect(dataset):
    with explain_errors():
        return list(dataset.as_numpy_iterator())

def test_sample_csv_matches_the_train_shards(sample_dir):
    with open(os.path.join(sample_dir, "train.csv")) as f:
        rows = {r["image_id"]: int(r["label"]) for r in csv.DictReader(f)}
    shards = {r["image_name"].decode(): int(r["label"])
              for r in _collect(data_tfrecords.load_dataset(data_tfrecords.list_tfrecords(sample_dir), decode=False))}
    assert rows == shards
    assert sorted(np.bincount(list(rows.values()))) == [20] * 5

# The sample is drawn with float numpy: another CPU (other SIMD kernels, e.g. AVX2 without AVX-512) rounds a
# few pixels the other way, and the JPEG encoder then writes other bytes. What must match everywhere is the
# layout, the names, the labels and the record framing exactly, and the pixels within a few levels.
PIXEL_LEVELS = 8         # the largest difference allowed in one pixel (0..255); seen across CPUs: 5

PIXEL_MEAN_LEVELS = 0.5  # the largest mean difference over an image; seen across CPUs: 0.0025

def _decoded(jpeg_bytes):
    return tf.io.decode_jpeg(jpeg_bytes, channels=3).numpy().astype(np.int16)

def _assert_same_pixels(a, b, what):
    assert a.shape == b.shape, what
    diff = np.abs(a - b)
    assert diff.max() <= PIXEL_LEVELS and diff.mean() <= PIXEL_MEAN_LEVELS, (what, diff.max(), diff.mean())

def _shard_records(path):
    """[(image_name, target or None, JPEG bytes)] of one shard, in file order."""
    rows = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        features = tf.train.Example.FromString(raw).features.feature
        target = list(features["target"].int64_list.value) if "target" in features else None
        rows.append((features["image_name"].bytes_list.value[0], target, features["image"].bytes_list.value[0]))
    return rows

@pytest.mark.slow
@pytest.mark.matrix
def test_make_sample_reproduces_the_bundled_sample(tmp_path, sample_dir):
    from kitlib.data.sample import make_sample

    make_sample(str(tmp_path), progress=False)
    compared = 0
    for sub in [".", "train_images", "test_images", "train_tfrecords", "test_tfrecords"]:
        left, right = os.path.join(sample_dir, sub), os.path.join(tmp_path, sub)
        files = sorted(f for f in os.listdir(left) if os.path.isfile(os.path.join(left, f)))
        assert files == sorted(f for f in os.listdir(right) if os.path.isfile(os.path.join(right, f))), sub
        for name in files:
            a, b = os.path.join(left, name), os.path.join(right, name)
            if name.endswith(".jpg"):
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    _assert_same_pixels(_decoded(fa.read()), _decoded(fb.read()), f"{sub}/{name}")
            elif name.endswith(".tfrec"):  # same records in the same order: names and labels exact
                ours, theirs = _shard_records(a), _shard_records(b)
                assert [r[:2] for r in ours] == [r[:2] for r in theirs], name
                for (image_name, _, x), (_, _, y) in zip(ours, theirs):
                    _assert_same_pixels(_decoded(x), _decoded(y), f"{name}: {image_name!r}")
            else:  # train.csv, the label map, sample_submission.csv: text, no float in them
                assert filecmp.cmp(a, b, shallow=False), name
            compared += 1
    assert compared == 3 + 100 + 15 + 4 + 1
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(sample_dir) for f in fs)
    assert total <= 5 * 1024 * 1024
    with open(os.path.join(sample_dir, "label_num_to_disease_map.json")) as f:
        assert json.load(f)["4"] == "Healthy"

def test_sample_comparison_notices_a_changed_pixel_block():
    image = np.zeros([32, 32, 3], np.int16) + 100
    rounded = image.copy()
    rounded[::10, ::10] += 4  # 1 % of the pixels 4 levels off: how another CPU's rounding looks
    _assert_same_pixels(image, rounded, "a rounding difference")
    changed = image.copy()
    changed[:8, :8] = 160
    with pytest.raises(AssertionError):
        _assert_same_pixels(image, changed, "a drawn spot moved")
