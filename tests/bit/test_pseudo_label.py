"""kitlib.bit.pseudo_label: confident predictions written as a data folder the kit reads back, for training only."""

import json

import numpy as np
import pytest

from kitlib import cli
from kitlib.bit import export, submission
from kitlib.data import folds, sources, tfrecords


@pytest.mark.slow
def test_pseudo_labels_are_read_back_with_the_predicted_labels(sample_dir, tmp_path):
    model = export.make_stand_in_classifier(str(tmp_path / "model"), image_size=32)
    ids, probs = submission.predict(model, f"{sample_dir}/test_images", "none")
    threshold = float(np.quantile(probs.max(1), 0.5))  # about half the images are kept
    out = tmp_path / "pseudo"
    assert cli.main(["pseudo-label", "--model", model, "--images", f"{sample_dir}/test_images", "--out", str(out),
                     "--threshold", str(threshold), "--tta", "none", "--verbose", "0"]) == 0
    expected = {i: int(np.argmax(p)) for i, p in zip(ids, probs) if p.max() >= threshold}
    shards = tfrecords.list_tfrecords(str(out))
    read = {ex["image_name"].numpy().decode(): int(ex["label"]) for ex in tfrecords.load_dataset(shards)}
    assert read == expected and 0 < len(read) < 15
    got_ids, labels, names = folds.read_labels(str(out))  # train.csv and the label map too
    assert dict(zip(got_ids, labels.tolist())) == expected and names == tuple(export.load_classifier(model).class_names)
    assert json.loads((out / "config.json").read_text())["command"] == "pseudo-label"
    split = sources.load_source(sample_dir, 0.2, seed=0)
    assert folds.adjusted(split, extra_data=str(out)).train_size == split.train_size + len(read)
    assert cli.main(["pseudo-label", "--model", model, "--images", f"{sample_dir}/test_images", "--out",
                     str(tmp_path / "none"), "--threshold", "1.0", "--tta", "none", "--verbose", "0"]) == 2
