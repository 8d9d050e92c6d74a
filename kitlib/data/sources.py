"""Data sources of any layout, as the kit's dicts (see ``kitlib.data.tfrecords``): the readers of everything that is not
TFRecord shards (a JPEG folder with a ``train.csv``, one folder per class, a tfds dataset), and the two doors
the commands use: ``load_source`` (a training source split into train / validation, whatever its layout) and
``open_test_source`` (the test images to predict: a data dir, a folder of images, test shards, or a
``tf.data.Dataset``).

Bad input raises ``kitlib.data.tfrecords.DataError`` naming the file and what to do; a file that is not an image fails
while the pipeline runs with a ``kitlib:`` message (``kitlib.data.tfrecords.explain_errors`` turns it into a DataError).
"""

import contextlib
import csv
import dataclasses
import glob
import math
import os

from kitlib.compat import tf
from kitlib.data.competition import split_paths
from kitlib.data.tfrecords import (AUTOTUNE, IMAGE_EXTENSIONS, NUM_CLASSES,
                                   DataError, class_names_of, count_data_items,
                                   decode_image, explain_errors,
                                   has_image_magic, list_tfrecords,
                                   load_dataset, resolve_files, split_files)

TEST_SOURCE_KINDS = ("auto", "images", "tfrecords")
TFDS_PREFIX = "tfds:"


# ============ test sets: a data dir, a JPEG folder, TFRecords, a dataset ============


@dataclasses.dataclass
class UnlabeledSource:
    """Test images to predict, in a fixed order (``open_test_source``)."""

    dataset: tf.data.Dataset  # dicts with "image" uint8 [H, W, 3] and "image_name", in a fixed order
    count: int  # number of images, or None when unknown
    kind: str  # "images", "tfrecords" or "dataset"
    where: str  # what was read, for messages


def _image_files(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def _test_shards(files, where):
    files = resolve_files(files, what="test TFRecord files")
    try:
        count = count_data_items(files)
    except DataError:  # shard names without a count: progress without a total
        count = None
    return UnlabeledSource(load_dataset(files, labeled=False, ordered=True), count, "tfrecords", where)


def _test_folder(folder):
    return UnlabeledSource(load_jpeg_csv(folder), len(_image_files(folder)), "images", folder)


def open_test_source(source, kind="auto"):
    """The test images of ``source`` as an ``UnlabeledSource``, in a fixed order.

    Args:
        source: one of
            - a data dir with ``test_images/`` and/or ``test_tfrecords/`` (the competition layout);
              kind "auto" prefers ``test_images/`` (the folder Kaggle fills with the hidden test set);
            - a folder of images (.jpg/.png/...), read in file-name order;
            - a folder of ``*.tfrec`` shards, a glob pattern or a list of shard paths (file order,
              then record order); records need "image" and "image_name";
            - a ``tf.data.Dataset`` of kit dicts with "image" (uint8) and "image_name".
        kind: "auto", "images" or "tfrecords".
    Returns:
        ``UnlabeledSource``.
    """
    if kind not in TEST_SOURCE_KINDS:
        raise ValueError(f"kind={kind!r}; choose from {', '.join(TEST_SOURCE_KINDS)}")
    if isinstance(source, tf.data.Dataset):
        return UnlabeledSource(source, None, "dataset", "a tf.data.Dataset")
    if isinstance(source, (list, tuple)):
        return _test_shards(list(source), f"{len(source)} shard(s)")
    source = os.fspath(source)
    if not os.path.isdir(source):
        return _test_shards(source, source)  # a glob pattern (or one shard)
    test = split_paths(source, "test")
    if kind in ("auto", "images") and os.path.isdir(test.images_dir):
        return _test_folder(test.images_dir)
    if kind in ("auto", "tfrecords") and glob.glob(test.shards):
        return _test_shards(test.shards, test.shards)
    if kind in ("auto", "images") and _image_files(source):
        return _test_folder(source)
    if kind in ("auto", "tfrecords") and glob.glob(os.path.join(source, "*.tfrec")):
        pattern = os.path.join(source, "*.tfrec")
        return _test_shards(pattern, pattern)
    raise DataError(f"{source}: no test {'images or TFRecords' if kind == 'auto' else kind} found; pass a "
                    "data dir with test_images/ or test_tfrecords/, a folder of images, or *.tfrec shards")


def load_test_images(source, limit=None, kind="auto"):
    """The first ``limit`` test images of ``source`` in prediction order: (ids [n] str, uint8 arrays [H, W, 3])."""
    dataset = open_test_source(source, kind).dataset
    if limit is not None:
        dataset = dataset.take(limit)
    ids, images = [], []
    with explain_errors():
        for example in dataset:
            ids.append(example["image_name"].numpy().decode())
            images.append(example["image"].numpy())
    return ids, images


# ============ other sources: JPEG folder + CSV, one folder per class, tfds ============


def _read_image_file(path, source):
    data = tf.io.read_file(path)
    check = tf.debugging.Assert(has_image_magic(data),
                                [tf.strings.join(["kitlib: ", source, " is not a JPEG/PNG/GIF/BMP image; "
                                                  "remove or replace it."])])
    with tf.control_dependencies([check]):
        return tf.identity(data)


def _files_dataset(paths, names, labels, decode):
    columns = {"path": list(paths), "image_name": list(names)}
    if labels is not None:
        columns["label"] = tf.constant(labels, tf.int32)

    def load(row):
        data = _read_image_file(row["path"], tf.strings.join(["file ", row["path"]]))
        out = {"image": decode_image(data) if decode else data, "image_name": row["image_name"]}
        if "label" in row:
            out["label"] = row["label"]
        return out

    return tf.data.Dataset.from_tensor_slices(columns).map(load, num_parallel_calls=AUTOTUNE)


def load_jpeg_csv(images_dir, csv_path=None, num_classes=NUM_CLASSES, decode=True):
    """``train_images/`` + ``train.csv`` (image_id,label), or a test folder without CSV.

    Args:
        images_dir: folder of images named by ``image_id``.
        csv_path: CSV with header ``image_id,label``; None lists every image in the folder
            (unlabelled, for ``test_images/``).
        num_classes: valid labels are 0..num_classes-1.
        decode: as in ``load_dataset``.
    Returns:
        ``tf.data.Dataset`` of dicts, in CSV (or file-name) order.
    """
    images_dir = os.fspath(images_dir)
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: image folder not found")
    if csv_path is None:
        names = _image_files(images_dir)
        if not names:
            raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return _files_dataset([os.path.join(images_dir, n) for n in names], names, None, decode)
    names, labels = [], []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image_id", "label"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: expected a header 'image_id,label', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DataError(f"{csv_path}, line {line}: label {row['label']!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DataError(f"{csv_path}, line {line}: label {label} outside the classes 0..{num_classes - 1}")
            path = os.path.join(images_dir, row["image_id"])
            if not os.path.isfile(path):
                raise DataError(f"{csv_path}, line {line}: image {path} does not exist")
            names.append(row["image_id"])
            labels.append(label)
    if not names:
        raise DataError(f"{csv_path}: no rows after the header")
    return _files_dataset([os.path.join(images_dir, n) for n in names], names, labels, decode)


def load_image_folder(root, decode=True):
    """One sub-folder per class (``root/<class name>/*.jpg``), classes in sorted folder order.

    Returns:
        (dataset, class_names): the dataset of dicts (labelled) and the folder names in label order.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected root/<class name>/<image>.jpg")
    paths, names, labels = [], [], []
    for label, cls in enumerate(classes):
        files = sorted(n for n in os.listdir(os.path.join(root, cls)) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"{os.path.join(root, cls)}: class folder holds no images")
        paths += [os.path.join(root, cls, n) for n in files]
        names += [f"{cls}/{n}" for n in files]
        labels += [label] * len(files)
    return _files_dataset(paths, names, labels, decode), tuple(classes)


@contextlib.contextmanager
def _tfds_gcs_disabled():
    """Stop tfds from asking GCS for metadata (it retries for minutes offline); restores the flag."""
    from tensorflow_datasets.core.utils import gcs_utils

    before = gcs_utils._is_gcs_disabled
    gcs_utils._is_gcs_disabled = True
    try:
        yield
    finally:
        gcs_utils._is_gcs_disabled = before


def load_tfds(name, data_dir=None, download=False, split="train"):
    """A tfds dataset with (image, label) supervised keys as the kit's dicts.

    Offline (``download=False``, the default) it only reads a dataset already prepared in
    ``data_dir`` and fails at once otherwise, instead of retrying the network for minutes.

    Returns:
        (dataset, class_names).
    """
    import tensorflow_datasets as tfds

    if not download:
        with _tfds_gcs_disabled():
            try:
                builder = tfds.builder(name, data_dir=data_dir)
            except Exception as err:  # unknown name, or a builder that needs the network
                raise DataError(f"tfds dataset {name!r} cannot be opened offline ({err}); "
                                "check the name or pass download=True with internet") from None
            if not builder.is_prepared():
                raise DataError(
                    f"tfds dataset {name!r} is not prepared in {builder.data_dir}; with the internet off "
                    "nothing can be downloaded. Prepare it where there is internet (download=True), "
                    "attach that folder (e.g. as a Kaggle dataset) and pass data_dir=...")
            dataset = builder.as_dataset(split=split, as_supervised=True)
    else:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=split, as_supervised=True)
    label_feature = builder.info.features[builder.info.supervised_keys[1]]
    class_names = tuple(getattr(label_feature, "names", ()) or ())

    def to_dict(image, label):
        if image.shape.rank == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return {"image": image, "label": tf.cast(label, tf.int32)}

    return dataset.map(to_dict, num_parallel_calls=AUTOTUNE), class_names


# ============ a training source: train / validation split of any layout ============


@dataclasses.dataclass
class TrainingSource:
    """Train/validation datasets of kit dicts, with what the rule needs to know about them."""

    train: tf.data.Dataset
    val: tf.data.Dataset  # None when val_fraction == 0
    class_names: tuple
    train_size: int
    val_size: int
    image_hw: tuple  # (h, w) of the first training image; "image" may be encoded bytes (see load_source)
    kind: str  # "tfrecords" | "jpeg_csv" | "image_folder" | "tfds"


def _split_examples(dataset, val_fraction):
    """(train, val) at example level: example i is validation when floor((i+1) f) > floor(i f).

    Deterministic for an ordered dataset, spreads validation evenly (every class of a sorted
    folder is represented) and gives round-down(n f) validation examples.
    """
    def is_val(i, _):
        i = tf.cast(i, tf.float64)
        return tf.floor((i + 1) * val_fraction) > tf.floor(i * val_fraction)

    indexed = dataset.enumerate()
    train = indexed.filter(lambda i, ex: tf.logical_not(is_val(i, ex))).map(lambda i, ex: ex)
    val = indexed.filter(is_val).map(lambda i, ex: ex)
    return train, val


def _count(dataset):
    """Number of elements (from the cardinality when known, else by one pass)."""
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def load_source(source, val_fraction=0.2, seed=0, tfds_data_dir=None, decode=False):
    """Open a data source and split it into train / validation.

    Args:
        source: a folder with ``train_tfrecords/`` (Cassava shards, split at file level), a folder with
            ``train.csv`` + ``train_images/``, a folder with one sub-folder per class, or
            ``"tfds:NAME"`` (prepared offline in ``tfds_data_dir``).
        val_fraction: share held out for validation, in [0, 1).
        seed: seed of the file-level split (TFRecords).
        decode: False keeps images as encoded bytes (decoded later by ``kitlib.bit.inputs.train_dataset`` /
            ``kitlib.bit.inputs.eval_dataset``, after shuffling); tfds datasets are always decoded.
    Returns:
        a ``TrainingSource``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = os.fspath(source)
    train_paths = split_paths(source, "train")
    if source.startswith(TFDS_PREFIX):
        dataset, class_names = load_tfds(source[len(TFDS_PREFIX):], data_dir=tfds_data_dir)
        kind = "tfds"
    elif tf.io.gfile.isdir(train_paths.tfrecords_dir):  # local or gs://
        files = list_tfrecords(source, "train")
        train_files, val_files = split_files(files, val_fraction, seed) if val_fraction else (files, [])
        # shards mixed one record of each in turn, the same order every run: the batches are a function
        # of the seed (the same run on 1 device and on 8)
        class_names = class_names_of(source)  # a label map of other than Cassava's 5 classes bounds the targets
        train = load_dataset(train_files, decode=decode, reproducible=True, num_classes=len(class_names))
        val = (load_dataset(val_files, ordered=True, decode=decode, num_classes=len(class_names))
               if val_files else None)
        return TrainingSource(train, val, tuple(class_names), count_data_items(train_files),
                      count_data_items(val_files), first_image_hw(train), "tfrecords")
    else:
        dataset, class_names, kind = labelled_images(source, decode=decode)
    if not class_names:
        raise DataError(f"{source}: the dataset does not name its classes; use a labelled source")
    total = _count(dataset)
    val_size = math.floor(total * val_fraction)  # what _split_examples selects, without reading the images
    train, val = _split_examples(dataset, val_fraction) if val_fraction else (dataset, None)
    return TrainingSource(train, val, tuple(class_names), total - val_size, val_size, first_image_hw(train), kind)


def labelled_images(source, decode=False):
    """Every labelled image of a data folder, in a fixed order, with its name.

    Args:
        source: a folder with ``train_tfrecords/`` (all shards, in file then record order), with ``train.csv`` +
            ``train_images/`` (CSV order), or with one sub-folder per class (sorted).
        decode: as in `load_source`.
    Returns:
        (dataset of dicts "image", "image_name", "label"; class names; kind "tfrecords" | "jpeg_csv" | "image_folder").
    """
    source = os.fspath(source)
    paths = split_paths(source, "train")
    if tf.io.gfile.isdir(paths.tfrecords_dir):
        class_names = class_names_of(source)
        return (load_dataset(list_tfrecords(source), decode=decode, ordered=True, num_classes=len(class_names)),
                tuple(class_names), "tfrecords")
    if os.path.isfile(paths.csv) and os.path.isdir(paths.images_dir):
        class_names = class_names_of(source)
        return (load_jpeg_csv(paths.images_dir, paths.csv, num_classes=len(class_names), decode=decode),
                tuple(class_names), "jpeg_csv")
    if os.path.isdir(source):
        return (*load_image_folder(source, decode=decode), "image_folder")
    raise DataError(f"{source}: no such folder. Pass a folder with train_tfrecords/, or train.csv + "
                    "train_images/, or one sub-folder per class, or tfds:NAME")


def first_image_hw(dataset):
    """(h, w) of the first image: what ``kitlib.bit.hyperrule.get_resolution`` decides on (Cassava: 600 x 800)."""
    with explain_errors():
        for example in dataset.take(1):
            image = example["image"]
            image = decode_image(image) if image.dtype == tf.string else image
            return tuple(int(v) for v in image.shape[:2])
    raise DataError("the training split is empty; lower val_fraction or add data")
