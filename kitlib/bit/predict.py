"""The ``predict`` command: fine-tuned classifiers, the test images, TTA -> a validated ``submission.csv``.

``plan(PredictConfig(...))`` loads the members' classifiers (local files, no network: `kitlib.bit.export`; a cv
folder is one member, its folds averaged: `kitlib.bit.ensemble`), checks their classes against the data's label
map, fits the member weights on OOF predictions when asked, opens the test images
(`kitlib.data.sources.open_test_source`) and resolves the views and the ``sample_submission.csv`` to match.
``run(plan)`` predicts, measures each member's cost per image (``budget_for``: the estimate against the 9-hour
limit), writes the submission and, beside it, the plan's record as ``<name>.config.json``
(``submission.config.json``: not ``config.json``, which a fine-tuning run may have written in the same folder).
With ``preflight`` set, ``run`` compiles the first classifier's forward pass for that TPU instead.
"""

import dataclasses
import math
import os
import time

import numpy as np

from kitlib import checks, command, hosts, preflight, runtime, sharding
from kitlib.bit import ensemble, export, submission, tta
from kitlib.command import setting
from kitlib.data import competition, sources


@dataclasses.dataclass(frozen=True)
class PredictConfig(command.MultiProcess):
    """What one prediction asks for (``python -m kitlib predict --help`` shows each field as a flag). Several
    processes (`kitlib.command.MultiProcess`): each reads the test images, the devices of all share each
    batch, and process 0 writes the submission."""
    data_dir: str = setting(None, "data dir with test_images/ or test_tfrecords/ (the competition layout), a "
                            "folder of images, or a *.tfrec glob", flag="--data", required=True)
    model: tuple[str, ...] = setting(None, "classifier folder(s) (finetune --out) or cv folder(s) (cv --out, its folds "
                                     "averaged); several: an ensemble", nargs="+", required=True)
    out: str = setting(None, "the CSV to write, e.g. submission.csv", required=True)
    tta: str = setting(tta.DEFAULT_TTA, f"preset ({', '.join(tta.TTA_PRESETS)}) or comma list of views "
                       f"({', '.join(tta.VIEWS)}); probabilities are averaged over the views",
                       valid=checks.satisfies(tta.parse_tta, "a preset or comma list of views"))
    kind: str = setting("auto", "read test_images/ or test_tfrecords/ (auto: test_images/ when present)",
                        flag="--source", choices=sources.TEST_SOURCE_KINDS)
    batch_size: int = setting(submission.DEFAULT_BATCH_SIZE, "images per forward pass (rounded up to a multiple "
                              "of the devices)", valid=checks.positive())
    sample_submission: str = setting("auto", "sample_submission.csv to match ids and order (auto: "
                                     "DATA/sample_submission.csv when present; none: no check)")
    check_labels: bool = setting(True, "refuse a model whose class names differ from the data's label map")
    weights: str = setting("equal", "member weights: equal, or oof (fitted on the cv members' out-of-fold "
                           "predictions; never worse on OOF than the best member)", choices=("equal", "oof"))
    budget_for: int = setting(None, "estimate the time for this many images (Cassava's hidden test: ~15000) from "
                              "the measured cost, and refuse over the 9-hour limit", valid=checks.positive())
    force: bool = setting(False, "with --budget-for: write the submission even over the limit")
    seed: int = setting(0, "seed of any random draw (the TTA views are deterministic)", valid=checks.integer(0))
    allow_cpu: bool = setting(False, "predict on the CPU even where a TPU/GPU exists that JAX cannot see")
    mixed_precision: str = setting("float32", "the Keras policy (the classifier is saved in float32)",
                                   valid=checks.one_of(runtime.POLICIES))
    preflight: str = setting(None, "predict nothing: compile the forward pass for this TPU and report memory per "
                             "chip, FLOPs and a time bound (preflight.json beside --out; exit 4 when it does "
                             "not fit)", choices=tuple(preflight.TARGETS), metavar="TARGET")
    verbose: int = setting(1, "0 silent, 1 progress bar and class histogram", choices=(0, 1))

    def __post_init__(self):
        if isinstance(self.model, (str, os.PathLike)):  # one folder given as a string
            object.__setattr__(self, "model", (os.fspath(self.model),))
        super().__post_init__()

    @classmethod
    def smoke(cls, **overrides):
        """The CI smoke preset: one view, small batches."""
        return cls(**dict(dict(tta="none", batch_size=16), **overrides))


CONFIG = PredictConfig


def _sample_submission(config):
    """(path or None, reason or None): the sample submission the ids must match."""
    if config.sample_submission == "none":
        return None, None
    if config.sample_submission != "auto":
        return config.sample_submission, None
    path = competition.data_file(config.data_dir, competition.SAMPLE_SUBMISSION_FILE)
    return path, ("DATA/sample_submission.csv: ids and order to match" if path else
                  "none in the data dir: the ids are not checked against one")


def _weights(config, found):
    """(weights [M], reason, OOF report or None)."""
    if config.weights == "equal" or len(found) == 1:
        return np.full(len(found), 1.0 / len(found)), None, None
    labels, probs = ensemble.shared_oof(found)
    weights, report = ensemble.fit_weights(probs, labels)
    reason = (f"fitted on the members' OOF predictions ({report['chosen']}): OOF accuracy "
              f"{report['weighted_accuracy']:.4f}, equal mean {report['mean_accuracy']:.4f}, members "
              f"{', '.join(f'{a:.4f}' for a in report['member_accuracy'])}")
    return weights, reason, report


def plan(config, rt=None):
    """The prediction ``run`` will do: the members' classifiers loaded and checked, their weights, the views,
    the test images counted.

    Returns:
        a `kitlib.command.Plan` with ``parts`` "members" (`kitlib.bit.ensemble.Member` s), "classifiers"
        ({folder: `kitlib.bit.export.Classifier`}) and "weights" (float [M]).
    """
    command.require(config, "data_dir", "model", "out")
    rt = rt or command.runtime_for(config)  # all devices share each batch (DataParallel) when there are several
    found = ensemble.members(config.model)
    classifiers = {d: export.load_classifier(d) for m in found for d in m.model_dirs}
    names = {tuple(c.class_names) for c in classifiers.values()}
    if len(names) > 1:
        raise ValueError(f"the members' classes differ ({' vs '.join(map(str, names))}): ensemble models of one "
                         "data set")
    first = next(iter(classifiers.values()))
    if config.check_labels:
        submission.check_class_names(first.class_names, config.data_dir)
    views = tta.parse_tta(config.tta)
    sample, sample_reason = _sample_submission(config)
    weights, weight_reason, report = _weights(config, found)
    count = sources.open_test_source(config.data_dir, config.kind).count
    settings = dataclasses.replace(config, tta=",".join(views), sample_submission=sample)
    reasons = {k: why for k, why in (("sample_submission", sample_reason), ("weights", weight_reason)) if why}
    if ",".join(views) != config.tta:
        reasons["tta"] = f"the views of {config.tta!r}"
    rows = sharding.rows_per_pass(config.batch_size, rt.num_devices)
    facts = dict(test_images=count, views=len(views), members=[m.name for m in found],
                 classifiers=len(classifiers), member_weights=weights.tolist(), oof=report,
                 image_size=int(first.image_size), class_names=list(first.class_names), rows_per_pass=rows,
                 **command.runtime_facts(rt))
    parts = dict(members=found, classifiers=classifiers, weights=weights, classifier=first)
    return command.Plan("predict", settings, reasons, facts, parts=parts, rt=rt)


def record_path(out_csv):
    """Where the plan's record goes: ``submission.csv`` -> ``submission.config.json`` beside it."""
    return os.path.splitext(os.fspath(out_csv))[0] + ".config.json"


def run(plan):
    """Predict as planned and write the submission (with ``preflight`` set: compile the forward pass instead).

    Returns:
        a `kitlib.bit.submission.Prediction` (a `kitlib.preflight.Report` for a preflight).
    """
    config = plan.settings
    if config.preflight:
        return run_preflight(plan)
    views, start = config.tta.split(","), time.perf_counter()
    with command.seeded_run(plan):
        ids, probs, cost = ensemble.predict_members(plan.parts["members"], plan.parts["classifiers"], config.data_dir,
                                                    views, config.batch_size, config.kind, verbose=config.verbose)
    if config.budget_for:
        line = ensemble.check_budget(cost, config.budget_for, config.force)
        if config.verbose:
            print(line)
    mixed = np.tensordot(plan.parts["weights"], np.stack(probs), 1).astype(np.float32)
    seconds = time.perf_counter() - start
    # several processes: each writes and checks the same submission (so each returns the same rows), process 0
    # into --out's folder, any other into a folder of its own deleted after
    out = os.fspath(config.out)
    with hosts.writer_folder(os.path.dirname(out)) as folder:
        written = os.path.join(folder, os.path.basename(out))
        prediction = submission.write_checked(ids, mixed, written, config.sample_submission,
                                              plan.facts["class_names"], views, seconds, config.verbose)
        command.write_json(record_path(written), plan.record())
    hosts.barrier("predict: written")
    return dataclasses.replace(prediction, path=out)


def run_preflight(plan, print_fn=print):
    """The forward pass `run` would do, compiled for ``plan.settings.preflight`` at the batch rounded up to
    the target's chips; the run counts one pass per batch and view. Writes ``preflight.json`` beside the CSV
    (no submission). Returns the `kitlib.preflight.Report`."""
    config, facts, classifier = plan.settings, plan.facts, plan.parts["classifier"]
    size, rows = facts["image_size"], facts["rows_per_pass"]

    def build(batch):
        import jax  # noqa: PLC0415

        return classifier.model, (jax.ShapeDtypeStruct((batch, size, size, 3), "float32"),)

    passes = math.ceil(facts["test_images"] / rows) * facts["views"]
    report = preflight.run_preflight("predict", build, rows, config.preflight, passes, period="run", step="predict")
    preflight.write_report(report, os.path.dirname(os.path.abspath(config.out)))
    print_fn(preflight.describe(report))
    return report
