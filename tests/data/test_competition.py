"""kitlib.data.competition: the layout's names, spelled once."""

import os

import pytest

from kitlib.data import competition


def test_split_paths_name_the_competition_layout():
    train = competition.split_paths("/d", "train")
    assert (train.tfrecords_dir, train.shards, train.images_dir, train.csv, train.label_map) == (
        "/d/train_tfrecords", "/d/train_tfrecords/*.tfrec", "/d/train_images", "/d/train.csv",
        "/d/label_num_to_disease_map.json")
    assert competition.split_paths("/d", "test").images_dir == "/d/test_images"
    with pytest.raises(ValueError, match="split"):
        competition.split_paths("/d", "val")


def test_the_bundled_sample_has_every_folder_and_file_of_the_layout(sample_dir):
    assert competition.folders() == ("train_tfrecords", "test_tfrecords", "train_images", "test_images")
    for name in competition.folders():
        assert os.path.isdir(os.path.join(sample_dir, name)), name
    for name in competition.files():
        assert competition.data_file(sample_dir, name) == os.path.join(sample_dir, name)
    assert competition.data_file(sample_dir, "nothing.csv") is None
    assert competition.data_file(["a.tfrec"], competition.SAMPLE_SUBMISSION_FILE) is None  # not a folder
