"""kitlib.swav.pretrain: the pretrain command end to end: learning on the sample, resume after kill -9, export, the CLI, the resolved settings."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kitlib import command, runtime
from kitlib.compat import keras
from kitlib.data import tfrecords
from kitlib.models import backbones
from kitlib import checkpoint
from kitlib.swav import evaluate, pretrain
from tests.conftest import REPO  # noqa: E402


@pytest.mark.slow
def test_the_smoke_preset_learns_on_the_sample_and_exports_the_trained_backbone(sample_dir, tmp_path):
    # the rule's recipe for the sample (small CNN with pyramid features, 64 px crops, K = 50, Adam, crops
    # only) at 40 epochs of batch 32; kNN on 100 images varies with the seed: measured (random init -> SwAV)
    # 0.51 -> 0.67 at seed 0, 0.52 -> 0.71 at seed 1, 0.51 -> 0.72 at seed 2 (0.95 at the rule's 400 epochs)
    seed = 1
    result = _pretrain(pretrain.PretrainConfig.smoke(data_dir=sample_dir, out_dir=str(tmp_path), seed=seed,
                                                             verbose=0))
    assert (result.config.backbone, result.config.prototypes, result.config.optimizer) == ("small_cnn_pyramid", 50, "adam")
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 40 and result.ln_k == pytest.approx(math.log(50))
    assert losses[-1] < 0.75 * result.ln_k and not result.collapsed  # well below the floor

    labelled = tfrecords.load_dataset(tfrecords.list_tfrecords(sample_dir), ordered=True)
    random_init = pretrain.random_init_backbone(result.config.backbone, seed=seed)
    x0, y = evaluate.extract_features(random_init, labelled, image_size=64)
    x1, _ = evaluate.extract_features(result.backbone, labelled, image_size=64)
    knn_random, knn_swav = evaluate.knn_accuracy(x0, y), evaluate.knn_accuracy(x1, y)
    assert knn_swav > max(0.65, knn_random + 0.10), (knn_random, knn_swav)

    loaded = backbones.load(result.backbone_path)  # the exported file is the trained backbone
    images = np.random.default_rng(0).random((3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(result.backbone(images, training=False)),
                               rtol=1e-5, atol=1e-6)
    rows = checkpoint.read_history(os.path.join(tmp_path, "history.csv"))
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    assert {"loss", "ln_k", "usage_entropy", "lr"} <= set(rows[0])

def test_random_init_backbone_is_seeded():
    a = pretrain.random_init_backbone("small_cnn", seed=3)
    b = pretrain.random_init_backbone("small_cnn", seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)

TINY_RUN = ["--epochs", "8", "--batch-size", "8", "--backbone", "small_cnn", "--prototypes", "10",
            "--hidden-dim", "16", "--output-dim", "8", "--crops", "2x32@0.3-1,2x16@0.1-0.3",
            "--augmentation", "none", "--max-steps-per-epoch", "2", "--queue-length", "16",
            "--queue-start-epoch", "0", "--seed", "1", "--verbose", "0"]

def _cli(argv, env=None, **kwargs):
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "kitlib", "pretrain"] + argv, cwd=REPO, capture_output=True,
                          text=True, env=environ, timeout=300, **kwargs)

def _parse(argv):
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    command.add_arguments(parser, pretrain.CONFIG)
    return command.config_from_args(pretrain.CONFIG, parser.parse_args(argv))

def _pretrain(config):
    return pretrain.run(pretrain.plan(config))

@pytest.mark.slow
def test_rerun_after_kill_9_resumes_step_count_queue_and_history(sample_dir, tmp_path):
    out = str(tmp_path / "run")
    argv = ["--data", sample_dir, "--out", out] + TINY_RUN
    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "kitlib", "pretrain"] + argv, cwd=REPO, stdout=log, stderr=log)
    state = os.path.join(out, "checkpoints", "state.npz")
    deadline = time.time() + 120
    while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # kill -9 as soon as the first epoch is saved
    proc.wait()
    log.close()
    assert os.path.exists(state), (tmp_path / "first_run.log").read_text()[-2000:]
    with np.load(state) as saved:
        done_before = int(saved["epochs_done"])
        paths = [str(p) for p in saved["paths"]]
        queue_before = saved[f"v{[i for i, p in enumerate(paths) if p.endswith('/queue')][0]:05d}"]
    assert 1 <= done_before < 8, "the run finished before it could be killed"
    assert np.abs(queue_before).max() > 0  # the queue was being filled when the run was killed

    config = _parse(argv)
    restored = _pretrain(pretrain.dataclasses.replace(config, epochs=done_before))  # nothing to train
    assert int(restored.model.optimizer.iterations) == int(restored.model.step) == done_before * 2
    np.testing.assert_array_equal(np.asarray(restored.model.queue), queue_before)

    result = _pretrain(config)  # the same command again
    assert int(result.model.optimizer.iterations) == 8 * 2  # continued, not restarted
    assert [r["epoch"] for r in result.history] == list(range(1, 9))  # each epoch once
    assert os.path.isfile(os.path.join(out, "backbone.keras"))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["settings"]["prototypes"] == 10

    # a rerun whose shapes differ is refused with a way out
    with pytest.raises(ValueError, match="prototypes"):
        _pretrain(pretrain.dataclasses.replace(config, prototypes=20))


@pytest.mark.slow
def test_a_time_limit_stops_on_an_epoch_boundary_without_exporting_and_the_rerun_finishes(sample_dir, tmp_path,
                                                                                         capsys):
    out = str(tmp_path / "run")
    config = _parse(["--data", sample_dir, "--out", out] + TINY_RUN)
    stopped = _pretrain(pretrain.dataclasses.replace(config, stop_after_minutes=1e-4))  # past it at once
    assert stopped.stopped_after == 1 and [r["epoch"] for r in stopped.history] == [1]
    assert stopped.backbone_path is None and not os.path.exists(os.path.join(out, "backbone.keras"))
    said = capsys.readouterr().out
    assert "stopped after epoch 1 of 8" in said and "this run needs about" in said  # said up front, then done
    for folder, _, files in os.walk(out):  # the next session sees it read-only, under /kaggle/input
        for name in [*files, "."]:
            os.chmod(os.path.join(folder, name), 0o555 if name == "." else 0o444)
    again = pretrain.dataclasses.replace(config, out_dir=str(tmp_path / "next"), resume_from=out)
    with pytest.raises(ValueError, match="another pretraining run.*prototypes"):
        _pretrain(pretrain.dataclasses.replace(again, prototypes=12))
    result = _pretrain(again)  # a new folder, continued from the read-only one, without the limit
    assert result.stopped_after is None and [r["epoch"] for r in result.history] == list(range(1, 9))
    assert int(result.model.optimizer.iterations) == 8 * 2 and os.path.isfile(result.backbone_path)
    assert [r["epoch"] for r in checkpoint.read_history(os.path.join(out, "history.csv"))] == [1]

@pytest.mark.slow
def test_cli_contract_epochs_0_exports_the_random_init_backbone(sample_dir, tmp_path):
    out = tmp_path / "zero"
    done = _cli(["--data", sample_dir, "--out", str(out), "--epochs", "0", "--batch-size", "16",
                 "--backbone", "small_cnn", "--prototypes", "10", "--crops", "2x32@0.3-1,2x16@0.1-0.3",
                 "--augmentation", "none", "--seed", "5"])
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert (config["facts"]["backend"], config["facts"]["devices"], config["settings"]["global_batch_size"]) == (
        "jax", 1, 16)
    assert config["command"] == "pretrain" and config["settings"]["seed"] == 5
    with open(out / "history.csv") as f:
        assert next(csv.reader(f))[:2] == ["epoch", "loss"]  # no epoch trained: the header alone
    loaded = backbones.load(str(out / "backbone.keras"))
    images = np.random.default_rng(1).random((2, 32, 48, 3)).astype(np.float32)
    expected = pretrain.random_init_backbone("small_cnn", seed=5)(images, training=False)
    features = np.asarray(loaded(images))
    assert features.shape == (2, 128)
    np.testing.assert_allclose(features, np.asarray(expected), rtol=1e-5, atol=1e-6)

@pytest.mark.slow
@pytest.mark.parametrize("env, hardware", [({"ISTPUVM": "1", "TPU_PROCESS_ADDRESSES": "local"}, "TPU")])
def test_cli_on_a_tpu_vm_where_jax_sees_no_tpu_exits_before_training(sample_dir, tmp_path, env, hardware):
    done = _cli(["--data", sample_dir, "--out", str(tmp_path / "o")] + TINY_RUN, env=env)
    assert done.returncode != 0
    assert f"has a {hardware}" in done.stderr and "jax[tpu]" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written or trained

@pytest.mark.slow
def test_export_of_a_mixed_precision_backbone_is_float32_and_trainable(tmp_path):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = backbones.build("small_cnn")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert backbone.layers[2].compute_dtype == "bfloat16"
    loaded = backbones.load(pretrain.export_backbone(backbone, str(tmp_path / "backbone.keras")))
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    images = np.random.default_rng(2).random((2, 40, 56, 3)).astype(np.float32)  # any size

    def total(trainable):
        features, _ = loaded.stateless_call(trainable, [v.value for v in loaded.non_trainable_variables], images)
        return keras.ops.sum(features)

    grads = jax.grad(total)([v.value for v in loaded.trainable_variables])
    assert len(grads) == len(backbone.trainable_variables) and all(float(np.abs(g).sum()) > 0 for g in grads)

def _resolved(config, *args, **kwargs):
    return pretrain.resolve(config, *args, **kwargs)[0]

def test_config_resolves_from_the_data_and_the_devices():
    config = pretrain.PretrainConfig(data_dir="d", out_dir="o", epochs=100, global_batch_size=256)
    cpu = _resolved(config, num_images=21_397, num_devices=1, kind="CPU")
    assert (cpu.max_steps_per_epoch, cpu.freeze_prototypes_niters, cpu.warmup_epochs) == (83, 83, 10)
    assert (cpu.base_lr, cpu.final_lr, cpu.prototypes) == pytest.approx((0.6, 0.0006, 3000))
    assert cpu.augmentation == "host"
    tpu = _resolved(config, num_images=21_397, num_devices=8, kind="TPU")
    assert tpu.augmentation == "device" and tpu.global_batch_size == 256
    with pytest.raises(ValueError, match=r"global_batch_size 12 .* 8 device"):
        _resolved(pretrain.PretrainConfig(global_batch_size=12), 1000, num_devices=8)
    with pytest.raises(ValueError, match="no full batch"):
        _resolved(pretrain.PretrainConfig(data_dir="d", global_batch_size=1000), 100)

def test_cli_flags_fill_one_config_and_smoke_keeps_the_flags_given():
    config = _parse(["--data", "d", "--out", "o", "--crops", "2x224@0.14-1,6x96@0.05-0.14", "--prototypes", "50",
                     "--batch-size", "16", "--backbone", "small_cnn"])
    assert (config.prototypes, config.global_batch_size, config.backbone) == (50, 16, "small_cnn")
    assert (config.epochs, config.optimizer, config.base_lr) == (None, None, None)  # left to the rule
    assert (config.data_dir, config.out_dir) == ("d", "o")
    smoke = _parse(["--data", "d", "--out", "o", "--smoke", "--epochs", "3"])
    assert (smoke.epochs, smoke.global_batch_size, smoke.seed, smoke.backbone) == (3, 32, 0, None)

def test_runtime_default_is_one_cpu_device_here():
    rt = runtime.setup(verbose=False)
    assert (rt.kind, rt.num_devices, rt.distribution, rt.policy) == ("CPU", 1, None, "float32")
