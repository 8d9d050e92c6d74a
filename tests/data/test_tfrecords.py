"""kitlib.data.tfrecords: the competition's shards read and checked: counts, splits, parsing, bad input named by file and record."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kitlib.data import tfrecords as data_tfrecords
from kitlib.data import writing
from kitlib.data.tfrecords import DataError, explain_errors


def _image(value, h=40, w=56):
    """A uint8 image whose pixels all equal ``value`` (survives JPEG closely)."""
    return np.full([h, w, 3], value, np.uint8)

def _examples(n, labeled=True):
    return [{"image": _image(20 * i + 10), "image_name": f"img{i}.jpg", **({"target": i % 5} if labeled else {})}
            for i in range(n)]

def _collect(dataset):
    with explain_errors():
        return list(dataset.as_numpy_iterator())

def _raw_shard(path, features_list):
    """Write records made of arbitrary features: a dict name -> bytes or int per record."""
    with tf.io.TFRecordWriter(path) as w:
        for feats in features_list:
            f = {k: (tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) if isinstance(v, int)
                     else tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))) for k, v in feats.items()}
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    return path

def _jpeg(value=128):
    return tf.io.encode_jpeg(_image(value)).numpy()

def test_unordered_reading_returns_every_record_once(tmp_path):
    paths = writing.write_tfrecords(_examples(12), tmp_path, shard_size=4)
    names = sorted(r["image_name"].decode() for r in _collect(data_tfrecords.load_dataset(paths)))
    assert names == sorted(f"img{i}.jpg" for i in range(12))

def test_decode_false_keeps_the_jpeg_bytes(tmp_path):
    paths = writing.write_tfrecords(_examples(2), tmp_path)
    row = _collect(data_tfrecords.load_dataset(paths, ordered=True, decode=False))[0]
    assert isinstance(row["image"], bytes) and row["image"][:3] == b"\xff\xd8\xff"

def test_grayscale_and_png_images_are_made_rgb(tmp_path):
    gray_png = tf.io.encode_png(np.full([30, 20, 1], 77, np.uint8)).numpy()
    path = _raw_shard(str(tmp_path / "ld_train00-1.tfrec"), [{"image": gray_png, "image_name": b"g.png", "target": 2}])
    row = _collect(data_tfrecords.load_dataset([path]))[0]
    assert row["image"].shape == (30, 20, 3) and (row["image"] == 77).all()

def test_records_without_image_name_give_dicts_without_it(tmp_path):
    path = _raw_shard(str(tmp_path / "x-2.tfrec"), [{"image": _jpeg(), "target": 1}] * 2)
    rows = _collect(data_tfrecords.load_dataset([path]))
    assert len(rows) == 2 and set(rows[0]) == {"image", "label"}

def test_count_data_items_reads_counts_from_names():
    assert data_tfrecords.count_data_items(["a/ld_train00-1338.tfrec", "ld_train01-1337.tfrec"]) == 2675

def test_count_data_items_names_the_shard_without_a_count():
    with pytest.raises(DataError, match=r"shards/ld_train00\.tfrec: shard name has no record count"):
        data_tfrecords.count_data_items(["shards/ld_train00.tfrec"])

@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5])
def test_split_files_is_disjoint_complete_and_seeded(fraction):
    files = [f"ld_train{i:02d}-100.tfrec" for i in range(16)]
    train, val = data_tfrecords.split_files(files, fraction, seed=5)
    assert not set(train) & set(val) and sorted(train + val) == sorted(files)
    assert len(val) == round(16 * fraction)
    assert data_tfrecords.split_files(files, fraction, seed=5) == (train, val)

def test_split_files_needs_two_shards():
    with pytest.raises(DataError, match="cannot split 1 shard"):
        data_tfrecords.split_files(["only-5.tfrec"], 0.2)
    assert data_tfrecords.split_files(["only-5.tfrec"], 0) == (["only-5.tfrec"], [])

def test_list_tfrecords_finds_the_sample_shards(sample_dir):
    files = data_tfrecords.list_tfrecords(sample_dir)
    assert len(files) == 4 and data_tfrecords.count_data_items(files) == 100
    assert data_tfrecords.count_data_items(data_tfrecords.list_tfrecords(sample_dir, "test")) == 15

def test_empty_list_and_unmatched_glob_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="list of TFRecord files is empty"):
        data_tfrecords.load_dataset([])
    with pytest.raises(DataError, match=r"no TFRecord files match .*nothing-\*\.tfrec"):
        data_tfrecords.load_dataset(str(tmp_path / "nothing-*.tfrec"))
    with pytest.raises(DataError, match="do not exist"):
        data_tfrecords.load_dataset([str(tmp_path / "missing-3.tfrec")])

@pytest.mark.parametrize("record, message", [
    ({"image_name": b"a.jpg", "target": 1}, "has no 'image' feature"),
    ({"image": _jpeg(), "image_name": b"a.jpg"}, "has no 'target' feature"),
    ({"image": _jpeg(), "image_name": b"a.jpg", "target": 7}, r"has target 7 outside the classes 0\.\.4"),
    ({"image": b"this is not an image", "image_name": b"a.jpg", "target": 1},
     "has an 'image' that is not JPEG/PNG/GIF/BMP"),
])
def test_bad_record_is_named_by_file_and_record(tmp_path, record, message):
    good = {"image": _jpeg(), "image_name": b"ok.jpg", "target": 0}
    path = _raw_shard(str(tmp_path / "ld_train00-3.tfrec"), [good, record, good])
    with pytest.raises(DataError, match=rf"record 1 of .*ld_train00-3\.tfrec {message}"):
        _collect(data_tfrecords.load_dataset([path], ordered=True))

def test_class_range_is_configurable(tmp_path):
    path = _raw_shard(str(tmp_path / "x-1.tfrec"), [{"image": _jpeg(), "target": 7}])
    assert int(_collect(data_tfrecords.load_dataset([path], num_classes=10))[0]["label"]) == 7

def test_skip_corrupt_drops_counts_and_reports_bad_records(tmp_path, capfd):
    good = {"image": _jpeg(), "image_name": b"ok.jpg", "target": 0}
    records = [good, {"image": b"junk", "target": 1}, good, {"image": _jpeg(), "target": 9}, good]
    path = _raw_shard(str(tmp_path / "ld_train00-5.tfrec"), records)
    dataset = data_tfrecords.load_dataset([path], ordered=True, skip_corrupt=True)
    assert len(_collect(dataset)) == 3
    assert int(dataset.skipped.numpy()) == 2
    err = capfd.readouterr().err
    assert "skipping record 1 of" in err and "skipping record 3 of" in err

def test_truncated_shard_is_named_before_reading(tmp_path):
    path = writing.write_tfrecords(_examples(3), tmp_path)[0]
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[:-50])
    with pytest.raises(DataError, match=r"ld_train00-3\.tfrec: truncated shard, record 2 is cut off"):
        data_tfrecords.load_dataset([path])

@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": "x"}', "keys must be label numbers"),
    ('{"0": "x", "2": "y"}', "without gaps"),
    ("[1, 2]", "expected a JSON object"),
])
def test_label_map_that_does_not_parse_is_refused(tmp_path, content, message):
    path = tmp_path / "label_num_to_disease_map.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        data_tfrecords.read_label_map(path)

def test_label_map_of_the_sample_matches_class_names(sample_dir):
    assert data_tfrecords.read_label_map(os.path.join(sample_dir, "label_num_to_disease_map.json")) == data_tfrecords.CLASS_NAMES
    assert len(data_tfrecords.CLASS_NAMES) == 5 and data_tfrecords.CLASS_NAMES[3] == "Cassava Mosaic Disease (CMD)"

def test_reproducible_reading_mixes_the_shards_in_the_same_order_every_time(sample_dir):
    files = data_tfrecords.list_tfrecords(sample_dir)  # 4 shards of 25 records

    def names():
        return [n.decode() for n in data_tfrecords.load_dataset(files, decode=False, reproducible=True)
                .map(lambda ex: ex["image_name"]).as_numpy_iterator()]

    first, second = names(), names()
    assert first == second and len(first) == len(set(first)) == 100
    in_file_order = [n.decode() for n in data_tfrecords.load_dataset(files, decode=False, ordered=True)
                     .map(lambda ex: ex["image_name"]).as_numpy_iterator()]
    # one record of each shard in turn: the first four come from the four shards' first records
    assert first[:4] == in_file_order[0:100:25] and sorted(first) == sorted(in_file_order)
