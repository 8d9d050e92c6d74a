"""kitlib.data.folds: stratified image-level folds, saved and reused, and the training sets made from them."""

import csv
import os

import numpy as np
import pytest

from kitlib.data import folds, sources


def _labels(counts, seed=0):
    labels = np.repeat(np.arange(len(counts)), counts)
    return [f"img{i:04d}.jpg" for i in range(len(labels))], np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("counts, k", [((20, 20, 20, 20, 20), 5), ((13, 1, 7, 61, 2), 5), ((9, 8), 3), ((3, 4), 7)])
def test_folds_cover_every_image_once_and_each_class_evenly(counts, k):
    ids, labels = _labels(counts)
    table = folds.assign(ids, labels, k, seed=3)
    assert table.image_ids == tuple(ids) and table.folds.shape == (len(ids),)
    assert set(table.folds.tolist()) <= set(range(k))  # each image in exactly one validation fold
    per_fold = table.counts(len(counts))  # [K, C]
    assert per_fold.sum() == len(ids) and (per_fold.sum(0) == np.asarray(counts)).all()
    for c, n in enumerate(counts):  # each fold holds floor or ceil of n_c / K of every class
        assert set(per_fold[:, c].tolist()) <= {n // k, -(-n // k)}, (c, per_fold[:, c])
    assert per_fold.sum(1).max() - per_fold.sum(1).min() <= 1  # fold sizes within one image


def test_folds_are_stable_for_a_seed_and_round_trip_through_folds_csv(tmp_path):
    ids, labels = _labels((30, 10, 5))
    a, b = folds.assign(ids, labels, 4, seed=1), folds.assign(ids, labels, 4, seed=1)
    assert (a.folds == b.folds).all()
    assert not (folds.assign(ids, labels, 4, seed=2).folds == a.folds).all()
    loaded = folds.load(folds.save(a, str(tmp_path / "folds.csv")))
    assert (loaded.image_ids, loaded.labels.tolist(), loaded.folds.tolist(), loaded.k) == (
        a.image_ids, a.labels.tolist(), a.folds.tolist(), 4)
    with pytest.raises(ValueError, match="between 2"):
        folds.assign(ids, labels, 1)


def test_read_labels_of_the_sample_follows_train_csv(sample_dir):
    ids, labels, names = folds.read_labels(sample_dir)
    with open(os.path.join(sample_dir, "train.csv")) as f:
        rows = list(csv.DictReader(f))
    assert ids == [r["image_id"] for r in rows] and labels.tolist() == [int(r["label"]) for r in rows]
    assert len(names) == 5


def _names_and_labels(dataset):
    return {ex["image_name"].numpy().decode(): int(ex["label"]) for ex in dataset}


@pytest.mark.slow
def test_a_fold_validates_on_its_images_and_trains_on_the_rest(sample_dir, tmp_path):
    ids, labels, _ = folds.read_labels(sample_dir)
    table = folds.assign(ids, labels, 4, seed=0)
    source = folds.training_source(sample_dir, table, 1)
    val, train = _names_and_labels(source.val), _names_and_labels(source.train)
    assert set(val) == set(table.fold_ids(1)) and source.val_size == len(val) == 25
    assert set(train) == set(ids) - set(val) and source.train_size == len(train) == 75
    truth = dict(zip(ids, labels.tolist()))
    assert all(truth[i] == label for i, label in {**val, **train}.items())

    outsiders = [i for i in ids if i not in val][:5]
    suspects = {i: (truth[i] + 1) % 5 for i in outsiders + [table.fold_ids(1)[0]]}  # one inside the fold
    without = folds.training_source(sample_dir, table, 1, exclude=suspects)
    assert set(_names_and_labels(without.train)) == set(train) - set(outsiders) and without.train_size == 70
    assert set(_names_and_labels(without.val)) == set(val)  # validation keeps every image, label as given
    relabelled = _names_and_labels(folds.training_source(sample_dir, table, 1, exclude=suspects, relabel=True).train)
    assert all(relabelled[i] == suspects[i] for i in outsiders) and len(relabelled) == 75
    with pytest.raises(ValueError, match="oof_label"):
        folds.training_source(sample_dir, table, 1, exclude={outsiders[0]: None}, relabel=True)


@pytest.mark.slow
def test_extra_data_joins_training_only_and_adjusted_counts_again(sample_dir):
    ids, labels, _ = folds.read_labels(sample_dir)
    table = folds.assign(ids, labels, 5, seed=0)
    source = folds.training_source(sample_dir, table, 0, extra_data=sample_dir)  # the sample as its own extra
    assert source.train_size == 80 + 100 and len(list(source.train)) == 180 and source.val_size == 20
    split = sources.load_source(sample_dir, 0.25, seed=0)
    first = next(iter(_names_and_labels(split.train)))
    smaller = folds.adjusted(split, exclude={first: None})
    assert smaller.train_size == split.train_size - 1 and first not in _names_and_labels(smaller.train)
    assert folds.adjusted(split) is split


def test_a_tfrecord_set_of_other_than_five_classes_reads_every_label(tmp_path):
    import json  # noqa: PLC0415

    from kitlib.data import writing  # noqa: PLC0415

    images = np.random.default_rng(0).integers(0, 255, [14, 8, 8, 3], dtype=np.uint8)
    examples = ({"image": images[i], "image_name": f"{i}.png", "target": i % 7} for i in range(14))
    writing.write_tfrecords(examples, str(tmp_path / "train_tfrecords"), shard_size=5)
    (tmp_path / "label_num_to_disease_map.json").write_text(json.dumps({str(c): f"c{c}" for c in range(7)}))
    ids, labels, names = folds.read_labels(str(tmp_path))  # the label map's 7 classes bound the targets, not 5
    assert labels.tolist() == [i % 7 for i in range(14)] and len(names) == 7
    split = sources.load_source(str(tmp_path), 0.34, seed=0)
    assert sorted(int(ex["label"]) for ds in (split.train, split.val) for ex in ds) == sorted(labels.tolist())


@pytest.mark.parametrize("counts", [(20, 20, 20, 20, 20), (13, 1, 7, 61, 2)])
def test_a_label_subset_is_stratified_seeded_and_disjoint_from_its_validation(counts):
    _, labels = _labels(counts)
    train, val = folds.label_subset(labels, per_class=4, val_fraction=0.2, seed=5)
    per_class = np.bincount(labels[train], minlength=len(counts))
    assert per_class.tolist() == [min(4, n) for n in counts]  # N per class, all of a smaller class
    held = np.bincount(labels[val], minlength=len(counts))
    assert held.tolist() == [min(1, n - min(4, n)) for n in counts]  # ceil(4 * 0.2 / 0.8) = 1 where any is left
    assert not set(train.tolist()) & set(val.tolist()) and (np.diff(train) > 0).all()  # disjoint, data order
    again, _ = folds.label_subset(labels, per_class=4, val_fraction=0.2, seed=5)
    other, _ = folds.label_subset(labels, per_class=4, val_fraction=0.2, seed=6)
    assert (again == train).all() and set(other.tolist()) != set(train.tolist())
    share, none = folds.label_subset(labels, fraction=0.1, seed=5)
    assert np.bincount(labels[share], minlength=len(counts)).tolist() == [max(1, -(-n // 10)) for n in counts]
    assert none.size == 0  # val_fraction 0: no validation
    with pytest.raises(ValueError, match="exactly one"):
        folds.label_subset(labels, per_class=4, fraction=0.1)


@pytest.mark.slow
def test_a_subset_source_and_a_fold_keep_only_the_named_images(sample_dir):
    ids, labels, _ = folds.read_labels(sample_dir)
    train, val = folds.label_subset(labels, per_class=3, val_fraction=0.5, seed=0)
    source = folds.subset_source(sample_dir, [ids[i] for i in train], [ids[i] for i in val])
    assert (source.train_size, source.val_size) == (15, 15)
    assert set(_names_and_labels(source.train)) == {ids[i] for i in train}
    assert set(_names_and_labels(source.val)) == {ids[i] for i in val}
    table = folds.assign(ids, labels, 4, seed=0)
    keep = [i for i in ids if i not in table.fold_ids(1)][:7]
    fold = folds.training_source(sample_dir, table, 1, keep=keep)
    assert set(_names_and_labels(fold.train)) == set(keep) and fold.train_size == 7
    assert set(_names_and_labels(fold.val)) == set(table.fold_ids(1))  # validation: the whole fold
