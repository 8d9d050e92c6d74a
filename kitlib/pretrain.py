"""SwAV pretraining end to end: data -> multi-crop -> `SwAVModel.fit` -> checkpoints -> exported backbone.

``pretrain(config)`` is what the notebook, the CLI (``python -m kitlib pretrain``) and the demo call,
with one `PretrainConfig`. It writes, under ``config.out_dir``:
    config.json        the run's settings as resolved (backend, devices, global batch, lr, ...)
    checkpoints/       state.npz: every model and optimizer variable (step, momentum, queue), epochs done
    history.csv        one row per finished epoch: loss, ln_k, usage_entropy, lr (, knn_acc)
    backbone.keras     the trained backbone, float32: ``kitlib.backbones.load(path)`` -> [N, F] features
Rerunning the same command after an interruption (kill -9 included) resumes from the last saved
epoch; a finished run only re-exports. ``epochs=0`` exports the random-init backbone.
"""

import csv
import dataclasses
import json
import math
import os

import numpy as np

from kitlib import backbones, color, data, export, multicrop, runtime
from kitlib.compat import keras
from kitlib.optim import WarmupCosine, build_optimizer, swav_learning_rate
from kitlib.swav import SwAVModel, suggest_num_prototypes

_CACHE_LIMIT = 5_000  # cache encoded records in memory below this many images
# settings that fix variable shapes: a checkpoint cannot be resumed if one of them changed
_SHAPE_KEYS = ("backbone", "prototypes", "hidden_dim", "output_dim", "queue_length", "optimizer")
AUGMENTATIONS = ("auto", "host", "device", "none")
_AUGMENT_MODES = {"host": True, "device": "device", "none": False}


@dataclasses.dataclass
class PretrainConfig:
    """Every setting of one SwAV run; None fields are filled by `resolve` from the data and devices.

    Attributes:
        data_dir: folder holding ``train_tfrecords/`` (competition layout). out_dir: outputs, resumed.
        epochs: passes over the data (0: export the random-init backbone).
        global_batch_size: images per step over all devices (a multiple of the device count).
        backbone: "resnet50" | "small_cnn" (`kitlib.backbones.build`). prototypes: K (None: 3000).
        crops: multi-crop spec ``COUNTxSIZE@MIN-MAX,...`` (big crops first).
        augmentation: "host" (colour in tf.data), "device" (colour in the compiled step, on the
            accelerator), "none" (crops only), "auto" (device on TPU/GPU, host on CPU).
        hidden_dim, output_dim: projection head. optimizer: "lars" | "sgd".
        base_lr, final_lr: None -> `swav_learning_rate(global batch)`, base / 1000.
        warmup_epochs: None -> min(10, epochs // 10). weight_decay: skipped for BN and biases.
        temperature, epsilon, sinkhorn_iters: SwAV's τ, ε and Sinkhorn iterations.
        freeze_prototypes_niters: None -> one epoch of steps (paper: 313 at 4096, 5005 at 256).
        queue_length, queue_start_epoch: the queue (0: none; paper 3840 from epoch 15 at batch 256).
        steps_per_execution: steps per compiled call (TPU: 32+). max_steps_per_epoch: cap (smoke runs).
        knn_every: every N epochs log ``knn_acc`` of frozen features on the labelled split (0: off).
        mixed_precision: "auto" (bfloat16 on TPU, float32 elsewhere) or a Keras policy name.
        seed: int for reproducible init, order and crops. allow_cpu: train on the CPU even where an
            accelerator exists that JAX cannot see. verbose: 0 silent, 1 progress bar, 2 a line per epoch.
    """
    data_dir: str = None
    out_dir: str = None
    epochs: int = 100
    global_batch_size: int = 256
    backbone: str = "resnet50"
    prototypes: int = None
    crops: str = "2x224@0.14-1,6x96@0.05-0.14"
    augmentation: str = "auto"
    hidden_dim: int = 2048
    output_dim: int = 128
    optimizer: str = "lars"
    base_lr: float = None
    final_lr: float = None
    warmup_epochs: int = None
    weight_decay: float = 1e-6
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes_niters: int = None
    queue_length: int = 0
    queue_start_epoch: int = 15
    steps_per_execution: int = 1
    max_steps_per_epoch: int = None
    knn_every: int = 0
    mixed_precision: str = "auto"
    seed: int = None
    allow_cpu: bool = False
    verbose: int = 1

    @classmethod
    def smoke(cls, **overrides):
        """The small run the demo, the tests and the notebooks' CI smoke cell share: a CPU learns in it.

        Crops only (on 100 images and ~120 steps the full colour augmentation leaves the loss at ln K),
        crops large enough to hold leaf texture, K = 10 x the 5 classes, a high LARS lr (the trust
        ratio 0.001 makes the effective step ~lr * 1e-3 * |w|/|g|) and no warmup.
        """
        settings = dict(epochs=40, global_batch_size=32, backbone="small_cnn", prototypes=50, hidden_dim=512,
                        output_dim=128, crops="2x64@0.3-1,2x32@0.1-0.3", augmentation="none", base_lr=10.0,
                        warmup_epochs=0, seed=0)
        settings.update(overrides)
        return cls(**settings)

    def resolve(self, num_images, num_devices=1, kind="CPU"):
        """A copy with every None/auto filled in for `num_images` images on `num_devices` of `kind`.

        Raises ValueError for a global batch that does not split over the devices or gives no step.
        """
        runtime.check_global_batch(self.global_batch_size, num_devices)
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        steps = num_images // self.global_batch_size
        if steps < 1 and self.epochs > 0:
            raise ValueError(f"{self.data_dir}: {num_images} training images give no full batch of "
                             f"{self.global_batch_size}; lower --batch-size.")
        steps = max(1, min(steps, self.max_steps_per_epoch or steps))
        base_lr = swav_learning_rate(self.global_batch_size)[0] if self.base_lr is None else self.base_lr
        return dataclasses.replace(
            self, max_steps_per_epoch=steps, base_lr=base_lr,
            final_lr=base_lr * 1e-3 if self.final_lr is None else self.final_lr,
            warmup_epochs=min(10, self.epochs // 10) if self.warmup_epochs is None else self.warmup_epochs,
            prototypes=self.prototypes or suggest_num_prototypes(),
            freeze_prototypes_niters=steps if self.freeze_prototypes_niters is None else self.freeze_prototypes_niters,
            augmentation=("device" if kind in ("TPU", "GPU") else "host") if self.augmentation == "auto"
            else self.augmentation)


# ============ callbacks: is it learning? ============

COLLAPSE_CAUSES = (
    "crops of one example that do not come from the same image (zipped, independently shuffled crop "
    "datasets); epsilon too large for the batch (try 0.03); prototypes unfrozen too early (raise "
    "freeze_prototypes_niters); augmentation too strong for a short run on little data (try crops "
    "only, larger crop scales); a learning rate too high; a batch much smaller than K without a queue")


class CollapseMonitor(keras.callbacks.Callback):
    """Stops on a NaN/inf loss; warns plainly when the epoch loss sits at the collapse floor ln K.

    At ln K the codes and predictions are uniform: nothing is being learned. The warning names the
    usual causes. ``collapsed`` and ``nan_epoch`` record what was seen.

    Args:
        ln_k: the floor (``SwAVModel.ln_k``). tolerance: relative band above and below ln K.
        patience: epochs to allow before warning (the loss starts near ln K).
    """

    def __init__(self, ln_k, tolerance=0.01, patience=3, print_fn=print):
        super().__init__()
        self.ln_k, self.tolerance, self.patience, self.print_fn = ln_k, tolerance, patience, print_fn
        self.collapsed, self.nan_epoch, self._warned = False, None, False
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self._epoch
            self.model.stop_training = True
            self.print_fn(f"kitlib: STOPPING: the SwAV loss became {float(loss)} in epoch {self._epoch + 1} "
                          f"(batch {batch + 1}). Usual causes: a learning rate too high, float16 without loss "
                          f"scaling, corrupt input images. The last good checkpoint is kept.")

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.nan_epoch is not None or epoch + 1 < self.patience:
            return
        self.collapsed = abs(float(loss) - self.ln_k) <= self.tolerance * self.ln_k
        if self.collapsed and not self._warned:
            self._warned = True
            self.print_fn(f"kitlib: WARNING: after {epoch + 1} epochs the SwAV loss {float(loss):.4f} sits at "
                          f"ln K = {self.ln_k:.4f}: codes and predictions are uniform, the model is not "
                          f"learning (collapse). Usual causes: {COLLAPSE_CAUSES}.")


# ============ checkpoints: every variable, one atomic file ============

def _state_variables(model):
    return list(model.variables) + list(model.optimizer.variables)


def save_state(model, path, epochs_done):
    """Every model and optimizer variable (step, momentum, queue included) to one .npz, atomically."""
    variables = _state_variables(model)
    arrays = {f"v{i:05d}": np.asarray(keras.ops.convert_to_numpy(v.value)) for i, v in enumerate(variables)}
    arrays["paths"] = np.array([v.path for v in variables])
    arrays["epochs_done"] = np.array(epochs_done)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a kill -9 never leaves half a checkpoint


def restore_state(model, path):
    """Load `save_state`'s file into a model built the same way; returns the epochs it had done.

    Variables are matched in order and checked by shape (layer names carry per-process counters).
    """
    with np.load(path) as saved:
        variables = _state_variables(model)
        paths = [str(p) for p in saved["paths"]]
        shapes = [saved[f"v{i:05d}"].shape for i in range(len(paths))]
        wrong = [f"{v.path} {tuple(v.shape)} vs saved {p} {s}" for v, p, s in zip(variables, paths, shapes)
                 if tuple(v.shape) != tuple(s)]
        if len(paths) != len(variables) or wrong:
            raise ValueError(f"checkpoint {path} does not fit this model ({len(paths)} saved variables, "
                             f"{len(variables)} here; {'; '.join(wrong[:3])}); use a new --out, or delete that "
                             "folder to start over.")
        for i, variable in enumerate(variables):
            variable.assign(saved[f"v{i:05d}"])
        return int(saved["epochs_done"])


class _CheckpointAndHistory(keras.callbacks.Callback):
    """After each epoch: append the epoch's logs to history.csv, then save the state."""

    def __init__(self, state_path, history_path, monitor, ln_k):
        super().__init__()
        self.state_path, self.history_path, self.monitor, self.ln_k = state_path, history_path, monitor, ln_k

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor.nan_epoch is not None:
            return  # never overwrite the last good state with a diverged one
        row = {k: float(v) for k, v in (logs or {}).items()}
        # Keras 3 evaluates the schedule at the optimizer's step when its learning_rate is read
        row.update(epoch=epoch + 1, ln_k=self.ln_k, lr=float(self.model.optimizer.learning_rate))
        append_history(self.history_path, row)
        save_state(self.model, self.state_path, epoch + 1)


def read_history(path):
    """history.csv as a list of dicts of floats (epoch as int); [] when absent."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def append_history(path, row):
    """Append one epoch's row to history.csv (columns grow when a new metric appears)."""
    rows = read_history(path) + [row]
    columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)  # atomic: a kill never leaves half a file


def _truncate_history(path, epochs_done):
    rows = [r for r in read_history(path) if r["epoch"] <= epochs_done]
    if os.path.exists(path):
        os.remove(path)
    for row in rows:
        append_history(path, row)
    return rows


# ============ pretrain ============

def training_batches(files, crops, global_batch, augmentation="host", seed=None):
    """Endless multi-crop batches of the training shards: ((crop_1, ..., crop_V),) with each crop
    [global_batch, S_v, S_v, 3] float32 in [0, 1] — the 1-tuple is Keras's "inputs only" element.

    Args:
        files: TFRecord shards (``kitlib.data.list_tfrecords``). crops: spec or MultiCropConfig.
        global_batch: images per step over all devices. augmentation: "host" | "device" | "none".
        seed: int for a reproducible order and crops (None: shards interleaved as they stream in).
    """
    if augmentation not in _AUGMENT_MODES:
        raise ValueError(f"augmentation must be 'host', 'device' or 'none', got {augmentation!r}")
    # a seed asks for a reproducible run: shards mixed in a fixed order instead of as they stream in
    records = data.load_dataset(files, labeled=False, decode=False, reproducible=seed is not None)
    num_images = data.count_data_items(files)
    if num_images <= _CACHE_LIMIT:
        records = records.cache()  # encoded bytes: small, and spares re-reading the shards
    batches = multicrop.multicrop_batches(records.repeat(), _crop_config(crops), global_batch,
                                          augment=_AUGMENT_MODES[augmentation],
                                          shuffle_buffer=min(num_images, 1024), seed=seed)
    return batches.map(lambda *crops: (tuple(crops),))


def random_init_backbone(name, seed):
    """The backbone `pretrain(PretrainConfig(backbone=name, seed=seed))` starts from: same seed, same weights."""
    keras.utils.set_random_seed(seed)
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
    return crops if isinstance(crops, multicrop.MultiCropConfig) else multicrop.parse_multicrop_spec(crops)


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
    """The backbone as a float32 ``.keras`` file for `kitlib.backbones.load` (a backbone trained under
    mixed_bfloat16 is saved as float32, so it fine-tunes on any device); returns the path."""
    return backbones.save(export.with_dtype_policy(backbone, "float32"), path)


def _build_model(config, net):
    steps = config.max_steps_per_epoch
    model = SwAVModel(net, num_prototypes=config.prototypes, hidden_dim=config.hidden_dim,
                      output_dim=config.output_dim, temperature=config.temperature, epsilon=config.epsilon,
                      sinkhorn_iters=config.sinkhorn_iters, freeze_prototypes_niters=config.freeze_prototypes_niters,
                      queue_length=config.queue_length, queue_start_step=config.queue_start_epoch * steps,
                      crop_augment=color.ColorAugment(seed=config.seed) if config.augmentation == "device" else None)
    schedule = WarmupCosine(config.base_lr, max(1, config.epochs * steps), config.warmup_epochs * steps,
                            final_lr=config.final_lr)
    model.compile(optimizer=build_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay),
                  steps_per_execution=config.steps_per_execution)
    model.optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    return model


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
    if config.data_dir is None or config.out_dir is None:
        raise ValueError("PretrainConfig needs data_dir and out_dir")
    rt = rt or runtime.setup(allow_cpu=config.allow_cpu, policy=config.mixed_precision, verbose=bool(config.verbose))
    files = data.list_tfrecords(config.data_dir)
    num_images = data.count_data_items(files)
    config = config.resolve(num_images, rt.num_devices, rt.kind)
    record = dict(dataclasses.asdict(config), backend=keras.backend.backend(), devices=rt.num_devices,
                  device_kind=rt.kind, policy=rt.policy, num_images=num_images,
                  steps_per_epoch=config.max_steps_per_epoch)
    _write_config(config.out_dir, record)
    if config.verbose:
        print_fn("kitlib pretrain: " + ", ".join(f"{k}={v}" for k, v in record.items()))
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)  # first, so the backbone starts as random_init_backbone's
    net = backbones.build(config.backbone)
    model = _build_model(config, net)
    state_path = os.path.join(config.out_dir, "checkpoints", "state.npz")
    epochs_done = 0
    if os.path.exists(state_path):
        epochs_done = restore_state(model, state_path)
        if config.verbose:
            print_fn(f"kitlib pretrain: resuming after epoch {epochs_done} "
                     f"(step {int(model.optimizer.iterations.numpy())}) from {state_path}")
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    history_path = os.path.join(config.out_dir, "history.csv")
    _truncate_history(history_path, epochs_done)
    monitor = CollapseMonitor(model.ln_k, print_fn=print_fn)
    callbacks = [monitor]
    if config.knn_every:
        from kitlib.evaluate import KNNMonitor  # noqa: PLC0415 - sklearn only when asked

        labelled = data.load_dataset(files, labeled=True, ordered=True)
        callbacks.append(KNNMonitor(net, labelled, image_size=_crop_config(config.crops).size_crops[0],
                                    every=config.knn_every))
    callbacks.append(_CheckpointAndHistory(state_path, history_path, monitor, model.ln_k))
    if epochs_done < config.epochs:
        batches = training_batches(files, config.crops, config.global_batch_size, config.augmentation,
                                   seed=config.seed)
        model.fit(batches, epochs=config.epochs, initial_epoch=epochs_done,
                  steps_per_epoch=config.max_steps_per_epoch, callbacks=callbacks, verbose=config.verbose)
    if monitor.nan_epoch is not None:
        raise FloatingPointError(f"SwAV pretraining diverged (NaN loss) in epoch {monitor.nan_epoch + 1}; "
                                 f"the last good checkpoint is {state_path}. Lower base_lr and rerun.")
    backbone_path = export_backbone(net, os.path.join(config.out_dir, "backbone.keras"))
    history = read_history(history_path)
    if not history:  # no epoch trained (epochs=0): the columns alone
        with open(history_path, "w") as f:
            f.write("epoch,loss\n")
    collapsed = bool(history) and abs(history[-1]["loss"] - model.ln_k) <= monitor.tolerance * model.ln_k
    return PretrainResult(model, net, history, backbone_path, model.ln_k, collapsed, config)


# ============ command line ============

_FLAGS = {  # flag -> (PretrainConfig field, type, help)
    "--epochs": ("epochs", int, "passes over the data (0: export the random-init backbone)"),
    "--batch-size": ("global_batch_size", int, "global batch: images per step over all devices"),
    "--prototypes": ("prototypes", int, "K (default 3000, the paper's; ~10 x the classes on small data: 50 for Cassava)"),
    "--crops": ("crops", str, "multi-crop spec COUNTxSIZE@MIN-MAX,..."),
    "--hidden-dim": ("hidden_dim", int, None),
    "--output-dim": ("output_dim", int, None),
    "--base-lr": ("base_lr", float, "default: 0.6 at global batch 256, 4.8 at 4096 (LARS)"),
    "--final-lr": ("final_lr", float, "default base lr / 1000"),
    "--warmup-epochs": ("warmup_epochs", int, "default min(10, epochs // 10)"),
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
    a("--backbone", default=defaults.backbone, choices=list(backbones.KIT_NAMES))
    a("--augmentation", default=defaults.augmentation, choices=list(AUGMENTATIONS))
    a("--optimizer", default=defaults.optimizer, choices=["lars", "sgd"])
    for flag, (field, kind, help_text) in _FLAGS.items():
        default = getattr(defaults, field)
        a(flag, type=kind, default=default, help=f"{help_text or field} (default {default})")
    a("--smoke", action="store_true", help="the small CPU preset (PretrainConfig.smoke); other flags override it")
    a("--allow-cpu", action="store_true", help="train on the CPU even where a TPU/GPU exists that JAX cannot see")
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


def run(args):
    """Run ``python -m kitlib pretrain`` with parsed flags; returns 0."""
    result = pretrain(config_from_args(args))
    if result.history:
        print(f"kitlib pretrain: done; final loss {result.history[-1]['loss']:.4f} vs ln K {result.ln_k:.4f}; "
              f"backbone exported to {result.backbone_path}")
    else:
        print(f"kitlib pretrain: no epoch trained; the random-init backbone is exported to {result.backbone_path}")
    return 0
