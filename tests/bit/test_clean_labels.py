"""kitlib.bit.clean_labels: suspects are the images whose OOF prediction confidently contradicts the label."""

import csv
import json

import numpy as np
import pytest

from kitlib import cli
from kitlib.bit import clean_labels, cv


def _oof_rows(n=400, classes=5, flipped=0.1, seed=0):
    """OOF rows of a model that learned the true classes (confident, some noise), with a share of the labels
    planted wrong: returns (rows, planted ids)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, [n, classes])
    logits[np.arange(n), truth] += rng.uniform(3, 7, n)  # mostly confident, sometimes not
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    planted = rng.choice(n, int(n * flipped), replace=False)
    labels = truth.copy()
    labels[planted] = (truth[planted] + rng.integers(1, classes, len(planted))) % classes
    rows = [dict(image_id=f"{i}.jpg", label=int(labels[i]), fold=i % 5, pred=int(np.argmax(probs[i])),
                 probs=probs[i].astype(np.float32)) for i in range(n)]
    return rows, {f"{i}.jpg" for i in planted}


def test_suspects_find_most_planted_wrong_labels_and_few_others():
    rows, planted = _oof_rows()
    found = {s["image_id"] for s in clean_labels.suspects(rows, threshold=0.8)}
    assert len(found & planted) >= 0.8 * len(planted)  # most of the planted labels
    assert len(found - planted) <= 0.05 * len(rows)  # few right labels accused
    ordered = clean_labels.suspects(rows, 0.5)
    assert [s["confidence"] for s in ordered] == sorted((s["confidence"] for s in ordered), reverse=True)
    assert all(s["oof_label"] != s["label"] and s["confidence"] >= 0.5 for s in ordered)
    with pytest.raises(ValueError, match="threshold"):
        clean_labels.suspects(rows, 0.0)


def test_the_command_writes_the_suspects_and_counts_them_per_class(tmp_path, capsys):
    rows, planted = _oof_rows(n=100)
    oof = cv.write_oof(str(tmp_path / "oof.csv"), rows, 5)
    out = tmp_path / "suspects.csv"
    assert cli.main(["clean-labels", "--oof", str(tmp_path), "--out", str(out), "--threshold", "0.8"]) == 0
    with open(out) as f:
        written = list(csv.DictReader(f))
    expected = clean_labels.suspects(cv.load_oof(oof), 0.8)
    assert [r["image_id"] for r in written] == [s["image_id"] for s in expected] and written
    assert set(written[0]) == {"image_id", "label", "oof_label", "confidence"}
    said = capsys.readouterr().out
    assert f"{len(expected)} of 100 images" in said
    record = json.loads((tmp_path / "suspects.config.json").read_text())
    assert record["command"] == "clean-labels" and record["facts"]["suspects"] == len(expected)
    assert sum(record["facts"]["per_class"].values()) == len(expected)
