"""Fine-tune a backbone with the BiT-HyperRule on Keras 3 (JAX): ``python -m kitlib finetune``.

One run, one ``FinetuneConfig`` (printed once, saved as ``config.json``): read the data (Cassava
TFRecords, JPEG folder + CSV, one folder per class, or a tfds name) and split off validation
(``sources.load_source``), derive the ``HyperRule`` from the TRAINING size and the GLOBAL batch, load the
backbone (``backbones.load``: a BiT ``.npz`` / SavedModel / handle, or the SwAV ``backbone.keras``) and put a
zero-initialised head on it, ``fit()`` for exactly the rule's steps (SGD momentum 0.9, MixUp in the tf.data
pipeline, the best validation accuracy checkpointed and restored, CSV log, progress bar), evaluate
(accuracy, per-class report, confusion matrix) and export the classifier (``kitlib.bit.export``):

    out/classifier.keras, classifier.json   the classifier (float32) + class names and image size
    out/config.json                         the run's settings, the rule, the devices
    out/finetune.json                       config, history, validation accuracy, report, confusion matrix
    out/history.csv, checkpoints/best.weights.h5, tensorboard/ (when tensorboard is installed)

Distribution: call ``runtime.setup()`` first. With several devices its ``keras.distribution.DataParallel``
replicates the model (built after it) and ``fit`` splits every batch over the devices; the loss and the
metrics inside the compiled step are over the global batch, so 8 devices train like 1.
"""

import dataclasses
import json
import math
import os
import secrets

import numpy as np

from kitlib.bit import export, hyperrule, inputs, losses, training
from kitlib.compat import keras, tf
from kitlib.data import sources
from kitlib.models import hub

# ============ the run's settings ============


@dataclasses.dataclass
class FinetuneConfig:
    """Everything one fine-tuning run depends on (printed once, saved in ``config.json``).

    Attributes:
        data_dir: see ``sources.load_source``. backbone: a ``backbones.load`` source (.keras file or pretrain
            output folder, BiT .npz, BiT SavedModel folder, TF-Hub / Kaggle Models handle). out_dir: outputs.
        global_batch_size: B over all devices, a multiple of the device count (the rule scales steps by
            512/B and the lr by B/512).
        steps: override the rule's number of steps (phases keep their fractions).
        loss: "ce" or "bitempered"; label_smoothing, t1, t2 as in ``kitlib.bit.losses``.
        val_fraction: held-out share for validation and the best checkpoint, in [0, 1).
        base_lr: lr at batch 512 (BiT: 0.003). resolution: optional (resize, crop) instead of the rule's.
        evaluations: about how many validation rounds (Keras epochs) the run has.
        seed: split (TFRecords), shuffle, crops, flips and MixUp (TensorFlow's global seed is set to it);
            None: a fresh seed per run (recorded in config.json), no global seed set.
        tfds_data_dir: where tfds:NAME is prepared.
        steps_per_execution: steps per compiled call (None: up to 32 on TPU, 1 elsewhere).
        restore_best: end with the best-validation weights (else the last ones).
        mixed_precision: "auto" (bfloat16 on TPU, float32 elsewhere) or a Keras policy name; used when
            ``finetune`` sets the runtime up itself. allow_cpu: run on the CPU even where an accelerator
            exists that JAX cannot see. verbose: 0 silent, 1 progress bar, 2 one line per round.
    """

    data_dir: str
    backbone: str
    out_dir: str
    global_batch_size: int = 512
    steps: int = None
    loss: str = "ce"
    label_smoothing: float = 0.0
    t1: float = losses.T1_CASSAVA
    t2: float = losses.T2_CASSAVA
    val_fraction: float = 0.2
    base_lr: float = hyperrule.BASE_LR
    resolution: tuple = None
    evaluations: int = 10
    seed: int = 0
    tfds_data_dir: str = None
    steps_per_execution: int = None
    restore_best: bool = True
    mixed_precision: str = "auto"
    allow_cpu: bool = False
    verbose: int = 1

    def __post_init__(self):
        self.data_dir, self.backbone, self.out_dir = (os.fspath(v) for v in (self.data_dir, self.backbone,
                                                                            self.out_dir))
        if self.resolution is not None:
            self.resolution = tuple(int(v) for v in self.resolution)
            if len(self.resolution) != 2:
                raise ValueError(f"resolution is (resize, crop), got {self.resolution}")
        if self.global_batch_size < 1 or (self.steps is not None and self.steps < 2) or self.evaluations < 1:
            raise ValueError(f"need global_batch_size >= 1, steps >= 2 (or None) and evaluations >= 1; got "
                             f"{self.global_batch_size}, {self.steps}, {self.evaluations}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        self.loss_fn()  # unknown loss, bad temperatures or smoothing: refused before any data is read

    @classmethod
    def smoke(cls, data_dir, backbone, out_dir, **overrides):
        """The small run the demo and the notebooks' CI smoke cell share, sized for two CPU cores.

        Each setting departs from BiT for a reason: 64 px crops of 80 px images instead of 480 of 512
        (a CPU); 60 steps at batch 16 instead of the rule's 500 at 512; base_lr 1.0 per 512 images (lr
        0.03 at 16) instead of 0.003, which suits a pretrained R50 at 480 px, not a small CNN that must
        move far in 60 steps (0.003 -> ~20 % validation accuracy on the sample, 1.0 -> ~90 %).
        """
        settings = dict(global_batch_size=16, steps=60, resolution=(80, 64), base_lr=1.0, evaluations=4)
        settings.update(overrides)
        return cls(data_dir, backbone, out_dir, **settings)

    def loss_fn(self):
        """The per-example loss ``fn(y_true [B, C], logits [B, C]) -> [B]`` this config names."""
        return losses.make_loss(self.loss, self.label_smoothing, self.t1, self.t2)

    def as_dict(self):
        values = dataclasses.asdict(self)
        values["resolution"] = list(self.resolution) if self.resolution else None
        return values


# BiT-R50x1 at 480 px: images per device that fit (TPU v5e core in bfloat16; a 16 GB GPU in float32)
_IMAGES_PER_DEVICE = {"TPU": 64, "GPU": 16, "CPU": 16}


def suggested_global_batch(kind, num_devices=1):
    """A global batch that fits BiT-R50x1 at 480 px: 64 per TPU core (512 on a v5e-8, BiT's own batch),
    16 per 16 GB GPU, 16 on a CPU. The HyperRule rescales steps and learning rate for any batch."""
    per_device = _IMAGES_PER_DEVICE[kind]
    return per_device * num_devices if kind != "CPU" else per_device


# ============ the whole run ============


@dataclasses.dataclass
class FinetuneResult:
    model: object  # the Keras classifier (best-validation weights unless restore_best=False)
    rule: hyperrule.HyperRule
    source: sources.TrainingSource
    history: object  # keras History
    evaluation: dict  # None without a validation split
    out_dir: str
    config: FinetuneConfig


def _check_backbone_source(source):
    """Fail in seconds, before any data is read, on a handle that cannot be reached."""
    if not os.path.exists(os.path.expanduser(source)):
        hub.resolve_backbone(source)


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _write_json(path, record):
    with open(path, "w") as f:
        json.dump(_json_ready(record), f, indent=1)


def _run_seed(seed):
    """The run's seed: ``seed``, with TensorFlow's global seed set to it; None draws a fresh one and touches nothing.

    Nothing else global is seeded (numpy, Python and Keras keep their state): the model starts from the backbone's
    weights and a zero head, crops, flips and MixUp are stateless ops of (seed, position), the file split takes
    the seed itself.
    """
    if seed is None:
        return secrets.randbelow(2**31)
    tf.random.set_seed(seed)  # tf.data's shuffle seed combines with the global seed: an earlier one would change it
    return int(seed)


def _run_record(config, rt, source, rule, seed):
    """The run's settings as ``config.json`` records them: config, devices, policy, source, rule."""
    epochs, steps_per_epoch = training.evaluation_rounds(rule.total_steps, config.evaluations)
    steps_per_execution = training.steps_per_execution_for(rt.kind, steps_per_epoch, config.steps_per_execution)
    return {"config": config.as_dict(), "seed": seed, "backend": keras.backend.backend(), "device_kind": rt.kind,
            "devices": rt.num_devices, "global_batch_size": config.global_batch_size,
            "per_device_batch": config.global_batch_size // rt.num_devices,
            "policy": keras.config.dtype_policy().name, "steps_per_execution": steps_per_execution,
            "evaluation_rounds": epochs, "source": source.kind, "class_names": list(source.class_names),
            "train_size": source.train_size, "val_size": source.val_size, "rule": rule.as_dict()}


def _fit_and_evaluate(config, source, rule, steps_per_execution, seed):
    """Backbone + zero head, fit for the rule's steps, then the validation report.

    Returns:
        (model, History, evaluation): evaluation is `report`'s dict, None without a validation split.
    """
    from kitlib.models import backbones  # noqa: PLC0415

    num_classes = len(source.class_names)
    model = training.build_classifier(backbones.load(config.backbone), num_classes, rule.crop)
    training.compile_classifier(model, rule, config.loss_fn(), steps_per_execution)
    train_batches = inputs.train_dataset(source.train, rule, num_classes, seed=seed)
    val_batches = (inputs.eval_dataset(source.val, rule.crop, rule.batch_size, num_classes, pad=True)
                   if source.val is not None and source.val_size > 0 else None)  # 0: too few images to hold any out
    history = training.train(model, rule, train_batches, val_batches, config.out_dir, config.evaluations,
                             config.verbose, config.restore_best,
                             validation_steps=math.ceil(source.val_size / rule.batch_size) or None)
    evaluation = training.report(model, val_batches, source.class_names) if val_batches is not None else None
    return model, history, evaluation


def _add_results(record, history, evaluation):
    """``record`` with the history and, when there was a validation split, accuracy, per-class report and
    confusion matrix (what ``finetune.json`` holds beyond ``config.json``)."""
    record["history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    if evaluation is not None:
        record["val_accuracy"] = evaluation["accuracy"]
        record["confusion_matrix"] = evaluation["confusion_matrix"]
        record["per_class"] = evaluation["per_class"]
    return record


def finetune(config=None, rt=None, **fields):
    """Fine-tune ``config.backbone`` on ``config.data_dir`` with the BiT-HyperRule and export the classifier.

    Args:
        config: a ``FinetuneConfig``; or leave it out and pass its fields as keywords
            (``finetune(data_dir=..., backbone=..., out_dir=..., global_batch_size=16)``).
        rt: the ``runtime.setup()`` result; None: set the runtime up here (``config.allow_cpu``,
            ``config.mixed_precision``). Build nothing Keras before it: the distribution and the dtype
            policy apply to models built afterwards.
    Returns:
        a ``FinetuneResult``.
    Raises:
        ValueError: bad settings, a global batch that does not split over the devices, unreadable data
        (``data.DataError``) or an unreachable backbone handle, each saying what to do.
    """
    from kitlib import runtime  # noqa: PLC0415

    if config is None:
        config = FinetuneConfig(**fields)
    elif fields:
        config = dataclasses.replace(config, **fields)
    rt = rt or runtime.setup(allow_cpu=config.allow_cpu, policy=config.mixed_precision,
                             verbose=bool(config.verbose))
    runtime.check_global_batch(config.global_batch_size, rt.num_devices)
    _check_backbone_source(config.backbone)  # an unreachable handle fails here, in seconds
    seed = _run_seed(config.seed)
    source = sources.load_source(config.data_dir, config.val_fraction, seed, config.tfds_data_dir)
    rule = hyperrule.HyperRule(source.image_hw, source.train_size, config.global_batch_size, config.base_lr,
                                   config.steps, config.resolution)
    record = _run_record(config, rt, source, rule, seed)
    if config.verbose:
        print("finetune settings:\n" + "\n".join(f"  {k}: {json.dumps(_json_ready(v))}" for k, v in record.items()))
    os.makedirs(config.out_dir, exist_ok=True)
    _write_json(os.path.join(config.out_dir, "config.json"), record)

    model, history, evaluation = _fit_and_evaluate(config, source, rule, record["steps_per_execution"], seed)
    export.save_classifier(model, config.out_dir, source.class_names, rule.crop)
    _write_json(os.path.join(config.out_dir, "finetune.json"), _add_results(record, history, evaluation))
    if evaluation is not None and config.verbose:
        print(f"validation accuracy {evaluation['accuracy']:.4f}\n{evaluation['report']}")
    return FinetuneResult(model, rule, source, history, evaluation, config.out_dir, config)


def run_preflight(config, target, print_fn=print):
    """Plan the fine-tuning `config` as it would run on `target` (a `kitlib.preflight` name): the rule's
    resolution and batch, bfloat16, the target's chips; compile its train step there and write
    ``OUT/preflight.json``. Nothing is trained. Returns the `kitlib.preflight.Report`."""
    from kitlib import preflight, runtime  # noqa: PLC0415
    from kitlib.models import backbones

    preflight.prepare_compile_only()
    rt = preflight.target_runtime(target)
    runtime.check_global_batch(config.global_batch_size, rt.num_devices)
    _check_backbone_source(config.backbone)
    seed = 0 if config.seed is None else int(config.seed)
    source = sources.load_source(config.data_dir, config.val_fraction, seed, config.tfds_data_dir)
    num_classes = len(source.class_names)

    def rule_for(batch):
        return hyperrule.HyperRule(source.image_hw, source.train_size, batch, config.base_lr, config.steps,
                                       config.resolution)

    rule = rule_for(config.global_batch_size)
    if config.verbose:
        print_fn(f"kitlib finetune: {source.train_size} training images of {source.image_hw[0]}x{source.image_hw[1]}: "
                 f"the BiT-HyperRule's {rule.crop}-px crops, {rule.total_steps} steps at global batch "
                 f"{rule.batch_size}, MixUp {rule.mixup_alpha}")

    def build(batch):
        """The classifier `finetune` would build at global batch `batch`, and one batch as the step sees it."""
        import jax  # noqa: PLC0415

        planned = rule_for(batch)
        with runtime.policy_scope(rt.policy):
            model = training.build_classifier(backbones.load(config.backbone), num_classes, planned.crop)
            training.compile_classifier(model, planned, config.loss_fn())
        spec = inputs.train_dataset(source.train, planned, num_classes, seed=seed).element_spec
        return model, tf.nest.map_structure(
            lambda t: jax.ShapeDtypeStruct((batch,) + tuple(t.shape[1:]), t.dtype.as_numpy_dtype), spec)

    report = preflight.run_preflight("finetune", build, config.global_batch_size, target, rule.total_steps,
                                     period="run")
    preflight.write_report(report, config.out_dir)
    print_fn(preflight.describe(report))
    return report


# ============ CLI ============


def add_arguments(parser):
    parser.add_argument("--data", required=True,
                        help="folder with train_tfrecords/, or train.csv + train_images/, or one sub-folder "
                             "per class; or tfds:NAME")
    parser.add_argument("--backbone", required=True,
                        help="a .keras backbone or pretrain output folder (runs/swav), a BiT .npz "
                             "(BiT-M-R50x1.npz), a BiT SavedModel folder (/kaggle/input/bit/tensorflow2/m-r50x1/1), "
                             "https://tfhub.dev/google/bit/m-r50x1/1 or google/bit/tensorFlow2/m-r50x1")
    parser.add_argument("--out", required=True, help="output folder (classifier, history, checkpoints)")
    parser.add_argument("--batch-size", type=int, default=512,
                        help="GLOBAL batch, a multiple of the device count (BiT: 512; steps scale by 512/B)")
    parser.add_argument("--steps", type=int, default=None, help="override the rule's number of steps")
    parser.add_argument("--loss", choices=losses.LOSSES, default="ce",
                        help="ce, or bitempered for noisy labels (Amid et al. 2019)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="epsilon in [0, 1)")
    parser.add_argument("--t1", type=float, default=losses.T1_CASSAVA, help="bi-tempered t1 (bounded loss)")
    parser.add_argument("--t2", type=float, default=losses.T2_CASSAVA, help="bi-tempered t2 (heavy tail)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held out for validation, in [0, 1)")
    parser.add_argument("--base-lr", type=float, default=hyperrule.BASE_LR, help="lr at batch 512 (BiT: 0.003)")
    parser.add_argument("--resolution", type=int, nargs=2, metavar=("RESIZE", "CROP"), default=None,
                        help="override the rule's (resize, crop), e.g. 160 128 for a CPU smoke run")
    parser.add_argument("--evaluations", type=int, default=10, help="validation rounds during the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tfds-data-dir", default=None, help="where a tfds:NAME dataset is prepared")
    parser.add_argument("--mixed-precision", default="auto",
                        help="auto (bfloat16 on TPU, float32 elsewhere) or a Keras policy such as mixed_float16")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU even where a TPU/GPU exists that JAX cannot see (else refuse)")
    from kitlib import preflight  # noqa: PLC0415

    parser.add_argument("--preflight", metavar="TARGET", choices=list(preflight.TARGETS),
                        help=f"train nothing: compile this run's step for a TPU ({', '.join(preflight.TARGETS)}) "
                             "and report memory per chip, FLOPs and a speed bound (OUT/preflight.json; exit 4 "
                             "when it does not fit)")


def run(args):
    """Run ``python -m kitlib finetune`` with parsed flags (a user error is one line, exit 2: kitlib.cli;
    a preflight that does not fit: exit 4)."""
    config = FinetuneConfig(
        data_dir=args.data, backbone=args.backbone, out_dir=args.out, global_batch_size=args.batch_size,
        steps=args.steps, loss=args.loss, label_smoothing=args.label_smoothing, t1=args.t1, t2=args.t2,
        val_fraction=args.val_fraction, base_lr=args.base_lr, resolution=args.resolution,
        evaluations=args.evaluations, seed=args.seed, tfds_data_dir=args.tfds_data_dir,
        mixed_precision=args.mixed_precision, allow_cpu=args.allow_cpu)
    if args.preflight:
        from kitlib import preflight  # noqa: PLC0415

        return 0 if run_preflight(config, args.preflight).fits else preflight.EXIT_DOES_NOT_FIT
    result = finetune(config)
    print(f"saved the classifier ({len(result.source.class_names)} classes, {result.rule.crop}px) to {result.out_dir}")
    return 0
