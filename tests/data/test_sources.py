"""kitlib.data.sources: JPEG folders + CSV, class folders, tfds offline, test sets, and the train / validation split of any layout."""

import csv
import os

import numpy as np
import pytest

from kitlib.compat import tf
from kitlib.data import sources
from kitlib.data import tfrecords as data_tfrecords
from kitlib.data.tfrecords import DataError, explain_errors


def _image(value, h=40, w=56):
    """A uint8 image whose pixels all equal ``value`` (survives JPEG closely)."""
    return np.full([h, w, 3], value, np.uint8)

def _collect(dataset):
    with explain_errors():
        return list(dataset.as_numpy_iterator())

def _jpeg(value=128):
    return tf.io.encode_jpeg(_image(value)).numpy()

def test_jpeg_csv_and_tfrecords_of_the_sample_agree(sample_dir):
    from_csv = _collect(sources.load_jpeg_csv(os.path.join(sample_dir, "train_images"),
                                           os.path.join(sample_dir, "train.csv")))
    from_tfrec = {r["image_name"]: r for r in _collect(data_tfrecords.load_dataset(data_tfrecords.list_tfrecords(sample_dir)))}
    assert len(from_csv) == len(from_tfrec) == 100
    for row in from_csv[:10]:
        other = from_tfrec[row["image_name"]]
        assert row["label"] == other["label"] and np.array_equal(row["image"], other["image"])

def test_jpeg_folder_without_csv_lists_test_images(sample_dir):
    rows = _collect(sources.load_jpeg_csv(os.path.join(sample_dir, "test_images")))
    assert len(rows) == 15 and "label" not in rows[0] and rows[0]["image"].shape[2] == 3

def test_jpeg_csv_errors_name_the_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    bad = tmp_path / "train.csv"
    bad.write_text("image_id,label\na.jpg,1\nb.jpg,2\n")
    with pytest.raises(DataError, match=r"train\.csv, line 3: image .*b\.jpg does not exist"):
        sources.load_jpeg_csv(tmp_path, bad)
    bad.write_text("image_id,label\na.jpg,5\n")
    with pytest.raises(DataError, match=r"line 2: label 5 outside"):
        sources.load_jpeg_csv(tmp_path, bad)

def test_jpeg_file_that_is_not_an_image_is_named(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"<html>oops</html>")
    with pytest.raises(DataError, match=r"a\.jpg is not a JPEG/PNG/GIF/BMP image"):
        _collect(sources.load_jpeg_csv(tmp_path))

def test_image_folder_labels_follow_sorted_class_folders(tmp_path):
    for cls, value in (("healthy", 200), ("cmd", 50)):
        os.makedirs(tmp_path / cls)
        (tmp_path / cls / "x.jpg").write_bytes(_jpeg(value))
    dataset, classes = sources.load_image_folder(tmp_path)
    assert classes == ("cmd", "healthy")
    rows = _collect(dataset)
    assert [(r["image_name"].decode(), int(r["label"])) for r in rows] == [("cmd/x.jpg", 0), ("healthy/x.jpg", 1)]

def test_a_data_dir_gives_its_test_images_first_and_its_test_shards_on_request(sample_dir):
    images = sources.open_test_source(sample_dir)
    assert (images.kind, images.count, images.where) == ("images", 15, os.path.join(sample_dir, "test_images"))
    shards = sources.open_test_source(sample_dir, kind="tfrecords")
    assert (shards.kind, shards.count) == ("tfrecords", 15)
    names = [sorted(ex["image_name"] for ex in _collect(source.dataset)) for source in (images, shards)]
    assert names[0] == names[1] == sorted(n.encode() for n in os.listdir(images.where))

def test_a_folder_without_test_data_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="no test images or TFRecords found"):
        sources.open_test_source(str(tmp_path))
    with pytest.raises(ValueError, match="kind='jpeg'"):
        sources.open_test_source(str(tmp_path), kind="jpeg")

def test_load_test_images_reads_the_shards_in_record_order(sample_dir):
    ids, images = sources.load_test_images(sample_dir, limit=3, kind="tfrecords")
    assert ids == ["2082241388.jpg", "2525358034.jpg", "2271891758.jpg"]  # the shard's record order
    assert images[0].dtype == np.uint8 and images[0].shape == (256, 340, 3)

def test_load_tfds_offline_fails_at_once_with_advice(tmp_path):
    with pytest.raises(DataError, match="not prepared .*internet off"):
        sources.load_tfds("mnist", data_dir=str(tmp_path))


def test_an_example_level_split_is_disjoint_complete_and_takes_validation_from_every_class(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(np.full([4, 4, 3], i, np.uint8)).numpy())
    source = sources.load_source(str(tmp_path), val_fraction=0.2)
    train = [ex["image_name"].numpy().decode() for ex in source.train]
    val = [ex["image_name"].numpy().decode() for ex in source.val]
    assert val == ["a/4.png", "b/4.png"] and (source.train_size, source.val_size) == (8, 2)
    assert train == [f"{c}/{i}.png" for c in "ab" for i in range(4)]


def test_cassava_tfrecords_are_split_by_shard_and_the_rule_sees_the_training_size(sample_dir):
    source = sources.load_source(sample_dir, val_fraction=0.25)
    assert source.kind == "tfrecords" and source.class_names == data_tfrecords.CLASS_NAMES
    assert (source.train_size, source.val_size) == (75, 25)
    assert min(source.image_hw) >= 256
    train_names = {ex["image_name"].numpy() for ex in source.train}
    val_names = {ex["image_name"].numpy() for ex in source.val}
    assert len(train_names) == 75 and len(val_names) == 25 and not train_names & val_names


def test_jpeg_folder_with_csv_and_class_folders_are_read_with_their_sizes(sample_dir, tmp_path):
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    os.symlink(os.path.join(sample_dir, "train_images"), jpeg / "train_images")
    os.symlink(os.path.join(sample_dir, "train.csv"), jpeg / "train.csv")
    with open(os.path.join(sample_dir, "train.csv")) as f:
        rows = len(list(csv.DictReader(f)))
    source = sources.load_source(str(jpeg), val_fraction=0.2)
    assert source.kind == "jpeg_csv" and source.train_size + source.val_size == rows
    assert source.val_size == sum(1 for _ in source.val)

    folders = tmp_path / "folders"
    for name, colour in (("cats", 40), ("dogs", 200)):
        (folders / name).mkdir(parents=True)
        for i in range(3):
            image = np.full([20, 24, 3], colour + i, np.uint8)
            (folders / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    source = sources.load_source(str(folders), val_fraction=1 / 3)
    assert source.kind == "image_folder" and source.class_names == ("cats", "dogs")
    assert (source.train_size, source.val_size, source.image_hw) == (4, 2, (20, 24))


def test_missing_data_folder_fails_with_what_to_pass(tmp_path):
    with pytest.raises(data_tfrecords.DataError, match="train_tfrecords"):
        sources.load_source(str(tmp_path / "nowhere"))


def test_tfds_source_offline_and_unprepared_fails_at_once_with_advice(tmp_path):
    with pytest.raises(data_tfrecords.DataError, match="not prepared"):
        sources.load_source("tfds:cats_vs_dogs", tfds_data_dir=str(tmp_path))
