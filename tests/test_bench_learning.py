"""bench/learning.py's parts: real image sets written in the competition layout and read back, raw pixels
scored, and the paper-recipe comparison run at the rule run's budget (the accuracies themselves are printed
by the bench, never tested)."""

import dataclasses

import numpy as np
import pytest

from kitlib.data import tfrecords
from kitlib.swav import pretrain, recipe
from tests.conftest import load_bench


@pytest.fixture(scope="module")
def learning():
    return load_bench("learning")


@pytest.mark.slow
def test_digits_are_written_in_the_competition_layout_and_read_back(learning, tmp_path):
    images, labels, names = learning.image_sets.digits()
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8 and names[3] == "3"
    assert np.bincount(labels).min() >= 170 and images.max() == 255
    keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(10)])  # 40 images, 4 per class
    folder = learning.image_sets.write_set(images[keep], labels[keep], names, str(tmp_path / "digits"))
    files = tfrecords.list_tfrecords(folder)
    assert tfrecords.count_data_items(files) == 40 and tfrecords.class_names_of(folder)[9] == "9"
    read = list(learning.labelled(folder).as_numpy_iterator())
    assert sorted(r["label"] for r in read) == sorted(labels[keep].tolist())
    by_name = {r["image_name"].decode(): r["image"] for r in read}
    first = by_name[next(iter(sorted(by_name)))]
    assert first.shape == (32, 32, 3)
    scores = learning.pixel_score(folder, 32)  # 40 images, 10 classes: well above chance (0.1)
    assert scores["knn"] > 0.5 and scores["linear"] > 0.5


def test_the_paper_recipe_runs_at_the_rule_runs_budget(learning):
    rule = pretrain.resolve(pretrain.PretrainConfig(data_dir="d", out_dir="o", seed=0), 1_797, 1, "CPU", (32, 32), 10)[0]
    paper = learning.paper_config(rule, 32)
    assert (paper.epochs, paper.global_batch_size, paper.prototypes, paper.seed) == (rule.epochs, 64, 100, 0)
    timed = learning.paper_config(dataclasses.replace(rule, epochs=None), 32)  # the default: the same time budget
    assert (timed.epochs, timed.budget_minutes) == (None, rule.budget_minutes) and rule.budget_minutes > 0
    assert (paper.optimizer, paper.backbone, paper.crops) == ("lars", "small_cnn", "2x32@0.14-1,6x14@0.05-0.14")
    assert (paper.color_strength, paper.blur_p, paper.hidden_dim) == (1.0, 0.5, 2048)
    assert paper.base_lr == pytest.approx(recipe.default_learning_rate("lars", 64))
    resolved = pretrain.resolve(paper, 1_797, 1, "CPU", (32, 32))[0]  # what pretrain will run: nothing left to the rule
    assert (resolved.optimizer, resolved.crops, resolved.max_steps_per_epoch) == ("lars", paper.crops, 28)
