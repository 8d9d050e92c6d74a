"""The ``clean-labels`` command: the images whose out-of-fold prediction confidently contradicts their label.

Cassava's labels are noisy (the competition's discussion; the winners trained with noise-robust losses and
removed or relabelled a few percent of the images). A model that never saw an image and still gives another
class a probability above ``threshold`` is evidence that the label is wrong. ``plan`` reads a ``cv`` run's
``oof.csv`` and finds those images; ``run`` writes them, most confident first, as
``image_id,label,oof_label,confidence``: the file ``finetune`` / ``cv --exclude`` leave out of training
(``--relabel``: train on them with the OOF label instead).
"""

import csv
import dataclasses
import os

import numpy as np

from kitlib import checks, command
from kitlib.command import setting


@dataclasses.dataclass(frozen=True)
class CleanLabelsConfig(command.Config):
    """What ``python -m kitlib clean-labels`` asks for (each field is a flag)."""
    oof: str = setting(None, "a cv run's oof.csv, or its folder", required=True)
    out: str = setting(None, "the suspects CSV to write (image_id,label,oof_label,confidence)", required=True)
    threshold: float = setting(0.9, "OOF probability of another class above which a label is suspect",
                               valid=checks.fraction())
    seed: int = setting(0, "unused: the selection is deterministic (recorded)", valid=checks.integer(0))
    verbose: int = setting(1, "0 silent, 1 the count per class", choices=(0, 1))

    @classmethod
    def smoke(cls, **overrides):
        """A low threshold, so the smoke run's weak models still name some suspects."""
        return cls(**dict(dict(threshold=0.3), **overrides))


CONFIG = CleanLabelsConfig


def suspects(rows, threshold):
    """The OOF rows whose predicted class differs from the label with probability >= `threshold`, most
    confident first: dicts image_id, label, oof_label, confidence."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    found = [dict(image_id=r["image_id"], label=r["label"], oof_label=r["pred"], confidence=float(r["probs"][r["pred"]]))
             for r in rows if r["pred"] != r["label"] and r["probs"][r["pred"]] >= threshold]
    return sorted(found, key=lambda s: (-s["confidence"], s["image_id"]))


def _class_names(oof_path, num_classes):
    """The cv run's class names (its config.json), else the class indices."""
    record = command.read_record(os.path.dirname(os.path.abspath(oof_path))) or {}
    names = record.get("facts", {}).get("classes")
    return list(names) if names and len(names) == num_classes else [str(c) for c in range(num_classes)]


def plan(config, rt=None):
    """The suspects of ``config.oof`` at ``config.threshold`` (nothing written; no devices are needed)."""
    from kitlib.bit import cv  # noqa: PLC0415

    command.require(config, "oof", "out")
    path = os.path.join(config.oof, cv.OOF_FILE) if os.path.isdir(config.oof) else config.oof
    rows = cv.load_oof(path)
    found = suspects(rows, config.threshold)
    num_classes = len(rows[0]["probs"])
    names = _class_names(path, num_classes)
    per_class = np.bincount([s["label"] for s in found], minlength=num_classes).tolist()
    totals = np.bincount([r["label"] for r in rows], minlength=num_classes).tolist()
    facts = dict(images=len(rows), suspects=len(found), per_class=dict(zip(names, per_class)),
                 class_images=dict(zip(names, totals)))
    return command.Plan("clean-labels", dataclasses.replace(config, oof=path), {}, facts,
                        parts=dict(suspects=found, class_names=names))


def run(plan):
    """Write the suspects CSV (and its record beside it); returns the suspects."""
    config, found = plan.settings, plan.parts["suspects"]
    os.makedirs(os.path.dirname(os.path.abspath(config.out)), exist_ok=True)
    with open(config.out, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "label", "oof_label", "confidence"])
        writer.writerows([s["image_id"], s["label"], s["oof_label"], f"{s['confidence']:.6f}"] for s in found)
    command.write_json(os.path.splitext(config.out)[0] + ".config.json", plan.record())
    if config.verbose:
        facts = plan.facts
        lines = [f"  {name:<40} {n:>6} of {facts['class_images'][name]}" for name, n in facts["per_class"].items()]
        print(f"kitlib clean-labels: {facts['suspects']} of {facts['images']} images ({facts['suspects'] / facts['images']:.1%}) "
              f"have an OOF prediction of another class at >= {config.threshold:g}; by given label:\n"
              + "\n".join(lines) + f"\nwrote {config.out}")
    return found
