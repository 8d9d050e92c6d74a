"""The ``cv`` command: stratified k-fold fine-tuning with out-of-fold (OOF) predictions.

``plan(CVConfig(...))`` reads the labels of ``data_dir`` and assigns stratified folds at image level
(`kitlib.data.folds`; a ``folds.csv`` already in ``out_dir`` is reused, so a rerun resumes fold by fold);
``run(plan)`` fine-tunes one classifier per fold exactly as ``finetune`` does (any finetune setting applies to
every fold), predicts each fold's validation images with it, and writes under ``out_dir``:

    folds.csv                 image_id,label,fold: the folds every model of the loop shares
    fold_<k>/                 the fold's classifier, config.json, finetune.json, history.csv (as ``finetune``)
    fold_<k>/oof.csv          its validation images' OOF rows (written last: a fold with it is done)
    oof.csv                   image_id,label,fold,pred,p_0..p_{C-1}: one row per training image
    cv.json                   per-fold accuracy, mean ± std, OOF accuracy, the OOF confusion matrix
    oof_confusion.png, folds.png

A cv folder is an ensemble for ``predict --model OUT`` (its folds' probabilities averaged), and its ``oof.csv``
is what ``clean-labels`` reads and ``predict --weights oof`` fits member weights on.
"""

import csv
import dataclasses
import os

import numpy as np

from kitlib import checkpoint, checks, command
from kitlib.bit import export, finetune, submission, tta
from kitlib.command import setting
from kitlib.data import folds as kfold
from kitlib.data import tfrecords

OOF_FILE = "oof.csv"
CV_FILE = "cv.json"


@dataclasses.dataclass(frozen=True)
class CVConfig(finetune.FinetuneConfig):
    """What a k-fold run asks for: every `kitlib.bit.finetune.FinetuneConfig` field (applied to each fold; the
    folds replace ``val_fraction``), and the number of folds."""
    folds: int = setting(5, "K: stratified folds at image level (every image validates in exactly one)",
                         valid=checks.integer(2, 1000))
    oof_tta: str = setting("none", "test-time views of the OOF predictions (none: validation's own preprocessing)",
                           valid=checks.satisfies(tta.parse_tta, "a preset or comma list of views"))

    @classmethod
    def smoke(cls, **overrides):
        """3 folds of the fine-tuning smoke run (`kitlib.bit.finetune.FinetuneConfig.smoke`), 24 steps each."""
        return super().smoke(**dict(dict(folds=3, steps=24), **overrides))


CONFIG = CVConfig


def fold_dir(out_dir, fold):
    """``out_dir/fold_<fold>``: where fold `fold`'s classifier goes."""
    return os.path.join(out_dir, f"fold_{fold}")


def is_cv_dir(path):
    """Does `path` hold a finished or resumable cv run (a ``folds.csv``)?"""
    return os.path.isfile(os.path.join(os.fspath(path), kfold.FOLDS_FILE))


def plan(config, rt=None):
    """The k-fold run: labels read, folds assigned (or reused), each fold's finetune config made.

    Returns:
        a `kitlib.command.Plan` with ``parts["folds"]`` (`kitlib.data.folds.Folds`) and ``parts["fold_configs"]``.
    """
    command.require(config, "data_dir", "backbone", "out_dir")
    rt = rt or command.runtime_for(config)
    if getattr(rt, "process_count", 1) > 1:
        raise ValueError("kitlib cv runs in one process (its folds are short runs one host trains well): launch "
                         "it on one host, or run `finetune` with --coordinator ... for one long multi-host run")
    where = config.out_dir if is_cv_dir(config.out_dir) else config.resume_from  # a run to continue, or None
    if where is not None and not is_cv_dir(where):
        raise ValueError(f"{where} holds no cv run to resume (no {kfold.FOLDS_FILE}): pass the --out folder of an "
                         "earlier cv run (on Kaggle, its notebook output under /kaggle/input/...)")
    record = command.read_record(where) if where else None
    if record is not None and config.seed is None:  # folds and fold runs resume only with the seed they had
        seed, seed_reason = int(record["settings"]["seed"]), f"the seed of the cv run being resumed in {where}"
    else:
        seed, seed_reason = command.resolve_seed(config.seed)
    reasons = {"seed": seed_reason} if seed_reason else {}
    saved = os.path.join(where or config.out_dir, kfold.FOLDS_FILE)
    ids, labels, class_names = kfold.read_labels(config.data_dir)
    if os.path.isfile(saved):
        table = kfold.load(saved)
        if set(table.image_ids) != set(ids) or table.k != config.folds:
            raise ValueError(f"{saved} holds {table.k} folds of {len(table.image_ids)} images; this run asks for "
                             f"{config.folds} of {len(ids)}: use a new --out, or delete that folder to start over")
        reasons["folds"] = f"reused from {saved} (the run resumes fold by fold)"
    else:
        table = kfold.assign(ids, labels, config.folds, seed)
    settings = dataclasses.replace(config, seed=seed, val_fraction=0.0)
    if record is not None:
        checkpoint.refuse_other_plan(dict(settings=command.json_ready(command.as_dict(settings))), record, where,
                                     "cv run")
    counts = table.counts(len(class_names))
    facts = dict(images=len(ids), classes=list(class_names), fold_sizes=counts.sum(1).tolist(),
                 class_counts_per_fold=counts.tolist(), **command.runtime_facts(rt))
    fold_configs = [finetune.FinetuneConfig(**dict(_finetune_fields(settings), out_dir=fold_dir(config.out_dir, k),
                                                   resume_from=None))  # the whole cv folder is copied: run
                    for k in range(table.k)]
    keep = _few_labels(config, table, seed)
    if keep is not None:
        facts["label_subset"] = {f"fold_{k}": ids for k, ids in enumerate(keep)}
    return command.Plan("cv", settings, reasons, facts, parts=dict(folds=table, fold_configs=fold_configs,
                                                                   class_names=class_names, keep=keep), rt=rt)


def _few_labels(config, table, seed):
    """None, or per fold the ids its training part trains on in the few-label regime (``labels_per_class`` or
    ``label_fraction``: `kitlib.data.folds.label_subset` inside the fold's training part, seeded per fold)."""
    if config.labels_per_class is None and config.label_fraction is None:
        return None
    keep = []
    for k in range(table.k):
        part = np.flatnonzero(table.folds != k)
        chosen, _ = kfold.label_subset(table.labels[part], config.labels_per_class, config.label_fraction, 0.0,
                                       seed + k)
        keep.append([table.image_ids[i] for i in part[chosen]])
    return keep


def _finetune_fields(config):
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(finetune.FinetuneConfig)}


@dataclasses.dataclass
class CVResult:
    """What `run` returns: the OOF rows, the summary written to cv.json, and where things are."""
    oof: list  # dicts image_id, label, fold, pred, probs [C]
    summary: dict
    out_dir: str


def run(plan):
    """Fine-tune every fold not yet done, predict its validation images, and write oof.csv and cv.json."""
    config, table = plan.settings, plan.parts["folds"]
    if config.preflight:  # every fold compiles the same step: the first one stands for all
        return finetune.run(finetune.plan(plan.parts["fold_configs"][0], plan.rt, _fold_source(plan, 0)))
    os.makedirs(config.out_dir, exist_ok=True)
    if config.resume_from is not None and not is_cv_dir(config.out_dir):
        checkpoint.copy_run(config.resume_from, config.out_dir)  # the folds, the finished folds, the one in progress
    if not os.path.isfile(os.path.join(config.out_dir, kfold.FOLDS_FILE)):
        kfold.save(table, os.path.join(config.out_dir, kfold.FOLDS_FILE))
    plan.save(config.out_dir)
    for k in range(table.k):
        done = os.path.join(fold_dir(config.out_dir, k), OOF_FILE)
        if os.path.isfile(done):
            if config.verbose:
                print(f"kitlib cv: fold {k + 1}/{table.k} done before ({done}); reused")
            continue
        if config.verbose:
            print(f"kitlib cv: fold {k + 1}/{table.k}: {len(table.fold_ids(k))} validation images")
        source = _fold_source(plan, k)
        step = finetune.plan(plan.parts["fold_configs"][k], plan.rt, source)
        if config.verbose:
            print(step.describe())
        if finetune.run(step).stopped_after is not None:  # the time limit: this fold resumes when rerun
            print(f"kitlib cv: stopped in fold {k + 1}/{table.k}; continue with: {command.rerun_hint('cv')}")
            return CVResult([], dict(stopped_in_fold=k), config.out_dir)
        _write_oof(done, _predict_fold(step, config), plan.parts["class_names"])
    rows = read_oof(config.out_dir, table)
    summary = summarize(rows, table.k, len(plan.parts["class_names"]))
    write_oof(os.path.join(config.out_dir, OOF_FILE), rows, len(plan.parts["class_names"]))
    command.write_json(os.path.join(config.out_dir, CV_FILE), summary)
    _plots(config.out_dir, summary, plan.parts["class_names"])
    if config.verbose:
        print(describe(summary))
    return CVResult(rows, summary, config.out_dir)


def _fold_source(plan, k):
    config = plan.settings
    exclude = kfold.read_id_list(config.exclude) if config.exclude else None
    keep = plan.parts.get("keep")
    return kfold.training_source(config.data_dir, plan.parts["folds"], k, exclude, config.relabel,
                                 config.extra_data, seed=config.seed, keep=None if keep is None else keep[k])


def _predict_fold(step, config):
    """[(image_id, label, probs [C])] of the fold's validation images, by the fold's saved classifier."""
    classifier = export.load_classifier(step.settings.out_dir)
    val = step.parts["source"].val
    labels = {}

    def decoded(ex):
        labels_key = ex["image_name"]
        return {"image": tfrecords.decode_image(ex["image"]) if ex["image"].dtype == "string" else ex["image"],
                "image_name": labels_key, "label": ex["label"]}

    dataset = val.map(decoded)
    with tfrecords.explain_errors():
        for ex in dataset.map(lambda ex: {"image_name": ex["image_name"], "label": ex["label"]}):
            labels[ex["image_name"].numpy().decode()] = int(ex["label"])
    ids, probs = submission.predict(classifier, dataset, tta=config.oof_tta, batch_size=step.settings.global_batch_size)
    return [(i, labels[i], p) for i, p in zip(ids, probs)]


def _write_oof(path, rows, class_names):
    """One fold's OOF rows, atomically (its presence marks the fold done)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "label"] + [f"p_{c}" for c in range(len(class_names))])
        writer.writerows([i, label] + [f"{p:.6f}" for p in probs] for i, label, probs in rows)
    os.replace(tmp, path)


def read_oof(out_dir, table):
    """Every fold's OOF rows, in the order of ``folds.csv``: dicts image_id, label, fold, pred, probs [C]."""
    by_id = {}
    for k in range(table.k):
        for row in load_oof(os.path.join(fold_dir(out_dir, k), OOF_FILE)):
            by_id[row["image_id"]] = dict(row, fold=k)
    missing = [i for i in table.image_ids if i not in by_id]
    if missing:
        raise ValueError(f"{out_dir}: no OOF prediction for {len(missing)} images (e.g. {missing[0]}); rerun cv")
    return [by_id[i] for i in table.image_ids]


def load_oof(path):
    """The rows of an OOF file (a fold's or the whole ``oof.csv``): dicts image_id, label, (fold,) pred, probs."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in (reader.fieldnames or []) if c.startswith("p_")]
        if not reader.fieldnames or not {"image_id", "label"} <= set(reader.fieldnames) or not columns:
            raise tfrecords.DataError(f"{path}: expected the columns image_id,label,...,p_0..p_C-1 of an OOF file, "
                                      f"got {reader.fieldnames}")
        rows = []
        for r in reader:
            probs = np.asarray([float(r[c]) for c in columns], np.float32)
            row = dict(image_id=r["image_id"], label=int(r["label"]), pred=int(np.argmax(probs)), probs=probs)
            if r.get("fold") not in (None, ""):
                row["fold"] = int(r["fold"])
            rows.append(row)
    return rows


def write_oof(path, rows, num_classes):
    """``oof.csv``: image_id,label,fold,pred,p_0..p_{C-1}, one row per training image, atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "label", "fold", "pred"] + [f"p_{c}" for c in range(num_classes)])
        writer.writerows([r["image_id"], r["label"], r["fold"], r["pred"]] + [f"{p:.6f}" for p in r["probs"]]
                         for r in rows)
    os.replace(tmp, path)
    return path


def summarize(rows, k, num_classes):
    """cv.json's figures from OOF rows: per-fold accuracy, their mean and std, OOF accuracy, confusion matrix."""
    labels = np.asarray([r["label"] for r in rows])
    preds = np.asarray([r["pred"] for r in rows])
    fold = np.asarray([r["fold"] for r in rows])
    per_fold = [float(np.mean(preds[fold == f] == labels[fold == f])) for f in range(k)]
    confusion = np.zeros([num_classes, num_classes], np.int64)
    np.add.at(confusion, (labels, preds), 1)
    return dict(folds=k, images=len(rows), per_fold_accuracy=per_fold, mean_accuracy=float(np.mean(per_fold)),
                std_accuracy=float(np.std(per_fold)), oof_accuracy=float(np.mean(preds == labels)),
                confusion_matrix=confusion.tolist())


def describe(summary):
    """cv.json in one paragraph, for printing."""
    folds = ", ".join(f"{a:.3f}" for a in summary["per_fold_accuracy"])
    return (f"kitlib cv: {summary['folds']} folds of {summary['images']} images: accuracy per fold {folds}; "
            f"mean {summary['mean_accuracy']:.3f} ± {summary['std_accuracy']:.3f}; OOF {summary['oof_accuracy']:.3f}")


def _plots(out_dir, summary, class_names):
    """The OOF confusion matrix and the per-fold accuracy as PNGs beside cv.json."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from kitlib import viz  # noqa: PLC0415

    for name, figure in (("oof_confusion.png", viz.plot_confusion_matrix(summary["confusion_matrix"], class_names)),
                         ("folds.png", viz.plot_fold_accuracy(summary))):
        figure.savefig(os.path.join(out_dir, name), dpi=90, bbox_inches="tight")
        plt.close(figure)
