"""kitlib.bit.ensemble: members, OOF-fitted weights never worse than the best member, the 9-hour budget."""

import os
import shutil

import numpy as np
import pytest

from kitlib import cli
from kitlib.bit import ensemble, export, submission
from kitlib.data import folds


def _member_probs(labels, skill, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, [len(labels), 5])
    logits[np.arange(len(labels)), labels] += skill
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_fitted_weights_are_never_worse_on_oof_than_the_best_member(seed):
    labels = np.random.default_rng(seed).integers(0, 5, 300)
    members = [_member_probs(labels, skill, seed * 10 + i) for i, skill in enumerate((0.5, 1.5, 2.5))]
    weights, report = ensemble.fit_weights(members, labels)
    assert weights.shape == (3,) and np.all(weights >= 0) and np.isclose(weights.sum(), 1.0)
    mixed = np.tensordot(weights, np.stack(members), 1)
    accuracy = float(np.mean(mixed.argmax(1) == labels))
    assert accuracy == pytest.approx(report["weighted_accuracy"])
    assert accuracy >= max(report["member_accuracy"]) and accuracy >= report["mean_accuracy"]


def test_identical_members_get_equal_weights_and_a_budget_over_nine_hours_is_refused():
    labels = np.random.default_rng(0).integers(0, 5, 200)
    same = _member_probs(labels, 1.0, 0)
    weights, _ = ensemble.fit_weights([same, same], labels)
    np.testing.assert_allclose(np.tensordot(weights, np.stack([same, same]), 1), same, rtol=1e-6)
    assert "of the 9 h limit" in ensemble.check_budget([0.5], 15_000)  # 2.1 h
    with pytest.raises(ValueError, match="over it"):
        ensemble.check_budget([1.0, 1.5], 15_000)  # 10.4 h
    assert "10.42 h" in ensemble.check_budget([1.0, 1.5], 15_000, force=True)


def _fake_cv(root, model_dir, image_ids, k=3):
    """A cv folder whose folds are copies of one classifier (what predict reads from a cv run)."""
    os.makedirs(root)
    labels = np.arange(len(image_ids)) % 5
    folds.save(folds.assign(image_ids, labels, k, seed=0), os.path.join(root, folds.FOLDS_FILE))
    for f in range(k):
        shutil.copytree(model_dir, os.path.join(root, f"fold_{f}"))
    return root


@pytest.mark.slow
def test_an_ensemble_of_identical_members_predicts_as_one_member(sample_dir, tmp_path):
    model = export.make_stand_in_classifier(str(tmp_path / "model"), image_size=32)
    cv_dir = _fake_cv(str(tmp_path / "cv"), model, [f"{i}.jpg" for i in range(20)])
    found = ensemble.members([cv_dir, model])
    assert [len(m.model_dirs) for m in found] == [3, 1] and found[0].cv_dir == cv_dir
    one = submission.predict_and_write(model, sample_dir, str(tmp_path / "one.csv"), tta="flip", verbose=0)
    assert cli.main(["predict", "--data", sample_dir, "--model", cv_dir, model, "--out", str(tmp_path / "two.csv"),
                     "--tta", "flip", "--budget-for", "1000", "--verbose", "0"]) == 0
    assert open(tmp_path / "two.csv").read() == open(tmp_path / "one.csv").read()
    with pytest.raises(FileNotFoundError):
        ensemble.members([str(tmp_path)])  # neither a classifier nor a cv folder
    assert one.probs.shape == (15, 5)
