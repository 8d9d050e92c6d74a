"""Optimiser and learning-rate schedule for SwAV pretraining: LARS (LARC) + warmup-cosine, Keras 3.

Follows facebookresearch/swav ``main_swav.py``: SGD with momentum 0.9 wrapped in LARC with trust
coefficient 0.001 (``clip=False``), weight decay 1e-6, a linear warmup followed by a per-step cosine
decay from ``base_lr`` to ``final_lr``. Unlike the official code, weight decay skips BatchNorm
parameters and biases (every variable of rank <= 1), as in SimCLR and most later recipes.
Backend-agnostic ``keras.ops``; runs inside the compiled step on JAX.
"""

import math

from kitlib.compat import keras

ops = keras.ops

# The two official SwAV operating points (batch -> base lr with LARS):
# 256 -> 0.6 (final 0.0006) and 4096 -> 4.8 (final 0.0048).
_REFERENCE_BATCH = 256
_REFERENCE_LR = 0.6
_LR_BATCH_EXPONENT = 0.75  # 0.6 * (4096 / 256) ** 0.75 == 4.8: one power law through both points
_FINAL_LR_RATIO = 1e-3     # final_lr = base_lr / 1000 in both official runs
_LARS_EPS = 1e-8           # keeps the trust ratio finite when both norms are tiny


def swav_learning_rate(global_batch_size):
    """Base learning rate for LARS at a given global batch, through SwAV's two official settings.

    Args:
        global_batch_size: int > 0, images per step over all devices.
    Returns:
        (base_lr, final_lr) floats: 0.6/0.0006 at 256, 4.8/0.0048 at 4096, a 3/4 power law between
        and beyond.
    """
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
    base = _REFERENCE_LR * (global_batch_size / _REFERENCE_BATCH) ** _LR_BATCH_EXPONENT
    return base, base * _FINAL_LR_RATIO


@keras.saving.register_keras_serializable(package="kitlib")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from ``start_lr`` to ``base_lr``, then cosine decay to ``final_lr``, per step.

    lr(t) = start + (base - start) * t / W                              for t < W
    lr(t) = final + (base - final) * (1 + cos(pi * (t - W) / (T - W))) / 2   for W <= t <= T
    and ``final_lr`` after T (swav ``main_swav.py``: ``warmup_lr_schedule`` + ``cosine_lr_schedule``).

    Args:
        base_lr: peak learning rate. total_steps: T, steps of the whole run (> warmup_steps).
        warmup_steps: W >= 0. start_lr: lr at step 0 of the warmup. final_lr: lr at step T.
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0, start_lr=0.0, final_lr=0.0):
        super().__init__()
        if total_steps <= 0 or not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}; shorten the warmup or train longer.")
        self.base_lr, self.final_lr, self.start_lr = float(base_lr), float(final_lr), float(start_lr)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def __call__(self, step):
        t = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.start_lr + (self.base_lr - self.start_lr) * t / warm
        progress = ops.clip((t - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = self.final_lr + 0.5 * (self.base_lr - self.final_lr) * (1.0 + ops.cos(math.pi * progress))
        return ops.where(t < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "start_lr": self.start_lr, "final_lr": self.final_lr}


def uses_weight_decay(variable):
    """True for weights that get weight decay: rank >= 2 (kernels, prototypes), not BN or biases."""
    return len(variable.shape) > 1


@keras.saving.register_keras_serializable(package="kitlib")
class LARS(keras.optimizers.Optimizer):
    """SGD with momentum and LARC layer-wise adaptation (You et al. 2017; apex LARC as used by SwAV).

    Per variable w with gradient g (of the global batch's loss):
        ratio = trust * |w| / (|g| + wd * |w| + eps)   (1 when |w| or |g| is 0, or trust is None)
        g'    = (g + wd * w) * ratio                   (wd = 0 for rank <= 1 variables)
        m     = momentum * m + g';   w -= lr * m       (PyTorch SGD momentum form)

    Args:
        learning_rate: float or LearningRateSchedule. momentum: in [0, 1).
        weight_decay: coupled L2 coefficient (SwAV 1e-6), skipped for BN parameters and biases.
        trust_coefficient: LARC eta (SwAV 0.001); None turns adaptation off, giving plain momentum SGD.
    """

    def __init__(self, learning_rate=0.6, momentum=0.9, weight_decay=1e-6, trust_coefficient=0.001,
                 name="lars", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)  # Keras's own decay stays off
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if weight_decay < 0 or (trust_coefficient is not None and trust_coefficient <= 0):
            raise ValueError(f"need weight_decay >= 0 and trust_coefficient > 0 or None, got "
                             f"{weight_decay} and {trust_coefficient}.")
        self.momentum, self.lars_weight_decay = float(momentum), float(weight_decay)
        self.trust_coefficient = trust_coefficient

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        w = ops.convert_to_tensor(variable)
        wd = self.lars_weight_decay if uses_weight_decay(variable) else 0.0
        if self.trust_coefficient is not None:
            w_norm, g_norm = ops.sqrt(ops.sum(ops.square(w))), ops.sqrt(ops.sum(ops.square(g)))
            ratio = self.trust_coefficient * w_norm / (g_norm + wd * w_norm + _LARS_EPS)
            ratio = ops.where((w_norm > 0) & (g_norm > 0), ratio, ops.ones_like(ratio))
        else:
            ratio = 1.0
        g = (g + wd * w) * ratio
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, self.momentum * m + g)
        self.assign_sub(variable, lr * m)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.lars_weight_decay,
                       "trust_coefficient": self.trust_coefficient})
        return config


OPTIMIZERS = ("lars", "sgd", "adam")


def build_optimizer(name="lars", learning_rate=0.6, momentum=0.9, weight_decay=1e-6, trust_coefficient=0.001):
    """The pretraining optimiser by name: "lars" (SwAV), "sgd" (LARS without layer adaptation) or
    "adam" (Keras's Adam, no weight decay: the small-data choice of `kitlib.swav.recipe.rule`).

    Args:
        name: one of OPTIMIZERS. learning_rate: float or schedule. Others as in `LARS` (unused by Adam).
    Returns:
        a `LARS` or `keras.optimizers.Adam` instance.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)} (SwAV: 'lars').")
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay,
                trust_coefficient=trust_coefficient if name == "lars" else None)
