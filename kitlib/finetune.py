"""Fine-tune a BiT / SwAV backbone with the BiT-HyperRule: ``python -m kitlib finetune``.

One run: read the data (Cassava TFRecords, JPEG folder + CSV, one folder per class, or a tfds
name), split off validation, derive the ``HyperRule`` from the TRAINING size, build backbone + zero
head under the strategy, ``fit()`` for exactly the rule's steps (ModelCheckpoint on the best
validation accuracy, CSVLogger, TensorBoard), evaluate (accuracy, per-class report, confusion
matrix) and export with ``kitlib.export.save_classifier``:

    out_dir/saved_model/, classifier.json   the classifier (class names + image size)
    out_dir/finetune.json                   the run's settings, rule and validation metrics
    out_dir/history.csv, tensorboard/, checkpoints/
"""

import dataclasses
import importlib.util
import json
import math
import os
import sys

import numpy as np
import tensorflow as tf

from kitlib import bit, data, export, losses
from kitlib.compat import keras

TFDS_PREFIX = "tfds:"
_MAX_STEPS_PER_EXECUTION = 32  # TPU: run several steps per host round trip


# ============ data sources ============


@dataclasses.dataclass
class Source:
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


def _cassava_class_names(data_dir):
    path = os.path.join(data_dir, "label_num_to_disease_map.json")
    return data.read_label_map(path) if os.path.isfile(path) else data.CLASS_NAMES


def load_source(source, val_fraction=0.2, seed=0, tfds_data_dir=None, decode=False):
    """Open a data source and split it into train / validation.

    Args:
        source: a folder with ``train_tfrecords/`` (Cassava shards, split at file level), a folder with
            ``train.csv`` + ``train_images/``, a folder with one sub-folder per class, or
            ``"tfds:NAME"`` (prepared offline in ``tfds_data_dir``).
        val_fraction: share held out for validation, in [0, 1).
        seed: seed of the file-level split (TFRecords).
        decode: False keeps images as encoded bytes (decoded later by ``bit.train_dataset`` /
            ``bit.eval_dataset``, after shuffling); tfds datasets are always decoded.
    Returns:
        a ``Source``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = os.fspath(source)
    if source.startswith(TFDS_PREFIX):
        dataset, class_names = data.load_tfds(source[len(TFDS_PREFIX):], data_dir=tfds_data_dir)
        kind = "tfds"
    elif tf.io.gfile.isdir(os.path.join(source, "train_tfrecords")):  # local or gs:// (remote TPU)
        files = data.list_tfrecords(source, "train")
        train_files, val_files = data.split_files(files, val_fraction, seed) if val_fraction else (files, [])
        train = data.load_dataset(train_files, decode=decode)
        val = data.load_dataset(val_files, ordered=True, decode=decode) if val_files else None
        return Source(train, val, _cassava_class_names(source), data.count_data_items(train_files),
                      data.count_data_items(val_files), _first_image_hw(train), "tfrecords")
    elif os.path.isfile(os.path.join(source, "train.csv")) and os.path.isdir(os.path.join(source, "train_images")):
        class_names = _cassava_class_names(source)
        dataset = data.load_jpeg_csv(os.path.join(source, "train_images"), os.path.join(source, "train.csv"),
                                     num_classes=len(class_names), decode=decode)
        kind = "jpeg_csv"
    elif os.path.isdir(source):
        dataset, class_names = data.load_image_folder(source, decode=decode)
        kind = "image_folder"
    else:
        raise data.DataError(f"{source}: no such folder. Pass a folder with train_tfrecords/, or train.csv + "
                             "train_images/, or one sub-folder per class, or tfds:NAME")
    if not class_names:
        raise data.DataError(f"{source}: the dataset does not name its classes; use a labelled source")
    total = _count(dataset)
    val_size = math.floor(total * val_fraction)  # what _split_examples selects, without reading the images
    train, val = _split_examples(dataset, val_fraction) if val_fraction else (dataset, None)
    return Source(train, val, tuple(class_names), total - val_size, val_size, _first_image_hw(train), kind)


def _first_image_hw(dataset):
    """(h, w) of the first image: what ``get_resolution`` decides on (Cassava: 600 x 800)."""
    with data.explain_errors():
        for example in dataset.take(1):
            image = example["image"]
            image = data.decode_image(image) if image.dtype == tf.string else image
            return tuple(int(v) for v in image.shape[:2])
    raise data.DataError("the training split is empty; lower val_fraction or add data")


# ============ model, training, evaluation ============


def build_model(backbone, num_classes, rule, loss_fn, strategy=None, steps_per_execution=1):
    """Backbone + zero head, compiled with the rule's SGD, all inside ``strategy.scope()``.

    Args:
        backbone: handle or local directory (see ``bit.load_backbone``).
        num_classes: C.
        rule: a ``bit.HyperRule`` (crop size, lr schedule).
        loss_fn: ``fn(y_true [B, C], logits [B, C]) -> [B]`` (``kitlib.losses.make_loss``).
        strategy: a ``tf.distribute.Strategy`` (default: the current one).
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = bit.build_classifier(bit.load_backbone(backbone), num_classes, rule.crop)
        model.compile(optimizer=rule.optimizer(), loss=loss_fn,
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                      steps_per_execution=steps_per_execution)
    return model


def evaluation_rounds(total_steps, evaluations=10):
    """(epochs, steps_per_epoch) with epochs * steps_per_epoch == total_steps exactly.

    ``epochs`` is the divisor of total_steps closest to ``evaluations`` (validation runs once per epoch).
    """
    divisors = [d for d in range(1, total_steps + 1) if total_steps % d == 0]
    epochs = min(divisors, key=lambda d: (abs(d - evaluations), -d))
    return epochs, total_steps // epochs


def training_callbacks(out_dir, monitor="val_accuracy"):
    """ModelCheckpoint (best ``monitor``, weights to ``out_dir/checkpoints/best``), CSVLogger
    (``history.csv``) and TensorBoard (``tensorboard/``; only when the tensorboard package is installed,
    as on Kaggle/Colab: TensorFlow >= 2.20 no longer pulls it in)."""
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "checkpoints", "best"), monitor=monitor,
                                        mode="max", save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "history.csv")),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"), profile_batch=0))
    else:
        print("finetune: tensorboard is not installed, so no TensorBoard logs (pip install tensorboard)")
    return callbacks


def train(model, rule, train_batches, val_batches, out_dir, evaluations=10, verbose=1, restore_best=True):
    """``fit()`` for exactly ``rule.total_steps`` steps with checkpoint / CSV / TensorBoard callbacks.

    Args:
        model: compiled classifier (``build_model``).
        train_batches: endless (images, one-hot labels) batches (``bit.train_dataset``).
        val_batches: evaluation batches (``bit.eval_dataset``) or None.
        out_dir: gets ``checkpoints/best``, ``history.csv`` and ``tensorboard/``.
        evaluations: about how many times to validate during the run.
        restore_best: load the best-validation weights at the end (else keep the last).
    Returns:
        the Keras ``History``.
    """
    os.makedirs(out_dir, exist_ok=True)
    epochs, steps_per_epoch = evaluation_rounds(rule.total_steps, evaluations)
    best = os.path.join(out_dir, "checkpoints", "best")
    callbacks = training_callbacks(out_dir, "val_accuracy" if val_batches is not None else "accuracy")
    with data.explain_errors():
        history = model.fit(train_batches, epochs=epochs, steps_per_epoch=steps_per_epoch,
                            validation_data=val_batches, callbacks=callbacks, verbose=verbose)
    if restore_best and tf.io.gfile.exists(best + ".index"):
        model.load_weights(best)
    return history


def evaluate(model, batches, class_names):
    """Accuracy, per-class report and confusion matrix (scikit-learn) on labelled batches.

    Args:
        batches: (images, one-hot labels [b, C]) batches.
        class_names: C names.
    Returns:
        dict: "accuracy" (float), "report" (str), "per_class" (sklearn dict), "confusion_matrix"
        (int [C, C], rows = true class), "y_true", "y_pred" (int [N]).
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    true, pred = [], []
    with data.explain_errors():
        for images, labels in batches:
            true.append(np.argmax(labels, axis=-1))
            pred.append(np.argmax(model(images, training=False), axis=-1))
    y_true, y_pred = np.concatenate(true), np.concatenate(pred)
    labels = list(range(len(class_names)))
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "report": classification_report(y_true, y_pred, digits=3, **kwargs),
        "per_class": classification_report(y_true, y_pred, output_dict=True, **kwargs),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels),
        "y_true": y_true, "y_pred": y_pred,
    }


# ============ the whole run ============


@dataclasses.dataclass
class FinetuneResult:
    model: object
    rule: bit.HyperRule
    source: Source
    history: object
    evaluation: dict  # None without a validation split
    out_dir: str


def finetune(data_source, backbone, out_dir, batch_size=512, steps=None, loss="ce", label_smoothing=0.0,
             t1=losses.T1_CASSAVA, t2=losses.T2_CASSAVA, val_fraction=0.2, base_lr=bit.BASE_LR,
             resolution=None, evaluations=10, seed=0, strategy=None, tfds_data_dir=None, verbose=1):
    """Fine-tune ``backbone`` on ``data_source`` with the BiT-HyperRule and export the classifier.

    Args:
        data_source: see ``load_source``.
        backbone: TF Hub / Kaggle Models handle or local SavedModel directory (``bit.load_backbone``).
        out_dir: where the classifier and the run's records go.
        batch_size: global batch B (the rule scales steps by 512/B and the lr by B/512).
        steps: override the rule's number of steps (phases keep their fractions).
        loss: "ce" or "bitempered"; label_smoothing, t1, t2 as in ``kitlib.losses``.
        val_fraction: held-out share for validation and the best checkpoint.
        base_lr: lr at batch 512.
        resolution: optional (resize, crop) instead of ``get_resolution`` (e.g. a CPU smoke run).
        strategy: ``tf.distribute.Strategy`` (default: the current one).
    Returns:
        a ``FinetuneResult``.
    """
    loss_fn = losses.make_loss(loss, label_smoothing, t1, t2)  # validate before any data is read
    backbone_path = bit.resolve_backbone(backbone)  # an unreachable handle fails here, in seconds
    source = load_source(data_source, val_fraction, seed, tfds_data_dir)
    rule = bit.HyperRule(source.image_hw, source.train_size, batch_size, base_lr, steps, resolution)
    settings = {"data": os.fspath(data_source), "backbone": os.fspath(backbone), "loss": loss,
                "label_smoothing": label_smoothing, "t1": t1, "t2": t2, "val_fraction": val_fraction,
                "seed": seed, "source": source.kind, "train_size": source.train_size,
                "val_size": source.val_size, "rule": rule.as_dict()}
    if verbose:
        print("finetune settings:\n" + json.dumps(settings, indent=1))
    strategy = strategy or tf.distribute.get_strategy()
    steps_per_execution = 1
    if isinstance(strategy, tf.distribute.TPUStrategy):
        steps_per_execution = min(_MAX_STEPS_PER_EXECUTION, evaluation_rounds(rule.total_steps, evaluations)[1])
    num_classes = len(source.class_names)
    model = build_model(backbone_path, num_classes, rule, loss_fn, strategy, steps_per_execution)
    train_batches = bit.train_dataset(source.train, rule, num_classes, seed=seed)
    val_batches = (bit.eval_dataset(source.val, rule.crop, rule.batch_size, num_classes)
                   if source.val is not None else None)
    history = train(model, rule, train_batches, val_batches, out_dir, evaluations, verbose)
    evaluation = evaluate(model, val_batches, source.class_names) if val_batches is not None else None
    export.save_classifier(model, out_dir, source.class_names, rule.crop)
    record = dict(settings, history={k: [float(v) for v in vs] for k, vs in history.history.items()})
    if evaluation is not None:
        record["val_accuracy"] = evaluation["accuracy"]
        record["confusion_matrix"] = evaluation["confusion_matrix"].tolist()
        if verbose:
            print(f"validation accuracy {evaluation['accuracy']:.4f}\n{evaluation['report']}")
    with open(os.path.join(out_dir, "finetune.json"), "w") as f:
        json.dump(record, f, indent=1)
    return FinetuneResult(model, rule, source, history, evaluation, os.fspath(out_dir))


# ============ CLI ============


def add_arguments(parser):
    parser.add_argument("--data", required=True,
                        help="folder with train_tfrecords/, or train.csv + train_images/, or one sub-folder "
                             "per class; or tfds:NAME")
    parser.add_argument("--backbone", required=True,
                        help="local SavedModel folder (e.g. /kaggle/input/bit/tensorflow2/m-r50x1/1 or the "
                             "SwAV export), https://tfhub.dev/google/bit/m-r50x1/1, or google/bit/tensorFlow2/m-r50x1")
    parser.add_argument("--out", required=True, help="output folder (classifier, history, checkpoints)")
    parser.add_argument("--batch-size", type=int, default=512, help="global batch (BiT: 512; steps scale by 512/B)")
    parser.add_argument("--steps", type=int, default=None, help="override the rule's number of steps")
    parser.add_argument("--loss", choices=losses.LOSSES, default="ce",
                        help="ce, or bitempered for noisy labels (Amid et al. 2019)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="epsilon in [0, 1)")
    parser.add_argument("--t1", type=float, default=losses.T1_CASSAVA, help="bi-tempered t1 (bounded loss)")
    parser.add_argument("--t2", type=float, default=losses.T2_CASSAVA, help="bi-tempered t2 (heavy tail)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation, in [0, 1)")
    parser.add_argument("--base-lr", type=float, default=bit.BASE_LR, help="lr at batch 512 (BiT: 0.003)")
    parser.add_argument("--resolution", type=int, nargs=2, metavar=("RESIZE", "CROP"), default=None,
                        help="override the rule's (resize, crop), e.g. 160 128 for a CPU smoke run")
    parser.add_argument("--evaluations", type=int, default=10, help="validation rounds during the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tfds-data-dir", default=None, help="where a tfds:NAME dataset is prepared")


def run(args):
    from kitlib import runtime

    try:
        result = finetune(args.data, args.backbone, args.out, batch_size=args.batch_size, steps=args.steps,
                          loss=args.loss, label_smoothing=args.label_smoothing, t1=args.t1, t2=args.t2,
                          val_fraction=args.val_fraction, base_lr=args.base_lr, resolution=args.resolution,
                          evaluations=args.evaluations, seed=args.seed, strategy=runtime.get_strategy(),
                          tfds_data_dir=args.tfds_data_dir)
    except ValueError as err:  # DataError, an unreachable backbone, bad options: the message says what to do
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    print(f"saved the classifier ({len(result.source.class_names)} classes, {result.rule.crop}px) to {result.out_dir}")
    return 0
