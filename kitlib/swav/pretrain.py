"""SwAV pretraining end to end: data -> multi-crop -> `SwAVModel.fit` -> checkpoints -> exported backbone.

``pretrain(config)`` is what the notebook, the CLI (``python -m kitlib pretrain``) and the demo call,
with one `PretrainConfig`. It writes, under ``config.out_dir``:
    config.json        the run's settings as resolved (backend, devices, global batch, lr, ...)
    checkpoints/       state.npz: every model and optimizer variable (step, momentum, queue), epochs done
    history.csv        one row per finished epoch: loss, ln_k, usage_entropy, lr (, knn_acc)
    backbone.keras     the trained backbone, float32: ``kitlib.models.backbones.load(path)`` -> [N, F] features
Rerunning the same command after an interruption (kill -9 included) resumes from the last saved
epoch; a finished run only re-exports. ``epochs=0`` exports the random-init backbone.
"""

import dataclasses
import json
import os

import numpy as np

from kitlib import preflight, runtime
from kitlib.compat import keras
from kitlib.data import tfrecords
from kitlib.models import backbones, precision
from kitlib.swav import checkpoint, color, geometry, multicrop, recipe
from kitlib.swav.model import SwAVModel
from kitlib.swav.monitors import CollapseMonitor
from kitlib.swav.optim import OPTIMIZERS, WarmupCosine, build_optimizer

_CACHE_LIMIT = 5_000  # cache encoded records in memory below this many images
# settings that fix variable shapes: a checkpoint cannot be resumed if one of them changed
_SHAPE_KEYS = ("backbone", "prototypes", "hidden_dim", "output_dim", "queue_length", "optimizer")
AUGMENTATIONS = ("auto", "host", "device", "none")
_AUGMENT_MODES = {"host": True, "device": "device", "none": False}


@dataclasses.dataclass
class PretrainConfig:
    """Every setting of one SwAV run. Fields left None are chosen by `resolve` from the data and the
    devices: SwAV's recipe by `kitlib.swav.recipe.rule` (the paper's at ImageNet-like scale, the small-data
    recipe below it), printed with its reasons; any field given here overrides the rule.

    Attributes:
        data_dir: folder holding ``train_tfrecords/`` (competition layout). out_dir: outputs, resumed.
        epochs: passes over the data (0: export the random-init backbone).
        global_batch_size: images per step over all devices (a multiple of the device count).
        backbone: a `kitlib.models.backbones.KIT_NAMES` name. prototypes: K.
        crops: multi-crop spec ``COUNTxSIZE@MIN-MAX,...`` (big crops first).
        augmentation: "host" (colour in tf.data), "device" (colour in the compiled step, on the
            accelerator), "none" (crops only), "auto" (device on TPU/GPU, host on CPU).
        color_strength, gray_p, blur_p: the colour distortion (`kitlib.swav.color.ColorConfig`; SwAV 1, 0.2, 0.5).
        hidden_dim, output_dim: projection head. optimizer: "lars" | "sgd" | "adam".
        base_lr, final_lr: peak and final learning rate (final None: base / 1000).
        warmup_epochs: linear warmup. weight_decay: skipped for BN and biases (LARS/SGD).
        temperature, epsilon, sinkhorn_iters: SwAV's τ, ε and Sinkhorn iterations.
        freeze_prototypes_niters: steps with frozen prototypes (None: one epoch; paper 313 at 4096).
        queue_length, queue_start_epoch: the queue (0: none; paper 3840 from epoch 15 at batch 256).
        steps_per_execution: steps per compiled call (TPU: 32+). max_steps_per_epoch: cap (smoke runs).
        knn_every: every N epochs log ``knn_acc`` of frozen features on the labelled split (0: off).
        mixed_precision: "auto" (bfloat16 on TPU, float32 elsewhere) or a Keras policy name.
        seed: int for reproducible init, order and crops. allow_cpu: train on the CPU even where an
            accelerator exists that JAX cannot see. verbose: 0 silent, 1 progress bar, 2 a line per epoch.
    """
    data_dir: str = None
    out_dir: str = None
    epochs: int = None
    global_batch_size: int = None
    backbone: str = None
    prototypes: int = None
    crops: str = None
    augmentation: str = "auto"
    color_strength: float = None
    gray_p: float = None
    blur_p: float = None
    hidden_dim: int = None
    output_dim: int = 128
    optimizer: str = None
    base_lr: float = None
    final_lr: float = None
    warmup_epochs: int = None
    weight_decay: float = 1e-6
    temperature: float = 0.1
    epsilon: float = None
    sinkhorn_iters: int = 3
    freeze_prototypes_niters: int = None
    queue_length: int = None
    queue_start_epoch: int = None
    steps_per_execution: int = 1
    max_steps_per_epoch: int = None
    knn_every: int = 0
    mixed_precision: str = "auto"
    seed: int = None
    allow_cpu: bool = False
    verbose: int = 1

    @classmethod
    def smoke(cls, **overrides):
        """The small run the demo, the tests and the notebooks' CI smoke cell share: the rule's recipe
        for the data (`kitlib.swav.recipe.rule`), shortened to 40 epochs at batch 32 so a CPU runs it in
        about half a minute on the bundled sample."""
        settings = dict(epochs=40, global_batch_size=32, seed=0)
        settings.update(overrides)
        return cls(**settings)

    def resolve(self, num_images, num_devices=1, kind="CPU", image_hw=(224, 224), num_classes=None):
        """A copy with every None/auto filled in for `num_images` images of `image_hw` (and `num_classes`
        classes, when known) on `num_devices` of `kind`.

        Raises ValueError for a global batch that does not split over the devices or gives no step.
        """
        return self.resolve_with_reasons(num_images, num_devices, kind, image_hw, num_classes)[0]

    def resolve_with_reasons(self, num_images, num_devices=1, kind="CPU", image_hw=(224, 224), num_classes=None):
        """`resolve`, and {field: why} for every field the rule (`kitlib.swav.recipe.rule`) filled."""
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        batch = self.global_batch_size or recipe.default_global_batch(num_images, num_devices)
        runtime.check_global_batch(batch, num_devices)
        chosen = recipe.rule(num_images, image_hw, batch, num_classes)
        filled = {k: v for k, v in chosen.settings.items() if getattr(self, k) is None}
        reasons = {k: chosen.reasons[k] for k in filled}
        if self.global_batch_size is None:
            reasons["global_batch_size"] = recipe.BATCH_REASON
        if "warmup_epochs" in filled and self.epochs is not None:  # a short run given by hand: <= 10 % warmup
            filled["warmup_epochs"] = min(filled["warmup_epochs"], self.epochs // 10)
        config = dataclasses.replace(self, global_batch_size=batch, **filled)
        if self.optimizer is not None and self.base_lr is None and config.optimizer != chosen.settings["optimizer"]:
            config.base_lr = recipe.default_learning_rate(config.optimizer, batch)  # the flag's own default
            config.final_lr = self.final_lr
            reasons["base_lr"] = f"the default of {config.optimizer} at batch {batch} (optimizer given)"
        steps = num_images // batch
        if steps < 1 and config.epochs > 0:
            raise ValueError(f"{self.data_dir}: {num_images} training images give no full batch of "
                             f"{batch}; lower --batch-size.")
        steps = max(1, min(steps, self.max_steps_per_epoch or steps))
        config = dataclasses.replace(
            config, max_steps_per_epoch=steps,
            final_lr=config.base_lr * 1e-3 if config.final_lr is None else config.final_lr,
            freeze_prototypes_niters=steps if config.freeze_prototypes_niters is None
            else config.freeze_prototypes_niters,
            augmentation=("device" if kind in ("TPU", "GPU") else "host") if self.augmentation == "auto"
            else self.augmentation)
        return config, dict(regime=chosen.regime, **reasons)


# ============ callbacks: is it learning? ============

# ============ pretrain ============

def training_batches(files, crops, global_batch, augmentation="host", seed=None, color_config=color.SWAV_COLOR):
    """Endless multi-crop batches of the training shards: ((crop_1, ..., crop_V),) with each crop
    [global_batch, S_v, S_v, 3] float32 in [0, 1] — the 1-tuple is Keras's "inputs only" element.

    Args:
        files: TFRecord shards (``kitlib.data.tfrecords.list_tfrecords``). crops: spec or MultiCropConfig.
        global_batch: images per step over all devices. augmentation: "host" | "device" | "none".
        seed: int for a reproducible order and crops (None: shards interleaved as they stream in).
        color_config: `kitlib.swav.color.ColorConfig` of the host colour augmentation.
    """
    if augmentation not in _AUGMENT_MODES:
        raise ValueError(f"augmentation must be 'host', 'device' or 'none', got {augmentation!r}")
    # a seed asks for a reproducible run: shards mixed in a fixed order instead of as they stream in
    records = tfrecords.load_dataset(files, labeled=False, decode=False, reproducible=seed is not None)
    num_images = tfrecords.count_data_items(files)
    if num_images <= _CACHE_LIMIT:
        records = records.cache()  # encoded bytes: small, and spares re-reading the shards
    batches = multicrop.multicrop_batches(records.repeat(), _crop_config(crops), global_batch,
                                          augment=_AUGMENT_MODES[augmentation],
                                          shuffle_buffer=min(num_images, 1024), seed=seed, color=color_config)
    return batches.map(lambda *crops: (tuple(crops),))


def typical_image_hw(files, records=8):
    """(height, width) of a typical training image: the median over the first `records` records."""
    from kitlib.compat import tf  # noqa: PLC0415

    shapes = [tf.image.extract_jpeg_shape(ex["image"]).numpy()[:2] if tf.io.is_jpeg(ex["image"])
              else tf.shape(tf.io.decode_image(ex["image"], channels=3, expand_animations=False)).numpy()[:2]
              for ex in tfrecords.load_dataset(files, labeled=False, decode=False, ordered=True).take(records)]
    if not shapes:
        raise tfrecords.DataError(f"{files[0]}: no image records to read the image size from")
    return tuple(int(v) for v in np.median(np.array(shapes), axis=0))


def random_init_backbone(name, seed):
    """The backbone `pretrain(PretrainConfig(backbone=name, seed=seed))` starts from: same seed, same weights
    (the caller's random state is left as it was)."""
    with runtime.seeded(seed):
        return backbones.build(name)


@dataclasses.dataclass
class PretrainResult:
    """What `pretrain` returns: the trained model, its backbone, the whole history, where things are."""
    model: SwAVModel
    backbone: keras.Model
    history: list
    backbone_path: str
    ln_k: float
    collapsed: bool
    config: PretrainConfig


def _crop_config(crops):
    return crops if isinstance(crops, geometry.MultiCropConfig) else geometry.parse_multicrop_spec(crops)


def _write_config(out_dir, record):
    """config.json; refuses to reuse checkpoints made with other variable shapes."""
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [k for k in _SHAPE_KEYS if saved.get(k) != record.get(k)]
        if changed and os.path.isdir(os.path.join(out_dir, "checkpoints")):
            raise ValueError(
                f"{out_dir} holds a run with other {', '.join(changed)} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); its checkpoints cannot be resumed "
                "with these settings. Use a new --out, or delete that folder to start over.")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def export_backbone(backbone, path):
    """The backbone as a float32 ``.keras`` file for `kitlib.models.backbones.load` (a backbone trained under
    mixed_bfloat16 is saved as float32, so it fine-tunes on any device); returns the path."""
    return backbones.save(precision.with_dtype_policy(backbone, "float32"), path)


def color_config(config):
    """The run's `kitlib.swav.color.ColorConfig` (jitter probability as SwAV's, 0.8)."""
    return color.ColorConfig(strength=config.color_strength, gray_p=config.gray_p, blur_p=config.blur_p)


def _build_model(config, net):
    steps = config.max_steps_per_epoch
    model = SwAVModel(net, num_prototypes=config.prototypes, hidden_dim=config.hidden_dim,
                      output_dim=config.output_dim, temperature=config.temperature, epsilon=config.epsilon,
                      sinkhorn_iters=config.sinkhorn_iters, freeze_prototypes_niters=config.freeze_prototypes_niters,
                      queue_length=config.queue_length, queue_start_step=config.queue_start_epoch * steps,
                      crop_augment=color.ColorAugment(color_config(config), seed=config.seed) if config.augmentation == "device" else None)
    schedule = WarmupCosine(config.base_lr, max(1, config.epochs * steps), config.warmup_epochs * steps,
                            final_lr=config.final_lr)
    model.compile(optimizer=build_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay),
                  steps_per_execution=config.steps_per_execution)
    model.optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    return model


def plan(config, rt):
    """The run `pretrain(config, rt)` will do: the config resolved from the data and the devices.

    Returns:
        (resolved `PretrainConfig`, the config.json record, {field: why} for the fields the rule chose).
    """
    if config.data_dir is None or config.out_dir is None:
        raise ValueError("PretrainConfig needs data_dir and out_dir")
    files = tfrecords.list_tfrecords(config.data_dir)
    num_images = tfrecords.count_data_items(files)
    image_hw = typical_image_hw(files)
    label_map = tfrecords.split_paths(config.data_dir).label_map
    num_classes = len(tfrecords.read_label_map(label_map)) if os.path.isfile(label_map) else None
    config, reasons = config.resolve_with_reasons(num_images, rt.num_devices, rt.kind, image_hw, num_classes)
    record = dict(dataclasses.asdict(config), backend=keras.backend.backend(), devices=rt.num_devices,
                  device_kind=rt.kind, policy=rt.policy, num_images=num_images, image_hw=list(image_hw),
                  recipe=reasons.pop("regime"), chosen_by_rule=sorted(reasons))
    return config, record, reasons


def describe_plan(config, record, reasons):
    """What the rule chose and why, one line per field (`plan`'s outputs), for printing."""
    head = (f"kitlib pretrain: the {record['recipe']} recipe for {record['num_images']} images of "
            f"{record['image_hw'][0]}x{record['image_hw'][1]} at global batch {config.global_batch_size} "
            "(kitlib.swav.recipe.rule; a flag or config field overrides any line)")
    if not reasons:
        return head + ": every setting was given."
    return head + ":\n" + "\n".join(f"  {k} = {getattr(config, k)!r}: {why}" for k, why in reasons.items())


def pretrain(config, rt=None, print_fn=print):
    """SwAV-pretrain a backbone on ``config.data_dir`` and export it to ``config.out_dir/backbone.keras``.

    Args:
        config: `PretrainConfig` (None fields resolved from the data and the devices, then printed once
            and saved as config.json).
        rt: a `kitlib.runtime.Runtime` (None: `runtime.setup(allow_cpu=config.allow_cpu, ...)`).
        print_fn: where messages go.
    Returns:
        `PretrainResult`.
    """
    rt = rt or runtime.setup(allow_cpu=config.allow_cpu, policy=config.mixed_precision, verbose=bool(config.verbose))
    config, record, reasons = plan(config, rt)
    _write_config(config.out_dir, record)
    if config.verbose:
        print_fn("kitlib pretrain: " + ", ".join(f"{k}={v}" for k, v in record.items() if k != "chosen_by_rule"))
        print_fn(describe_plan(config, record, reasons))
    with runtime.seeded(config.seed):  # a seeded run is repeatable; the caller's random state is kept
        return _train(config, print_fn)


def _train(config, print_fn):
    """`pretrain` after planning: build (as `random_init_backbone`), restore, fit, export."""
    files = tfrecords.list_tfrecords(config.data_dir)
    net = backbones.build(config.backbone)
    model = _build_model(config, net)
    state_path = os.path.join(config.out_dir, "checkpoints", "state.npz")
    epochs_done = 0
    if os.path.exists(state_path):
        epochs_done = checkpoint.restore_state(model, state_path)
        if config.verbose:
            print_fn(f"kitlib pretrain: resuming after epoch {epochs_done} "
                     f"(step {int(model.optimizer.iterations.numpy())}) from {state_path}")
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    history_path = os.path.join(config.out_dir, "history.csv")
    checkpoint.truncate_history(history_path, epochs_done)
    monitor = CollapseMonitor(model.ln_k, print_fn=print_fn)
    callbacks = [monitor]
    if config.knn_every:
        from kitlib.swav.evaluate import \
            KNNMonitor  # noqa: PLC0415 - sklearn only when asked

        labelled = tfrecords.load_dataset(files, labeled=True, ordered=True,
                                     num_classes=len(tfrecords.class_names_of(config.data_dir)))
        callbacks.append(KNNMonitor(net, labelled, image_size=_crop_config(config.crops).size_crops[0],
                                    every=config.knn_every))
    callbacks.append(checkpoint.CheckpointAndHistory(state_path, history_path, monitor, model.ln_k))
    if epochs_done < config.epochs:
        batches = training_batches(files, config.crops, config.global_batch_size, config.augmentation,
                                   seed=config.seed, color_config=color_config(config))
        model.fit(batches, epochs=config.epochs, initial_epoch=epochs_done,
                  steps_per_epoch=config.max_steps_per_epoch, callbacks=callbacks, verbose=config.verbose,
                  shuffle=False)  # tf.data shuffles; Keras 3.15 warns when told to shuffle a dataset
    if monitor.nan_epoch is not None:
        raise FloatingPointError(f"SwAV pretraining diverged (NaN loss) in epoch {monitor.nan_epoch + 1}; "
                                 f"the last good checkpoint is {state_path}. Lower base_lr and rerun.")
    backbone_path = export_backbone(net, os.path.join(config.out_dir, "backbone.keras"))
    history = checkpoint.read_history(history_path)
    if not history:  # no epoch trained (epochs=0): the columns alone
        with open(history_path, "w") as f:
            f.write("epoch,loss\n")
    collapsed = bool(history) and abs(history[-1]["loss"] - model.ln_k) <= monitor.tolerance * model.ln_k
    return PretrainResult(model, net, history, backbone_path, model.ln_k, collapsed, config)


# ============ command line ============

_FLAGS = {  # flag -> (PretrainConfig field, type, help)
    "--epochs": ("epochs", int, "passes over the data (0: export the random-init backbone)"),
    "--batch-size": ("global_batch_size", int, "global batch: images per step over all devices"),
    "--prototypes": ("prototypes", int, "K, the number of prototypes"),
    "--crops": ("crops", str, "multi-crop spec COUNTxSIZE@MIN-MAX,..."),
    "--color-strength": ("color_strength", float, "colour-jitter strength s (SwAV 1.0)"),
    "--gray-p": ("gray_p", float, "probability of a grey crop (SwAV 0.2)"),
    "--blur-p": ("blur_p", float, "probability of a blurred crop (SwAV 0.5)"),
    "--hidden-dim": ("hidden_dim", int, None),
    "--output-dim": ("output_dim", int, None),
    "--base-lr": ("base_lr", float, "peak lr (the rule: LARS 0.6 at batch 256, 4.8 at 4096; Adam 3e-3)"),
    "--final-lr": ("final_lr", float, "default base lr / 1000"),
    "--warmup-epochs": ("warmup_epochs", int, None),
    "--weight-decay": ("weight_decay", float, None),
    "--temperature": ("temperature", float, None),
    "--epsilon": ("epsilon", float, None),
    "--sinkhorn-iters": ("sinkhorn_iters", int, None),
    "--freeze-prototypes-iters": ("freeze_prototypes_niters", int, "default: one epoch of steps"),
    "--queue-length": ("queue_length", int, None),
    "--queue-start-epoch": ("queue_start_epoch", int, None),
    "--steps-per-execution": ("steps_per_execution", int, "steps per compiled call (TPU: 32+)"),
    "--max-steps-per-epoch": ("max_steps_per_epoch", int, None),
    "--knn-every": ("knn_every", int, "log kNN accuracy on the labelled train split every N epochs"),
    "--mixed-precision": ("mixed_precision", str, "auto, float32, mixed_bfloat16 or mixed_float16"),
    "--seed": ("seed", int, None),
}


def add_arguments(parser):
    """Flags of ``python -m kitlib pretrain``: the fields of `PretrainConfig`, defaults from it."""
    defaults = PretrainConfig()
    a = parser.add_argument
    a("--data", required=True, help="folder holding train_tfrecords/ (competition layout)")
    a("--out", required=True, help="output folder: config.json, checkpoints/, history.csv, backbone.keras")
    a("--backbone", default=defaults.backbone, choices=list(backbones.KIT_NAMES), help="default: the rule's")
    a("--augmentation", default=defaults.augmentation, choices=list(AUGMENTATIONS))
    a("--optimizer", default=defaults.optimizer, choices=list(OPTIMIZERS), help="default: the rule's")
    for flag, (field, kind, help_text) in _FLAGS.items():
        default = getattr(defaults, field)
        a(flag, type=kind, default=default,
          help=f"{help_text or field} (default {'chosen by kitlib.swav.recipe.rule' if default is None else default})")
    a("--smoke", action="store_true", help="the CI smoke preset (PretrainConfig.smoke: the rule's recipe, 40 "
      "epochs at batch 32); other flags override it")
    a("--allow-cpu", action="store_true", help="train on the CPU even where a TPU/GPU exists that JAX cannot see")
    a("--preflight", metavar="TARGET", choices=list(preflight.TARGETS),
      help=f"train nothing: compile this run's step for a TPU ({', '.join(preflight.TARGETS)}) with libtpu's "
           "compile-only client and report memory per chip, FLOPs and a speed bound (OUT/preflight.json; exit 4 "
           "when it does not fit)")
    a("--verbose", type=int, default=1, choices=[0, 1, 2], help="0 silent, 1 progress bar, 2 a line per epoch")


def config_from_args(args, parser_defaults=None):
    """`PretrainConfig` from parsed flags (with --smoke, the smoke preset under the flags that were given)."""
    fields = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _FLAGS.items()}
    fields.update(backbone=args.backbone, augmentation=args.augmentation, optimizer=args.optimizer,
                  data_dir=args.data, out_dir=args.out, allow_cpu=args.allow_cpu, verbose=args.verbose)
    if getattr(args, "smoke", False):
        defaults = dataclasses.asdict(PretrainConfig())
        given = {k: v for k, v in fields.items() if v != defaults.get(k)}
        return PretrainConfig.smoke(**given)
    return PretrainConfig(**fields)


def run_preflight(config, target, print_fn=print):
    """Plan `config` as it would run on `target` (a `kitlib.preflight` name), compile its train step there,
    and write ``OUT/preflight.json``; nothing is trained. Returns the `kitlib.preflight.Report`."""
    preflight.prepare_compile_only()
    rt = preflight.target_runtime(target)
    config, record, reasons = plan(config, rt)
    if config.verbose:
        print_fn(describe_plan(config, record, reasons))
    crops = _crop_config(config.crops)
    sizes = [size for size, count in zip(crops.size_crops, crops.num_crops) for _ in range(count)]  # per view

    def build(global_batch):
        """The model `_train` would build for `global_batch`, under the target's policy, and one batch."""
        import jax  # noqa: PLC0415

        planned = dataclasses.replace(config, global_batch_size=global_batch)
        with runtime.policy_scope(rt.policy), runtime.seeded(0):
            model = _build_model(planned, backbones.build(planned.backbone))
        crops = tuple(jax.ShapeDtypeStruct((global_batch, s, s, 3), "float32") for s in sizes)
        return model, (crops,)

    report = preflight.run_preflight("pretrain", build, config.global_batch_size, target, config.max_steps_per_epoch)
    preflight.write_report(report, config.out_dir)
    print_fn(preflight.describe(report))
    return report


def run(args):
    """Run ``python -m kitlib pretrain`` with parsed flags; returns 0 (4: a preflight that does not fit)."""
    if args.preflight:
        report = run_preflight(config_from_args(args), args.preflight)
        return 0 if report.fits else preflight.EXIT_DOES_NOT_FIT
    result = pretrain(config_from_args(args))
    if result.history:
        print(f"kitlib pretrain: done; final loss {result.history[-1]['loss']:.4f} vs ln K {result.ln_k:.4f}; "
              f"backbone exported to {result.backbone_path}")
    else:
        print(f"kitlib pretrain: no epoch trained; the random-init backbone is exported to {result.backbone_path}")
    return 0
