"""Ensembles at predict time: members, their weights fitted on out-of-fold predictions, and the time budget.

A member is a classifier folder (``finetune --out``) or a ``cv`` folder, whose folds' classifiers are averaged:
p_m(c | x) = (1 / K) Σ_k p_{m,k}(c | x). The ensemble is p(c | x) = Σ_m w_m p_m(c | x) with w ≥ 0, Σ w = 1,
every p after test-time augmentation. With ``weights="oof"`` the w are fitted on the members' OOF
predictions (their ``oof.csv``; the members must share one ``folds.csv``, so each image's OOF rows come from
models that never saw it): the w minimising the OOF log loss, kept only when their OOF accuracy is at
least the equal mean's and every single member's (else the best of those), so the weighted ensemble is
never worse on OOF than its best member.
"""

import dataclasses
import os

import numpy as np

from kitlib.bit import export, submission
from kitlib.data import folds as kfold

KAGGLE_LIMIT_S = 9 * 3600  # a code competition's notebook stops after 9 hours
CASSAVA_TEST_IMAGES = 15_000  # about the size of Cassava's hidden test set


@dataclasses.dataclass(frozen=True)
class Member:
    """One member: a name, its classifier folders, and its cv folder (None for a single classifier)."""
    name: str
    model_dirs: tuple
    cv_dir: str = None


def members(paths):
    """The `Member` of each path: a cv folder (its ``fold_<k>/`` classifiers) or a classifier folder."""
    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isfile(os.path.join(path, kfold.FOLDS_FILE)):
            dirs = sorted((os.path.join(path, d) for d in os.listdir(path)
                           if d.startswith("fold_") and os.path.isfile(os.path.join(path, d, export.META_FILE))),
                          key=lambda d: int(d.rsplit("_", 1)[1]))
            if not dirs:
                raise FileNotFoundError(f"{path}: a cv folder without any fold's classifier; run cv to the end")
            found.append(Member(os.path.basename(path.rstrip("/")) or path, tuple(dirs), path))
        elif os.path.isfile(os.path.join(path, export.META_FILE)):
            found.append(Member(os.path.basename(path.rstrip("/")) or path, (path,)))
        else:
            raise FileNotFoundError(f"{path}: neither a classifier folder ({export.META_FILE}: what finetune --out "
                                    f"writes) nor a cv folder ({kfold.FOLDS_FILE}: what cv --out writes)")
    return found


def load_oof(member):
    """(image ids [N], labels int [N], probs float32 [N, C]) of a cv member's ``oof.csv``."""
    from kitlib.bit import cv  # noqa: PLC0415

    if member.cv_dir is None:
        raise ValueError(f"{member.name}: weights='oof' needs cv folders (with oof.csv); this is one classifier")
    rows = cv.load_oof(os.path.join(member.cv_dir, cv.OOF_FILE))
    return ([r["image_id"] for r in rows], np.asarray([r["label"] for r in rows]),
            np.stack([r["probs"] for r in rows]))


def shared_oof(found):
    """(labels [N], [probs [N, C] per member]) aligned by image, refusing members with other folds."""
    tables = [kfold.load(os.path.join(m.cv_dir, kfold.FOLDS_FILE)) if m.cv_dir else None for m in found]
    first = tables[0]
    for m, table in zip(found, tables):
        if table is None or (table.image_ids, table.folds.tolist()) != (first.image_ids, first.folds.tolist()):
            raise ValueError(f"{m.name}: weights='oof' needs every member to be a cv folder made on the same "
                             f"folds.csv as {found[0].name}'s (copy it into the new cv --out before running)")
    aligned = []
    for m in found:
        ids, labels, probs = load_oof(m)
        order = {i: n for n, i in enumerate(ids)}
        aligned.append(probs[[order[i] for i in first.image_ids]])
    return first.labels, aligned


def _accuracy(probs, labels):
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def fit_weights(member_probs, labels):
    """Non-negative weights summing to 1 for the members' OOF probabilities.

    Args:
        member_probs: M arrays [N, C]. labels: int [N].
    Returns:
        (weights [M], report): report has the OOF accuracy of each member, of the equal mean and of the
        chosen weights, and which candidate was chosen ("fitted", "equal" or a member's index).
    """
    from scipy.optimize import minimize  # noqa: PLC0415 - scipy only when weights are fitted

    stack = np.stack([np.asarray(p, np.float64) for p in member_probs])  # [M, N, C]
    m = len(stack)
    rows = np.arange(len(labels))

    def nll(theta):  # w = softmax(theta): the simplex without constraints
        w = np.exp(theta - theta.max())
        w /= w.sum()
        return -np.mean(np.log(np.tensordot(w, stack, 1)[rows, labels] + 1e-12))

    theta = minimize(nll, np.zeros(m), method="L-BFGS-B").x
    fitted = np.exp(theta - theta.max())
    candidates = [("fitted", fitted / fitted.sum()), ("equal", np.full(m, 1.0 / m))]
    candidates += [(i, np.eye(m)[i]) for i in range(m)]
    scores = [_accuracy(np.tensordot(w, stack, 1), labels) for _, w in candidates]
    best = int(np.argmax(scores))  # the first of the best: fitted, then equal, then a member
    report = dict(member_accuracy=[_accuracy(p, labels) for p in stack], mean_accuracy=scores[1],
                  weighted_accuracy=scores[best], chosen=candidates[best][0])
    return candidates[best][1], report


def predict_members(found, classifiers, source, views, batch_size, kind, verbose=0):
    """The members' averaged probabilities and their cost.

    Args:
        found: `Member` s. classifiers: {model dir: loaded `kitlib.bit.export.Classifier`}.
        source, views, batch_size, kind: as `kitlib.bit.submission.predict`.
    Returns:
        (ids [N], [probs [N, C] per member], seconds per image per member): the forward passes of the
        member's classifiers, TTA included, timed from each classifier's second batch on (the first holds the
        compile); with a single batch, that batch (an upper bound).
    """
    ids, per_member, cost = None, [], []
    for member in found:
        parts, seconds = [], 0.0
        for model_dir in member.model_dirs:
            timing = []
            got, probs = submission.predict(classifiers[model_dir], source, views, batch_size, kind, verbose=verbose,
                                            timing=timing)
            if ids is not None and got != ids:
                raise ValueError(f"{model_dir}: predicted the images in another order than {found[0].name}")
            ids = got
            parts.append(probs)
            steady = timing[1:] or timing  # after the compile
            seconds += sum(s for _, s in steady) / max(1, sum(n for n, _ in steady))
        per_member.append(np.mean(parts, axis=0))
        cost.append(seconds)
    return ids, per_member, cost


def check_budget(cost, images, force=False):
    """The estimated time of predicting `images` images with members costing `cost` s per image, against the
    9-hour limit: a line to print; ValueError over the limit unless `force`."""
    estimate = images * float(np.sum(cost))
    line = (f"kitlib predict: {images:,} images x {len(cost)} member(s) at {', '.join(f'{c * 1e3:.1f}' for c in cost)} "
            f"ms per image: ~{estimate / 3600:.2f} h of the {KAGGLE_LIMIT_S // 3600} h limit")
    if estimate > KAGGLE_LIMIT_S and not force:
        raise ValueError(f"{line}: over it. Drop members or views (--tta), or pass --force to predict anyway; "
                         "nothing was written")
    return line
