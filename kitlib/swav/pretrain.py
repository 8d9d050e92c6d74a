"""The ``pretrain`` command: SwAV on a data folder's training shards -> an exported backbone.

``plan(PretrainConfig(...))`` reads the data and the devices and resolves every setting (SwAV's recipe from
`kitlib.swav.recipe.rule`, each choice with its reason); ``run(plan)`` trains and writes, under ``out_dir``:
    config.json        the plan's record (`kitlib.command.Plan.record`: settings, chosen values and reasons, facts)
    checkpoints/       state.npz: every model and optimizer variable (step, momentum, queue), epochs done
    history.csv        one row per finished epoch: loss, ln_k, usage_entropy, lr (, knn_acc)
    backbone.keras     the trained backbone, float32: ``kitlib.models.backbones.load(path)`` -> [N, F] features
Rerunning the same command after an interruption (kill -9 included) resumes from the last saved
epoch; a finished run only re-exports. ``epochs=0`` exports the random-init backbone. With ``preflight`` set,
the plan is made for that TPU and ``run`` compiles its train step there instead (`kitlib.preflight`).
"""

import dataclasses
import os

from kitlib import checkpoint, checks, command, hosts, locations, preflight, runtime
from kitlib.command import setting
from kitlib.compat import keras
from kitlib.data import competition, tfrecords
from kitlib.models import backbones, precision
from kitlib.swav import budget, color, geometry, monitors, multicrop, recipe, survey
from kitlib.swav.model import SwAVModel
from kitlib.swav.monitors import CollapseMonitor
from kitlib.swav.optim import OPTIMIZERS, WarmupCosine, build_optimizer

# settings that fix variable shapes: a checkpoint cannot be resumed if one of them changed
_SHAPE_KEYS = ("backbone", "prototypes", "hidden_dim", "output_dim", "queue_length", "optimizer")
AUGMENTATIONS = ("auto",) + multicrop.AUGMENT_MODES  # auto: device on a TPU/GPU, host on a CPU


@dataclasses.dataclass(frozen=True)
class PretrainConfig(command.MultiProcess):
    """What one SwAV run asks for. Fields left None are chosen by `plan` from the data and the devices
    (`kitlib.swav.recipe.rule`: the paper's recipe at ImageNet-like scale, the small-data recipe below it);
    any field given overrides the rule. Each field's help is its flag's (``python -m kitlib pretrain --help``).
    The coordinator, num_processes and process_id fields (`kitlib.command.MultiProcess`) join a run of
    several processes (`kitlib.hosts`)."""
    data_dir: str = setting(None, "folder holding train_tfrecords/ (competition layout)", flag="--data",
                            required=True)
    out_dir: str = setting(None, "output folder: config.json, checkpoints/, history.csv, backbone.keras; "
                           "resumed when rerun", flag="--out", required=True)
    epochs: int = setting(None, "passes over the data (0: export the random-init backbone); wins over a budget",
                          valid=checks.integer(0))
    budget_minutes: float = setting(None, "size the run to about this many minutes of this machine: the plan times "
                                    "a few steps, then fixes the epochs (and the small recipe's crop size); 0: "
                                    "epochs from the image count", valid=checks.number(0, checks.MAX_MINUTES))
    stop_after_minutes: float = setting(None, "end cleanly, on a whole checkpoint and before exporting, at the first "
                                        "epoch from which the next would end past this many minutes of the process "
                                        "(rerun to continue); default: on Kaggle the session's limit less 20 "
                                        "minutes, elsewhere none",
                                        valid=checks.number(0, checks.MAX_MINUTES, lo_open=True))
    global_batch_size: int = setting(None, "global batch: images per step over all devices (a multiple of "
                                     "the device count)", flag="--batch-size", valid=checks.positive())
    backbone: str = setting(None, "the backbone to train", choices=backbones.KIT_NAMES)
    prototypes: int = setting(None, "K, the number of prototypes", valid=checks.positive())
    crops: str = setting(None, "multi-crop spec COUNTxSIZE@MIN-MAX,... (big crops first)",
                         valid=checks.satisfies(geometry.parse_multicrop_spec, "a spec COUNTxSIZE@MIN-MAX,..."))
    augmentation: str = setting("auto", "colour distortion where: host (tf.data), device (in the compiled "
                                "step), none (crops only), auto (device on TPU/GPU, host on CPU)",
                                choices=AUGMENTATIONS)
    color_strength: float = setting(None, "colour-jitter strength s (SwAV 1.0)", valid=checks.number(0, 4))
    gray_p: float = setting(None, "probability of a grey crop (SwAV 0.2)", valid=checks.probability())
    blur_p: float = setting(None, "probability of a blurred crop (SwAV 0.5)", valid=checks.probability())
    hidden_dim: int = setting(None, "projection head's hidden width", valid=checks.positive())
    output_dim: int = setting(128, "projection head's output width (the prototypes' dimension)",
                              valid=checks.positive())
    optimizer: str = setting(None, "the optimizer", choices=OPTIMIZERS)
    base_lr: float = setting(None, "peak learning rate",
                             valid=checks.number(0, checks.MAX_LEARNING_RATE, lo_open=True))
    final_lr: float = setting(None, "final learning rate of the cosine (base lr / 1000 when not given)",
                              valid=checks.number(0, checks.MAX_LEARNING_RATE))
    warmup_epochs: int = setting(None, "epochs of linear warmup", valid=checks.integer(0))
    weight_decay: float = setting(1e-6, "weight decay (skipped for BN and biases with LARS/SGD)",
                                  valid=checks.number(0, 1, hi_open=True))
    temperature: float = setting(0.1, "tau, the softmax temperature of the swapped prediction",
                                 valid=checks.number(0, 10, lo_open=True))
    epsilon: float = setting(None, "epsilon, the entropy weight of Sinkhorn-Knopp", valid=checks.number(1e-3, 10))
    sinkhorn_iters: int = setting(3, "Sinkhorn-Knopp iterations", valid=checks.integer(1, 10_000))
    freeze_prototypes_niters: int = setting(None, "steps with frozen prototypes (one epoch when not given)",
                                            flag="--freeze-prototypes-iters", valid=checks.integer(0))
    queue_length: int = setting(None, "features kept from earlier batches for the codes (0: no queue)",
                                valid=checks.integer(0))
    queue_start_epoch: int = setting(None, "epoch the queue starts at", valid=checks.integer(0))
    steps_per_execution: int = setting(1, "steps per compiled call (TPU: 32+)", valid=checks.integer(1, 10_000))
    max_steps_per_epoch: int = setting(None, "cap on steps per epoch (smoke runs); one pass over the data",
                                       valid=checks.positive())
    input_shares: int = setting(None, "input streams the global batch is made of, each reading every N-th "
                                "TFRecord shard (default one per process; a 1-process run given the same "
                                "number sees the same batches as that many processes)", valid=checks.positive())
    knn_every: int = setting(0, "log kNN accuracy of frozen features on the labelled train split every N "
                             "epochs (0: off)", valid=checks.integer(0))
    mixed_precision: str = setting("auto", "auto (bfloat16 on TPU, float32 elsewhere) or a Keras policy",
                                   valid=checks.one_of(runtime.POLICIES))
    seed: int = setting(None, "seed of the init, the order and the crops (drawn and recorded when not given)",
                        valid=checks.integer(0))
    allow_cpu: bool = setting(False, "train on the CPU even where a TPU/GPU exists that JAX cannot see")
    preflight: str = setting(None, "train nothing: compile this run's step for this TPU with libtpu's "
                             "compile-only client and report memory per chip, FLOPs and a speed bound "
                             "(OUT/preflight.json; exit 4 when it does not fit)", choices=tuple(preflight.TARGETS),
                             metavar="TARGET")
    resume_from: str = setting(None, "continue the run whose output is in this folder when --out holds none (a "
                               "read-only copy: a previous notebook version's output under /kaggle/input): copied "
                               "into --out first; refused when it is another plan's")
    verbose: int = setting(1, "0 silent, 1 progress bar, 2 a line per epoch", choices=(0, 1, 2))

    def __post_init__(self):
        super().__post_init__()
        _check_warmup(self)

    @classmethod
    def smoke(cls, **overrides):
        """The small run the demo, the tests and the notebooks' CI smoke cell share: the rule's recipe
        for the data (`kitlib.swav.recipe.rule`), shortened to 40 epochs at batch 32 so a CPU runs it in
        about half a minute on the bundled sample."""
        return cls(**dict(dict(epochs=40, global_batch_size=32, seed=0), **overrides))


CONFIG = PretrainConfig


def resolve(config, num_images, num_devices=1, kind="CPU", image_hw=(224, 224), num_classes=None, processes=1):
    """`config` with every None/auto filled in for `num_images` images of `image_hw` (and `num_classes`
    classes, when known) on `num_devices` of `kind` over `processes` processes; the epochs as the image
    count estimates them (`plan` then times the budget: `kitlib.swav.budget`).

    Returns:
        (resolved `PretrainConfig`, {field: why} for every field the rule filled, the recipe's regime).
    Raises:
        ValueError for a global batch that does not split over the devices or gives no step.
    """
    batch = recipe.default_global_batch(num_images, num_devices) if config.global_batch_size is None \
        else config.global_batch_size
    runtime.check_global_batch(batch, num_devices, command.spell(config, "global_batch_size"))
    chosen = recipe.rule(num_images, image_hw, batch, num_classes)
    filled = {k: c for k, c in chosen.choices().items() if getattr(config, k) is None}
    values = {k: c.value for k, c in filled.items()}
    reasons = {k: c.reason for k, c in filled.items()}
    if config.global_batch_size is None:
        reasons["global_batch_size"] = recipe.BATCH_REASON
    if "warmup_epochs" in values and config.epochs is not None:  # a short run given by hand: <= 10 % warmup
        values["warmup_epochs"] = min(values["warmup_epochs"], config.epochs // 10)
    if config.optimizer is not None and config.base_lr is None and config.optimizer != chosen.optimizer.value:
        values["base_lr"] = recipe.default_learning_rate(config.optimizer, batch)  # the flag's own default
        values.pop("final_lr", None)
        reasons["base_lr"] = f"the default of {config.optimizer} at batch {batch} (optimizer given)"
        reasons.pop("final_lr", None)
    merged = dataclasses.replace(config, global_batch_size=batch, **values)
    steps = num_images // batch
    if steps < 1 and merged.epochs > 0:
        raise ValueError(f"{config.data_dir}: {num_images} training images give no full batch of "
                         f"{batch}; lower {command.spell(config, 'global_batch_size')}.")
    steps = max(1, steps if config.max_steps_per_epoch is None else min(steps, config.max_steps_per_epoch))
    seed, seed_reason = command.resolve_seed(config.seed)
    shares = processes if config.input_shares is None else config.input_shares
    if shares % processes or batch % shares:
        raise ValueError(f"{command.spell(config, 'input_shares')} {shares} must be a multiple of the {processes} "
                         f"process(es) and divide the global batch {batch}")
    if config.knn_every and processes > 1:
        raise ValueError(f"{command.spell(config, 'knn_every')} runs on one process: leave it 0 in a multi-process "
                         "run and evaluate the exported backbone afterwards (python -m kitlib finetune, or "
                         "kitlib.swav.evaluate)")
    derived = dict(
        input_shares=(shares, "one per process" if config.input_shares is None else None),
        max_steps_per_epoch=(steps, "one pass over the data" if config.max_steps_per_epoch is None else None),
        final_lr=(merged.final_lr, None) if merged.final_lr is not None else (merged.base_lr * 1e-3, "base lr / 1000"),
        freeze_prototypes_niters=(merged.freeze_prototypes_niters, None) if merged.freeze_prototypes_niters
        is not None else (steps, "one epoch of steps"),
        augmentation=(("device" if kind in ("TPU", "GPU") else "host"), f"auto on a {kind}")
        if config.augmentation == "auto" else (config.augmentation, None),
        stop_after_minutes=checkpoint.default_stop_minutes(kind, locations.on_kaggle())
        if config.stop_after_minutes is None else (config.stop_after_minutes, None),
        seed=(seed, seed_reason))
    reasons.update({k: why for k, (_, why) in derived.items() if why})
    return dataclasses.replace(merged, **{k: v for k, (v, _) in derived.items()}), reasons, chosen.regime


def _check_warmup(config):
    """Refuse a warmup given by hand that fills the whole run (the schedule needs steps after it)."""
    epochs, warmup = config.epochs, config.warmup_epochs
    if None not in (epochs, warmup) and epochs > 0 and warmup >= epochs:
        raise checks.SettingError(f"{command.spell(config, 'warmup_epochs')} {warmup} must be below "
                                  f"{command.spell(config, 'epochs')} {epochs}: the cosine needs steps after the warmup")


def random_init_backbone(name, seed):
    """The backbone ``run(plan(PretrainConfig(backbone=name, seed=seed, ...)))`` starts from: same seed, same
    weights (the caller's random state is left as it was)."""
    with runtime.seeded(seed):
        return backbones.build(name)


@dataclasses.dataclass
class PretrainResult:
    """What `run` returns: the trained model, its backbone, the whole history, where things are."""
    model: SwAVModel
    backbone: keras.Model
    history: list
    backbone_path: str
    ln_k: float
    collapsed: bool
    config: PretrainConfig
    stopped_after: int = None  # the epochs done when stop_after_minutes ended the run early (no backbone then)


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
                      crop_augment=color.ColorAugment(color_config(config), seed=config.seed)
                      if config.augmentation == "device" else None)
    schedule = WarmupCosine(config.base_lr, max(1, config.epochs * steps), config.warmup_epochs * steps,
                            final_lr=config.final_lr)
    model.compile(optimizer=build_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay),
                  steps_per_execution=config.steps_per_execution)
    model.optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    return model


def plan(config, rt=None):
    """The run ``run`` will do: `config` resolved from the data and the devices (nothing is written; with a
    time budget, a throwaway copy of the model is timed for a few steps: `kitlib.swav.budget`).

    Args:
        config: `PretrainConfig`.
        rt: a `kitlib.runtime.Runtime` (None: `kitlib.command.runtime_for(config)`: this machine's devices,
            or the preflight target's).
    Returns:
        a `kitlib.command.Plan`: ``settings`` the resolved config, ``reasons`` the rule's choices, ``facts`` the
        data, the devices and the budget's timings, ``parts["files"]`` the training shards.
    """
    command.require(config, "data_dir", "out_dir")
    files = tfrecords.list_tfrecords(config.data_dir)
    num_images = tfrecords.count_data_items(files)
    image_hw = survey.typical_image_hw(files)
    label_map = competition.split_paths(config.data_dir).label_map
    num_classes = len(tfrecords.read_label_map(label_map)) if os.path.isfile(label_map) else None
    rt = rt or command.runtime_for(config)
    processes = getattr(rt, "process_count", 1)
    where = checkpoint.resume_dir(config.out_dir, config.resume_from)
    if where is not None and config.seed is None and command.read_record(where):  # it goes on with its own seed
        config = dataclasses.replace(config, seed=command.read_record(where)["settings"]["seed"])
    settings, reasons, regime = resolve(config, num_images, rt.num_devices, rt.kind, image_hw, num_classes,
                                        processes)
    facts = dict(recipe=regime, num_images=num_images, image_hw=list(image_hw), num_classes=num_classes,
                 **command.runtime_facts(rt))
    if config.epochs is None and settings.budget_minutes:
        settings, budget_facts = budget.size_run(settings, reasons, regime, min(image_hw),
                                                 lambda crops: _time_steps(settings, files, crops), processes)
        facts.update(budget=budget_facts)
        _check_warmup(settings)
    if settings.stop_after_minutes and not settings.preflight and processes == 1 and settings.epochs:
        facts["estimate"] = budget.length(settings, lambda crops: _time_steps(settings, files, crops),
                                          facts.get("budget"))
    return command.Plan("pretrain", settings, reasons, facts, parts=dict(files=files), rt=rt)


def _time_steps(config, files, crops):
    """`kitlib.checkpoint.time_steps` of the run's model and input at multi-crop `crops` (a throwaway copy)."""
    timed = dataclasses.replace(config, crops=crops, epochs=2, warmup_epochs=1)
    with runtime.seeded(config.seed):
        model = _build_model(timed, backbones.build(config.backbone))
        batches = multicrop.training_batches(files, crops, config.global_batch_size, config.augmentation,
                                             seed=config.seed, color_config=color_config(config),
                                             shares=config.input_shares, cache=False)
        return checkpoint.time_steps(model, batches, config.steps_per_execution)


def run(plan, print_fn=print):
    """SwAV-pretrain the planned backbone and export it to ``out_dir/backbone.keras`` (with ``preflight`` set:
    compile the step for that TPU instead, `run_preflight`).

    Returns:
        `PretrainResult` (a `kitlib.preflight.Report` for a preflight).
    """
    config = plan.settings
    if config.preflight:
        return run_preflight(plan, print_fn)
    where = checkpoint.resume_dir(config.out_dir, config.resume_from)
    if where is not None:  # its own folder: the same variable shapes; a read-only copy: the same plan
        checkpoint.refuse_other_plan(plan.record(), command.read_record(where) or plan.record(), where,
                                     "pretraining run", ("num_images", "image_hw") if where != config.out_dir else (),
                                     _SHAPE_KEYS if where == config.out_dir else None)
    if hosts.is_writer():  # several processes: process 0 writes every file, the others wait where they read
        checkpoint.copy_run(where or config.out_dir, config.out_dir)
        plan.save(config.out_dir)
    hosts.barrier("pretrain: resumable")
    if checkpoint.estimate_warning("pretrain", plan.facts):
        print_fn(checkpoint.estimate_warning("pretrain", plan.facts))
    with command.seeded_run(plan):  # a seeded run is repeatable; the caller's random state is kept
        result = _train(config, plan.parts["files"], print_fn)
    if config.verbose:
        print_fn(f"kitlib pretrain: done; final loss {result.history[-1]['loss']:.4f} vs ln K {result.ln_k:.4f}; "
                 f"backbone exported to {result.backbone_path}" if result.history else
                 f"kitlib pretrain: no epoch trained; the random-init backbone is exported to {result.backbone_path}")
    return result


def _knn_monitors(config, files, net):
    """[`kitlib.swav.evaluate.KNNMonitor`] on the labelled training split when ``knn_every`` asks for it, else []."""
    if not config.knn_every:
        return []
    from kitlib.swav.evaluate import KNNMonitor  # noqa: PLC0415 - sklearn only when asked

    labelled = tfrecords.load_dataset(files, labeled=True, ordered=True,
                                      num_classes=len(tfrecords.class_names_of(config.data_dir)))
    size = multicrop.crop_config(config.crops).size_crops[0]
    return [KNNMonitor(net, labelled, image_size=size, every=config.knn_every)]


def _train(config, files, print_fn):
    """`run` after planning: build (as `random_init_backbone`), restore, fit, export."""
    net = backbones.build(config.backbone)
    model = _build_model(config, net)
    state_path = os.path.join(config.out_dir, "checkpoints", "state.npz")
    epochs_done = 0
    if os.path.exists(state_path):
        epochs_done = checkpoint.restore_state(model, state_path)
        if config.verbose:
            print_fn(f"kitlib pretrain: resuming after epoch {epochs_done} "
                     f"(step {int(model.optimizer.iterations.numpy())}) from {state_path}")
    hosts.agree({"epochs_done": epochs_done}, f"the checkpoint in {state_path}", fix=hosts.SHARED_OUT_FIX)
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    history_path = os.path.join(config.out_dir, "history.csv")
    if hosts.is_writer():
        checkpoint.truncate_history(history_path, epochs_done)
    monitor = CollapseMonitor(model.ln_k, print_fn=print_fn)
    callbacks = [monitor] + _knn_monitors(config, files, net)
    callbacks.append(monitors.CheckpointAndHistory(state_path, history_path, monitor, model.ln_k))
    stop = checkpoint.StopInTime(config.stop_after_minutes) if config.stop_after_minutes else None
    callbacks += [stop] if stop else []
    if epochs_done < config.epochs:
        per_process = config.input_shares // hosts.process_count()
        owned = range(hosts.process_index() * per_process, (hosts.process_index() + 1) * per_process)
        batches = multicrop.training_batches(files, config.crops, config.global_batch_size, config.augmentation,
                                             seed=config.seed, color_config=color_config(config),
                                             shares=config.input_shares, owned=owned)
        model.fit(batches, epochs=config.epochs, initial_epoch=epochs_done,
                  steps_per_epoch=config.max_steps_per_epoch, callbacks=callbacks, verbose=config.verbose,
                  shuffle=False)  # tf.data shuffles; Keras 3.15 warns when told to shuffle a dataset
    if monitor.nan_epoch is not None:
        raise FloatingPointError(f"SwAV pretraining diverged (NaN loss) in epoch {monitor.nan_epoch + 1}; "
                                 f"the last good checkpoint is {state_path}. Lower base_lr and rerun.")
    backbone_path = os.path.join(config.out_dir, "backbone.keras")
    hosts.barrier("pretrain: trained")  # the last epoch's history row and checkpoint are on disk
    history = checkpoint.read_history(history_path)
    if stop and stop.stopped_after:  # a whole checkpoint and no backbone yet: a half-trained one exports nothing
        print_fn(f"kitlib pretrain: stopped after epoch {stop.stopped_after} of {config.epochs} (stop_after_minutes "
                 f"{config.stop_after_minutes:g}); continue with: {command.rerun_hint('pretrain')}")
        return PretrainResult(model, net, history, None, model.ln_k, False, config, stop.stopped_after)
    if hosts.is_writer():
        export_backbone(net, backbone_path)
        if not history:  # no epoch trained (epochs=0): the columns alone
            with open(history_path, "w") as f:
                f.write("epoch,loss\n")
    hosts.barrier("pretrain: exported")
    collapsed = bool(history) and abs(history[-1]["loss"] - model.ln_k) <= monitor.tolerance * model.ln_k
    return PretrainResult(model, net, history, backbone_path, model.ln_k, collapsed, config)


def run_preflight(plan, print_fn=print):
    """Compile the planned train step for ``plan.settings.preflight`` (the plan was made for that TPU:
    `kitlib.command.runtime_for`) and write ``OUT/preflight.json``; nothing is trained.

    Returns:
        the `kitlib.preflight.Report` (``fits`` False: the CLI exits 4).
    """
    config, rt = plan.settings, plan.rt
    crops = multicrop.crop_config(config.crops)
    sizes = [size for size, count in zip(crops.size_crops, crops.num_crops) for _ in range(count)]  # per view

    def build(global_batch):
        """The model `run` would build for `global_batch`, under the target's policy, and one batch."""
        import jax  # noqa: PLC0415

        planned = dataclasses.replace(config, global_batch_size=global_batch)
        with runtime.policy_scope(rt.policy), runtime.seeded(0):
            model = _build_model(planned, backbones.build(planned.backbone))
        crops = tuple(jax.ShapeDtypeStruct((global_batch, s, s, 3), "float32") for s in sizes)
        return model, (crops,)

    report = preflight.run_preflight("pretrain", build, config.global_batch_size, config.preflight,
                                     config.max_steps_per_epoch)
    preflight.write_report(report, config.out_dir)
    print_fn(preflight.describe(report))
    return report
