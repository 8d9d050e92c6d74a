"""The ``pseudo-label`` command: confident predictions of unlabelled images, written as a data folder to train on.

``plan`` loads the members (classifier or cv folders, as ``predict``) and opens the unlabelled images (a folder
of JPEGs, or TFRecords without targets); ``run`` predicts them with TTA (the members averaged), keeps those
whose top probability is at least ``threshold``, and writes them to ``out`` in the competition's layout
(``train_tfrecords/`` with the predicted label as target, ``train.csv``, the label map): a folder
``finetune`` / ``cv --extra-data`` add to training only, never to a validation fold. The images are copied
as they are (their JPEG bytes), not decoded and encoded again.
"""

import csv
import dataclasses
import json
import os

import numpy as np

from kitlib import checks, command, runtime
from kitlib.bit import ensemble, export, tta
from kitlib.command import setting
from kitlib.data import competition, sources, tfrecords, writing


@dataclasses.dataclass(frozen=True)
class PseudoLabelConfig(command.Config):
    """What ``python -m kitlib pseudo-label`` asks for (each field is a flag)."""
    model: tuple[str, ...] = setting(None, "classifier or cv folder(s); several are averaged", nargs="+",
                                     required=True)
    images: str = setting(None, "the unlabelled images: a folder of JPEGs, a folder of *.tfrec shards or a glob",
                          required=True)
    out: str = setting(None, "the data folder to write (competition layout), for --extra-data", required=True)
    threshold: float = setting(0.9, "the top probability an image needs to be kept",
                               valid=checks.number(0, 1, lo_open=True))
    tta: str = setting("flip", "test-time views averaged for the pseudo-labels",
                       valid=checks.satisfies(tta.parse_tta, "a preset or comma list of views"))
    batch_size: int = setting(32, "images per forward pass", valid=checks.positive())
    seed: int = setting(0, "unused: the predictions are deterministic (recorded)", valid=checks.integer(0))
    allow_cpu: bool = setting(False, "predict on the CPU even where a TPU/GPU exists that JAX cannot see")
    mixed_precision: str = setting("float32", "the Keras policy (the classifiers are saved in float32)",
                                   valid=checks.one_of(runtime.POLICIES))
    verbose: int = setting(1, "0 silent, 1 progress and the count per class", choices=(0, 1))

    def __post_init__(self):
        if isinstance(self.model, (str, os.PathLike)):
            object.__setattr__(self, "model", (os.fspath(self.model),))
        super().__post_init__()

    @classmethod
    def smoke(cls, **overrides):
        """One view and a low threshold, so the smoke run's weak models keep some images."""
        return cls(**dict(dict(tta="none", threshold=0.3, batch_size=16), **overrides))


CONFIG = PseudoLabelConfig


def plan(config, rt=None):
    """The members loaded and the unlabelled images opened (nothing predicted or written)."""
    command.require(config, "model", "images", "out")
    rt = rt or command.runtime_for(config)
    found = ensemble.members(config.model)
    classifiers = {d: export.load_classifier(d) for m in found for d in m.model_dirs}
    first = next(iter(classifiers.values()))
    source = sources.open_test_source(config.images)
    facts = dict(images=source.count, source=source.kind, members=[m.name for m in found],
                 class_names=list(first.class_names), **command.runtime_facts(rt))
    settings = dataclasses.replace(config, tta=",".join(tta.parse_tta(config.tta)))
    return command.Plan("pseudo-label", settings, {}, facts,
                        parts=dict(members=found, classifiers=classifiers, source=source), rt=rt)


def _raw_examples(source, keep):
    """The kept images' encoded bytes, with their pseudo-label: {"image", "image_name", "target"} dicts."""
    if source.kind == "images":
        for name in sorted(keep):
            with open(os.path.join(source.where, name), "rb") as f:
                yield {"image": f.read(), "image_name": name, "target": keep[name]}
        return
    records = tfrecords.load_dataset(tfrecords.resolve_files(source.where), labeled=False, decode=False, ordered=True)
    with tfrecords.explain_errors():
        for ex in records:
            name = ex["image_name"].numpy().decode()
            if name in keep:
                yield {"image": ex["image"].numpy(), "image_name": name, "target": keep[name]}


def run(plan):
    """Predict, keep the confident images, write the data folder; returns {image_id: pseudo-label}."""
    config, class_names = plan.settings, plan.facts["class_names"]
    with command.seeded_run(plan):
        ids, probs, _ = ensemble.predict_members(plan.parts["members"], plan.parts["classifiers"], config.images,
                                                 config.tta.split(","), config.batch_size, "auto",
                                                 verbose=config.verbose)
    mean = np.mean(probs, axis=0)
    keep = {i: int(np.argmax(p)) for i, p in zip(ids, mean) if p.max() >= config.threshold}
    if not keep:
        raise ValueError(f"no image reached the threshold {config.threshold:g} (top probabilities up to "
                         f"{mean.max():.3f}); lower --threshold")
    paths = competition.split_paths(config.out, "train")
    writing.write_tfrecords(_raw_examples(plan.parts["source"], keep), paths.tfrecords_dir, labeled=True)
    with open(paths.csv, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(competition.CSV_HEADER)
        writer.writerows(sorted(keep.items()))
    with open(paths.label_map, "w") as f:
        json.dump({str(c): name for c, name in enumerate(class_names)}, f)
    plan.save(config.out)
    if config.verbose:
        counts = np.bincount(list(keep.values()), minlength=len(class_names))
        print(f"kitlib pseudo-label: kept {len(keep)} of {len(ids)} images at >= {config.threshold:g}:\n"
              + "\n".join(f"  {name:<40} {n:>6}" for name, n in zip(class_names, counts)) + f"\nwrote {config.out}")
    return keep
