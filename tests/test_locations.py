"""kitlib.locations: where the data is (the competition on Kaggle, else the bundled sample), and what to do when it is nowhere."""

import os

import pytest

from kitlib import locations


def test_find_data_dir_falls_back_to_the_bundled_sample(sample_dir):
    assert os.path.samefile(locations.find_data_dir(), sample_dir)
    assert locations.find_data_dir(local=sample_dir) == sample_dir

def test_find_data_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-sample --out"):
        locations.find_data_dir(local=str(tmp_path / "nowhere"))


def test_previous_output_finds_the_run_a_former_version_left_under_the_inputs(tmp_path):
    run = tmp_path / "input" / "kit-02-finetune" / "bit_classifier"
    run.mkdir(parents=True)
    (tmp_path / "input" / "other" / "bit_classifier").mkdir(parents=True)  # no config.json: not a run
    with pytest.raises(ValueError, match="attach the previous version's output"):
        locations.previous_output("/kaggle/working/bit_classifier", root=str(tmp_path / "input"))
    (run / "config.json").write_text("{}")
    assert locations.previous_output("/kaggle/working/bit_classifier/", root=str(tmp_path / "input")) == str(run)
