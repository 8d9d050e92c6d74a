"""kitlib.bit.finetune on Keras 3 (JAX): data sources, exact step counts, the config, callbacks, a fine-tuning run
that learns and exports, the ``finetune`` command, and 8 devices training like 1."""

import csv
import json
import os
import types

import numpy as np
import pytest
from conftest import run_on_devices

from kitlib import cli, command
from kitlib.bit import export, finetune, training
from kitlib.compat import keras, tf
from kitlib.data import sources
from kitlib.data import tfrecords as data_tfrecords
from kitlib.models import hub, standin


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A seeded small_cnn backbone saved as .keras."""
    return standin.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))


@pytest.mark.parametrize("total, wanted, rounds", [
    (500, 10, (10, 50)), (4000, 10, (10, 400)), (20, 4, (4, 5)), (37, 10, (1, 37)), (7, 10, (7, 1))])
def test_evaluation_rounds_cover_exactly_the_rule_steps(total, wanted, rounds):
    assert training.evaluation_rounds(total, wanted) == rounds  # (epochs, steps per epoch): the divisor nearest


def test_an_example_level_split_is_disjoint_complete_and_takes_validation_from_every_class(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(np.full([4, 4, 3], i, np.uint8)).numpy())
    source = sources.load_source(str(tmp_path), val_fraction=0.2)
    train = [ex["image_name"].numpy().decode() for ex in source.train]
    val = [ex["image_name"].numpy().decode() for ex in source.val]
    assert val == ["a/4.png", "b/4.png"] and (source.train_size, source.val_size) == (8, 2)
    assert train == [f"{c}/{i}.png" for c in "ab" for i in range(4)]


def test_cassava_tfrecords_are_split_by_shard_and_the_rule_sees_the_training_size(sample_dir):
    source = sources.load_source(sample_dir, val_fraction=0.25)
    assert source.kind == "tfrecords" and source.class_names == data_tfrecords.CLASS_NAMES
    assert (source.train_size, source.val_size) == (75, 25)
    assert min(source.image_hw) >= 256
    train_names = {ex["image_name"].numpy() for ex in source.train}
    val_names = {ex["image_name"].numpy() for ex in source.val}
    assert len(train_names) == 75 and len(val_names) == 25 and not train_names & val_names


def test_jpeg_folder_with_csv_and_class_folders_are_read_with_their_sizes(sample_dir, tmp_path):
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    os.symlink(os.path.join(sample_dir, "train_images"), jpeg / "train_images")
    os.symlink(os.path.join(sample_dir, "train.csv"), jpeg / "train.csv")
    with open(os.path.join(sample_dir, "train.csv")) as f:
        rows = len(list(csv.DictReader(f)))
    source = sources.load_source(str(jpeg), val_fraction=0.2)
    assert source.kind == "jpeg_csv" and source.train_size + source.val_size == rows
    assert source.val_size == sum(1 for _ in source.val)

    folders = tmp_path / "folders"
    for name, colour in (("cats", 40), ("dogs", 200)):
        (folders / name).mkdir(parents=True)
        for i in range(3):
            image = np.full([20, 24, 3], colour + i, np.uint8)
            (folders / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    source = sources.load_source(str(folders), val_fraction=1 / 3)
    assert source.kind == "image_folder" and source.class_names == ("cats", "dogs")
    assert (source.train_size, source.val_size, source.image_hw) == (4, 2, (20, 24))


def test_missing_data_folder_fails_with_what_to_pass(tmp_path):
    with pytest.raises(data_tfrecords.DataError, match="train_tfrecords"):
        sources.load_source(str(tmp_path / "nowhere"))


def test_callbacks_keep_the_best_validation_weights_and_log_every_round(tmp_path):
    inputs = keras.Input([2])
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy", metrics=["accuracy"])
    x, y = np.array([[1, 0], [0, 1]] * 4, np.float32), np.eye(2, dtype=np.float32)[[0, 1] * 4]
    model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=4, verbose=0,
              callbacks=training.training_callbacks(str(tmp_path)))
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and "val_accuracy" in rows[0]
    assert training.best_checkpoint_path(str(tmp_path)) == str(tmp_path / "checkpoints" / "best.weights.h5")
    model.load_weights(training.best_checkpoint_path(str(tmp_path)))  # a weights file of this model


@pytest.mark.parametrize("kind, steps_per_epoch, wanted, expected", [
    ("CPU", 50, None, 1), ("GPU", 50, None, 1), ("TPU", 50, None, 25), ("TPU", 64, None, 32), ("TPU", 7, None, 7),
    ("TPU", 37, None, 1), ("CPU", 50, 10, 10), ("CPU", 50, 8, 5)])
def test_steps_per_execution_divides_the_round_and_is_large_only_on_tpu(kind, steps_per_epoch, wanted, expected):
    assert training.steps_per_execution_for(kind, steps_per_epoch, wanted) == expected


def test_config_refuses_bad_settings_before_any_data_is_read_and_serialises(tmp_path):
    config = finetune.FinetuneConfig("nowhere", "backbone.keras", str(tmp_path), resolution=[72, 64])
    assert config.resolution == (72, 64) and json.loads(json.dumps(command.as_dict(config)))["resolution"] == [72, 64]
    for bad, message in (({"loss": "focal"}, "unknown loss"), ({"label_smoothing": 1.0}, "label_smoothing"),
                         ({"loss": "bitempered", "t1": 1.5}, "t1"), ({"val_fraction": 1.0}, "val_fraction"),
                         ({"steps": 1}, "steps"), ({"resolution": (64,)}, "resize, crop")):
        with pytest.raises(ValueError, match=message):
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
                       steps=24, resolution=(40, 32), evaluations=4, base_lr=4.0, seed=0, verbose=0)
    assert np.random.random() == np.random.RandomState(7).random_sample()  # numpy's global generator left alone
    loss = result.history.history["loss"]
    assert len(loss) == 4 and loss[-1] < loss[0] - 0.2 and loss[0] == pytest.approx(np.log(5), abs=0.1)
    # 4 rounds of 6 steps = the rule's 24; the restored best checkpoint (optimizer state included) is
    # the first round with the best validation accuracy
    best_round = int(np.argmax(result.history.history["val_accuracy"]))
    assert result.model.optimizer.iterations.numpy() == 6 * (best_round + 1)
    for name in ("classifier.keras", "classifier.json", "config.json", "finetune.json", "history.csv",
                 "checkpoints/best.weights.h5"):
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


def test_tfds_source_offline_and_unprepared_fails_at_once_with_advice(tmp_path):
    with pytest.raises(data_tfrecords.DataError, match="not prepared"):
        sources.load_source("tfds:cats_vs_dogs", tfds_data_dir=str(tmp_path))


def test_suggested_global_batch_fits_the_devices_and_splits_over_them():
    assert finetune.suggested_global_batch("TPU", 8) == 512  # BiT's own batch on a TPU v5e-8
    assert finetune.suggested_global_batch("GPU", 2) == 32   # Kaggle's T4 x2
    assert finetune.suggested_global_batch("CPU") == 16
    for kind, n in (("TPU", 8), ("GPU", 1), ("GPU", 2)):
        assert finetune.suggested_global_batch(kind, n) % n == 0
