"""SwAV pretraining end to end: learning on the sample, resume after kill -9, export, CLI, monitors."""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kitlib import data, evaluate, pretrain
from kitlib.compat import keras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run small enough for CPU CI that still learns: crops only (on 100 images and ~120 steps the full
# SwAV colour augmentation leaves the loss at ln K), crops large enough to hold leaf texture, and
# K = 10 x the 5 classes (swav.suggest_num_prototypes).
LEARNING_RUN = dict(epochs=40, batch_size=32, backbone="small_cnn", prototypes=50, hidden_dim=512,
                    output_dim=128, crops="2x64@0.3-1,2x32@0.1-0.3", augmentation="none", base_lr=10.0,
                    warmup_epochs=0, seed=0, verbose=0)


@pytest.mark.slow
def test_short_pretraining_on_the_sample_learns_and_exports(sample_dir, tmp_path):
    result = pretrain.pretrain(sample_dir, str(tmp_path), **LEARNING_RUN)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 40 and result.ln_k == pytest.approx(math.log(50))
    assert losses[-1] < 0.85 * result.ln_k and not result.collapsed  # clearly below the floor

    labelled = data.load_dataset(data.list_tfrecords(sample_dir), ordered=True)
    random_init = pretrain.random_init_backbone("small_cnn", seed=0)
    x0, y = evaluate.extract_features(random_init, labelled, image_size=64)
    x1, _ = evaluate.extract_features(result.backbone, labelled, image_size=64)
    knn_random, knn_swav = evaluate.knn_accuracy(x0, y), evaluate.knn_accuracy(x1, y)
    assert knn_swav > knn_random + 0.05, (knn_random, knn_swav)

    # the exported backbone is the trained one, trainable through hub.KerasLayer
    loaded = pretrain.load_backbone(result.backbone_dir, trainable=True)
    assert len(loaded.trainable_weights) == len(result.backbone.trainable_weights)
    images = tf.random.uniform([3, 64, 64, 3])
    np.testing.assert_allclose(loaded(images).numpy(), result.backbone(images, training=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    rows = pretrain.read_history(os.path.join(tmp_path, "history.csv"))
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    assert {"loss", "ln_k", "usage_entropy", "lr"} <= set(rows[0])


def test_random_init_backbone_is_the_seeded_start_of_pretraining():
    a = pretrain.random_init_backbone("small_cnn", seed=3)
    b = pretrain.random_init_backbone("small_cnn", seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


TINY_RUN = ["--epochs", "8", "--batch-size", "8", "--backbone", "small_cnn", "--prototypes", "10",
            "--hidden-dim", "16", "--output-dim", "8", "--crops", "2x32@0.3-1,2x16@0.1-0.3",
            "--augmentation", "none", "--max-steps-per-epoch", "2", "--queue-length", "16",
            "--queue-start-epoch", "0", "--seed", "1", "--verbose", "0"]


@pytest.mark.slow
def test_rerun_after_kill_9_resumes_step_count_queue_and_history(sample_dir, tmp_path):
    out = str(tmp_path / "run")
    argv = ["--data", sample_dir, "--out", out] + TINY_RUN
    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "kitlib", "pretrain"] + argv, cwd=REPO, stdout=log, stderr=log)
    state = os.path.join(out, "checkpoints", "checkpoint")
    deadline = time.time() + 90
    while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # kill -9 as soon as the first epoch is saved
    proc.wait()
    log.close()
    saved = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert saved is not None, (tmp_path / "first_run.log").read_text()[-2000:]
    done_before = int(saved.rsplit("-", 1)[1])
    assert 1 <= done_before < 8, "the run finished before it could be killed"

    parser = argparse.ArgumentParser()
    pretrain.add_arguments(parser)
    args = parser.parse_args(argv)
    reader = tf.train.load_checkpoint(saved)
    queue_key = [k for k in reader.get_variable_to_shape_map() if "queue" in k and "OPTIMIZER" not in k][0]
    queue_before = reader.get_tensor(queue_key)
    assert np.abs(queue_before).max() > 0  # the queue was being filled when the run was killed

    def rerun(epochs):
        return pretrain.pretrain(args.data, args.out, epochs=epochs, batch_size=args.batch_size,
                                 backbone=args.backbone, prototypes=args.prototypes, crops=args.crops,
                                 augmentation=args.augmentation, hidden_dim=args.hidden_dim,
                                 output_dim=args.output_dim, max_steps_per_epoch=args.max_steps_per_epoch,
                                 queue_length=args.queue_length, queue_start_epoch=args.queue_start_epoch,
                                 seed=args.seed, verbose=0)

    restored = rerun(epochs=done_before)  # nothing left to train: just what the checkpoint holds
    assert int(restored.model.optimizer.iterations.numpy()) == done_before * 2
    np.testing.assert_array_equal(restored.model.queue.numpy(), queue_before)

    result = rerun(epochs=args.epochs)  # the same command again
    assert int(result.model.optimizer.iterations.numpy()) == 8 * 2  # continued, not restarted
    assert [r["epoch"] for r in result.history] == list(range(1, 9))  # each epoch once
    assert os.path.isdir(os.path.join(out, "backbone"))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["prototypes"] == 10

    # a rerun whose shapes differ is refused with a way out
    with pytest.raises(ValueError, match="prototypes"):
        pretrain.pretrain(sample_dir, out, **{**dict(epochs=8, batch_size=8, backbone="small_cnn",
                                                     hidden_dim=16, output_dim=8, queue_length=16),
                                              "prototypes": 20})


def test_export_of_a_mixed_precision_backbone_is_float32_and_trainable(tmp_path):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = pretrain.build_backbone("small_cnn")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    path = pretrain.export_backbone(backbone, str(tmp_path / "backbone"))
    loaded = pretrain.load_backbone(path, trainable=True)
    images = tf.random.uniform([2, 40, 56, 3])  # any size
    with tf.GradientTape() as tape:
        features = loaded(images, training=True)
        loss = tf.reduce_sum(features)
    assert features.dtype == tf.float32 and features.shape == (2, 128)
    grads = tape.gradient(loss, loaded.trainable_weights)
    assert loaded.trainable_weights and all(g is not None for g in grads)


class _FakeModel:
    stop_training = False


def test_collapse_monitor_warns_at_ln_k_and_stops_on_nan():
    messages = []
    monitor = pretrain.CollapseMonitor(ln_k=math.log(50), patience=2, print_fn=messages.append)
    monitor.set_model(_FakeModel())
    monitor.on_epoch_end(0, {"loss": math.log(50)})
    assert not messages  # the first epochs start near ln K
    monitor.on_epoch_end(1, {"loss": 3.0})
    assert not messages and not monitor.collapsed
    monitor.on_epoch_end(2, {"loss": math.log(50) + 0.001})
    assert monitor.collapsed and "ln K" in messages[0] and "same image" in messages[0]
    monitor.on_epoch_begin(3)
    monitor.on_train_batch_end(0, {"loss": float("nan")})
    assert monitor.model.stop_training and monitor.nan_epoch == 3 and "nan" in messages[-1]


def test_cli_flags_cover_the_notebook_config():
    parser = argparse.ArgumentParser()
    pretrain.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--crops", "2x224@0.14-1,6x96@0.05-0.14",
                              "--prototypes", "50", "--batch-size", "16", "--backbone", "small_cnn"])
    assert (args.epochs, args.prototypes, args.batch_size, args.optimizer) == (100, 50, 16, "lars")
    with pytest.raises(ValueError, match="no full batch"):
        pretrain.pretrain(os.path.join(REPO, "data", "sample"), "/nonexistent/never", batch_size=1000,
                          verbose=0)
