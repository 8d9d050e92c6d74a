"""kitlib.bit.finetune: the finetune command end to end: plan (rule, source, settings), run, export, 8 devices like 1."""

import csv
import dataclasses
import json
import os
import types

import numpy as np
import pytest

from kitlib import checkpoint, checks, cli, command
from kitlib.bit import export, finetune
from kitlib.compat import keras
from kitlib.data import tfrecords as data_tfrecords
from kitlib.models import hub, standin
from tests.conftest import REPO, run_on_devices


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A seeded small_cnn backbone saved as .keras."""
    return standin.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))

def test_config_refuses_bad_settings_before_any_data_is_read_and_serialises(tmp_path):
    config = finetune.FinetuneConfig("nowhere", "backbone.keras", str(tmp_path), resolution=[72, 64])
    assert config.resolution == (72, 64) and json.loads(json.dumps(command.as_dict(config)))["resolution"] == [72, 64]
    for bad, message in (({"loss": "focal"}, "loss='focal'.*one of: ce, bitempered"),
                         ({"label_smoothing": 1.0}, r"label_smoothing=1.0\): must be a number in \[0, 1\)"),
                         ({"loss": "bitempered", "t1": 1.5}, "t1"), ({"val_fraction": 1.0}, "val_fraction"),
                         ({"steps": 1}, "steps"), ({"resolution": (64,)}, "resize, crop"),
                         ({"resolution": (64, 80)}, "crop <= resize"), ({"global_batch_size": 0}, "global_batch_size")):
        with pytest.raises(checks.SettingError, match=message):
            finetune.FinetuneConfig("nowhere", "backbone.keras", str(tmp_path), **bad)

def test_a_global_batch_that_does_not_split_over_the_devices_is_refused_naming_both(tmp_path):
    eight = types.SimpleNamespace(kind="TPU", num_devices=8)  # what runtime.setup returns on a v5e-8
    with pytest.raises(ValueError, match=r"12.*8"):
        _finetune(data_dir=str(tmp_path / "nowhere"), backbone="x.keras", out_dir=str(tmp_path / "out"),
                  global_batch_size=12, rt=eight)
    assert not (tmp_path / "out").exists()

def _finetune(rt=None, **fields):
    return finetune.run(finetune.plan(finetune.FinetuneConfig(**fields), rt))

def _images(n, size, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)

@pytest.mark.slow
def test_finetuning_the_tiny_backbone_lowers_the_loss_and_writes_the_classifier(sample_dir, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    np.random.seed(7)
    result = _finetune(data_dir=sample_dir, backbone=tiny_backbone, out_dir=str(out), global_batch_size=16,
                       steps=24, resolution=(40, 32), evaluations=4, base_lr=4.0, seed=3, verbose=0)
    # seed 3, not 0: 24 steps at base_lr 4.0 learn on most orders of the 75 images, not all; with the training
    # stream now the same on every iterator (kitlib.bit.inputs.train_dataset), seed 0's order diverges in round 4
    assert np.random.random() == np.random.RandomState(7).random_sample()  # numpy's global generator left alone
    loss = result.history.history["loss"]
    assert len(loss) == 4 and loss[-1] < loss[0] - 0.2 and loss[0] == pytest.approx(np.log(5), abs=0.1)
    # 4 rounds of 6 steps = the rule's 24; the weights restored at the end are the best round's: the final
    # evaluation scores what that round's validation scored
    assert result.model.optimizer.iterations.numpy() == 24
    assert result.evaluation["accuracy"] == pytest.approx(max(result.history.history["val_accuracy"]), abs=1e-6)
    for name in ("classifier.keras", "classifier.json", "config.json", "finetune.json", "history.csv",
                 "checkpoints/state.npz"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["facts"]["backend"], config["facts"]["devices"], config["settings"]["global_batch_size"]) == (
        "jax", 1, 16)
    assert config["facts"]["rule"]["total_steps"] == 24 and config["settings"]["backbone"] == tiny_backbone
    assert config["command"] == "finetune" and config["settings"]["steps_per_execution"] == 1
    assert "steps_per_execution" in config["chosen"] and "steps" not in config["chosen"]
    # the model in memory is the best-validation checkpoint, and the reloaded classifier predicts as it does
    record = json.loads((out / "finetune.json").read_text())
    assert record["val_accuracy"] == pytest.approx(max(record["history"]["val_accuracy"]), abs=1e-6)
    assert np.sum(record["confusion_matrix"]) == 25 and record["val_accuracy"] > 0.2  # above chance (5 classes)
    classifier = export.load_classifier(str(out))
    assert classifier.class_names == data_tfrecords.CLASS_NAMES and classifier.image_size == 32
    images = _images(5, 32)
    np.testing.assert_allclose(classifier.predict_proba(images, batch_size=4),
                               keras.ops.softmax(result.model(images)), atol=1e-6)

@pytest.mark.slow
def test_finetune_command_with_the_bi_tempered_loss_trains_and_exports(sample_dir, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    code = cli.main(["finetune", "--data", sample_dir, "--backbone", tiny_backbone, "--out", str(out),
                     "--batch-size", "8", "--steps", "8", "--resolution", "40", "32", "--evaluations", "2",
                     "--loss", "bitempered", "--label-smoothing", "0.1"])
    assert code == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["loss"] == "bitempered" and record["facts"]["train_size"] == 75
    assert record["facts"]["rule"]["total_steps"] == 8 and record["facts"]["rule"]["batch_size"] == 8
    assert "seed" in record["chosen"] and isinstance(record["settings"]["seed"], int)  # drawn and recorded
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    probs = export.load_classifier(str(out)).predict_proba(_images(3, 32))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)

def test_finetune_command_with_an_unreachable_backbone_exits_with_advice(sample_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub, "can_connect", lambda host, **kw: False)  # offline, whatever this machine has
    code = cli.main(["finetune", "--data", sample_dir, "--backbone", "https://tfhub.dev/google/bit/m-r50x1/1",
                     "--out", str(tmp_path / "run"), "--batch-size", "8", "--steps", "4"])
    assert code == 2
    assert "attach" in capsys.readouterr().err

_SHORT_RUN = dict(global_batch_size=16, steps=6, resolution=(40, 32), evaluations=2, base_lr=4.0, restore_best=False,
                  seed=0, verbose=0)

_PROBE_IMAGES = 5  # rows for the reloaded classifier: not a multiple of 8, so predict_proba pads them

_EIGHT_DEVICES = """
import json
import numpy as np
from kitlib import runtime
from kitlib.bit import export
from kitlib.bit import finetune
rt = runtime.setup(allow_cpu=True, verbose=False)
config = finetune.FinetuneConfig(data_dir={data!r}, backbone={backbone!r}, out_dir={out!r}, **{kwargs!r})
result = finetune.run(finetune.plan(config, rt))
images = np.random.default_rng(1).random([{n}, 32, 32, 3], dtype=np.float32)
probs = export.load_classifier({out!r}).predict_proba(images, batch_size=4)
print(json.dumps({{"devices": rt.num_devices, "distributed": rt.distribution is not None,
                  "history": result.history.history, "probs": probs.tolist()}}))
"""

@pytest.mark.slow
@pytest.mark.matrix
def test_eight_devices_train_like_one(sample_dir, tiny_backbone, tmp_path):
    eight = run_on_devices(_EIGHT_DEVICES.format(data=sample_dir, backbone=tiny_backbone, out=str(tmp_path / "out8"),
                                                 kwargs=_SHORT_RUN, n=_PROBE_IMAGES), devices=8)
    assert (eight["devices"], eight["distributed"]) == (8, True)
    one = _finetune(data_dir=sample_dir, backbone=tiny_backbone, out_dir=str(tmp_path / "out1"), **_SHORT_RUN)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(eight["history"][key], one.history.history[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert one.history.history["loss"][-1] != one.history.history["loss"][0]  # it trained
    weights = [keras.saving.load_model(str(tmp_path / f"out{n}" / "classifier.keras")).get_weights() for n in (8, 1)]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    images = np.random.default_rng(1).random([_PROBE_IMAGES, 32, 32, 3], dtype=np.float32)
    np.testing.assert_allclose(eight["probs"], export.load_classifier(str(tmp_path / "out1")).predict_proba(images),
                               atol=1e-5)

def test_suggested_global_batch_fits_the_devices_and_splits_over_them():
    assert finetune.suggested_global_batch("TPU", 8) == 512  # BiT's own batch on a TPU v5e-8
    assert finetune.suggested_global_batch("GPU", 2) == 32   # Kaggle's T4 x2
    assert finetune.suggested_global_batch("CPU") == 16
    for kind, n in (("TPU", 8), ("GPU", 1), ("GPU", 2)):
        assert finetune.suggested_global_batch(kind, n) % n == 0


def test_the_few_label_regime_trains_on_a_recorded_stratified_subset(sample_dir, tiny_backbone, tmp_path):
    config = finetune.FinetuneConfig(data_dir=sample_dir, backbone=tiny_backbone, out_dir=str(tmp_path / "o"),
                                     labels_per_class=4, global_batch_size=8, seed=3)
    plan = finetune.plan(config)
    subset, source = plan.facts["label_subset"], plan.parts["source"]
    assert subset["train_per_class"] == dict.fromkeys(source.class_names, 4) and source.train_size == 20
    assert len(subset["val_ids"]) == source.val_size == 5 and not set(subset["train_ids"]) & set(subset["val_ids"])
    assert json.loads(json.dumps(plan.record()))["facts"]["label_subset"]["train_ids"] == subset["train_ids"]
    assert finetune.plan(config).facts["label_subset"]["train_ids"] == subset["train_ids"]  # seeded
    alone = finetune.plan(dataclasses.replace(config, val_fraction=0.0))
    assert alone.parts["source"].val is None and alone.settings.restore_best is False
    assert "few-label" in alone.reasons["restore_best"]
    share = finetune.plan(dataclasses.replace(config, labels_per_class=None, label_fraction=0.25))
    assert share.parts["source"].train_size == 25  # ceil(0.25 * 20) per class
    with pytest.raises(checks.SettingError, match="not both"):
        dataclasses.replace(config, label_fraction=0.5)


def _finetune_process(args, env):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    return subprocess.Popen([sys.executable, "-m", "kitlib", "finetune", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rounds_logged(out):
    path = os.path.join(out, "history.csv")
    return [int(float(r["epoch"])) for r in csv.DictReader(open(path))] if os.path.isfile(path) else []


@pytest.mark.slow
def test_a_run_killed_at_random_moments_and_rerun_ends_where_an_uninterrupted_one_does(sample_dir, tiny_backbone,
                                                                                        tmp_path):
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    args = ["--data", sample_dir, "--backbone", tiny_backbone, "--batch-size", "8", "--steps", "36",
            "--evaluations", "6", "--resolution", "40", "32", "--base-lr", "2", "--seed", "4", "--verbose", "0"]

    def weights(out):
        return export.load_classifier(out).model.get_weights()

    whole = str(tmp_path / "whole")
    done = _finetune_process([*args, "--out", whole], env)
    assert done.communicate(timeout=600) and done.returncode == 0, done.stderr
    rng = np.random.default_rng(0)
    for attempt in range(2):  # killed after a random number of rounds, at a random moment within the next one
        out = str(tmp_path / f"killed{attempt}")
        run = _finetune_process([*args, "--out", out], env)
        target, deadline = int(rng.integers(1, 5)), time.monotonic() + 600
        while len(_rounds_logged(out)) < target and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0, 0.5)))
        run.send_signal(signal.SIGKILL)
        run.communicate()
        assert not os.path.isfile(os.path.join(out, "classifier.json"))  # nothing to submit yet
        rerun = _finetune_process([*args, "--out", out], env)
        _, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err[-3000:]
        assert _rounds_logged(out) == [1, 2, 3, 4, 5, 6]  # every round once
        with open(os.path.join(out, "config.json")) as f:
            assert json.load(f)["facts"]["resume"]["rounds"] == 6
        for a, b in zip(weights(out), weights(whole)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    stopped = str(tmp_path / "stopped")  # a clean stop at the first round boundary, then the printed command
    run = _finetune_process([*args, "--out", stopped, "--stop-after-minutes", "0.001", "--verbose", "1"], env)
    said, err = run.communicate(timeout=600)
    assert run.returncode == 0 and _rounds_logged(stopped) == [1], err[-3000:]
    assert f"continue with: python -m kitlib finetune --data {sample_dir}" in said
    assert not os.path.isfile(os.path.join(stopped, "classifier.json"))
    with open(os.path.join(stopped, "history.csv")) as f:
        assert len(f.readlines()) == 2
    for folder, _, files in os.walk(stopped):  # the next session sees it read-only, under /kaggle/input
        for name in [*files, "."]:
            os.chmod(os.path.join(folder, name), 0o555 if name == "." else 0o444)
    continued = str(tmp_path / "continued")
    rerun = _finetune_process([*args, "--out", continued, "--resume-from", stopped], env)  # a new process, no limit
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert _rounds_logged(continued) == [1, 2, 3, 4, 5, 6] and _rounds_logged(stopped) == [1]
    for a, b in zip(weights(continued), weights(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    other = finetune.FinetuneConfig(data_dir=sample_dir, backbone=tiny_backbone, out_dir=whole, global_batch_size=8,
                                    steps=36, evaluations=6, resolution=(40, 32), base_lr=3.0, seed=4)
    with pytest.raises(ValueError, match="another fine-tuning run.*base_lr"):
        finetune.plan(other)
    with pytest.raises(ValueError, match="another fine-tuning run.*base_lr"):  # from a read-only copy too
        finetune.plan(dataclasses.replace(other, out_dir=str(tmp_path / "elsewhere"), resume_from=stopped))


def test_a_run_under_a_time_limit_is_timed_up_front_and_says_the_sessions_it_takes(sample_dir, tiny_backbone,
                                                                                 tmp_path):
    config = finetune.FinetuneConfig(data_dir=sample_dir, backbone=tiny_backbone, out_dir=str(tmp_path / "o"),
                                     global_batch_size=8, steps=400, resolution=(40, 32), seed=1)
    assert "estimate" not in finetune.plan(config).facts  # no limit here (off Kaggle): nothing is timed
    np.random.seed(5)
    limited = finetune.plan(dataclasses.replace(config, stop_after_minutes=0.01))  # 0.6 s: the compile alone is more
    assert np.random.random() == np.random.RandomState(5).random_sample()  # the timing left numpy's state alone
    said = limited.facts["estimate"]
    assert said["minutes"] > 0 and said["sessions"] > 1 and said["limit_minutes"] == 0.01
    assert "sessions of 0.01" in checkpoint.estimate_warning("finetune", limited.facts)
    assert not (tmp_path / "o").exists()  # planning wrote nothing
