"""kitlib.finetune: data sources, exact step counts, callbacks, evaluation and the ``finetune`` command."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kitlib import bit, cli, data, export, finetune
from kitlib.compat import keras


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    return bit.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone"), width=4)


@pytest.mark.parametrize("total, wanted", [(500, 10), (4000, 10), (20, 4), (37, 10), (7, 10)])
def test_evaluation_rounds_cover_exactly_the_rule_steps(total, wanted):
    epochs, steps_per_epoch = finetune.evaluation_rounds(total, wanted)
    assert epochs * steps_per_epoch == total
    assert epochs == min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - wanted))


def test_example_level_split_is_disjoint_complete_and_spreads_validation():
    dataset = tf.data.Dataset.range(20).map(lambda i: {"label": tf.cast(i % 4, tf.int32), "id": i})
    train, val = finetune._split_examples(dataset, 0.25)
    train_ids = [int(ex["id"]) for ex in train]
    val_ids = [int(ex["id"]) for ex in val]
    assert sorted(train_ids + val_ids) == list(range(20)) and not set(train_ids) & set(val_ids)
    assert len(val_ids) == 5 and val_ids == [3, 7, 11, 15, 19]


def test_cassava_tfrecords_are_split_by_shard_and_the_rule_sees_the_training_size(sample_dir):
    source = finetune.load_source(sample_dir, val_fraction=0.25)
    assert source.kind == "tfrecords" and source.class_names == data.CLASS_NAMES
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
    source = finetune.load_source(str(jpeg), val_fraction=0.2)
    assert source.kind == "jpeg_csv" and source.train_size + source.val_size == rows
    assert source.val_size == sum(1 for _ in source.val)

    folders = tmp_path / "folders"
    for name, colour in (("cats", 40), ("dogs", 200)):
        (folders / name).mkdir(parents=True)
        for i in range(3):
            image = np.full([20, 24, 3], colour + i, np.uint8)
            (folders / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    source = finetune.load_source(str(folders), val_fraction=1 / 3)
    assert source.kind == "image_folder" and source.class_names == ("cats", "dogs")
    assert (source.train_size, source.val_size, source.image_hw) == (4, 2, (20, 24))


def test_missing_data_folder_fails_with_what_to_pass(tmp_path):
    with pytest.raises(data.DataError, match="train_tfrecords"):
        finetune.load_source(str(tmp_path / "nowhere"))


def test_callbacks_checkpoint_best_validation_and_log_csv(tmp_path):
    callbacks = finetune.training_callbacks(str(tmp_path))
    checkpoint = next(c for c in callbacks if isinstance(c, keras.callbacks.ModelCheckpoint))
    assert checkpoint.monitor == "val_accuracy" and checkpoint.save_best_only
    assert any(isinstance(c, keras.callbacks.CSVLogger) for c in callbacks)
    has_tensorboard = any(isinstance(c, keras.callbacks.TensorBoard) for c in callbacks)
    assert has_tensorboard == (importlib.util.find_spec("tensorboard") is not None)


@pytest.mark.slow
def test_finetune_command_trains_exports_and_restores_the_best_checkpoint(sample_dir, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    code = cli.main(["finetune", "--data", sample_dir, "--backbone", tiny_backbone, "--out", str(out),
                     "--batch-size", "8", "--steps", "8", "--resolution", "72", "64", "--evaluations", "2",
                     "--loss", "bitempered", "--label-smoothing", "0.1"])
    assert code == 0
    classifier = export.load_classifier(str(out))
    assert classifier.class_names == data.CLASS_NAMES and classifier.image_size == 64
    probs = classifier.predict_proba(np.random.default_rng(0).random([3, 64, 64, 3], np.float32))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)

    record = json.loads((out / "finetune.json").read_text())
    assert record["rule"]["total_steps"] == 8 and record["rule"]["batch_size"] == 8
    assert record["train_size"] == 75 and record["loss"] == "bitempered"
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # the exported model is the best-validation checkpoint: its accuracy is the best seen in training
    assert record["val_accuracy"] == pytest.approx(max(record["history"]["val_accuracy"]), abs=1e-6)
    assert np.sum(record["confusion_matrix"]) == 25


def test_finetune_command_with_an_unreachable_backbone_exits_with_advice(sample_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bit, "_can_connect", lambda host, **kw: False)  # offline, whatever this machine has
    code = cli.main(["finetune", "--data", sample_dir, "--backbone", "https://tfhub.dev/google/bit/m-r50x1/1",
                     "--out", str(tmp_path / "run"), "--batch-size", "8", "--steps", "4"])
    assert code == 2
    assert "attach" in capsys.readouterr().err


def test_tfds_source_offline_and_unprepared_fails_at_once_with_advice(tmp_path):
    with pytest.raises(data.DataError, match="not prepared"):
        finetune.load_source("tfds:cats_vs_dogs", tfds_data_dir=str(tmp_path))
