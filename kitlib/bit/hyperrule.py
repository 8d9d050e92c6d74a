"""The BiT-HyperRule: resolution, MixUp, schedule and learning rate of a fine-tuning run from the dataset's
size and image size alone.

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", arXiv 1912.11370.
``get_resolution`` / ``get_mixup`` / ``get_schedule`` / ``get_lr`` follow google-research/big_transfer
``bit_hyperrule.py`` exactly; ``HyperRule`` turns them into a Keras 3 schedule (``keras.ops``, so it
runs inside the compiled JAX step) and optimizer for any batch size B, scaling steps, warmup and decay
boundaries by 512/B and the learning rate by B/512, so every phase falls at the same fraction of the
run (the official colab scales only the length).
"""

import numpy as np

from kitlib.compat import keras

ops = keras.ops


_SMALL_IMAGE_AREA = 96 * 96  # images with h*w below this are "small" (tested on the area, not an edge)
_SMALL_RESOLUTION = (160, 128)  # (resize, crop) for small images
_LARGE_RESOLUTION = (512, 480)  # (resize, crop) otherwise
_SMALL_DATASET = 20_000  # below this: no MixUp and the 500-step schedule
_MEDIUM_DATASET = 500_000  # below this: the 10k-step schedule; above: 20k steps
_MIXUP_ALPHA = 0.1  # Beta(alpha, alpha) for datasets of at least _SMALL_DATASET examples
_REFERENCE_BATCH = 512  # the batch size the rule's steps and base lr are written for
BASE_LR = 0.003  # at batch 512
MOMENTUM = 0.9
_DECAY_FACTOR = 10  # the lr is divided by 10 at each decay boundary


def get_resolution(original_resolution):
    """(resize, crop) for images of size (h, w): (160, 128) if h*w < 96*96 else (512, 480)."""
    height, width = original_resolution
    return _SMALL_RESOLUTION if height * width < _SMALL_IMAGE_AREA else _LARGE_RESOLUTION


def get_mixup(dataset_size):
    """MixUp alpha: 0 (off) below 20k examples, else 0.1."""
    return 0.0 if dataset_size < _SMALL_DATASET else _MIXUP_ALPHA


def get_schedule(dataset_size):
    """Schedule supports at batch 512: [warmup end, decay, decay, decay, end of training]."""
    if dataset_size < _SMALL_DATASET:
        return [100, 200, 300, 400, 500]
    if dataset_size < _MEDIUM_DATASET:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def get_lr(step, dataset_size, base_lr=BASE_LR):
    """The learning rate at ``step`` (batch 512), or None once training is over.

    Linear warmup base_lr * step / supports[0]; then base_lr divided by 10 for every later
    support s with s < step; None at or past supports[-1].
    """
    supports = get_schedule(dataset_size)
    if step < supports[0]:
        return base_lr * step / supports[0]
    if step >= supports[-1]:
        return None
    for support in supports[1:]:
        if support < step:
            base_lr /= _DECAY_FACTOR
    return base_lr


@keras.saving.register_keras_serializable(package="kitlib")
class BiTSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``base_lr``, then /10 after each boundary (the ``get_lr`` shape, any scale).

    lr(step) = base_lr * step / warmup_steps                for step < warmup_steps
             = base_lr / 10^(#{b in boundaries: b < step})   otherwise.
    Past the last step of the rule the final value is kept (training stops there). ``step`` is a
    scalar (the optimizer's iteration count, inside the compiled step) or a vector of steps [S]
    (for plots); the result is float32 of the same shape.
    """

    def __init__(self, base_lr, warmup_steps, boundaries, decay_factor=_DECAY_FACTOR):
        super().__init__()
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = decay_factor
        values = [self.base_lr]
        for _ in self.boundaries:  # repeated division, exactly as get_lr does it
            values.append(values[-1] / decay_factor)
        self._values = np.asarray(values, np.float32)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.base_lr * step / self.warmup_steps
        boundaries = ops.convert_to_tensor(np.asarray(self.boundaries, np.float32).reshape([-1]))
        # number of decays already applied (0 .. len(boundaries))
        passed = ops.sum(ops.cast(ops.expand_dims(step, -1) > boundaries, "int32"), axis=-1)
        decayed = ops.take(ops.convert_to_tensor(self._values), passed)
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "boundaries": list(self.boundaries), "decay_factor": self.decay_factor}


def _scale_supports(supports, factor):
    """Supports multiplied by ``factor``, rounded, kept >= 1 and strictly increasing."""
    scaled = []
    for support in supports:
        step = max(1, int(round(support * factor)))
        scaled.append(max(step, scaled[-1] + 1) if scaled else step)
    return scaled


class HyperRule:
    """The BiT-HyperRule for one dataset and batch size.

    Args:
        image_hw: (h, w) of the original images (decides resize/crop).
        dataset_size: number of TRAINING examples (decides schedule and MixUp).
        batch_size: global batch B; steps, warmup and boundaries scale by 512/B, the lr by B/512.
        base_lr: learning rate at batch 512 (BiT: 0.003).
        total_steps: optional override of the run length (e.g. a CPU smoke run); warmup and
            boundaries keep their fractions of the run.
        resolution: optional (resize, crop) override of ``get_resolution``.
    Attributes:
        resize, crop, mixup_alpha, warmup_steps, boundaries (decay steps), total_steps, base_lr
        (already scaled to B), lr_schedule (a Keras 3 LearningRateSchedule); ``optimizer()`` makes
        the SGD(momentum 0.9) optimizer.
    """

    def __init__(self, image_hw, dataset_size, batch_size=_REFERENCE_BATCH, base_lr=BASE_LR,
                 total_steps=None, resolution=None):
        if dataset_size < 1 or batch_size < 1:
            raise ValueError(f"dataset_size and batch_size must be >= 1, got {dataset_size}, {batch_size}")
        if total_steps is not None and total_steps < 2:
            raise ValueError(f"total_steps must be >= 2 (warmup + training), got {total_steps}")
        self.image_hw = tuple(int(v) for v in image_hw)
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.resize, self.crop = (int(v) for v in (resolution or get_resolution(self.image_hw)))
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        self.mixup_alpha = get_mixup(self.dataset_size)
        supports = get_schedule(self.dataset_size)
        factor = total_steps / supports[-1] if total_steps else _REFERENCE_BATCH / self.batch_size
        steps = _scale_supports(supports, factor)
        self.warmup_steps, self.boundaries, self.total_steps = steps[0], steps[1:-1], steps[-1]
        self.base_lr = base_lr * self.batch_size / _REFERENCE_BATCH
        self.lr_schedule = BiTSchedule(self.base_lr, self.warmup_steps, self.boundaries)

    def optimizer(self):
        """A new Keras 3 SGD(lr_schedule, momentum 0.9); create it after ``runtime.setup()``."""
        return keras.optimizers.SGD(learning_rate=self.lr_schedule, momentum=MOMENTUM)

    def as_dict(self):
        """The rule's values, for printing/logging once at the start of a run."""
        return {"image_hw": list(self.image_hw), "dataset_size": self.dataset_size, "batch_size": self.batch_size,
                "resize": self.resize, "crop": self.crop, "mixup_alpha": self.mixup_alpha,
                "warmup_steps": self.warmup_steps, "boundaries": list(self.boundaries),
                "total_steps": self.total_steps, "base_lr": self.base_lr}

    def __repr__(self):
        return "HyperRule(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


def rule_table(cases):
    """A Markdown table of the rule for several (name, image_hw, dataset_size, batch_size) cases."""
    header = ("| case | image h×w | train size | batch | resize→crop | MixUp α | warmup | decays at | "
              "steps | lr |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, image_hw, size, batch in cases:
        r = HyperRule(image_hw, size, batch)
        rows.append(f"| {name} | {r.image_hw[0]}×{r.image_hw[1]} | {r.dataset_size:,} | {r.batch_size} | "
                    f"{r.resize}→{r.crop} | {r.mixup_alpha:g} | {r.warmup_steps:,} | "
                    f"{', '.join(f'{b:,}' for b in r.boundaries)} | {r.total_steps:,} | {r.base_lr:.6g} |")
    return "\n".join([header] + rows)
