"""The Cassava data layer: the competition's TFRecord shards, read and checked (the layout's names are
`kitlib.data.competition`'s; writing shards is `kitlib.data.writing`).

Every loader of the kit (here, and the JPEG folders, class folders, tfds and test sets of ``kitlib.data.sources``)
returns a ``tf.data.Dataset`` of dicts with the same keys:
    "image":      uint8 [H, W, 3] (RGB; grayscale and PNG are made RGB), or the raw encoded bytes
                  (a scalar tf.string) with ``decode=False`` so a later stage decodes once at the
                  scale it needs (see ``kitlib.swav.multicrop``);
    "image_name": tf.string, e.g. b"1000015157.jpg";
    "label":      int32 in [0, num_classes), for labelled data.

Shards: ``train_tfrecords/ld_train{NN}-{count}.tfrec`` with features image (JPEG), image_name, target (int64);
``test_tfrecords/ld_test{NN}-{count}.tfrec`` with image, image_name (no target).

Bad input raises ``DataError`` naming the file (and record) and what to do. Problems that can only
be seen while the pipeline runs (a record without a target, bytes that are not an image) fail with
a message that starts ``kitlib:`` and names file and record; wrap the loop in ``explain_errors()``
to get them as a ``DataError`` without TensorFlow's stack trace.
"""

import contextlib
import json
import os
import re
import struct
import sys

from kitlib import command
from kitlib.compat import tf
from kitlib.data.competition import split_paths

CLASS_NAMES = (
    "Cassava Bacterial Blight (CBB)",
    "Cassava Brown Streak Disease (CBSD)",
    "Cassava Green Mottle (CGM)",
    "Cassava Mosaic Disease (CMD)",
    "Healthy",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_SHARD_COUNT = re.compile(r"-(\d+)\.tfrec(?:ord)?$")
AUTOTUNE = tf.data.AUTOTUNE  # the kit's one spelling of tf.data.AUTOTUNE


class DataError(ValueError):
    """Input data that kitlib cannot use; the message names the file/record and the fix."""


# ============ label maps ============


def read_label_map(path):
    """Class names in label order from ``label_num_to_disease_map.json``.

    Args:
        path: JSON file mapping "0".."n-1" to names, e.g. {"0": "Cassava Bacterial Blight (CBB)"}.
    Returns:
        A tuple of n names, index = label.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: label map not found; pass the path to label_num_to_disease_map.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err}); re-download label_num_to_disease_map.json") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a JSON object like {{\"0\": \"name\", ...}}, got {type(raw).__name__}")
    try:
        labels = sorted(int(k) for k in raw)
    except ValueError:
        raise DataError(f"{path}: keys must be label numbers \"0\"..\"n-1\", got {sorted(raw)}") from None
    if labels != list(range(len(labels))):
        raise DataError(f"{path}: labels must be 0..{len(labels) - 1} without gaps, got {labels}")
    return tuple(str(raw[str(i)]) for i in labels)


# ============ file lists ============


def resolve_files(filenames, what="TFRecord files"):
    """A sorted list of existing files from a list of paths or a glob pattern (local or gs://)."""
    if isinstance(filenames, (str, os.PathLike)):
        pattern = os.fspath(filenames)
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise DataError(f"no {what} match {pattern!r}; check the path (is the dataset attached?)")
        return files
    files = [os.fspath(f) for f in filenames]
    if not files:
        raise DataError(f"the list of {what} is empty; pass at least one file or a glob pattern")
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise DataError(f"{len(missing)} of {len(files)} {what} do not exist, e.g. {missing[0]}")
    return files


def class_names_of(data_dir):
    """The class names of a data dir: its ``label_num_to_disease_map.json``, else Cassava's ``CLASS_NAMES``."""
    path = split_paths(data_dir).label_map
    return read_label_map(path) if os.path.isfile(path) else CLASS_NAMES


def list_tfrecords(data_dir, split="train"):
    """The shards ``DATA_DIR/{split}_tfrecords/*.tfrec`` in name order."""
    return resolve_files(split_paths(data_dir, split).shards, what=f"{split} shards")


def count_data_items(filenames):
    """Total number of records, read from the ``…-{count}.tfrec`` shard names (no file is opened)."""
    total = 0
    for name in filenames:
        match = _SHARD_COUNT.search(os.path.basename(os.fspath(name)))
        if match is None:
            raise DataError(
                f"{name}: shard name has no record count; expected '<prefix><NN>-<count>.tfrec' "
                "(e.g. ld_train00-1338.tfrec). Rename it, or write shards with kitlib.data.writing.write_tfrecords")
        total += int(match.group(1))
    return total


def split_files(filenames, val_fraction, seed=0):
    """Split shards into (train, val) at file level, so no image is in both.

    Args:
        filenames: shard paths.
        val_fraction: in [0, 1); 0 gives all files to train.
        seed: shuffling seed (scikit-learn ``train_test_split``).
    Returns:
        (train_files, val_files), each sorted.
    """
    from sklearn.model_selection import train_test_split

    files = sorted(os.fspath(f) for f in filenames)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return files, []
    if len(files) < 2:
        raise DataError(f"cannot split {len(files)} shard(s) at file level; write more, smaller shards "
                        "(write_tfrecords(..., shard_size=...)) or hold none out: "
                        + ("--val-fraction 0" if command.on_command_line() else "val_fraction=0"))
    n_val = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
    train, val = train_test_split(files, test_size=n_val, random_state=seed)
    return sorted(train), sorted(val)


def check_tfrecord_framing(path):
    """Walk a local shard's record headers; returns the record count or raises on a truncated file.

    TFRecord framing: uint64 length, uint32 crc, ``length`` bytes, uint32 crc. Only headers are
    read (a seek per record), so this is cheap even for the full competition data.
    """
    size = os.path.getsize(path)
    pos, count = 0, 0
    with open(path, "rb") as f:
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            if pos + 12 + length + 4 > size:
                break
            pos += 12 + length + 4
            count += 1
            f.seek(pos)
        else:
            return count
    raise DataError(f"{path}: truncated shard, record {count} is cut off at byte {pos} of {size}; "
                    "the file is incomplete: download or copy it again")


# ============ parsing ============


def has_image_magic(data):
    """Scalar bool tensor: True when the bytes (a scalar tf.string) start like a JPEG, PNG, GIF or BMP file."""
    head = tf.strings.substr(data, 0, 4)
    return tf.reduce_any(tf.stack([
        tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
        head == b"\x89PNG",
        tf.strings.substr(head, 0, 3) == b"GIF",
        tf.strings.substr(head, 0, 2) == b"BM",
    ]))


def decode_image(data):
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] RGB (grayscale is repeated to 3 channels)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _features(labeled, with_name):
    spec = {"image": tf.io.FixedLenFeature([], tf.string, default_value="")}
    if with_name:
        spec["image_name"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if labeled:
        spec["target"] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    return spec


def _problem(example, labeled, num_classes):
    """'' when the parsed record is usable, else a short description of what is wrong (tf.string)."""
    problem = tf.constant("")
    if labeled:
        target = example["target"]
        problem = tf.where(target < 0, "has no 'target' feature", problem)
        problem = tf.where(target >= num_classes,
                           tf.strings.join(["has target ", tf.strings.as_string(target),
                                            f" outside the classes 0..{num_classes - 1}"]), problem)
    problem = tf.where(tf.logical_not(has_image_magic(example["image"])),
                       "has an 'image' that is not JPEG/PNG/GIF/BMP bytes", problem)
    problem = tf.where(tf.strings.length(example["image"]) == 0, "has no 'image' feature", problem)
    return problem


def _to_output(example, labeled, decode, with_name):
    out = {"image": decode_image(example["image"]) if decode else example["image"]}
    if with_name:
        out["image_name"] = example["image_name"]
    if labeled:
        out["label"] = tf.cast(example["target"], tf.int32)
    return out


def parse_example(serialized, labeled=True, decode=True, num_classes=NUM_CLASSES, with_name=True,
                  source="<record>"):
    """One serialized ``tf.train.Example`` -> the kit's dict (see module docstring).

    Args:
        serialized: scalar tf.string.
        labeled: read "target" (int64) as "label"; a record without it, or with a target outside
            [0, num_classes), fails with a message naming ``source``.
        decode: decode the image to uint8 [H, W, 3]; False keeps the encoded bytes.
        num_classes: number of classes (5 for Cassava).
        with_name: read "image_name" (tf.string; "" when absent).
        source: scalar tf.string naming the record in error messages, e.g. "record 3 of FILE".
    """
    example = tf.io.parse_single_example(serialized, _features(labeled, with_name))
    problem = _problem(example, labeled, num_classes)
    with tf.control_dependencies([tf.debugging.Assert(
            tf.strings.length(problem) == 0,
            [tf.strings.join(["kitlib: ", source, " ", problem,
                              ". Fix or drop that record (or pass skip_corrupt=True to skip it and count it)."])],
    )]):
        example = {k: tf.identity(v) for k, v in example.items()}
    return _to_output(example, labeled, decode, with_name)


def _first_record_keys(path):
    """Feature names of a shard's first record (to know whether records carry "image_name")."""
    for raw in tf.data.TFRecordDataset(path).take(1):
        return set(tf.train.Example.FromString(raw.numpy()).features.feature)
    raise DataError(f"{path}: shard holds no records; remove it or write it again")


def _describe(path, index):
    """"record {index} of {path}" (tf.string), how messages name a record."""
    return tf.strings.join(["record ", tf.strings.as_string(index), " of ", path])


def _shard_records(files, ordered, deterministic):
    """(path, index in its shard, serialized record) triples of every shard: shard after shard when
    ``ordered``, else up to 16 shards interleaved (one record of each in turn when ``deterministic``)."""
    def records_of(path):
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, rec: (path, i, rec))

    names = tf.data.Dataset.from_tensor_slices(files)
    if ordered:
        return names.flat_map(records_of)
    return names.interleave(records_of, cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE,
                            deterministic=deterministic)


def _without_corrupt(records, labeled, decode, num_classes, with_name, deterministic):
    """The kit's dicts of the usable records; each record dropped is printed and counted in the returned
    dataset's ``skipped`` (an int64 tf.Variable)."""
    features = _features(labeled, with_name)
    skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")

    def check(path, index, serialized):
        example = tf.io.parse_single_example(serialized, features)
        return path, index, example, _problem(example, labeled, num_classes)

    def keep(path, index, example, problem):
        ok = tf.strings.length(problem) == 0
        if not ok:
            tf.print(tf.strings.join(["kitlib: skipping ", _describe(path, index), " (", problem, ")"]),
                     output_stream=sys.stderr)
            skipped.assign_add(1)
        return ok

    dataset = (records.map(check, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
               .filter(keep)
               .map(lambda p, i, ex, _: _to_output(ex, labeled, decode, with_name),
                    num_parallel_calls=AUTOTUNE, deterministic=deterministic))
    dataset.skipped = skipped
    return dataset


def load_dataset(filenames, labeled=True, ordered=False, decode=True, num_classes=NUM_CLASSES,
                 skip_corrupt=False, reproducible=False):
    """Read Cassava-format TFRecord shards in parallel.

    Args:
        filenames: list of shard paths, or a glob pattern (local or gs://).
        labeled: read "target" as "label" (train shards); False for test shards.
        ordered: keep file order and record order (deterministic); False reads shards
            interleaved as they stream in (faster).
        reproducible: with ordered False, interleave the shards one record of each in turn, the same
            order every run (training input that mixes shards and is a function of the seed).
        decode: decode images to uint8 [H, W, 3]; False keeps JPEG bytes for a later stage.
        num_classes: valid targets are 0..num_classes-1.
        skip_corrupt: drop records that have no image, non-image bytes, or a bad target, print
            each one skipped (file and record) and count them in ``dataset.skipped`` (a tf.Variable).
            Default False: such a record stops the run with a message naming it.
    Returns:
        ``tf.data.Dataset`` of dicts (see module docstring).
    """
    files = resolve_files(filenames)
    for path in files:  # a truncated shard is caught here with its name, not deep inside a fit()
        if "://" not in path:
            check_tfrecord_framing(path)
    with_name = "image_name" in _first_record_keys(files[0])
    deterministic = ordered or reproducible
    records = _shard_records(files, ordered, deterministic)
    if skip_corrupt:
        return _without_corrupt(records, labeled, decode, num_classes, with_name, deterministic)

    def parse(path, index, serialized):
        return parse_example(serialized, labeled, decode, num_classes, with_name, _describe(path, index))

    return records.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


@contextlib.contextmanager
def explain_errors():
    """Turn pipeline failures into ``DataError`` with kitlib's message and no TF stack trace.

    Use around a loop or ``fit()`` over a kitlib dataset::

        with explain_errors():
            for batch in dataset: ...
    """
    try:
        yield
    except tf.errors.DataLossError as err:
        raise DataError(f"corrupt or truncated TFRecord data ({err.message.splitlines()[0]}); "
                        "check the shards with kitlib.data.tfrecords.check_tfrecord_framing and copy them again") from None
    except tf.errors.InvalidArgumentError as err:
        found = re.search(r"kitlib: ([^\n\]]*)", err.message)
        if found:
            message = re.sub(r"\\+(['\"])", r"\1", found.group(1)).strip().rstrip("'\"")
            raise DataError(message) from None
        if "image" in err.message.lower() and ("decode" in err.message.lower() or "jpeg" in err.message.lower()):
            raise DataError(f"an image could not be decoded ({err.message.splitlines()[0]}); the file is "
                            "corrupt or truncated: replace it, or use skip_corrupt=True") from None
        raise


# ============ writing ============
