"""Predict the test images with test-time augmentation (TTA) and write ``submission.csv``, offline.

Cassava was a code competition: with the internet off, a notebook reads ``test_images/*.jpg``, runs
the fine-tuned classifier (``kitlib.bit.export``: a local ``classifier.keras`` plus ``classifier.json``, run
by Keras 3 on JAX; TensorFlow only decodes and resizes the images) and writes
``submission.csv`` with the header ``image_id,label``. Top solutions averaged the class
probabilities of several views of each image (flips and crops); ``predict`` does the same.

The views (flips, crops) are `kitlib.bit.tta`'s; each is cut from a batch of resized images just before its
forward pass of ``batch_size`` images, and TTA averages PROBABILITIES over the views (not logits). The
``predict`` command that drives this is `kitlib.bit.predict`.
"""

import collections
import csv
import dataclasses
import os
import time

import numpy as np

from kitlib.bit import export
from kitlib.bit.tta import DEFAULT_TTA, RESIZE_PER_CROP, cut_view, parse_tta, resize_for_views
from kitlib.data import competition, sources, tfrecords

HEADER = competition.CSV_HEADER
DEFAULT_BATCH_SIZE = 32  # images per forward pass; every view of a batch is a further pass
_PREFETCH_BATCHES = 2  # resized batches ready ahead of the model (32 x 480 px: ~90 MB; ~190 MB with crops)
_PROGRESS_INTERVAL_S = 2.0  # progress bar refresh; piped to a log, each refresh is one line
_SHOWN = 5  # examples quoted in an error message


# ============ prediction ============


def _as_classifier(model):
    return export.load_classifier(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model


def predict(model, source, tta=DEFAULT_TTA, batch_size=DEFAULT_BATCH_SIZE, kind="auto",
            resize_per_crop=RESIZE_PER_CROP, verbose=0, timing=None):
    """Class probabilities of every test image, averaged over the TTA views.

    Args:
        model: a folder written by ``export.save_classifier`` (loaded from the local path), or a
            loaded ``export.Classifier`` (anything with ``predict_proba``, ``image_size``).
        source: see ``sources.open_test_source`` (data dir, image folder, shards, glob, list or dataset).
        tta: "none" | "flip" | "crops" | "flip+crops", "identity,hflip", or a list of ``kitlib.bit.tta.VIEWS``.
        batch_size: images per forward pass.
        kind: "auto" | "images" | "tfrecords" (see ``sources.open_test_source``).
        resize_per_crop: R / S for the crop views.
        verbose: 1 shows a progress bar.
        timing: a list to append (images, seconds) to for every batch (all its views), or None.
    Returns:
        (image_ids: list of N str, probs: float32 [N, C], rows sum to 1): the mean over views of the
        model's probabilities, in the source's order.
    """
    from kitlib.compat import keras

    classifier = _as_classifier(model)
    views, size = parse_tta(tta), int(classifier.image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    src = sources.open_test_source(source, kind)
    if "image_name" not in src.dataset.element_spec:
        raise tfrecords.DataError(f"{src.where}: records have no 'image_name', so no submission row can name them; "
                             "write the test shards with image names (kitlib.data.writing.write_tfrecords)")

    def resize(example):
        return (example["image_name"],) + resize_for_views(example["image"], views, size, resize_per_crop)

    batches = (src.dataset.map(resize, num_parallel_calls=tfrecords.AUTOTUNE)  # deterministic: order kept
               .batch(batch_size).prefetch(_PREFETCH_BATCHES))
    progress = (keras.utils.Progbar(src.count, interval=_PROGRESS_INTERVAL_S, unit_name="image")
                if verbose else None)
    ids, parts = [], []
    with tfrecords.explain_errors():
        for names, full, zoomed in batches:
            start = time.perf_counter()
            # p(c | x) = (1/V) sum_v p(c | view_v(x)): each view is cut just before its forward pass
            probs = [classifier.predict_proba(cut_view(full, zoomed, view, size), batch_size=batch_size)
                     for view in views]
            if timing is not None:
                timing.append((len(names), time.perf_counter() - start))
            parts.append(np.mean(np.asarray(probs, np.float32), axis=0))
            ids += [n.decode() for n in names.numpy()]
            if progress is not None:
                progress.add(len(names))
    num_classes = len(classifier.class_names)
    return ids, (np.concatenate(parts) if parts else np.zeros([0, num_classes], np.float32))


# ============ submission.csv ============


def _examples(items):
    items = sorted(items)
    return ", ".join(map(str, items[:_SHOWN])) + (f" ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def read_sample_ids(path):
    """The image ids of ``sample_submission.csv``, in its row order."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image_id" not in reader.fieldnames:
            raise tfrecords.DataError(f"{path}: expected a header 'image_id,label', got {reader.fieldnames}")
        return [row["image_id"] for row in reader]


def _as_label(value, image_id, num_classes):
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_integer and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value, is_integer = int(value), True
    if not is_integer or not 0 <= value < num_classes:
        raise ValueError(f"image {image_id}: label {value!r} is not a class index 0..{num_classes - 1}; "
                         "write argmax(probs) of a model with these classes")
    return int(value)


def check_submission(image_ids, labels, num_classes=tfrecords.NUM_CLASSES, sample_ids=None):
    """Validate rows; returns them as (ids, labels), in ``sample_ids`` order when given.

    Refuses (ValueError): a length mismatch, an empty id, a duplicate id, a label that is not an
    integer in [0, num_classes), and with ``sample_ids`` a missing or an unknown image id.
    """
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in image_ids]
    labels = list(labels)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} image ids but {len(labels)} labels; pass one label per image")
    if not ids:
        raise ValueError("no rows: predict over the test images first")
    if any(not i.strip() or "," in i or "\n" in i for i in ids):
        raise ValueError("an image id is empty or holds ',' or a newline; ids are file names like 1000015157.jpg")
    duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
    if duplicates:
        raise ValueError(f"duplicate image ids: {_examples(duplicates)}; each test image gets one row")
    by_id = {i: _as_label(label, i, num_classes) for i, label in zip(ids, labels)}
    if sample_ids is None:
        return ids, [by_id[i] for i in ids]
    missing, unknown = set(sample_ids) - set(by_id), set(by_id) - set(sample_ids)
    if missing or unknown:
        raise ValueError(f"the ids do not match sample_submission.csv: {len(missing)} missing "
                         f"({_examples(missing) or '-'}), {len(unknown)} unknown ({_examples(unknown) or '-'}); "
                         "predict over the whole test set of the same data dir (its test_images/)")
    return list(sample_ids), [by_id[i] for i in sample_ids]


def write_submission(image_ids, labels, path, sample_submission=None, num_classes=tfrecords.NUM_CLASSES):
    """Write ``path`` with the header ``image_id,label`` and one row per image; nothing on error.

    Args:
        image_ids: N ids (str or bytes), e.g. "1000015157.jpg".
        labels: N ints in [0, num_classes).
        path: the CSV to write (its folder is created).
        sample_submission: optional path of ``sample_submission.csv``: the ids must be exactly its
            ids, and rows follow its order.
        num_classes: C.
    Returns:
        path. Raises ``ValueError`` (see ``check_submission``) before anything is written; the file
        appears complete or not at all (written to a temporary file, then renamed).
    """
    sample_ids = read_sample_ids(sample_submission) if sample_submission is not None else None
    ids, labels = check_submission(image_ids, labels, num_classes, sample_ids)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")  # same folder: rename is atomic
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(zip(ids, labels))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def validate_submission(path, sample_submission=None, num_classes=tfrecords.NUM_CLASSES):
    """Read a written ``submission.csv`` back and check it as ``write_submission`` does; returns (ids, labels)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValueError(f"{path}: the header must be 'image_id,label', got {','.join(rows[0]) if rows else 'nothing'}")
    bad = [n for n, row in enumerate(rows[1:], start=2) if len(row) != 2]
    if bad:
        raise ValueError(f"{path}, line {bad[0]}: expected 2 columns 'image_id,label'")
    sample_ids = read_sample_ids(sample_submission) if sample_submission is not None else None
    ids, labels = check_submission([r[0] for r in rows[1:]], [r[1] for r in rows[1:]], num_classes, sample_ids)
    if sample_ids is not None and [r[0] for r in rows[1:]] != ids:
        raise ValueError(f"{path}: rows are not in sample_submission.csv order")
    return ids, labels


def class_histogram(labels, class_names):
    """A printable table: per class its label, name, count and share of the predictions."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    return "\n".join(f"{c:>3} {name:<40} {n:>7} {100 * n / total:6.1f}%"
                     for c, (name, n) in enumerate(zip(class_names, counts)))


def check_class_names(class_names, data_dir):
    """Refuse a model whose class order differs from the data dir's label map (labels would be wrong)."""
    path = competition.data_file(data_dir, competition.LABEL_MAP_FILE)
    if path is not None and tuple(tfrecords.read_label_map(path)) != tuple(class_names):
        raise ValueError(f"the model's classes {list(class_names)} differ from {path} "
                         f"{list(tfrecords.read_label_map(path))}: its labels would mean other diseases; "
                         "use a model fine-tuned on this data (or pass check_labels=False)")


# ============ the whole job ============


@dataclasses.dataclass
class Prediction:
    image_ids: list  # N str, in the rows' order
    probs: np.ndarray  # float32 [N, C], mean over the TTA views
    labels: np.ndarray  # int [N], argmax of probs
    class_names: tuple
    views: tuple
    path: str  # the submission written
    seconds: float  # wall time of the prediction

    def probs_for(self, image_ids):
        """Rows of ``probs`` for the given ids, [n, C] (e.g. the images ``sources.load_test_images`` returned)."""
        row = {i: n for n, i in enumerate(self.image_ids)}
        return self.probs[[row[i] for i in image_ids]]


def predict_and_write(model_dir, data_dir, out_csv, tta=DEFAULT_TTA, kind="auto", batch_size=DEFAULT_BATCH_SIZE,
                      sample_submission="auto", check_labels=True, verbose=1):
    """Load the classifier, predict ``data_dir``'s test images with TTA and write ``out_csv``.

    Args:
        model_dir: folder from ``export.save_classifier`` (local path), or a loaded ``export.Classifier``.
        data_dir: the competition layout (or any source ``sources.open_test_source`` takes).
        out_csv: where ``submission.csv`` goes.
        tta, kind, batch_size: as in ``predict``.
        sample_submission: path, None, or "auto" (``data_dir/sample_submission.csv`` when present):
            the ids must match it and rows follow its order.
        check_labels: refuse a model whose class names differ from ``data_dir``'s label map.
        verbose: progress bar and class histogram.
    Returns:
        ``Prediction``; rows are in ``out_csv`` order (sample order when checked against it).
    """
    classifier = _as_classifier(model_dir)
    if check_labels:
        check_class_names(classifier.class_names, data_dir)
    if sample_submission == "auto":
        sample_submission = competition.data_file(data_dir, competition.SAMPLE_SUBMISSION_FILE)
    views = parse_tta(tta)
    start = time.perf_counter()
    ids, probs = predict(classifier, data_dir, views, batch_size, kind, verbose=verbose)
    return write_checked(ids, probs, out_csv, sample_submission, classifier.class_names, views,
                         time.perf_counter() - start, verbose)


def write_checked(ids, probs, out_csv, sample_submission, class_names, views, seconds, verbose=1):
    """Write the argmax of `probs` [N, C] as ``out_csv``, validated (against `sample_submission` when given),
    and say what was written. Returns the `Prediction`, rows in ``out_csv`` order."""
    num_classes = len(class_names)
    write_submission(ids, probs.argmax(axis=1), out_csv, sample_submission, num_classes)
    order = {i: n for n, i in enumerate(ids)}
    rows, labels = validate_submission(out_csv, sample_submission, num_classes)
    probs = probs[[order[i] for i in rows]]
    if verbose:
        print(f"predicted {len(rows)} images x {len(views)} view(s) ({', '.join(views)}) in {seconds:.1f} s "
              f"({len(rows) / max(seconds, 1e-9):.1f} images/s)\n{class_histogram(labels, class_names)}\n"
              f"wrote {out_csv}" + (f" (ids and order of {sample_submission})" if sample_submission else ""))
    return Prediction(rows, probs, np.asarray(labels), tuple(class_names), views, os.fspath(out_csv), seconds)
