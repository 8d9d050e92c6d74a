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
