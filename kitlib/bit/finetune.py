"""The ``finetune`` command: a backbone + a zero-initialised head trained with the BiT-HyperRule.

``plan(FinetuneConfig(...))`` reads the data (Cassava TFRecords, JPEG folder + CSV, one folder per class, or a
tfds name) and splits off validation (`kitlib.data.sources.load_source`), derives the `HyperRule` from the
TRAINING size and the GLOBAL batch, and resolves every setting (each chosen one with its reason).
``run(plan)`` loads the backbone (`kitlib.models.backbones.load`: a BiT ``.npz`` / SavedModel / handle, or the
SwAV ``backbone.keras``), ``fit()``s for exactly the rule's steps (SGD momentum 0.9, MixUp in the tf.data
pipeline, the best validation accuracy checkpointed and restored, CSV log, progress bar), evaluates
(accuracy, per-class report, confusion matrix) and exports the classifier (`kitlib.bit.export`):

    out/classifier.keras, classifier.json   the classifier (float32) + class names and image size
    out/config.json                         the plan's record (`kitlib.command.Plan.record`)
    out/finetune.json                       that record, the history, validation accuracy, report, confusion matrix
    out/history.csv, checkpoints/state.npz, tensorboard/ (when tensorboard is installed)

Resuming: every validation round ends with the whole run state in ``checkpoints/state.npz`` (model, optimizer
and its step, rounds done, the best weights so far; `kitlib.bit.training.RoundCheckpoint`), written atomically.
Rerunning the same command continues from it (a kill -9 loses at most one round): the same seed (taken from the
record when none is given), the input stream from the first batch not yet trained on. A folder holding another
run's checkpoint is refused.

Distribution: the plan sets the runtime up (`kitlib.runtime.setup`). With several devices its
``keras.distribution.DataParallel`` replicates the model (built after it) and ``fit`` splits every batch over the
devices; the loss and the metrics inside the compiled step are over the global batch, so 8 devices train like 1.
"""

import dataclasses
import math
import os

import numpy as np

from kitlib import checkpoint, checks, command, hosts, locations, preflight, runtime
from kitlib.bit import export, hyperrule, inputs, losses, training
from kitlib.command import setting
from kitlib.compat import tf
from kitlib.data import folds, sources
from kitlib.models import hub


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(command.MultiProcess):
    """What one fine-tuning run asks for; fields left None are chosen by `plan` (the BiT-HyperRule, the
    devices). Each field's help is its flag's (``python -m kitlib finetune --help``). Several processes
    (`kitlib.command.MultiProcess`): each decodes only its rows of every global batch."""
    data_dir: str = setting(None, "folder with train_tfrecords/, or train.csv + train_images/, or one sub-folder "
                            "per class; or tfds:NAME", flag="--data", required=True)
    backbone: str = setting(None, "a .keras backbone or pretrain output folder, a BiT .npz, a BiT SavedModel "
                            "folder, a TF-Hub URL or a Kaggle Models handle (google/bit/tensorFlow2/m-r50x1)",
                            required=True)
    out_dir: str = setting(None, "output folder: classifier, config.json, history, checkpoints", flag="--out",
                           required=True)
    global_batch_size: int = setting(512, "GLOBAL batch, a multiple of the device count (the rule scales steps by "
                                     "512/B and the lr by B/512)", flag="--batch-size", valid=checks.positive())
    steps: int = setting(None, "training steps (the rule's when not given; its phases keep their fractions)",
                         valid=checks.integer(2))
    loss: str = setting("ce", "ce, or bitempered for noisy labels (Amid et al. 2019)", choices=losses.LOSSES)
    label_smoothing: float = setting(0.0, "label smoothing epsilon in [0, 1)", valid=checks.fraction())
    t1: float = setting(losses.T1_CASSAVA, "bi-tempered t1 (< 1: a bounded loss)",
                        valid=checks.number(0, 1, lo_open=True))
    t2: float = setting(losses.T2_CASSAVA, "bi-tempered t2 (> 1: a heavy-tailed softmax)", valid=checks.number(1, 10))
    val_fraction: float = setting(0.2, "share held out for validation and the best checkpoint, in [0, 1)",
                                  valid=checks.fraction())
    labels_per_class: int = setting(None, "the few-label regime: train on N labelled images of each class (stratified, "
                                    "seeded; the ids in config.json), validating on a few others per class",
                                    valid=checks.positive())
    label_fraction: float = setting(None, "the few-label regime as a share: ceil(F n_c) images of each class c train "
                                    "(at least one), validating on a few others per class",
                                    valid=checks.number(0, 1, lo_open=True))
    base_lr: float = setting(hyperrule.BASE_LR, "learning rate at batch 512 (BiT: 0.003)",
                             valid=checks.number(0, checks.MAX_LEARNING_RATE, lo_open=True))
    resolution: tuple[int, int] = setting(None, "(resize, crop) in place of the rule's, e.g. 160 128 on a CPU",
                                          nargs=2, metavar=("RESIZE", "CROP"), valid=checks.integer(8, 4096))
    stop_after_minutes: float = setting(None, "end cleanly, on a whole checkpoint and before exporting, at the first "
                                        "round from which the next would end past this many minutes of the process "
                                        "(rerun to continue); default: on Kaggle the session's limit less 20 "
                                        "minutes, elsewhere none", valid=checks.number(0, checks.MAX_MINUTES,
                                                                                      lo_open=True))
    evaluations: int = setting(10, "about how many validation rounds the run has", valid=checks.integer(1, 10_000))
    seed: int = setting(None, "seed of the split (TFRecords), shuffle, crops, flips and MixUp (drawn and recorded "
                        "when not given)", valid=checks.integer(0))
    tfds_data_dir: str = setting(None, "where a tfds:NAME dataset is prepared")
    exclude: str = setting(None, "a CSV of image ids to leave out of training (clean-labels' suspects.csv)")
    relabel: bool = setting(False, "with --exclude: train on those images with their OOF label instead")
    extra_data: str = setting(None, "a data folder added to training only, never to validation (pseudo-label's "
                              "output)")
    steps_per_execution: int = setting(None, "steps per compiled call (up to 32 on TPU, 1 elsewhere when not given)",
                                       valid=checks.integer(1, 10_000))
    restore_best: bool = setting(True, "end with the best-validation weights (else the last ones)")
    mixed_precision: str = setting("auto", "auto (bfloat16 on TPU, float32 elsewhere) or a Keras policy",
                                   valid=checks.one_of(runtime.POLICIES))
    allow_cpu: bool = setting(False, "run on the CPU even where a TPU/GPU exists that JAX cannot see")
    preflight: str = setting(None, "train nothing: compile this run's step for this TPU and report memory per chip, "
                             "FLOPs and a speed bound (OUT/preflight.json; exit 4 when it does not fit)",
                             choices=tuple(preflight.TARGETS), metavar="TARGET")
    resume_from: str = setting(None, "continue the run whose output is in this folder when --out holds none (a "
                               "read-only copy, e.g. a previous notebook version's output under /kaggle/input): "
                               "copied into --out first; refused when it is another plan's")
    verbose: int = setting(1, "0 silent, 1 progress bar, 2 one line per round", choices=(0, 1, 2))

    def __post_init__(self):
        super().__post_init__()  # every field against its valid values; paths as strings, lists as tuples
        if None not in (self.labels_per_class, self.label_fraction):
            raise checks.SettingError(f"give one of {command.spell(self, 'labels_per_class')} and "
                                      f"{command.spell(self, 'label_fraction')}, not both")
        if self.resolution is not None and (len(self.resolution) != 2 or self.resolution[1] > self.resolution[0]):
            raise checks.SettingError(f"{command.spell(self, 'resolution')} {self.resolution}: give (resize, crop) "
                                      "with crop <= resize, e.g. 160 128")

    @classmethod
    def smoke(cls, **overrides):
        """The small run the demo and the notebooks' CI smoke cell share, sized for two CPU cores.

        Each setting departs from BiT for a reason: 64 px crops of 80 px images instead of 480 of 512
        (a CPU); 60 steps at batch 16 instead of the rule's 500 at 512; base_lr 1.0 per 512 images (lr
        0.03 at 16) instead of 0.003, which suits a pretrained R50 at 480 px, not a small CNN that must
        move far in 60 steps (bench/README.md has the accuracies).
        """
        settings = dict(global_batch_size=16, steps=60, resolution=(80, 64), base_lr=1.0, evaluations=4, seed=0)
        return cls(**dict(settings, **overrides))

    def loss_fn(self):
        """The per-example loss ``fn(y_true [B, C], logits [B, C]) -> [B]`` this config names."""
        return losses.make_loss(self.loss, self.label_smoothing, self.t1, self.t2)


CONFIG = FinetuneConfig


# BiT-R50x1 at 480 px: images per device that fit (TPU v5e core in bfloat16; a 16 GB GPU in float32)
_IMAGES_PER_DEVICE = {"TPU": 64, "GPU": 16, "CPU": 16}


def suggested_global_batch(kind, num_devices=1):
    """A global batch that fits BiT-R50x1 at 480 px: 64 per TPU core (512 on a v5e-8, BiT's own batch),
    16 per 16 GB GPU, 16 on a CPU. The HyperRule rescales steps and learning rate for any batch."""
    per_device = _IMAGES_PER_DEVICE[kind]
    return per_device * num_devices if kind != "CPU" else per_device


# ============ plan and run ============


@dataclasses.dataclass
class FinetuneResult:
    model: object  # the Keras classifier (best-validation weights unless restore_best=False)
    rule: hyperrule.HyperRule
    source: sources.TrainingSource
    history: object  # keras History
    evaluation: dict  # None without a validation split
    out_dir: str
    config: FinetuneConfig  # the plan's settings
    stopped_after: int = None  # the rounds done when stop_after_minutes ended the run early (no classifier then)


def _check_backbone_source(source):
    """Fail in seconds, before any data is read, on a handle that cannot be reached."""
    if not os.path.exists(os.path.expanduser(source)):
        hub.resolve_backbone(source)


def _resolve(config, rt, rule):
    """(settings, reasons): the values the rule and the devices choose for the fields left None."""
    _, steps_per_epoch = training.evaluation_rounds(rule.total_steps, config.evaluations)
    chosen = dict(
        steps=(rule.total_steps, f"the BiT-HyperRule for {rule.dataset_size} training images at batch "
               f"{rule.batch_size}"),
        resolution=((rule.resize, rule.crop), f"the BiT-HyperRule for {rule.image_hw[0]}x{rule.image_hw[1]} images"),
        steps_per_execution=(training.steps_per_execution_for(rt.kind, steps_per_epoch),
                             f"on a {rt.kind}: up to 32 on a TPU (fewer host round trips), 1 elsewhere"))
    minutes, why = checkpoint.default_stop_minutes(rt.kind, locations.on_kaggle())
    if minutes is not None:
        chosen["stop_after_minutes"] = (minutes, why)
    chosen = {k: v for k, v in chosen.items() if getattr(config, k) is None}
    return (dataclasses.replace(config, **{k: value for k, (value, _) in chosen.items()}),
            {k: why for k, (_, why) in chosen.items()})


def _estimate(config, source, rule, rounds):
    """The run's length, said before it starts: a throwaway copy's compile and timed steps
    (`kitlib.checkpoint.time_steps`), then the rule's steps and each round's validation (a third of a train
    step per image) at that speed; and the sessions it takes under ``stop_after_minutes``
    (`kitlib.checkpoint.estimate`)."""
    from kitlib.models import backbones  # noqa: PLC0415

    model = training.build_classifier(backbones.load(config.backbone), len(source.class_names), rule.crop)
    training.compile_classifier(model, rule, config.loss_fn(), config.steps_per_execution)
    batches = inputs.train_dataset(source.train, rule, len(source.class_names), seed=config.seed)
    compile_s, step_s, _, _ = checkpoint.time_steps(model, batches, config.steps_per_execution)
    val_steps = math.ceil(source.val_size / rule.batch_size) if source.val is not None else 0
    minutes = (compile_s + (rule.total_steps + rounds * val_steps / 3) * step_s) / 60
    return checkpoint.estimate(minutes, config.stop_after_minutes, compile_s / 60)


def _check_resumable(settings, saved, source, rounds, where):
    """{} for a new run; {"resume": {...}} when `where` (``out_dir``, or ``resume_from``'s read-only copy) holds a
    checkpoint of this same plan (`kitlib.checkpoint.differences`: the settings but paths, reporting and the time
    limit, and the data's size and classes); a ValueError naming the differences otherwise."""
    if saved is None:
        return {}
    ours = dict(settings=command.json_ready(command.as_dict(settings)),
                facts=dict(train_size=source.train_size, class_names=list(source.class_names)))
    checkpoint.refuse_other_plan(ours, saved, where, "fine-tuning run", ("train_size", "class_names"))
    done = checkpoint.saved_rounds(training.state_path(where))
    return {"resume": dict(rounds_done=done, rounds=rounds, resumed_from=where)}


def _load_source(config, seed):
    """(the `kitlib.data.sources.TrainingSource` the config asks for, the few-label subset's record or None):
    ``val_fraction`` split off the data (TFRecords: whole shards), or, with ``labels_per_class`` or
    ``label_fraction``, a stratified subset of the labelled images (`kitlib.data.folds.label_subset`)."""
    if config.labels_per_class is None and config.label_fraction is None:
        return sources.load_source(config.data_dir, config.val_fraction, seed, config.tfds_data_dir), None
    ids, labels, class_names = folds.read_labels(config.data_dir)
    train, val = folds.label_subset(labels, config.labels_per_class, config.label_fraction, config.val_fraction, seed)
    train_ids, val_ids = [ids[i] for i in train], [ids[i] for i in val]
    counts = {name: int(n) for name, n in zip(class_names, np.bincount(labels[train], minlength=len(class_names)))}
    record = dict(train_per_class=counts, val_images=len(val_ids), train_ids=train_ids, val_ids=val_ids)
    return folds.subset_source(config.data_dir, train_ids, val_ids), record


def plan(config, rt=None, source=None):
    """The run ``run`` will do: the data read and split, the rule derived, every setting resolved.

    Args:
        config: `FinetuneConfig`.
        rt: a `kitlib.runtime.Runtime` (None: `kitlib.command.runtime_for(config)`). Build nothing Keras before
            it: the distribution and the dtype policy apply to models built afterwards.
        source: a `kitlib.data.sources.TrainingSource` already made (``cv``'s folds: `kitlib.data.folds`), used
            as it is; None: read ``data_dir`` and split off ``val_fraction``, then apply ``exclude``,
            ``relabel`` and ``extra_data``.
    Returns:
        a `kitlib.command.Plan` with ``parts["source"]`` (`kitlib.data.sources.TrainingSource`) and
        ``parts["rule"]`` (`kitlib.bit.hyperrule.HyperRule`).
    Raises:
        ValueError: a missing field, a global batch that does not split over the devices, unreadable data
        (`kitlib.data.tfrecords.DataError`) or an unreachable backbone handle, each saying what to do.
    """
    command.require(config, "data_dir", "backbone", "out_dir")
    rt = rt or command.runtime_for(config)
    runtime.check_global_batch(config.global_batch_size, rt.num_devices, command.spell(config, "global_batch_size"))
    processes = getattr(rt, "process_count", 1)
    if processes > 1 and (config.global_batch_size // processes) % 2:
        raise ValueError(f"{command.spell(config, 'global_batch_size')} {config.global_batch_size} gives each of "
                         f"{processes} processes an odd number of rows; MixUp pairs neighbouring rows: use a multiple "
                         f"of {2 * rt.num_devices}")
    _check_backbone_source(config.backbone)  # an unreachable handle fails here, in seconds
    where = checkpoint.resume_dir(config.out_dir, config.resume_from)  # None, out_dir or the read-only copy
    saved = command.read_record(where) if where and os.path.isfile(training.state_path(where)) else None
    a_fold = source is not None  # cv's: its folds are not timed one by one
    if saved is not None and config.seed is None:  # a resumed run draws no new seed: it goes on with its own
        seed, seed_reason = int(saved["settings"]["seed"]), f"the seed of the run being resumed in {where}"
    else:
        seed, seed_reason = command.resolve_seed(config.seed)
    subset = None
    if source is None:
        with runtime.seeded(seed):
            source, subset = _load_source(config, seed)
        exclude = folds.read_id_list(config.exclude) if config.exclude else None
        source = folds.adjusted(source, exclude, config.relabel, config.extra_data, seed=seed)
    rule = hyperrule.HyperRule(source.image_hw, source.train_size, config.global_batch_size, config.base_lr,
                               config.steps, config.resolution)
    settings, reasons = _resolve(dataclasses.replace(config, seed=seed), rt, rule)
    if seed_reason:
        reasons["seed"] = seed_reason
    if subset is not None and source.val is None and settings.restore_best:
        settings = dataclasses.replace(settings, restore_best=False)
        reasons["restore_best"] = "no validation images in the few-label regime: the last weights, not the best"
    epochs, _ = training.evaluation_rounds(rule.total_steps, config.evaluations)
    resume = _check_resumable(settings, saved, source, epochs, where)
    facts = dict(source=source.kind, train_size=source.train_size, val_size=source.val_size,
                 image_hw=list(source.image_hw), class_names=list(source.class_names), evaluation_rounds=epochs,
                 per_device_batch=config.global_batch_size // rt.num_devices, **command.runtime_facts(rt),
                 rule=rule.as_dict(), **({"label_subset": subset} if subset is not None else {}), **resume)
    if settings.stop_after_minutes is not None and not settings.preflight and processes == 1 and not a_fold:
        with runtime.seeded(seed):
            facts["estimate"] = _estimate(settings, source, rule, epochs)
    return command.Plan("finetune", settings, reasons, facts, parts=dict(source=source, rule=rule), rt=rt)


def run(plan):
    """Fine-tune as planned and export the classifier to ``out_dir`` (with ``preflight`` set: compile the
    train step for that TPU instead, `run_preflight`).

    Returns:
        a `FinetuneResult` (a `kitlib.preflight.Report` for a preflight).
    """
    config, source, rule = plan.settings, plan.parts["source"], plan.parts["rule"]
    if config.preflight:
        return run_preflight(plan)
    if hosts.is_writer():  # several processes: process 0 writes, the others wait where they read
        checkpoint.copy_run(plan.facts.get("resume", {}).get("resumed_from", config.out_dir), config.out_dir)
        plan.save(config.out_dir)
    hosts.barrier("finetune: resumable")
    warning = checkpoint.estimate_warning("finetune", plan.facts)
    if warning:
        print(warning)
    with command.seeded_run(plan):  # a seeded run is repeatable; the caller's random state is kept
        model, history, evaluation, stopped = _fit_and_evaluate(config, source, rule)
    if stopped is not None:  # a whole checkpoint, and no classifier: nothing may submit a half-trained model
        print(f"kitlib finetune: stopped after round {stopped} of {plan.facts['evaluation_rounds']} "
              f"(stop_after_minutes {config.stop_after_minutes:g}), on a whole checkpoint in {config.out_dir}; "
              f"continue with: {command.rerun_hint('finetune')}")
        return FinetuneResult(model, rule, source, history, None, config.out_dir, config, stopped_after=stopped)
    with hosts.writer_folder(config.out_dir) as out_dir:  # each process exports (a collective), one keeps it
        export.save_classifier(model, out_dir, source.class_names, rule.crop)
        command.write_json(os.path.join(out_dir, "finetune.json"), _add_results(plan.record(), history, evaluation,
                                                                                           config.out_dir))
    hosts.barrier("finetune: exported")
    if config.verbose:
        if evaluation is not None:
            print(f"validation accuracy {evaluation['accuracy']:.4f}\n{evaluation['report']}")
        print(f"kitlib finetune: saved the classifier ({len(source.class_names)} classes, {rule.crop} px) to "
              f"{config.out_dir}")
    return FinetuneResult(model, rule, source, history, evaluation, config.out_dir, config)


def _fit_and_evaluate(config, source, rule):
    """Backbone + zero head, fit for the rule's steps, then the validation report.

    Returns:
        (model, History, evaluation): evaluation is `kitlib.bit.training.report`'s dict, None without a
        validation split.
    """
    from kitlib.models import backbones  # noqa: PLC0415

    num_classes = len(source.class_names)
    model = training.build_classifier(backbones.load(config.backbone), num_classes, rule.crop)
    training.compile_classifier(model, rule, config.loss_fn(), config.steps_per_execution)
    resumed = training.resume(model, config.out_dir)  # (rounds done, best score, best weights); a new run: 0, ...
    _, steps_per_round = training.evaluation_rounds(rule.total_steps, config.evaluations)
    rows = rule.batch_size // hosts.process_count()  # this process's rows of every global batch (one: all)
    mine = (hosts.process_index() * rows, (hosts.process_index() + 1) * rows)
    train_batches = inputs.train_dataset(source.train, rule, num_classes, seed=config.seed, rows=mine,
                                         skip_batches=resumed[0] * steps_per_round)
    val_batches = (inputs.eval_dataset(source.val, rule.crop, rule.batch_size, num_classes, pad=True)
                   if source.val is not None and source.val_size > 0 else None)  # 0: too few images to hold any out
    val_rows = val_batches if val_batches is None or hosts.process_count() == 1 else val_batches.map(
        lambda *batch: tuple(part[mine[0]:mine[1]] for part in batch))  # fit's validation: its rows too
    history, stopped = training.train(model, rule, train_batches, val_rows, config.out_dir, config.evaluations,
                                      config.verbose, config.restore_best,
                                      validation_steps=math.ceil(source.val_size / rule.batch_size) or None,
                                      resumed=resumed, stop_after_minutes=config.stop_after_minutes)
    if stopped is not None:
        return model, history, None, stopped
    evaluation = training.report(model, val_batches, source.class_names) if val_batches is not None else None
    return model, history, evaluation, None


def _add_results(record, history, evaluation, out_dir):
    """``record`` with the history (every round: ``history.csv``, which a resumed run continued; else this call's
    Keras History) and, when there was a validation split, accuracy, per-class report and confusion matrix (what
    ``finetune.json`` holds beyond ``config.json``)."""
    rows = checkpoint.read_history(os.path.join(out_dir, "history.csv"))
    every = {k: [r[k] for r in rows] for k in rows[0] if k != "epoch"} if rows else history.history
    record["history"] = {k: [float(v) for v in vs] for k, vs in every.items()}
    if evaluation is not None:
        record["val_accuracy"] = evaluation["accuracy"]
        record["confusion_matrix"] = evaluation["confusion_matrix"]
        record["per_class"] = evaluation["per_class"]
    return record


def run_preflight(plan, print_fn=print):
    """Compile the planned train step for ``plan.settings.preflight`` (the plan was made for that TPU: the rule's
    resolution and batch, bfloat16, its chips) and write ``OUT/preflight.json``. Nothing is trained.

    Returns:
        the `kitlib.preflight.Report` (``fits`` False: the CLI exits 4).
    """
    from kitlib.models import backbones  # noqa: PLC0415

    config, source, rt = plan.settings, plan.parts["source"], plan.rt
    num_classes = len(source.class_names)

    def build(batch):
        """The classifier `run` would build at global batch `batch`, and one batch as the step sees it."""
        import jax  # noqa: PLC0415

        rule = hyperrule.HyperRule(source.image_hw, source.train_size, batch, config.base_lr, config.steps,
                                   config.resolution)  # the batch search tries other batches than the plan's
        with runtime.policy_scope(rt.policy):
            model = training.build_classifier(backbones.load(config.backbone), num_classes, rule.crop)
            training.compile_classifier(model, rule, config.loss_fn())
        spec = inputs.train_dataset(source.train, rule, num_classes, seed=config.seed).element_spec
        return model, tf.nest.map_structure(
            lambda t: jax.ShapeDtypeStruct((batch,) + tuple(t.shape[1:]), t.dtype.as_numpy_dtype), spec)

    report = preflight.run_preflight("finetune", build, config.global_batch_size, config.preflight, config.steps,
                                     period="run")
    preflight.write_report(report, config.out_dir)
    print_fn(preflight.describe(report))
    return report
