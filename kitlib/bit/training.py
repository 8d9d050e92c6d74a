"""Fitting and evaluating the fine-tuned classifier with Keras 3 (``kitlib.bit.finetune`` runs it): compile with the
rule's optimizer, split the rule's steps into validation rounds, ``fit()`` with checkpoint / CSV / TensorBoard
callbacks, then the predictions and the validation report (accuracy, per-class report, confusion matrix).

Batches come from ``kitlib.bit.inputs`` (images [b, S, S, 3] in [0, 1], one-hot labels [b, C], and for padded
evaluation batches weights [b]); under ``keras.distribution.DataParallel`` every batch splits over the devices.
"""

import importlib.util
import math
import os

import numpy as np

from kitlib import checkpoint, hosts, sharding
from kitlib.bit import losses
from kitlib.compat import keras
from kitlib.data import tfrecords
from kitlib.models import precision

_MAX_STEPS_PER_EXECUTION = 32  # TPU: several steps per host round trip


def compile_classifier(model, rule, loss_fn, steps_per_execution=1):
    """Compile with the rule's SGD(momentum 0.9), ``loss_fn`` and weighted accuracy.

    The loss is averaged over the real examples of a batch (``mean_with_sample_weight``: zero-weight
    padding of the last validation batch does not count); accuracy is a weighted metric, so padded
    rows never count either. Returns the model.
    """
    model.compile(optimizer=rule.optimizer(), loss=losses.PerExampleLoss(loss_fn),
                  weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  steps_per_execution=steps_per_execution)
    return model


def evaluation_rounds(total_steps, evaluations=10):
    """(epochs, steps_per_epoch) with epochs * steps_per_epoch == total_steps exactly.

    ``epochs`` is the divisor of total_steps closest to ``evaluations`` (validation runs once per epoch).
    """
    divisors = [d for d in range(1, total_steps + 1) if total_steps % d == 0]
    epochs = min(divisors, key=lambda d: (abs(d - evaluations), -d))
    return epochs, total_steps // epochs


def steps_per_execution_for(kind, steps_per_epoch, wanted=None):
    """Steps per compiled call: ``wanted``, else the largest divisor of steps_per_epoch <= 32 on a TPU
    (fewer host round trips), 1 elsewhere. Always divides steps_per_epoch."""
    limit = wanted or (_MAX_STEPS_PER_EXECUTION if kind == "TPU" else 1)
    return max(d for d in range(1, min(limit, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def state_path(out_dir):
    """Where a fine-tuning run keeps its whole state (`RoundCheckpoint`): ``checkpoints/state.npz``."""
    return os.path.join(out_dir, "checkpoints", "state.npz")


class RoundCheckpoint(keras.callbacks.Callback):
    """After each validation round: the round's row in ``history.csv``, the best weights so far by ``monitor``,
    then the whole state in one atomic ``checkpoints/state.npz`` (`kitlib.checkpoint.save_state`): model and
    optimizer variables (the optimizer's step is the schedule's position), rounds done, the best score and its
    weights. A kill -9 at any moment loses at most the round in progress; `resume` reads it back.

    Args:
        out_dir: the folder to write into (``kitlib.hosts.writer_folder``'s: every process saves, one keeps it).
        monitor: the log to maximise ("val_accuracy", or "accuracy" without validation).
        best, best_weights: what a resumed run had (-inf and None for a new one).
    """

    def __init__(self, out_dir, monitor, best=-math.inf, best_weights=None):
        super().__init__()
        self.out_dir, self.monitor, self.best, self.best_weights = out_dir, monitor, best, best_weights

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get(self.monitor)
        if score is not None and float(score) > self.best:
            self.best, self.best_weights = float(score), [np.asarray(w) for w in self.model.get_weights()]
        checkpoint.append_history(os.path.join(self.out_dir, "history.csv"),
                                  dict({k: float(v) for k, v in logs.items()}, epoch=epoch + 1))
        extra = {"best": self.best, **{f"best_w{i:05d}": w for i, w in enumerate(self.best_weights or [])}}
        checkpoint.save_state(self.model, state_path(self.out_dir), epoch + 1, extra)


def resume(model, out_dir):
    """Load a run's `RoundCheckpoint` state into `model` (compiled as the run compiled it; its optimizer is built
    here) and cut ``history.csv`` back to it. Returns (rounds done, best score, best weights or None); (0, -inf,
    None) when `out_dir` holds no state."""
    path = state_path(out_dir)
    done, extra = 0, {}
    if os.path.isfile(path):
        model.optimizer.build(model.trainable_variables)
        done = checkpoint.restore_state(model, path)
        extra = checkpoint.saved_extra(path)
    if hosts.is_writer():  # rows past the state (a kill between the two writes, or before the first state) go
        checkpoint.truncate_history(os.path.join(out_dir, "history.csv"), done)
    weights = [extra[k] for k in sorted(k for k in extra if k.startswith("best_w"))] or None
    return done, float(extra.get("best", -math.inf)), weights


def training_callbacks(out_dir, monitor="val_accuracy", best=-math.inf, best_weights=None):
    """`RoundCheckpoint` (history.csv, the best weights and the whole state every round) and TensorBoard
    (``tensorboard/``; only when the tensorboard package is installed, as on Kaggle/Colab: TensorFlow >= 2.20 no
    longer pulls it in)."""
    os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
    callbacks = [RoundCheckpoint(out_dir, monitor, best, best_weights)]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"), write_graph=False))
    else:
        print("finetune: tensorboard is not installed, so no TensorBoard logs (pip install tensorboard)")
    return callbacks


def train(model, rule, train_batches, val_batches, out_dir, evaluations=10, verbose=1, restore_best=True,
          validation_steps=None, resumed=(0, -math.inf, None), stop_after_minutes=None):
    """``fit()`` for exactly ``rule.total_steps`` steps (those after a resumed round), checkpointing every round.

    Args:
        model: compiled classifier (``compile_classifier``).
        train_batches: endless (images, one-hot labels) batches of the global batch
            (``kitlib.bit.inputs.train_dataset``).
        val_batches: padded evaluation batches (``kitlib.bit.inputs.eval_dataset(..., pad=True)``) or None.
        out_dir: gets ``checkpoints/state.npz``, ``history.csv`` and ``tensorboard/``.
        evaluations: about how many times to validate during the run.
        restore_best: end with the best-validation weights (else keep the last).
        validation_steps: batches in ``val_batches`` when known (Keras then needs not run into its end).
        resumed: `resume`'s (rounds done, best score, best weights): `train_batches` must then start at the
            first batch after those rounds (``kitlib.bit.inputs.train_dataset(..., skip_batches=...)``).
        stop_after_minutes: end at the first round boundary from which the next round would end past this many
            minutes of the process (`kitlib.checkpoint.StopInTime`); None: no limit.
    Returns:
        (the Keras ``History`` of the rounds this call ran, the rounds done when it stopped early or None).
    """
    epochs, steps_per_epoch = evaluation_rounds(rule.total_steps, evaluations)
    done, best, best_weights = resumed
    # several processes: each checkpoints (saving is a collective), process 0 into out_dir (made by the callbacks)
    with hosts.writer_folder(out_dir) as own_dir:
        callbacks = training_callbacks(own_dir, "val_accuracy" if val_batches is not None else "accuracy", best,
                                       best_weights)
        stop = None if stop_after_minutes is None else checkpoint.StopInTime(stop_after_minutes)
        callbacks += [stop] if stop is not None else []
        with tfrecords.explain_errors():
            history = model.fit(train_batches, epochs=epochs, initial_epoch=done, steps_per_epoch=steps_per_epoch,
                                validation_data=val_batches, validation_steps=validation_steps, callbacks=callbacks,
                                verbose=verbose, shuffle=False)  # tf.data shuffles; Keras 3.15 warns otherwise
        stopped = None if stop is None else stop.stopped_after
        if restore_best and callbacks[0].best_weights is not None and stopped is None:
            model.set_weights(callbacks[0].best_weights)
    return history, stopped


def predict_batches(model, batches):
    """Logits and labels of labelled batches, padding dropped.

    Args:
        model: classifier, images [b, S, S, 3] -> logits [b, C].
        batches: (images, one-hot labels [b, C]) or padded (images, labels, weights [b]) batches;
            under a distribution each batch must split over the devices (``eval_dataset(pad=True)``).
    Returns:
        (logits float32 [N, C], labels int [N]) numpy, over the real examples only.
    """
    logits, labels = [], []
    with tfrecords.explain_errors():
        for batch in batches:
            images, onehot = np.asarray(batch[0]), np.asarray(batch[1])
            keep = np.asarray(batch[2]) > 0 if len(batch) > 2 else np.ones(len(images), bool)
            out = sharding.predict_padded(model, images, sharding.rows_per_pass(len(images)))
            logits.append(out[keep])
            labels.append(np.argmax(onehot[keep], axis=-1))
    return np.concatenate(logits), np.concatenate(labels)


def report(model, batches, class_names):
    """The validation report: accuracy, per-class report and confusion matrix (scikit-learn) on labelled batches.

    Args:
        batches: see ``predict_batches``.
        class_names: C names.
    Returns:
        dict: "accuracy" (float), "report" (str), "per_class" (sklearn dict), "confusion_matrix"
        (int [C, C], rows = true class), "y_true", "y_pred" (int [N]).
    """
    from sklearn.metrics import (accuracy_score, classification_report,
                                 confusion_matrix)

    logits, y_true = predict_batches(model, batches)
    y_pred = np.argmax(logits, axis=-1)
    labels = list(range(len(class_names)))
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "report": classification_report(y_true, y_pred, digits=3, **kwargs),
        "per_class": classification_report(y_true, y_pred, output_dict=True, **kwargs),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels),
        "y_true": y_true, "y_pred": y_pred,
    }


def build_classifier(backbone, num_classes, image_size, name="bit_classifier"):
    """images float32 [N, S, S, 3] in [0, 1] -> float32 logits [N, C]: backbone + zero-initialised head (BiT).

    Build it after ``runtime.setup()``: the variables are then laid out for the distribution in force
    (replicated under ``DataParallel``) and the layers follow its dtype policy. A backbone saved in
    float32 (``.keras``) is rebuilt in the global policy (bfloat16 compute on TPU); the head always
    computes and returns float32 logits.

    Args:
        backbone: a Keras model (``kitlib.models.backbones``) or a source for ``backbones.load``
            (.keras / .npz / SavedModel folder / handle). All its weights train.
        num_classes: C.
        image_size: S, the rule's crop size.
    Returns:
        keras.Model whose layers are [input, backbone, "head"].
    """
    if isinstance(backbone, (str, os.PathLike)):
        from kitlib.models import backbones  # noqa: PLC0415

        backbone = backbones.load(os.fspath(backbone))
    if keras.config.dtype_policy().name != "float32" and precision.dtype_policies(backbone) == {"float32"}:
        backbone = precision.with_dtype_policy(backbone)
    backbone.trainable = True
    inputs = keras.Input([image_size, image_size, 3], dtype="float32", name="images")
    features = backbone(inputs)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                                dtype="float32", name="head")(features)
    return keras.Model(inputs, logits, name=name)
