"""The layout of Kaggle's "cassava-leaf-disease-classification" data, spelled once: every module that reads or
writes a data folder takes its names from here.

    DATA_DIR/
        train_tfrecords/ld_train{NN}-{count}.tfrec   labelled shards (image, image_name, target)
        test_tfrecords/ld_test{NN}-{count}.tfrec     test shards (image, image_name)
        train_images/*.jpg, test_images/*.jpg         the same images as JPEG files
        train.csv                                     image_id,label
        label_num_to_disease_map.json                 {"0": "Cassava Bacterial Blight (CBB)", ...}
        sample_submission.csv                         image_id,label: the ids and order a submission follows

Only names: nothing here reads a file or imports TensorFlow.
"""

import dataclasses
import os

SPLITS = ("train", "test")
LABEL_MAP_FILE = "label_num_to_disease_map.json"
SAMPLE_SUBMISSION_FILE = "sample_submission.csv"
CSV_HEADER = ("image_id", "label")


@dataclasses.dataclass(frozen=True)
class SplitPaths:
    """Where the layout keeps one split ("train" or "test") of a data dir (nothing is checked)."""

    tfrecords_dir: str  # DATA_DIR/{split}_tfrecords
    shards: str  # DATA_DIR/{split}_tfrecords/*.tfrec
    images_dir: str  # DATA_DIR/{split}_images
    csv: str  # DATA_DIR/{split}.csv (image_id,label; train only)
    label_map: str  # DATA_DIR/label_num_to_disease_map.json


def split_paths(data_dir, split="train"):
    """The `SplitPaths` of ``split`` in ``data_dir``: the one walk of the layout training and test share."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    data_dir = os.fspath(data_dir)
    tfrecords_dir = os.path.join(data_dir, f"{split}_tfrecords")
    return SplitPaths(tfrecords_dir, os.path.join(tfrecords_dir, "*.tfrec"), os.path.join(data_dir, f"{split}_images"),
                      os.path.join(data_dir, f"{split}.csv"), os.path.join(data_dir, LABEL_MAP_FILE))


def folders():
    """The layout's folders, relative to DATA_DIR: train_tfrecords, test_tfrecords, train_images, test_images."""
    return tuple(f"{split}_{kind}" for kind in ("tfrecords", "images") for split in SPLITS)


def files():
    """The layout's files, relative to DATA_DIR: train.csv, the label map, sample_submission.csv."""
    return ("train.csv", LABEL_MAP_FILE, SAMPLE_SUBMISSION_FILE)


def data_file(data_dir, name):
    """``data_dir/name`` when ``data_dir`` is a folder holding that file, else None (a glob, a dataset, a list)."""
    if not isinstance(data_dir, (str, os.PathLike)):
        return None
    path = os.path.join(os.fspath(data_dir), name)
    return path if os.path.isfile(path) else None
