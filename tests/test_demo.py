"""The README's main job: pretrain -> fine-tune -> submission on the bundled sample, end to end, on Keras 3."""

import csv
import json
import os

import pytest

from kitlib import cli
from kitlib.bit import export
from kitlib.bit.submission import validate_submission


@pytest.mark.slow
def test_demo_command_writes_a_valid_submission_and_the_plots(sample_dir, tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--data", sample_dir, "--out", str(out), "--pretrain-epochs", "2",
                     "--finetune-steps", "12"]) == 0
    sample = os.path.join(sample_dir, "sample_submission.csv")
    ids, labels = validate_submission(str(out / "submission.csv"), sample)
    with open(sample) as f:
        assert ids == [row["image_id"] for row in csv.DictReader(f)]
    assert all(0 <= int(label) < 5 for label in labels)
    for name in ("swav_loss.png", "schedule.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 5_000, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_images"] == 15 and summary["devices"] == 1
    # the SwAV backbone is what was fine-tuned, and the classifier is what predicted
    assert summary["backbone"] == str(out / "pretrain" / "backbone.keras") and os.path.isfile(summary["backbone"])
    record = json.loads((out / "finetune" / "finetune.json").read_text())
    assert record["settings"]["backbone"] == summary["backbone"] and record["facts"]["rule"]["total_steps"] == 12
    # every step saved its plan's record in the one schema
    for path, name in ((out / "config.json", "demo"), (out / "pretrain" / "config.json", "pretrain"),
                       (out / "finetune" / "config.json", "finetune"), (out / "submission.config.json", "predict")):
        saved = json.loads(path.read_text())
        assert saved["command"] == name and set(saved) == {"command", "kitlib", "settings", "chosen", "facts"}
    assert export.load_classifier(str(out / "finetune")).image_size == 64
