"""SwAV pretraining end to end: data -> multi-crop -> `SwAVModel.fit` -> checkpoints -> exported backbone.

``pretrain(data_dir, out_dir, ...)`` is what the notebook, the CLI (``python -m kitlib pretrain``)
and the end-to-end demo call. It writes, under ``out_dir``:
    config.json        the run's settings (a rerun with other shapes is refused)
    checkpoints/       model, optimizer (step, momentum), queue, epochs done; saved every epoch
    history.csv        one row per finished epoch: loss, ln_k, usage_entropy, lr (, knn_acc)
    backbone/          the trained backbone as a TF2 SavedModel for ``hub.KerasLayer(path, trainable=True)``
Rerunning the same command after an interruption (kill -9 included) resumes from the last saved
epoch; a finished run only re-exports.
"""

import csv
import dataclasses
import json
import math
import os

from kitlib import augment, bit, data, export, runtime
from kitlib.compat import keras, tf
from kitlib.optim import WarmupCosine, build_optimizer, swav_learning_rate
from kitlib.swav import SwAVModel, suggest_num_prototypes

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # inputs are [0, 1]; the backbone standardises them itself
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_CNN_WIDTHS = (32, 64, 128)       # CPU tests and demos: three stride-2 conv blocks
SMALL_CNN_BN_MOMENTUM = 0.9            # PyTorch's 0.1: moving statistics settle within a short run
_CACHE_LIMIT = 5_000                   # cache encoded records in memory below this many images
_LOCAL_IO = "/job:localhost"  # write checkpoints from this host (needed with a remote TPU)
# settings that fix variable shapes: a checkpoint cannot be resumed if one of them changed
_SHAPE_KEYS = ("backbone", "prototypes", "hidden_dim", "output_dim", "queue_length", "optimizer")


# ============ backbones ============

def _standardize(inputs):
    return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD],
                                      name="standardize")(inputs)


def build_backbone(name="resnet50"):
    """A backbone: images float32 [N, H, W, 3] in [0, 1] (any H, W) -> features [N, F].

    Args:
        name: "resnet50" (keras.applications, weights=None, F = 2048, the paper's) or "small_cnn"
            (3 conv-BN-ReLU blocks, F = 128: CPU tests and demos).
    Returns:
        keras.Model; BatchNorm follows the ``training`` argument.
    """
    inputs = keras.Input((None, None, 3), name="images")
    x = _standardize(inputs)
    if name == "resnet50":
        resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3),
                                             pooling="avg")
        features = resnet(x)
    elif name == "small_cnn":
        for width in SMALL_CNN_WIDTHS:
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=SMALL_CNN_BN_MOMENTUM)(x)
            x = keras.layers.ReLU()(x)
        features = keras.layers.GlobalAveragePooling2D()(x)
    else:
        raise ValueError(f"unknown backbone {name!r}; use 'resnet50' or 'small_cnn' (or pass a keras.Model "
                         "to SwAVModel directly)")
    return keras.Model(inputs, features, name=name)


# ============ export ============

def _float32_config(config):
    if isinstance(config, dict):
        if config.get("class_name") == "Policy":
            return "float32"
        return {k: _float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def float32_copy(model):
    """The same Functional/Sequential model with every layer in float32 (weights copied).

    A backbone trained under mixed_bfloat16 exports a float32 graph, so it fine-tunes on any device.
    """
    if all(layer.compute_dtype == "float32" for layer in model.submodules if hasattr(layer, "compute_dtype")):
        return model
    try:
        copy = model.__class__.from_config(_float32_config(model.get_config()))
    except (NotImplementedError, TypeError, ValueError):  # a subclassed model: export it as it is
        return model
    copy.set_weights(model.get_weights())
    return copy


class _Reusable(tf.Module):
    """Holds the backbone and its float32 ``__call__(images, training)`` for ``export.save_reusable``."""

    def __init__(self, backbone):
        super().__init__(name="backbone")
        self._backbone = backbone

    @tf.function(autograph=False)  # straight-line code: nothing to convert
    def __call__(self, images, training=False):
        return tf.cast(self._backbone(tf.cast(images, tf.float32), training=training), tf.float32)


def export_backbone(backbone, path):
    """Save a backbone as a TF2 SavedModel loadable by ``hub.KerasLayer(path, trainable=True)``.

    The root carries ``__call__(images, training)``, ``variables``, ``trainable_variables`` and
    ``regularization_losses`` (the reusable SavedModel format); input float32 [N, H, W, 3] in [0, 1]
    of any size, output float32 features [N, F].

    Args:
        backbone: Keras model (float32 copy made when it ran under mixed precision).
        path: output directory.
    Returns:
        path.
    """
    net = float32_copy(backbone)
    module = _Reusable(net)
    return export.save_reusable(path, module.__call__, module, net.variables, net.trainable_variables)


def load_backbone(path, trainable=False):
    """An exported backbone as a Keras model (``bit.load_backbone``'s layer): [N, H, W, 3] in [0, 1] -> [N, F]."""
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, bit.load_backbone(path, trainable=trainable)(inputs))


# ============ callbacks: is it learning? ============

COLLAPSE_CAUSES = (
    "crops of one example that do not come from the same image (the seed notebook's zipped shuffles); "
    "epsilon too large for the batch (try 0.03); prototypes unfrozen too early (raise "
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


class _CheckpointAndHistory(keras.callbacks.Callback):
    """After each epoch: append the epoch's logs to history.csv, then save a checkpoint."""

    def __init__(self, manager, epochs_done, history_path, monitor):
        super().__init__()
        self.manager, self.epochs_done, self.history_path, self.monitor = manager, epochs_done, history_path, monitor

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor.nan_epoch is not None:
            return  # never overwrite the last good state with a diverged one
        append_history(self.history_path, dict(epoch=epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}))
        self.epochs_done.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1,
                          options=tf.train.CheckpointOptions(experimental_io_device=_LOCAL_IO))


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

_AUGMENT_MODES = {"host": True, "device": "device", "none": False}


def training_batches(files, crops, global_batch, augmentation="host", seed=None):
    """Endless multi-crop batches of the training shards: tuples of [global_batch, S, S, 3] in [0, 1].

    Args:
        files: TFRecord shards (``kitlib.data.list_tfrecords``). crops: spec or MultiCropConfig.
        global_batch: images per step over all replicas. augmentation: "host" | "device" | "none".
        seed: int for reproducible order and crops.
    """
    if augmentation not in _AUGMENT_MODES:
        raise ValueError(f"augmentation must be 'host', 'device' or 'none', got {augmentation!r}")
    records = data.load_dataset(files, labeled=False, decode=False)
    num_images = data.count_data_items(files)
    if num_images <= _CACHE_LIMIT:
        records = records.cache()  # encoded bytes: small, and spares re-reading the shards
    return augment.multicrop_batches(records.repeat(), _crop_config(crops), global_batch,
                                     augment=_AUGMENT_MODES[augmentation], shuffle_buffer=min(num_images, 1024),
                                     seed=seed)


def random_init_backbone(name, seed, policy="float32"):
    """The backbone `pretrain(backbone=name, seed=seed)` starts from: same seed, same weights."""
    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return build_backbone(name)
    finally:
        keras.mixed_precision.set_global_policy(previous)

@dataclasses.dataclass
class PretrainResult:
    """What `pretrain` returns: the trained model, its backbone, the whole history, where things are."""
    model: SwAVModel
    backbone: keras.Model
    history: list
    backbone_dir: str
    ln_k: float
    collapsed: bool


def _crop_config(crops):
    return crops if isinstance(crops, augment.MultiCropConfig) else augment.parse_multicrop_spec(crops)


def _check_resumable(out_dir, config):
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [k for k in _SHAPE_KEYS if saved.get(k) != config.get(k)]
        if changed and os.path.isdir(os.path.join(out_dir, "checkpoints")):
            raise ValueError(
                f"{out_dir} holds a run with other {', '.join(changed)} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); its checkpoints cannot be resumed "
                "with these settings. Use a new --out, or delete that folder to start over.")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def pretrain(data_dir, out_dir, epochs=100, batch_size=64, backbone="resnet50", prototypes=None,
             crops="2x224@0.14-1,6x96@0.05-0.14", augmentation="host", hidden_dim=2048, output_dim=128,
             optimizer="lars", base_lr=None, final_lr=None, warmup_epochs=None, weight_decay=1e-6,
             temperature=0.1, epsilon=0.05, sinkhorn_iters=3, freeze_prototypes_niters=None, queue_length=0,
             queue_start_epoch=15, steps_per_execution=1, max_steps_per_epoch=None, knn_every=0,
             mixed_precision="auto", strategy=None, seed=None, verbose=1, print_fn=print):
    """SwAV-pretrain a backbone on ``data_dir/train_tfrecords`` and export it to ``out_dir/backbone``.

    Args:
        data_dir: folder holding ``train_tfrecords/`` (competition layout; labels unused unless knn_every).
        out_dir: where config.json, checkpoints/, history.csv and backbone/ go; resumed if present.
        epochs: passes over the data. batch_size: images per replica per step (global = x replicas).
        backbone: "resnet50" | "small_cnn" (see `build_backbone`) or a keras.Model.
        prototypes: K; None: `suggest_num_prototypes()` (3000). crops: multi-crop spec or MultiCropConfig.
        augmentation: "host" (full SwAV colour augmentation in tf.data), "device" (colour on the
            accelerator in the train step) or "none" (crops only).
        hidden_dim, output_dim, temperature, epsilon, sinkhorn_iters: see `SwAVModel`.
        optimizer: "lars" | "sgd". base_lr, final_lr: None -> `swav_learning_rate(global batch)`.
        warmup_epochs: None -> min(10, epochs // 10). weight_decay: skipped for BN and biases.
        freeze_prototypes_niters: None -> one epoch of steps (the paper's 313 at 4096 and 5005 at 256).
        queue_length, queue_start_epoch: see `SwAVModel` (0: no queue).
        steps_per_execution: steps per compiled call (TPU: 32 or more). max_steps_per_epoch: cap (smoke runs).
        knn_every: every N epochs log ``knn_acc`` of frozen features on the labelled train split (0: off).
        mixed_precision: "auto" (bfloat16 on TPU, float32 elsewhere) or a Keras policy name; set while
            the model is built, then restored.
        strategy: tf.distribute strategy; None -> `kitlib.runtime.get_strategy()`.
        seed: int for reproducible init and crops (calls keras.utils.set_random_seed); None: random.
        verbose: fit's verbosity (0 silent, 1 progress bar, 2 one line per epoch).
    Returns:
        `PretrainResult`.
    """
    strategy = strategy or runtime.get_strategy(verbose=bool(verbose))
    replicas = strategy.num_replicas_in_sync
    crop_config = _crop_config(crops)
    files = data.list_tfrecords(data_dir)
    num_images = data.count_data_items(files)
    global_batch = batch_size * replicas
    steps = num_images // global_batch
    if steps < 1:
        raise ValueError(f"{data_dir}: {num_images} training images give no full batch of {global_batch} "
                         f"({batch_size} x {replicas} replicas); lower --batch-size.")
    steps = min(steps, max_steps_per_epoch or steps)
    lr_default = swav_learning_rate(global_batch)
    base_lr = lr_default[0] if base_lr is None else base_lr
    final_lr = base_lr * 1e-3 if final_lr is None else final_lr
    warmup_epochs = min(10, epochs // 10) if warmup_epochs is None else warmup_epochs
    prototypes = prototypes or suggest_num_prototypes()
    freeze = steps if freeze_prototypes_niters is None else freeze_prototypes_niters
    policy = (runtime.mixed_precision_policy(runtime.device_kind(strategy))
              if mixed_precision == "auto" else mixed_precision)
    if augmentation not in _AUGMENT_MODES:
        raise ValueError(f"augmentation must be 'host', 'device' or 'none', got {augmentation!r}")
    config = dict(data_dir=str(data_dir), epochs=epochs, batch_size=batch_size, replicas=replicas,
                  global_batch=global_batch, num_images=num_images, steps_per_epoch=steps,
                  backbone=backbone if isinstance(backbone, str) else backbone.name, prototypes=prototypes,
                  crops=crop_config.spec, augmentation=augmentation, hidden_dim=hidden_dim,
                  output_dim=output_dim, optimizer=optimizer, base_lr=base_lr, final_lr=final_lr,
                  warmup_epochs=warmup_epochs, weight_decay=weight_decay, temperature=temperature,
                  epsilon=epsilon, sinkhorn_iters=sinkhorn_iters, freeze_prototypes_niters=freeze,
                  queue_length=queue_length, queue_start_epoch=queue_start_epoch,
                  steps_per_execution=steps_per_execution, mixed_precision=policy, seed=seed)
    _check_resumable(out_dir, config)
    if verbose:
        print_fn("kitlib pretrain: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    if seed is not None:
        keras.utils.set_random_seed(seed)  # first, so the backbone starts as random_init_backbone's
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            net = build_backbone(backbone) if isinstance(backbone, str) else backbone
            model = SwAVModel(net, num_prototypes=prototypes, hidden_dim=hidden_dim, output_dim=output_dim,
                              temperature=temperature, epsilon=epsilon, sinkhorn_iters=sinkhorn_iters,
                              freeze_prototypes_niters=freeze, queue_length=queue_length,
                              queue_start_epoch=queue_start_epoch,
                              crop_augment=augment.ColorAugment() if augmentation == "device" else None)
            schedule = WarmupCosine(base_lr, max(1, epochs * steps), warmup_epochs * steps, final_lr=final_lr)
            model.compile(optimizer=build_optimizer(optimizer, schedule, weight_decay=weight_decay),
                          steps_per_execution=steps_per_execution)
            inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
            inner.build(model.trainable_variables)  # slots exist before a restore fills them
            epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epochs_done=epochs_done)
            manager = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, "checkpoints"), max_to_keep=2)
            if manager.latest_checkpoint:
                options = tf.train.CheckpointOptions(experimental_io_device=_LOCAL_IO)
                checkpoint.restore(manager.latest_checkpoint, options=options).assert_existing_objects_matched()
                if verbose:
                    print_fn(f"kitlib pretrain: resuming after epoch {int(epochs_done.numpy())} "
                             f"(step {int(model.optimizer.iterations.numpy())}) from {manager.latest_checkpoint}")
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    batches = training_batches(files, crop_config, global_batch, augmentation, seed=seed)
    history_path = os.path.join(out_dir, "history.csv")
    _truncate_history(history_path, int(epochs_done.numpy()))
    monitor = CollapseMonitor(model.ln_k, print_fn=print_fn)
    callbacks = [monitor]
    if knn_every:
        from kitlib.evaluate import KNNMonitor  # noqa: PLC0415 - sklearn only when asked

        labelled = data.load_dataset(files, labeled=True, ordered=True)
        callbacks.append(KNNMonitor(net, labelled, image_size=crop_config.size_crops[0], every=knn_every))
    callbacks.append(_CheckpointAndHistory(manager, epochs_done, history_path, monitor))
    if int(epochs_done.numpy()) < epochs:
        model.fit(batches, epochs=epochs, initial_epoch=int(epochs_done.numpy()), steps_per_epoch=steps,
                  callbacks=callbacks, verbose=verbose)
    if monitor.nan_epoch is not None:
        raise FloatingPointError(f"SwAV pretraining diverged (NaN loss) in epoch {monitor.nan_epoch + 1}; "
                                 f"the last good checkpoint is in {manager.directory}. Lower base_lr and rerun.")
    backbone_dir = export_backbone(net, os.path.join(out_dir, "backbone"))
    history = read_history(history_path)
    collapsed = bool(history) and abs(history[-1]["loss"] - model.ln_k) <= monitor.tolerance * model.ln_k
    return PretrainResult(model, net, history, backbone_dir, model.ln_k, collapsed)


# ============ command line ============

def add_arguments(parser):
    """Flags of ``python -m kitlib pretrain`` (the notebook's config cell, as flags)."""
    a = parser.add_argument
    a("--data", required=True, help="folder holding train_tfrecords/ (competition layout)")
    a("--out", required=True, help="output folder: checkpoints/, history.csv, backbone/ (resumed if present)")
    a("--epochs", type=int, default=100)
    a("--batch-size", type=int, default=64, help="images per replica per step")
    a("--backbone", default="resnet50", choices=["resnet50", "small_cnn"])
    a("--prototypes", type=int, default=None,
      help="K (default 3000, the paper's; about 10 x the classes on small data: 50 for Cassava)")
    a("--crops", default="2x224@0.14-1,6x96@0.05-0.14", help="multi-crop spec COUNTxSIZE@MIN-MAX,...")
    a("--augmentation", default="host", choices=["host", "device", "none"])
    a("--hidden-dim", type=int, default=2048)
    a("--output-dim", type=int, default=128)
    a("--optimizer", default="lars", choices=["lars", "sgd"])
    a("--lr", type=float, default=None, help="base lr (default: 0.6 at global batch 256, 4.8 at 4096)")
    a("--final-lr", type=float, default=None, help="default lr / 1000")
    a("--warmup-epochs", type=int, default=None, help="default min(10, epochs // 10)")
    a("--weight-decay", type=float, default=1e-6)
    a("--temperature", type=float, default=0.1)
    a("--epsilon", type=float, default=0.05)
    a("--freeze-prototypes-iters", type=int, default=None, help="default: one epoch of steps")
    a("--queue-length", type=int, default=0)
    a("--queue-start-epoch", type=int, default=15)
    a("--steps-per-execution", type=int, default=1)
    a("--max-steps-per-epoch", type=int, default=None)
    a("--knn-every", type=int, default=0, help="log kNN accuracy on the labelled train split every N epochs")
    a("--mixed-precision", default="auto", help="auto, float32, mixed_bfloat16 or mixed_float16")
    a("--seed", type=int, default=None)
    a("--verbose", type=int, default=2, choices=[0, 1, 2])


def run(args):
    """Run ``python -m kitlib pretrain`` with parsed flags; returns 0."""
    result = pretrain(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, backbone=args.backbone,
                      prototypes=args.prototypes, crops=args.crops, augmentation=args.augmentation,
                      hidden_dim=args.hidden_dim, output_dim=args.output_dim, optimizer=args.optimizer,
                      base_lr=args.lr, final_lr=args.final_lr, warmup_epochs=args.warmup_epochs,
                      weight_decay=args.weight_decay, temperature=args.temperature, epsilon=args.epsilon,
                      freeze_prototypes_niters=args.freeze_prototypes_iters, queue_length=args.queue_length,
                      queue_start_epoch=args.queue_start_epoch, steps_per_execution=args.steps_per_execution,
                      max_steps_per_epoch=args.max_steps_per_epoch, knn_every=args.knn_every,
                      mixed_precision=args.mixed_precision, seed=args.seed, verbose=args.verbose)
    last = result.history[-1] if result.history else {}
    print(f"kitlib pretrain: done; final loss {last.get('loss', float('nan')):.4f} vs ln K {result.ln_k:.4f}; "
          f"backbone exported to {result.backbone_dir}")
    return 0
