"""kitlib.data.layout: a folder checked against the competition's files, saying what is there and what is missing."""

import os
import shutil

from kitlib.data import layout


def test_check_layout_on_the_sample(sample_dir):
    from kitlib.data import tfrecords  # noqa: PLC0415

    found = layout.check_layout(sample_dir)
    assert found.shards == {"train": 4, "test": 1} and found.records == {"train": 100, "test": 15}
    assert found.images == {"train": 100, "test": 15} and found.csv_rows == 100
    assert found.classes == tfrecords.CLASS_NAMES
    assert found.missing == [] and found.problems == [] and found.complete
    text = "\n".join(layout.describe_layout(found))
    assert "4 shards, 100 records" in text and "5 classes" in text and "layout complete" in text

def test_check_layout_says_what_is_missing(sample_dir, tmp_path):
    shutil.copytree(os.path.join(sample_dir, "train_tfrecords"), tmp_path / "train_tfrecords")
    shutil.copy(os.path.join(sample_dir, "train.csv"), tmp_path / "train.csv")
    (tmp_path / "train_tfrecords" / "extra.tfrec").write_bytes(b"")  # a shard name without a count
    found = layout.check_layout(tmp_path)
    assert found.missing == ["train_images/", "test_tfrecords/", "test_images/", "label_num_to_disease_map.json",
                             "sample_submission.csv"]
    assert len(found.problems) == 1 and "extra.tfrec" in found.problems[0] and not found.complete
    assert found.shards == {"train": 5} and "train" not in found.records
    text = "\n".join(layout.describe_layout(found))
    assert "5 shards, ? (uncounted) records" in text and "missing: test_images/" in text and "layout incomplete" in text
    assert sorted(os.listdir(tmp_path)) == ["train.csv", "train_tfrecords"]  # reads only
