"""kitlib.bit.predict: the predict command: a valid submission, the class histogram, 8 devices like 1."""

import os

import numpy as np
import pytest

from kitlib import cli
from kitlib.bit import export, submission
from tests.conftest import run_on_devices


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """An untrained 5-class classifier at 32 px (outputs differ per image, which is all these tests need)."""
    return export.make_stand_in_classifier(str(tmp_path_factory.mktemp("model")), image_size=32)

def test_cli_predict_writes_a_valid_submission_and_prints_the_histogram(tiny_model_dir, sample_dir, tmp_path, capsys):
    out = str(tmp_path / "out" / "submission.csv")
    code = cli.main(["predict", "--data", sample_dir, "--model", tiny_model_dir, "--out", out,
                     "--tta", "flip", "--source", "tfrecords"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Cassava Mosaic Disease (CMD)" in printed and "15 images x 3 view(s)" in printed
    ids, _ = submission.validate_submission(out, os.path.join(sample_dir, "sample_submission.csv"))
    assert len(ids) == 15

_PREDICT_RUN = """
import json
from kitlib import cli
from kitlib.bit import submission
from kitlib.bit import tta as bit_tta
assert cli.main(["predict", "--data", {data!r}, "--model", {model!r}, "--out", {out!r}, "--tta", "flip",
                 "--batch-size", "4"]) == 0
ids, labels = submission.validate_submission({out!r}, {sample!r})
probs = submission.predict({model!r}, {data!r}, tta="flip", batch_size=4)[1]
print(json.dumps({{"ids": ids, "labels": labels, "probs": probs.tolist()}}))
"""

@pytest.mark.slow
@pytest.mark.matrix
def test_predict_on_eight_devices_writes_what_one_device_writes(tiny_model_dir, sample_dir, tmp_path):
    sample = os.path.join(sample_dir, "sample_submission.csv")
    runs = {n: run_on_devices(_PREDICT_RUN.format(data=sample_dir, model=tiny_model_dir, sample=sample,
                                                  out=str(tmp_path / f"sub{n}.csv")), devices=n) for n in (8, 1)}
    assert runs[8]["ids"] == runs[1]["ids"] == submission.read_sample_ids(sample)
    assert runs[8]["labels"] == runs[1]["labels"]
    np.testing.assert_allclose(runs[8]["probs"], runs[1]["probs"], atol=1e-6)  # batches of 4 padded to 8 rows

def test_cli_reports_a_bad_option_without_a_traceback(tiny_model_dir, sample_dir, tmp_path, capsys):
    code = cli.main(["predict", "--data", sample_dir, "--model", tiny_model_dir, "--out", str(tmp_path / "s.csv"),
                     "--tta", "rotate"])
    assert code == 2 and "kitlib predict: error: argument --tta: rotate: tta='rotate': unknown view" in capsys.readouterr().err
