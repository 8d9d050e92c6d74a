"""kitlib.data: the writer/reader round trip (writing, tfrecords), counts, splits, other sources, and every bad
input."""

import csv
import filecmp
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kitlib.data import sources
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


# ============ round trip ============


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


# ============ counts and splits ============


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


# ============ bad input ============


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


# ============ other sources ============


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


# ============ test sets ============


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
