"""SwAV's per-crop colour augmentation: its parameters, and the accelerator's implementation of it.

Follows SwAV (Caron et al. 2020, arXiv 2006.09882; facebookresearch/swav ``src/multicropdataset.py``):
colour jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8, grayscale with p 0.2 and a Gaussian blur
(sigma in [0.1, 2], kernel about 10 % of the crop side) with p 0.5, every parameter a field of one
`ColorConfig`. Two implementations of it, one per place it runs:

- host (``kitlib.swav.color_host.augment_crops``, TensorFlow, inside the ``kitlib.swav.multicrop.multicrop`` map):
  jitter and grayscale fused into one affine colour map per crop, clipped once, then the blur; cheap on a CPU;
- accelerator (`ColorAugment`, here: a Keras 3 layer in ``keras.ops``, jitted with the train step): the ops
  one by one in a random order, clipped after each as torchvision does, on whole batches.

This module holds what both share (`ColorConfig`, the colour matrices, `blur_kernel_size`) and the layer.
"""

import dataclasses
import math

import numpy as np

from kitlib.compat import keras

BLUR_FRACTION = 0.1            # SimCLR: blur kernel about 10 % of the crop side
LUMA = (0.299, 0.587, 0.114)   # ITU-R 601 luma weights (torchvision rgb_to_grayscale)

# Each jitter op is an affine colour map per image, x -> clip(x M^T + t, 0, 1). With the gray
# projection G = 1 w^T (w: luma weights): brightness b I; contrast c I with t = (1 - c) mean gray;
# saturation G + s (I - G) (a blend with the gray image); hue G + cos(2 pi d) (I - G) + sin(2 pi d) H:
# a rotation of YIQ's chroma plane by d turns, as NVIDIA DALI does. torchvision rotates HSV hue
# instead: the same intent; here luma is kept exactly and it costs a 3x3 product, not an HSV trip.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
GRAY_PROJECTION = np.outer(np.ones(3), LUMA)  # G [3, 3]: x G^T puts the luma in all 3 channels
HUE_SIN = np.linalg.inv(_YIQ) @ np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]) @ _YIQ  # H [3, 3]


# ============ the parameters ============

@dataclasses.dataclass(frozen=True)
class ColorConfig:
    """SwAV's per-crop colour distortion and blur: the parameters of `color_host.augment_crops` (host) and
    `ColorAugment` (accelerator).

    Args:
        strength: colour-jitter strength s: brightness, contrast and saturation factors ~
            U[1 - 0.8 s, 1 + 0.8 s], hue shift ~ U[-0.2 s, 0.2 s] turns (SwAV 1.0).
        jitter_p: probability of the jitter per crop (SwAV 0.8).
        gray_p: probability of grayscale per crop (SwAV 0.2).
        blur_p: probability of the Gaussian blur per crop (SwAV 0.5).
        sigma: (lo, hi) blur sigma range in pixels of the crop, sigma ~ U[lo, hi] per crop (SwAV 0.1-2).
    """

    strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    sigma: tuple = (0.1, 2.0)

    def __post_init__(self):
        sigma = tuple(float(s) for s in self.sigma)
        object.__setattr__(self, "sigma", sigma)
        for name in ("jitter_p", "gray_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ColorConfig.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.strength < 0:
            raise ValueError(f"ColorConfig.strength must be >= 0, got {self.strength}")
        if len(sigma) != 2 or not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"ColorConfig.sigma is a range (lo, hi) with 0 < lo <= hi, got {self.sigma}")

    def as_kwargs(self):
        """The fields as a dict (`ColorAugment` keyword arguments, ``get_config``)."""
        return dataclasses.asdict(self)


SWAV_COLOR = ColorConfig()  # SwAV's settings: strength 1, jitter 0.8, grayscale 0.2, blur 0.5, sigma 0.1-2


def blur_kernel_size(side, fraction=BLUR_FRACTION):
    """Odd Gaussian kernel size for a crop side: 2 * floor(fraction * side / 2) + 1 (224 -> 23, 96 -> 9)."""
    return 2 * int(fraction * side / 2) + 1


# ============ accelerator: batches of crops in the train step, keras.ops ============

# columns of the one uniform draw [B, _DRAWS] per batch of crops in ColorAugment
_COIN_JITTER, _COIN_GRAY, _COIN_BLUR, _BRIGHT, _CONTRAST, _SATURATION, _HUE, _ORDER, _SIGMA = 0, 1, 2, 3, 4, 5, 6, 7, 11
_DRAWS = 12


class ColorAugment(keras.layers.Layer):
    """SwAV colour jitter, grayscale and blur of batches of crops, inside the (jitted) train step.

    Use with ``multicrop_batches(..., augment="device")`` so the host only decodes, crops and flips:
    ``crops = ColorAugment()(crops, training=True)`` at the start of the model's forward pass. SwAV's
    chain as torchvision runs it, written with ``keras.ops`` only (backend-agnostic; runs under
    ``jax.jit``, with ``keras.distribution.DataParallel`` sharding the batch):

    - jitter with probability ``jitter_p``: brightness, contrast, saturation (factors ~
      U[1 - 0.8 s, 1 + 0.8 s], floored at 0) and hue (a shift ~ U[-0.2 s, 0.2 s] turns) in a random
      order per image, clipped to [0, 1] after each op as torchvision does. Each op is a 3x3 colour
      map per image (contrast adds (1 - c) x the mean luma). The hue shift is the host's: a rotation
      of the chroma plane of YIQ (as NVIDIA DALI does), which keeps luma exactly, not torchvision's
      HSV hue shift (same intent, no HSV round trip);
    - grayscale with probability ``gray_p``: ITU-R 601 luma (0.299, 0.587, 0.114) in all 3 channels;
    - Gaussian blur with probability ``blur_p``: sigma ~ U[sigma] pixels, `blur_kernel_size` taps for
      the crop's side (none below 3 taps, as the host), borders reflected without repeating the edge
      pixel (like ``tf.pad(mode="REFLECT")``). Separable, as two matrix products with a banded
      [S, S] matrix per image, ``Y = B X B^T`` per channel (per-image sigma, static shapes).

    Every image draws its own coins and parameters: one ``keras.random.uniform([B, 12])`` per batch
    of crops from the layer's ``keras.random.SeedGenerator``, whose state is a (non-trainable) layer
    variable. Keras's JAX trainer threads it through ``stateless_call``, so it advances every train
    step inside ``jax.jit``; a hand-written ``jax.jit`` must do the same
    (``out, state = layer.stateless_call([], state, crops, training=True)``), else every call of the
    compiled function repeats the draws it was traced with. Static shapes only: the coins select
    with ``ops.where`` (all images pay for every op; an op with probability 0 is skipped, one with
    probability 1 applied without a select). Computed in float32 whatever the mixed-precision policy
    (the layer's dtype is float32; inputs are cast). On a TPU, XLA's default matmul precision rounds
    the blur's operands to bfloat16 (about 1e-3 error, below a grey level), the colour maps are exact
    float32 (elementwise).

    Worth it when the host CPU is the bottleneck (Kaggle GPU: 4 vCPUs): it moves about half of the
    host's work per image to the accelerator. On a CPU, or a TPU VM host with many cores, host mode
    is cheaper (bench/pipeline.py).

    Args:
        config: `ColorConfig` (or its dict; default `SWAV_COLOR`).
        seed: int for reproducible draws (same seed, same inputs, same call sequence -> same output);
            None: a random start.
        strength, jitter_p, gray_p, blur_p, sigma: keyword overrides of ``config``'s fields.
        **kwargs: `keras.layers.Layer` arguments (``dtype`` is always float32).
    Call args:
        inputs: [B, S, S, 3] (or [B, H, W, 3]) float in [0, 1], any float dtype, or a list/tuple of
            such (one per crop resolution or view; each may have its own size).
        training: False returns ``inputs`` unchanged; True (default) augments; a boolean tensor
            selects per call.
    Returns:
        The inputs' structure (tensor, list or tuple) of float32 [B, S, S, 3] in [0, 1].
    """

    def __init__(self, config=None, seed=None, **kwargs):
        overrides = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(ColorConfig) if f.name in kwargs}
        if isinstance(config, dict):
            config = ColorConfig(**config)
        kwargs["dtype"] = "float32"  # augmentation numerics stay float32 under mixed precision
        super().__init__(**kwargs)
        self.color_config = dataclasses.replace(config or SWAV_COLOR, **overrides)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="color_augment_seed")
        self.built = True  # no weights; the seed state is created above

    def call(self, inputs, training=True):
        if training is False:
            return inputs
        many = isinstance(inputs, (list, tuple))
        crops = [keras.ops.cast(x, "float32") for x in (inputs if many else [inputs])]
        out = [self.augment_batch(x) for x in crops]
        if training is not None and training is not True:  # a symbolic learning phase
            out = [keras.ops.where(keras.ops.cast(training, "bool"), y, x) for y, x in zip(out, crops)]
        return type(inputs)(out) if many else out[0]

    def augment_batch(self, x):
        """One batch of crops, with fresh draws: x [B, H, W, 3] float32 in [0, 1] -> same shape, in [0, 1]."""
        cfg = self.color_config
        u = keras.random.uniform((keras.ops.shape(x)[0], _DRAWS), dtype="float32", seed=self.seed_generator)
        x = _maybe(x, u[:, _COIN_JITTER], cfg.jitter_p, lambda y: jitter_batch(y, *_jitter_draws(u, cfg.strength)))
        x = _maybe(x, u[:, _COIN_GRAY], cfg.gray_p, _gray_batch)
        k = blur_kernel_size(min(x.shape[1], x.shape[2]))
        if k >= 3:
            sigma = cfg.sigma[0] + (cfg.sigma[1] - cfg.sigma[0]) * u[:, _SIGMA]
            x = _maybe(x, u[:, _COIN_BLUR], cfg.blur_p, lambda y: _blur_batch(y, sigma, k))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "config": self.color_config.as_kwargs(), "seed": self.seed}


def _maybe(x, u, p, fn):
    """fn(x) for the images whose draw u [B] is < p, x for the others (static p: 0 skips, 1 always)."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return fn(x)
    return keras.ops.where((u < p)[:, None, None, None], fn(x), x)


def _luma(x):
    """ITU-R 601 luma of x [B, H, W, 3] -> [B, H, W], elementwise (exact float32 on every device)."""
    return x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]


def _gray_batch(x):
    """Grayscale: luma in all 3 channels, [B, H, W, 3] -> [B, H, W, 3] (R == G == B exactly)."""
    return keras.ops.repeat(_luma(x)[..., None], 3, axis=-1)


def _jitter_draws(u, strength):
    """The jitter's parameters from the layer's uniforms u [B, _DRAWS]: brightness, contrast and saturation
    factors ~ U[1 - 0.8 s, 1 + 0.8 s] floored at 0, hue ~ U[-0.2 s, 0.2 s] turns (each [B]) and a random
    order [B, 4] (the argsort of four uniforms), as `jitter_batch` takes them."""
    ops, a = keras.ops, 0.8 * strength
    b, c, s = [ops.maximum(1.0 - a + 2.0 * a * u[:, i], 0.0) for i in (_BRIGHT, _CONTRAST, _SATURATION)]
    hue = 0.2 * strength * (2.0 * u[:, _HUE] - 1.0)
    return b, c, s, hue, ops.argsort(u[:, _ORDER:_ORDER + 4], axis=-1)


def jitter_batch(x, brightness, contrast, saturation, hue, order):
    """SwAV's colour jitter of a batch in keras.ops: the four ops in the given order per image, clipped after each.

    Args:
        x: [B, H, W, 3] float32 in [0, 1].
        brightness, contrast, saturation: [B] factors (>= 0). hue: [B] shift in turns.
        order: [B, 4] int, per image the ops in the order they run (0 brightness, 1 contrast, 2 saturation,
            3 hue), a permutation of 0..3.
    Returns:
        [B, H, W, 3] float32 in [0, 1].
    """
    ops = keras.ops
    turn = 2.0 * math.pi * hue
    eye, gray, hue_sin = [ops.convert_to_tensor(m.astype(np.float32)) for m in (np.eye(3), GRAY_PROJECTION, HUE_SIN)]
    expand = lambda v: v[:, None, None]  # noqa: E731  [B] -> [B, 1, 1]
    maps = ops.stack([expand(brightness) * eye, expand(contrast) * eye, gray + expand(saturation) * (eye - gray),
                      gray + expand(ops.cos(turn)) * (eye - gray) + expand(ops.sin(turn)) * hue_sin], axis=1)
    for slot in range(4):
        pick = ops.one_hot(order[:, slot], 4, dtype="float32")          # [B, 4]: this slot's op
        m = ops.sum(pick[:, :, None, None] * maps, axis=1)              # [B, 3, 3]
        shift = pick[:, 1] * (1.0 - contrast) * ops.mean(_luma(x), axis=(1, 2))  # contrast only: (1 - c) mean luma
        y = ops.sum(x[..., None, :] * m[:, None, None], axis=-1)        # x M^T per pixel, elementwise
        x = ops.clip(y + shift[:, None, None, None], 0.0, 1.0)
    return x


def _reflected_gaussian(sigma, k, n):
    """Banded [B, n, n] matrices: row i holds the normalised Gaussian taps (sigma [B], k odd taps)
    around i, the ones falling off either end mirrored back in without repeating the edge (n > k // 2).

    (B v)_i = sum_t g_t v_reflect(i + t - r): an index m < 0 reads -m, m > n - 1 reads 2 (n - 1) - m,
    so B[i, j] = g(j - i) + [j > 0] g(-j - i) + [j < n - 1] g(2 (n - 1) - j - i), g(d) = 0 for |d| > r.
    """
    ops, r = keras.ops, k // 2
    i = ops.arange(n, dtype="float32")[:, None]
    j = ops.arange(n, dtype="float32")[None, :]
    inv = (-0.5 / ops.square(sigma))[:, None, None]                      # [B, 1, 1]

    def tap(d):  # unnormalised tap at offsets d [n, n] -> [B, n, n]
        return ops.where(ops.abs(d) <= r, ops.exp(ops.square(d) * inv), 0.0)

    matrix = (tap(j - i) + ops.where(j > 0, tap(-j - i), 0.0)
              + ops.where(j < n - 1, tap(2.0 * (n - 1) - j - i), 0.0))
    offsets = ops.arange(-r, r + 1, dtype="float32")
    norm = ops.sum(ops.exp(ops.square(offsets)[None, :] * inv[:, :, 0]), axis=1)  # [B]: the taps' sum
    return matrix / norm[:, None, None]


def _blur_batch(x, sigma, k):
    """Separable Gaussian blur with its own sigma per image, borders reflected (as `color_host.gaussian_blur`).

    Args:
        x: [B, H, W, C] float32 with static H, W.
        sigma: [B] pixels.
        k: odd number of taps (k // 2 < min(H, W)).
    Returns:
        [B, H, W, C], clipped to [0, 1].
    """
    height, width = x.shape[1], x.shape[2]
    along_h = _reflected_gaussian(sigma, k, height)
    along_w = along_h if width == height else _reflected_gaussian(sigma, k, width)
    y = keras.ops.einsum("bij,bjwc->biwc", along_h, x)                  # vertical
    y = keras.ops.einsum("bvw,biwc->bivc", along_w, y)                  # horizontal
    return keras.ops.clip(y, 0.0, 1.0)
