"""kitlib.data.writing: shards written in the competition's format read back as written."""

import os

import numpy as np
import tensorflow as tf

from kitlib.data import tfrecords as data_tfrecords
from kitlib.data import writing
from kitlib.data.tfrecords import explain_errors


def _image(value, h=40, w=56):
    """A uint8 image whose pixels all equal ``value`` (survives JPEG closely)."""
    return np.full([h, w, 3], value, np.uint8)

def _examples(n, labeled=True):
    return [{"image": _image(20 * i + 10), "image_name": f"img{i}.jpg", **({"target": i % 5} if labeled else {})}
            for i in range(n)]

def _collect(dataset):
    with explain_errors():
        return list(dataset.as_numpy_iterator())

def test_train_shards_round_trip_images_names_and_labels(tmp_path):
    paths = writing.write_tfrecords(_examples(7), tmp_path, labeled=True, shard_size=3)
    assert [os.path.basename(p) for p in paths] == ["ld_train00-3.tfrec", "ld_train01-3.tfrec", "ld_train02-1.tfrec"]
    rows = _collect(data_tfrecords.load_dataset(paths, ordered=True))
    assert [r["image_name"].decode() for r in rows] == [f"img{i}.jpg" for i in range(7)]
    assert [int(r["label"]) for r in rows] == [i % 5 for i in range(7)]
    for i, r in enumerate(rows):
        assert r["image"].dtype == np.uint8 and r["image"].shape == (40, 56, 3)
        assert abs(float(r["image"].mean()) - (20 * i + 10)) < 2  # JPEG keeps a flat colour

def test_test_shards_carry_no_target_and_read_unlabeled(tmp_path):
    paths = writing.write_tfrecords(_examples(4), tmp_path, labeled=False, shard_size=10)
    raw = next(iter(tf.data.TFRecordDataset(paths[0])))
    assert "target" not in tf.train.Example.FromString(raw.numpy()).features.feature
    rows = _collect(data_tfrecords.load_dataset(paths, labeled=False, ordered=True))
    assert [r["image_name"] for r in rows] == [f"img{i}.jpg".encode() for i in range(4)]
    assert all("label" not in r for r in rows)
