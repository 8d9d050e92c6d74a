"""The competition loop end to end on a real image set with planted label noise: cv -> clean-labels ->
cv --exclude (the same folds) -> predict --model (both cv runs, OOF weights), scored on a held-out split.

    python bench/competition_loop.py [--set digits] [--noise 0.08] [--folds 5] [--steps 240] [--out runs/bench_loop]

The set (`bench/image_sets.py`) is split once: 20 % held out as the test set (its true labels kept aside),
80 % written as training data with a share of its labels changed to another class at random (the planted
noise). Every stage runs through the kit's commands as a user runs them (`kitlib.cli.main`); the script
prints the CV accuracy (mean ± std over folds), the OOF accuracy, how many planted labels clean-labels found,
and the held-out accuracy of the ensemble against the best and the mean single fold, with the time of each
stage. Backbone: the kit's small CNN from random initialisation (`kitlib.models.standin`), so the figures
measure the loop, not a pretrained model.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kitlib  # noqa: E402,F401 - Keras on JAX before image_sets imports TensorFlow
import image_sets  # noqa: E402

from kitlib import cli  # noqa: E402
from kitlib.bit import cv, submission  # noqa: E402
from kitlib.data import competition, writing  # noqa: E402
from kitlib.models import standin  # noqa: E402


def write_split(name, out_dir, noise, seed=0):
    """Training data (labels with planted noise) and a labelled held-out test set; returns (truth, planted)."""
    images, labels, class_names = getattr(image_sets, name)()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    held, train = order[: len(order) // 5], order[len(order) // 5:]
    noisy = labels.copy()
    planted = rng.choice(train, int(noise * len(train)), replace=False)
    noisy[planted] = (labels[planted] + rng.integers(1, len(class_names), len(planted))) % len(class_names)
    name_of = {i: f"{i:05d}.png" for i in range(len(images))}
    for split, members, targets in (("train", train, noisy), ("test", held, None)):
        examples = ({"image": images[i], "image_name": name_of[i],
                     **({"target": int(targets[i])} if targets is not None else {})} for i in members)
        writing.write_tfrecords(examples, competition.split_paths(out_dir, split).tfrecords_dir,
                                labeled=targets is not None, shard_size=400)
    with open(os.path.join(out_dir, competition.LABEL_MAP_FILE), "w") as f:
        json.dump({str(i): n for i, n in enumerate(class_names)}, f)
    truth = {name_of[i]: int(labels[i]) for i in held}
    return truth, {name_of[i] for i in planted}


def held_out_accuracy(csv_path, truth, num_classes):
    ids, labels = submission.validate_submission(csv_path, num_classes=num_classes)
    return float(np.mean([labels[n] == truth[i] for n, i in enumerate(ids)]))


def _timed(argv):
    start = time.perf_counter()
    if cli.main(argv) != 0:
        raise SystemExit(f"kitlib {' '.join(argv)} failed")
    return round(time.perf_counter() - start, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="digits", choices=["digits", "faces", "photos"])
    parser.add_argument("--noise", type=float, default=0.08, help="share of training labels changed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="fine-tuning steps per fold")
    parser.add_argument("--threshold", type=float, default=0.7, help="clean-labels' threshold")
    parser.add_argument("--out", default="runs/bench_loop")
    args = parser.parse_args(argv)
    data, out = os.path.join(args.out, "data"), args.out
    truth, planted = write_split(args.set, data, args.noise)
    classes = len(json.load(open(os.path.join(data, competition.LABEL_MAP_FILE))))
    backbone = standin.make_tiny_backbone(os.path.join(out, "small_cnn.keras"))
    common = ["--data", data, "--backbone", backbone, "--folds", str(args.folds), "--steps", str(args.steps),
              "--batch-size", "32", "--resolution", "40", "32", "--base-lr", "16.0", "--evaluations", "2",
              "--seed", "0", "--verbose", "0"]
    seconds = {"cv": _timed(["cv", "--out", f"{out}/cv1"] + common)}
    seconds["clean-labels"] = _timed(["clean-labels", "--oof", f"{out}/cv1", "--out", f"{out}/suspects.csv",
                                      "--threshold", str(args.threshold), "--verbose", "0"])
    os.makedirs(f"{out}/cv2", exist_ok=True)
    with open(f"{out}/cv1/folds.csv") as src, open(f"{out}/cv2/folds.csv", "w") as dst:
        dst.write(src.read())  # the same folds: the two runs' OOF predictions can be weighed against each other
    seconds["cv --exclude"] = _timed(["cv", "--out", f"{out}/cv2", "--exclude", f"{out}/suspects.csv"] + common)
    seconds["predict (ensemble)"] = _timed(["predict", "--data", data, "--model", f"{out}/cv1", f"{out}/cv2",
                                            "--weights", "oof", "--out", f"{out}/ensemble.csv", "--tta", "flip",
                                            "--verbose", "0"])
    singles = []
    for k in range(args.folds):
        _timed(["predict", "--data", data, "--model", cv.fold_dir(f"{out}/cv1", k), "--out", f"{out}/fold{k}.csv",
                "--tta", "flip", "--verbose", "0"])
        singles.append(held_out_accuracy(f"{out}/fold{k}.csv", truth, classes))
    with open(f"{out}/suspects.csv") as f:
        found = {line.split(",")[0] for line in f.readlines()[1:]}
    runs = {name: json.load(open(f"{out}/{name}/cv.json")) for name in ("cv1", "cv2")}
    figures = dict(set=args.set, train_images=runs["cv1"]["images"], held_out=len(truth), planted=len(planted),
                   suspects=len(found), planted_found=len(found & planted),
                   cv={k: dict(mean=round(r["mean_accuracy"], 4), std=round(r["std_accuracy"], 4),
                               oof=round(r["oof_accuracy"], 4)) for k, r in runs.items()},
                   held_out_accuracy=dict(ensemble=held_out_accuracy(f"{out}/ensemble.csv", truth, classes),
                                          best_fold=max(singles), mean_fold=float(np.mean(singles))),
                   seconds=seconds)
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
