"""The ``predict`` command: a fine-tuned classifier, the test images, TTA -> a validated ``submission.csv``.

``plan(PredictConfig(...))`` loads the classifier (two local files, no network: `kitlib.bit.export`), checks
its classes against the data's label map, opens the test images (`kitlib.data.sources.open_test_source`) and
resolves the views and the ``sample_submission.csv`` to match; ``run(plan)`` predicts
(`kitlib.bit.submission.predict_and_write`) and writes the submission and, beside it, the plan's record as
``<name>.config.json`` (``submission.config.json``: not ``config.json``, which a fine-tuning run may have
written in the same folder). With ``preflight`` set, ``run`` compiles the forward pass for that TPU instead.
"""

import dataclasses
import math
import os

from kitlib import command, preflight, sharding
from kitlib.bit import export, submission, tta
from kitlib.command import setting
from kitlib.data import sources


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """What one prediction asks for (``python -m kitlib predict --help`` shows each field as a flag)."""
    data_dir: str = setting(None, "data dir with test_images/ or test_tfrecords/ (the competition layout), a "
                            "folder of images, or a *.tfrec glob", flag="--data", required=True)
    model: str = setting(None, "folder written by `python -m kitlib finetune --out DIR`", required=True)
    out: str = setting(None, "the CSV to write, e.g. submission.csv", required=True)
    tta: str = setting(tta.DEFAULT_TTA, f"preset ({', '.join(tta.TTA_PRESETS)}) or comma list of views "
                       f"({', '.join(tta.VIEWS)}); probabilities are averaged over the views")
    kind: str = setting("auto", "read test_images/ or test_tfrecords/ (auto: test_images/ when present)",
                        flag="--source", choices=sources.TEST_SOURCE_KINDS)
    batch_size: int = setting(submission.DEFAULT_BATCH_SIZE, "images per forward pass (rounded up to a multiple "
                              "of the devices)")
    sample_submission: str = setting("auto", "sample_submission.csv to match ids and order (auto: "
                                     "DATA/sample_submission.csv when present; none: no check)")
    check_labels: bool = setting(True, "refuse a model whose class names differ from the data's label map")
    seed: int = setting(0, "seed of any random draw (the TTA views are deterministic)")
    allow_cpu: bool = setting(False, "predict on the CPU even where a TPU/GPU exists that JAX cannot see")
    mixed_precision: str = setting("float32", "the Keras policy (the classifier is saved in float32)")
    preflight: str = setting(None, "predict nothing: compile the forward pass for this TPU and report memory per "
                             "chip, FLOPs and a time bound (preflight.json beside --out; exit 4 when it does "
                             "not fit)", choices=tuple(preflight.TARGETS), metavar="TARGET")
    verbose: int = setting(1, "0 silent, 1 progress bar and class histogram", choices=(0, 1))

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
    path = submission.data_file(config.data_dir, submission.SAMPLE_SUBMISSION)
    return path, ("DATA/sample_submission.csv: ids and order to match" if path else
                  "none in the data dir: the ids are not checked against one")


def plan(config, rt=None):
    """The prediction ``run`` will do: the classifier loaded and checked, the views, the test images counted.

    Returns:
        a `kitlib.command.Plan` with ``parts["classifier"]`` (`kitlib.bit.export.Classifier`).
    """
    command.require(config, "data_dir", "model", "out")
    rt = rt or command.runtime_for(config)  # all devices share each batch (DataParallel) when there are several
    classifier = export.load_classifier(config.model)
    if config.check_labels:
        submission.check_class_names(classifier.class_names, config.data_dir)
    views = tta.parse_tta(config.tta)
    sample, sample_reason = _sample_submission(config)
    count = sources.open_test_source(config.data_dir, config.kind).count
    settings = dataclasses.replace(config, tta=",".join(views), sample_submission=sample)
    reasons = {"sample_submission": sample_reason} if sample_reason else {}
    if ",".join(views) != config.tta:
        reasons["tta"] = f"the views of {config.tta!r}"
    rows = sharding.rows_per_pass(config.batch_size, rt.num_devices)
    facts = dict(test_images=count, views=len(views), image_size=int(classifier.image_size),
                 class_names=list(classifier.class_names), rows_per_pass=rows, **command.runtime_facts(rt))
    return command.Plan("predict", settings, reasons, facts, parts=dict(classifier=classifier), rt=rt)


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
    with command.seeded_run(plan):
        prediction = submission.predict_and_write(
            plan.parts["classifier"], config.data_dir, config.out, tta=config.tta, kind=config.kind,
            batch_size=config.batch_size, sample_submission=config.sample_submission, check_labels=False,
            verbose=config.verbose)
    command.write_json(record_path(config.out), plan.record())
    return prediction


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
