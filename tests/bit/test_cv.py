"""kitlib.bit.cv: k-fold fine-tuning end to end, its OOF file and cv.json, resuming fold by fold."""

import json
import os

import numpy as np
import pytest

from kitlib import cli
from kitlib.bit import cv
from kitlib.data import folds
from kitlib.models import standin
from tests.conftest import run_on_devices


def test_summary_figures_are_those_of_the_oof_rows():
    rng = np.random.default_rng(0)
    rows = [dict(image_id=f"{i}", label=int(rng.integers(5)), fold=i % 4, probs=rng.random(5).astype(np.float32))
            for i in range(50)]
    for r in rows:
        r["pred"] = int(np.argmax(r["probs"]))
    s = cv.summarize(rows, 4, 5)
    right = [r["pred"] == r["label"] for r in rows]
    assert s["oof_accuracy"] == pytest.approx(np.mean(right))
    assert s["per_fold_accuracy"] == pytest.approx([np.mean(right[f::4]) for f in range(4)])
    assert s["mean_accuracy"] == pytest.approx(np.mean(s["per_fold_accuracy"]))
    assert np.trace(s["confusion_matrix"]) == sum(right) and np.sum(s["confusion_matrix"]) == 50


@pytest.mark.slow
def test_cv_writes_one_oof_row_per_training_image_and_resumes(sample_dir, tmp_path, capsys):
    backbone = standin.make_tiny_backbone(str(tmp_path / "tiny.keras"))
    out = tmp_path / "cv"
    argv = ["cv", "--data", sample_dir, "--backbone", backbone, "--out", str(out), "--smoke", "--steps", "6",
            "--verbose", "0"]
    assert cli.main(argv) == 0
    table = folds.load(str(out / "folds.csv"))
    rows = cv.load_oof(str(out / "oof.csv"))
    assert [r["image_id"] for r in rows] == list(table.image_ids) and len(rows) == 100  # every training image
    assert [r["fold"] for r in rows] == table.folds.tolist() and table.k == 3
    summary = json.loads((out / "cv.json").read_text())
    recomputed = cv.summarize(rows, 3, 5)
    for key in ("oof_accuracy", "mean_accuracy", "std_accuracy"):
        assert summary[key] == pytest.approx(recomputed[key], abs=1e-6), key
    assert summary["confusion_matrix"] == recomputed["confusion_matrix"]
    for name in ("oof_confusion.png", "folds.png", "fold_2/classifier.keras", "fold_0/oof.csv", "config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "config.json").read_text())
    assert record["command"] == "cv" and sum(record["facts"]["fold_sizes"]) == 100

    stamp = os.path.getmtime(out / "fold_1" / "classifier.keras")
    os.remove(out / "fold_1" / "oof.csv")  # fold 1 unfinished: only it is trained again
    capsys.readouterr()
    argv[argv.index("--verbose") + 1] = "1"
    assert cli.main(argv) == 0
    said = capsys.readouterr().out
    assert "fold 1/3 done before" in said and "fold 3/3 done before" in said and "reused from" in said
    assert os.path.getmtime(out / "fold_1" / "classifier.keras") > stamp
    assert folds.load(str(out / "folds.csv")).folds.tolist() == table.folds.tolist()
    assert cli.main(argv[:-4] + ["--folds", "4", "--verbose", "0"]) == 2  # other folds than the saved ones


_EIGHT_DEVICES = """
import json
from kitlib import runtime
from kitlib.bit import cv
rt = runtime.setup(allow_cpu=True, verbose=False)
config = cv.CVConfig.smoke(data_dir={data!r}, backbone={backbone!r}, out_dir={out!r}, steps=6, verbose=0)
result = cv.run(cv.plan(config, rt))
print(json.dumps({{"devices": rt.num_devices, "probs": [r["probs"].tolist() for r in result.oof]}}))
"""


@pytest.mark.slow
def test_eight_devices_give_the_oof_predictions_of_one(sample_dir, tmp_path):
    backbone = standin.make_tiny_backbone(str(tmp_path / "tiny.keras"))
    eight = run_on_devices(_EIGHT_DEVICES.format(data=sample_dir, backbone=backbone, out=str(tmp_path / "cv8")))
    one = cv.run(cv.plan(cv.CVConfig.smoke(data_dir=sample_dir, backbone=backbone, out_dir=str(tmp_path / "cv1"),
                                           steps=6, verbose=0)))
    assert eight["devices"] == 8
    np.testing.assert_allclose(eight["probs"], [r["probs"] for r in one.oof], atol=1e-4)


def test_the_few_label_regime_draws_each_folds_subset_inside_its_training_part(sample_dir, tmp_path):
    backbone = standin.make_tiny_backbone(str(tmp_path / "backbone.keras"))
    config = cv.CVConfig(data_dir=sample_dir, backbone=backbone, out_dir=str(tmp_path / "cv"), folds=4,
                         labels_per_class=2, global_batch_size=8, seed=1)
    plan = cv.plan(config)
    table, keep = plan.parts["folds"], plan.parts["keep"]
    truth = dict(zip(table.image_ids, table.labels.tolist()))
    for k, ids in enumerate(keep):
        assert not set(ids) & set(table.fold_ids(k))  # never a validation image of its fold
        assert sorted(truth[i] for i in ids) == sorted(list(range(5)) * 2)  # 2 of each class
        assert plan.facts["label_subset"][f"fold_{k}"] == ids
    assert keep[0] != keep[1]  # each fold draws its own
