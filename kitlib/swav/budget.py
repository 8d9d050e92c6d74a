"""A pretraining run sized to a wall-clock budget on the machine it runs on, instead of to an image count.

A 64 px image costs a small CNN about four times a 32 px one, and one CPU core is not another, so a fixed
number of images seen is minutes on one machine and half an hour on the next. `kitlib.swav.pretrain.plan`
therefore times the run's own train step (`kitlib.checkpoint.time_steps`: a throwaway copy of the model, a
few steps of the real input pipeline) and `fit` fixes the epochs from what it measured:

    epochs = floor((0.95 B - t_probe - t_compile) / (S * t_step + t_epoch))       within [1, max_epochs]

with B the budget in seconds (5 % left for the export and the rest), t_probe the time the timing itself
took, t_compile the compile the run will do again, S the steps per epoch, t_step the measured seconds per
step and t_epoch the measured seconds of an epoch's checkpoint (hundreds of short epochs add up). Given several crop sizes
(largest first), it keeps the largest at which the budget affords ``images_wanted`` images seen (or the
epoch cap), timing the next smaller one only when it does not. The timing is the machine as it is while
planning: work started beside the run afterwards slows it past the budget.
"""

import dataclasses
import os
import tempfile
import time

from kitlib import checkpoint, command
from kitlib.swav import geometry, recipe

BUDGET_USE = 0.95      # the share of the budget planned for steps: checkpoints and the export take the rest


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed crop size.

    Attributes:
        crops: the multi-crop spec timed. crop: its big crops' side (px).
        compile_seconds: the first step (compile + input start). step_seconds: seconds per step after it.
        probe_seconds: wall time of the whole timing. epoch_seconds: one epoch's checkpoint.
        epochs: epochs the budget affords at this size. images_seen: epochs x images per epoch.
    """
    crops: str
    crop: int
    compile_seconds: float
    step_seconds: float
    probe_seconds: float
    epoch_seconds: float
    epochs: int
    images_seen: int


def affordable_epochs(budget_seconds, step_seconds, steps_per_epoch, overhead_seconds, max_epochs, epoch_seconds=0.0):
    """floor((budget * BUDGET_USE - overhead) / (steps_per_epoch * step_seconds + epoch_seconds)), within
    [1, max_epochs]."""
    if step_seconds <= 0 or steps_per_epoch < 1:
        raise ValueError(f"need a positive step time and steps per epoch, got {step_seconds}, {steps_per_epoch}")
    fit = int((budget_seconds * BUDGET_USE - overhead_seconds) // (steps_per_epoch * step_seconds + epoch_seconds))
    return max(1, min(max_epochs, fit))


def fit(candidates, measure, budget_minutes, steps_per_epoch, global_batch, max_epochs, images_wanted):
    """The largest crop size the budget affords, and its epochs.

    Args:
        candidates: [(crop side, multi-crop spec)], largest first (one entry: only the epochs are sized).
        measure: spec -> (compile_seconds, step_seconds, probe_seconds, epoch_seconds): `time_steps` of the
            run's model, and its checkpoint timed.
        budget_minutes: B / 60. steps_per_epoch: S. global_batch: images per step.
        max_epochs: the epoch cap. images_wanted: images seen that make a smaller crop not worth it.
    Returns:
        (the chosen `Timing`, [every `Timing` made], largest first).
    """
    if not candidates:
        raise ValueError("fit needs at least one crop size")
    timings, spent = [], 0.0
    for crop, spec in candidates:
        compile_s, step_s, probe_s, epoch_s = measure(spec)
        spent += probe_s
        epochs = affordable_epochs(budget_minutes * 60, step_s, steps_per_epoch, spent + compile_s, max_epochs, epoch_s)
        timings.append(Timing(spec, crop, compile_s, step_s, probe_s, epoch_s, epochs,
                              epochs * steps_per_epoch * global_batch))
        if timings[-1].images_seen >= images_wanted or epochs >= max_epochs:
            break
    return timings[-1], timings


def estimate_seconds(timing, steps_per_epoch, spent_seconds):
    """The run's wall time as planned: the timing already spent, the compile again, then the epochs."""
    per_epoch = steps_per_epoch * timing.step_seconds + timing.epoch_seconds
    return spent_seconds + timing.compile_seconds + timing.epochs * per_epoch


def describe(chosen, timings, budget_minutes, steps_per_epoch):
    """One line for the plan's ``epochs`` reason: what was timed and what the budget affords."""
    spent = sum(t.probe_seconds for t in timings)
    tried = "; ".join(f"{t.crop} px: {t.step_seconds:.3g} s per step, {t.images_seen:,} images seen" for t in timings)
    tried += f"; a checkpoint {chosen.epoch_seconds:.2g} s per epoch"
    minutes = estimate_seconds(chosen, steps_per_epoch, spent) / 60
    return (f"the {budget_minutes:g}-minute budget on this machine (timed {tried}; {steps_per_epoch} steps per "
            f"epoch): about {minutes:.1f} minutes in all")


def length(config, time_crops, sized=None):
    """The run's length said before it starts, under its ``stop_after_minutes``: the budget's timing of the
    chosen crops when it made one (`size_run`'s facts `sized`), else a few steps timed now (`time_crops`); then
    the epochs' steps and checkpoints at that speed (`kitlib.checkpoint.estimate`)."""
    timed = next((t for t in (sized or {}).get("timings", []) if t["crops"] == config.crops), None)
    compile_s, step_s, _, epoch_s = ((timed["compile_seconds"], timed["step_seconds"], 0, timed["epoch_seconds"])
                                     if timed else time_crops(config.crops))
    minutes = (compile_s + config.epochs * (config.max_steps_per_epoch * step_s + epoch_s)) / 60
    return checkpoint.estimate(minutes, config.stop_after_minutes, compile_s / 60)


RESUMED = "resumed: as the budget set it when this run started (config.json)"


def size_run(config, reasons, regime, side, time_crops, processes=1, print_fn=print):
    """A resolved `kitlib.swav.pretrain.PretrainConfig` with the epochs (and the small recipe's crop) its
    ``budget_minutes`` afford on this machine; `reasons` is updated in place.

    Args:
        config: resolved, with ``epochs`` from the image count. reasons: the plan's {field: why}.
        regime: the recipe's ("small" | "paper"). side: the images' shorter side.
        time_crops: spec -> `time_steps` of the run's model at that multi-crop.
        processes: the run's process count (several: not timed, the image-count epochs stay).
    Returns:
        (config, the budget's facts for the record: minutes, timed, timings).
    """
    where = checkpoint.resume_dir(config.out_dir, config.resume_from)  # the run continued, if any
    saved = (command.read_record(where) if where else None) or {}
    if saved.get("facts", {}).get("budget") and os.path.isdir(os.path.join(where, "checkpoints")):
        keep = {k: saved["settings"][k] for k in ("epochs", "crops", "warmup_epochs") if k in reasons}
        reasons.update({k: RESUMED for k in keep})  # a resumed run keeps its schedule
        return dataclasses.replace(config, **keep), saved["facts"]["budget"]
    not_timed = ("preflight: this machine is not the target" if config.preflight else
                 "several processes" if processes > 1 else None)
    if not_timed:
        reasons["epochs"] = reasons.get("epochs", "") + f" ({not_timed}: the budget is not timed)"
        return config, dict(minutes=config.budget_minutes, timed=False)
    choices = {}  # big-crop side -> the recipe's `Choice` of its crops, when the rule chose the crop
    candidates = [(geometry.parse_multicrop_spec(config.crops).size_crops[0], config.crops)]
    if regime == "small" and "crops" in reasons:  # the rule's crop: the largest size the budget affords
        choices = {c: recipe.small_crops(c, side) for c in recipe.crop_sides(side)}
        candidates = [(c, choice.value) for c, choice in choices.items()]
    if config.verbose:
        print_fn(f"kitlib pretrain: timing a few train steps for the {config.budget_minutes:g}-minute budget ...")
    steps = config.max_steps_per_epoch
    chosen, timings = fit(candidates, time_crops, config.budget_minutes, steps, config.global_batch_size,
                          recipe.SMALL_EPOCH_RANGE[1] if regime == "small" else config.epochs,
                          recipe.SMALL_IMAGES_SEEN)
    changed = dict(epochs=chosen.epochs, crops=chosen.crops)
    reasons["epochs"] = describe(chosen, timings, config.budget_minutes, steps)
    if chosen.crops != config.crops:
        reasons["crops"] = choices[chosen.crop].reason
    if "warmup_epochs" in reasons:  # the rule's warmup: at most 10 % of the run
        changed["warmup_epochs"] = min(config.warmup_epochs, chosen.epochs // 10)
    return dataclasses.replace(config, **changed), dict(minutes=config.budget_minutes, timed=True,
                                                        timings=[dataclasses.asdict(t) for t in timings])
