"""Stratified k-fold splits at image level, and the training sets built from them (what ``cv`` trains on).

A fold table assigns every labelled image of a data folder to exactly one of K validation folds, class by
class, so that each fold holds ⌊n_c / K⌋ or ⌈n_c / K⌉ images of every class c: each fold's class shares are
within one image of the whole's. It is saved as ``folds.csv`` (``image_id,label,fold``) and reused when a run
is resumed, so every model of a competition loop sees the same folds and their out-of-fold (OOF) predictions
can be compared, stacked and ensembled.

`training_source` turns a table and a fold into a `kitlib.data.sources.TrainingSource`: validation is the
fold's images with their labels as given; training is every other image, minus the excluded ones (or with
their labels replaced: label cleaning), plus any extra data (pseudo-labels), which never reaches a
validation fold.

`label_subset` and `subset_source` are the few-label regime (``finetune --labels-per-class N`` or
``--label-fraction F``): a stratified, seeded subset of the labelled images trains, validation is drawn per class
from the rest; in ``cv`` the subset is drawn inside each fold's training part (`training_source`'s ``keep``).
"""

import csv
import dataclasses
import math
import os

import numpy as np

from kitlib.compat import tf
from kitlib.data import competition, sources, tfrecords
from kitlib.data.competition import CSV_HEADER

FOLDS_FILE = "folds.csv"
# a labelled subset up to this many images is cached once read (encoded bytes: Cassava's ~120 kB each, ~240 MB)
SUBSET_CACHE_LIMIT = 2_000


@dataclasses.dataclass(frozen=True)
class Folds:
    """A fold table: image i (``image_ids[i]``, label ``labels[i]``) validates in fold ``folds[i]``.

    Attributes:
        image_ids: N names, the data's order. labels: int [N]. folds: int [N] in [0, K). k: K.
    """
    image_ids: tuple
    labels: np.ndarray
    folds: np.ndarray
    k: int

    def counts(self, num_classes=None):
        """int [K, C]: images of each class in each fold."""
        num_classes = num_classes or int(self.labels.max()) + 1
        table = np.zeros([self.k, num_classes], np.int64)
        np.add.at(table, (self.folds, self.labels), 1)
        return table

    def fold_ids(self, fold):
        """The image ids validating in `fold`."""
        return [i for i, f in zip(self.image_ids, self.folds) if f == fold]


def read_labels(data_dir):
    """(image ids [N], labels int [N], class names) of a data folder, in its order: from ``train.csv`` when the
    folder has one (fast: no image is read), else from the records (names and labels; images not decoded)."""
    dataset, class_names, kind = sources.labelled_images(data_dir, decode=False)
    paths = competition.split_paths(data_dir, "train")
    if kind == "tfrecords" and os.path.isfile(paths.csv):
        with open(paths.csv, newline="", encoding="utf-8") as f:
            rows = [(r["image_id"], int(r["label"])) for r in csv.DictReader(f)]
    else:
        with tfrecords.explain_errors():
            rows = [(ex["image_name"].numpy().decode(), int(ex["label"]))
                    for ex in dataset.map(lambda ex: {"image_name": ex["image_name"], "label": ex["label"]})]
    if not rows:
        raise tfrecords.DataError(f"{data_dir}: no labelled images")
    ids, labels = zip(*rows)
    if len(set(ids)) != len(ids):
        raise tfrecords.DataError(f"{data_dir}: image ids are not unique, so folds cannot name images")
    return list(ids), np.asarray(labels, np.int64), tuple(class_names)


def assign(image_ids, labels, k, seed=0):
    """Stratified folds: the images of each class shuffled (seeded) and dealt to the folds in turn, the deal
    continuing from class to class so that fold sizes differ by at most one.

    Args:
        image_ids: N names. labels: int [N]. k: K >= 2 folds. seed: the shuffle's seed.
    Returns:
        `Folds`.
    """
    labels = np.asarray(labels, np.int64)
    if k < 2 or k > len(labels):
        raise ValueError(f"folds must be between 2 and the number of images ({len(labels)}), got {k}")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return Folds(tuple(image_ids), labels, folds, int(k))


def save(folds, path):
    """``folds.csv``: image_id,label,fold in the data's order; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER + ("fold",))
        writer.writerows(zip(folds.image_ids, folds.labels.tolist(), folds.folds.tolist()))
    os.replace(tmp, path)
    return path


def load(path):
    """The `Folds` of a ``folds.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(CSV_HEADER) + ["fold"]:
            raise tfrecords.DataError(f"{path}: expected the header image_id,label,fold, got {reader.fieldnames}")
        rows = [(r["image_id"], int(r["label"]), int(r["fold"])) for r in reader]
    ids, labels, folds = zip(*rows)
    folds = np.asarray(folds, np.int64)
    return Folds(tuple(ids), np.asarray(labels, np.int64), folds, int(folds.max()) + 1)


def label_subset(labels, per_class=None, fraction=None, val_fraction=0.0, seed=0):
    """The few-label regime: a stratified, seeded subset of the labelled images to train on, and validation
    drawn per class from the rest.

    Per class c with N_c images (shuffled with `seed`): the first n_c train, n_c = min(per_class, N_c), or
    ceil(fraction N_c) (at least one); the next v_c validate, v_c = min(ceil(n_c f / (1 - f)), N_c - n_c) for
    f = `val_fraction` (so validation is about f of train + validation; f = 0: none).

    Args:
        labels: int [N]. per_class or fraction: exactly one (the other None). val_fraction: f in [0, 1).
    Returns:
        (train, val): int index arrays into `labels`, each in the data's order.
    """
    labels = np.asarray(labels, np.int64)
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = min(per_class, len(members)) if per_class is not None else max(1, math.ceil(fraction * len(members)))
        v = min(math.ceil(n * val_fraction / (1 - val_fraction)), len(members) - n)
        train.append(members[:n])
        val.append(members[n:n + v])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def subset_source(data_dir, train_ids, val_ids, decode=False):
    """The `kitlib.data.sources.TrainingSource` of the images named in `train_ids` and `val_ids` (`label_subset`'s
    choice): both filtered from the data folder's labelled images, the training ones cached once read (a few
    labels of a large set: one pass over the shards, not one per epoch)."""
    dataset, class_names, _ = sources.labelled_images(data_dir, decode=decode)
    train = _only(dataset, train_ids, cache=True)
    val = _only(dataset, val_ids) if len(val_ids) else None
    return sources.TrainingSource(train, val, tuple(class_names), len(train_ids), len(val_ids),
                                  sources.first_image_hw(train), "subset")


def _only(dataset, ids, cache=False):
    """The examples of `dataset` named in `ids`; with `cache`, kept in memory once read when they are few
    (`SUBSET_CACHE_LIMIT`)."""
    table = _lookup(ids, [1] * len(ids), 0)
    kept = dataset.filter(lambda ex: tf.equal(table.lookup(ex["image_name"]), 1))
    return kept.cache() if cache and len(ids) <= SUBSET_CACHE_LIMIT else kept


def read_id_list(path):
    """{image_id: label or None} of a CSV with an ``image_id`` column (``clean-labels``' suspects.csv: the
    OOF label in ``oof_label`` when present)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image_id" not in reader.fieldnames:
            raise tfrecords.DataError(f"{path}: expected a CSV with an image_id column, got {reader.fieldnames}")
        return {r["image_id"]: (int(r["oof_label"]) if r.get("oof_label") not in (None, "") else None)
                for r in reader}


def _lookup(keys, values, default):
    keys = tf.constant(list(keys) or [""], tf.string)
    values = tf.constant(list(values) or [default], tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default)


def adjust_training(train, exclude=None, relabel=False):
    """A training dataset without the images named in `exclude` ({id: OOF label}), or, with `relabel`, with
    their labels replaced by the OOF labels (images not named pass unchanged)."""
    if not exclude:
        return train
    if relabel:
        missing = [i for i, label in exclude.items() if label is None]
        if missing:
            raise ValueError(f"relabel needs an oof_label for every listed image; {missing[0]} has none "
                             "(pass the suspects.csv that clean-labels wrote)")
        table = _lookup(exclude, exclude.values(), -1)

        def swap(ex):
            new = table.lookup(ex["image_name"])
            return dict(ex, label=tf.where(new >= 0, tf.cast(new, tf.int32), ex["label"]))

        return train.map(swap)
    table = _lookup(exclude, [1] * len(exclude), 0)
    return train.filter(lambda ex: tf.equal(table.lookup(ex["image_name"]), 0))


def _extended(train, train_size, class_names, extra_data, decode, seed):
    """(training dataset mixed with `extra_data`'s labelled images in proportion, its size)."""
    extra, extra_names, _ = sources.labelled_images(extra_data, decode=decode)
    if tuple(extra_names) != tuple(class_names):
        raise ValueError(f"{extra_data}: its classes {list(extra_names)} differ from the data's {list(class_names)}")
    extra_size = len(read_labels(extra_data)[0])
    weights = [train_size / (train_size + extra_size), extra_size / (train_size + extra_size)]
    return tf.data.Dataset.sample_from_datasets([train, extra], weights, seed=seed), train_size + extra_size


def adjusted(source, exclude=None, relabel=False, extra_data=None, decode=False, seed=0):
    """`source` (a `kitlib.data.sources.TrainingSource`) with its training split adjusted as `training_source`
    adjusts a fold's (validation unchanged); the training size is counted again when images were left out."""
    if not exclude and extra_data is None:
        return source
    train = adjust_training(source.train, exclude, relabel)
    size = source.train_size
    if exclude and not relabel:
        size = int(train.map(lambda ex: ex["image_name"]).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if extra_data is not None:
        train, size = _extended(train, size, source.class_names, extra_data, decode, seed)
    return dataclasses.replace(source, train=train, train_size=size)


def training_source(data_dir, folds, fold, exclude=None, relabel=False, extra_data=None, decode=False, seed=0,
                    keep=None):
    """The `kitlib.data.sources.TrainingSource` of one fold: validation = the fold's images, training = the
    others (`adjust_training` by `exclude` / `relabel`) plus `extra_data`'s labelled images.

    Args:
        data_dir: the folder the table was made from. folds: `Folds`. fold: its index.
        exclude: {id: OOF label} (`read_id_list`) or None. relabel: relabel instead of leaving out.
        extra_data: a data folder added to training only (``pseudo-label``'s output), or None.
        decode: as in `kitlib.data.sources.load_source`. seed: the mix of the training images and the extras.
        keep: None, or the ids of the training part to train on (the few-label regime: `label_subset` drawn
            inside the fold's training part); validation keeps every image of the fold.
    """
    dataset, class_names, _ = sources.labelled_images(data_dir, decode=decode)
    table = _lookup(folds.image_ids, folds.folds.tolist(), -1)
    in_fold = lambda ex: tf.equal(table.lookup(ex["image_name"]), fold)  # noqa: E731
    val = dataset.filter(in_fold)
    train = dataset.filter(lambda ex: tf.logical_not(in_fold(ex)))
    trained = [i for i, f in zip(folds.image_ids, folds.folds) if f != fold]
    if keep is not None:
        train, trained = _only(train, keep, cache=True), list(keep)
    train = adjust_training(train, exclude, relabel)
    val_size = int(np.sum(folds.folds == fold))
    left_out = 0 if relabel or not exclude else sum(1 for i in trained if i in exclude)
    train_size = len(trained) - left_out
    if extra_data is not None:
        train, train_size = _extended(train, train_size, class_names, extra_data, decode, seed)
    return sources.TrainingSource(train, val, tuple(class_names), train_size, val_size,
                                  sources.first_image_hw(val), "folds")
