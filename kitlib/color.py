"""SwAV's per-crop colour augmentation: what happens to a crop's colours, on the host or the accelerator.

Follows SwAV (Caron et al. 2020, arXiv 2006.09882; facebookresearch/swav ``src/multicropdataset.py``):
colour jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8, grayscale with p 0.2 and a Gaussian blur
(sigma in [0.1, 2], kernel about 10 % of the crop side) with p 0.5, every parameter a field of one
`ColorConfig`. Two implementations of it, one per place it runs:

- host (`augment_crops`, TensorFlow, inside the ``kitlib.multicrop.multicrop`` map): jitter and grayscale
  fused into one affine colour map per crop, clipped once, then the blur; cheap on a CPU;
- accelerator (`ColorAugment`, a Keras 3 layer in ``keras.ops``, jitted with the train step): the ops
  one by one in a random order, clipped after each as torchvision does, on whole batches.

Randomness is stateless: every function takes ``seed`` (an int, or a [2] int tensor; None draws one).
"""

import dataclasses
import math

import numpy as np

from kitlib.compat import keras, tf

BLUR_FRACTION = 0.1            # SimCLR: blur kernel about 10 % of the crop side
MATRIX_BLUR_MAX_SIDE = 128     # host blur by matrix products up to this side, depthwise conv above
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights (torchvision rgb_to_grayscale)
_INT32_MAX = 2**31 - 1


# ============ stateless seeds (shared with kitlib.multicrop) ============

def as_seed(seed):
    """A [2] int64 seed for stateless ops: None draws one from the global generator."""
    if seed is None:  # int32 draws work on every device (TPU included)
        return tf.cast(tf.random.uniform([2], 0, _INT32_MAX, dtype=tf.int32), tf.int64)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    return tf.cast(seed, tf.int64)


def split_seed(seed, n):
    """n independent [2] seeds from one: [n, 2] int64."""
    return tf.random.experimental.stateless_split(as_seed(seed), n)


def _uniform(shape, seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


# ============ the parameters ============

@dataclasses.dataclass(frozen=True)
class ColorConfig:
    """SwAV's per-crop colour distortion and blur: the parameters of `augment_crops` (host) and
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


# ============ host: one example's crops, TensorFlow ============

# Each jitter op is an affine colour map per image, x -> clip(x M^T + t, 0, 1). With the gray
# projection G = 1 w^T (w: luma weights): brightness b I; contrast c I with t = (1 - c) mean gray;
# saturation G + s (I - G) (a blend with the gray image); hue G + cos(2 pi d) (I - G) + sin(2 pi d) H:
# a rotation of YIQ's chroma plane by d turns, as NVIDIA DALI does. torchvision rotates HSV hue
# instead: the same intent; here luma is kept exactly and it costs a 3x3 product, not an HSV trip.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = np.outer(np.ones(3), _LUMA)
_HUE_SIN = np.linalg.inv(_YIQ) @ np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]) @ _YIQ


def _jitter_maps(n, seed, config):
    """Per crop, the jitter (with prob. jitter_p) then grayscale (prob. gray_p) as one affine colour map.

    Returns:
        (M [n, 3, 3], k [n]) of `_jitter_map`.
    """
    a = 0.8 * config.strength
    u = _uniform(tf.stack([n, 6]), as_seed(seed))
    jitter = u[:, 0] < config.jitter_p
    b, c, sat = [tf.where(jitter, tf.maximum(1.0 - a + 2.0 * a * u[:, i], 0.0), 1.0) for i in (2, 3, 4)]
    turn = tf.where(jitter, 0.2 * config.strength * (2.0 * u[:, 5] - 1.0), 0.0)
    return _jitter_map(b, c, sat, turn, u[:, 1] < config.gray_p)


def _jitter_map(brightness, contrast, saturation, hue, gray):
    """Brightness, contrast, saturation, hue (in turns) and grayscale as y = M x + k mean_luma(x) 1.

    Args:
        brightness, contrast, saturation, hue: [n] float factors; gray: [n] bool.
    Returns:
        (M [n, 3, 3]: G^gray b c (G + s cos(2 pi d) (I - G) + s sin(2 pi d) H), k [n]: (1 - c) b).
    """
    eye, gray_map, hue_sin = [tf.constant(m, tf.float32) for m in (np.eye(3), _GRAY, _HUE_SIN)]
    expand = lambda v: v[:, None, None]  # noqa: E731  [n] -> [n, 1, 1]
    angle = 2.0 * math.pi * hue
    maps = expand(brightness * contrast) * (gray_map + expand(saturation * tf.cos(angle)) * (eye - gray_map)
                                            + expand(saturation * tf.sin(angle)) * hue_sin)
    maps = tf.where(expand(gray), tf.einsum("ij,njk->nik", gray_map, maps), maps)
    return maps, (1.0 - contrast) * brightness


def _apply_fused_map(x, maps, weight, value_scale):
    """clip(M s x + k s mean_luma(x) 1, 0, 1) per pixel (s: value_scale).

    Args:
        x: [H, W, 3] with maps [3, 3] and weight k [], or [N, H, W, 3] with [N, 3, 3] and [N];
            values in [0, 1 / value_scale]; static H, W.
    Returns:
        float32 in [0, 1], the shape of x.
    """
    height, width = x.shape[-3], x.shape[-2]
    lead = tf.shape(x)[:-3]
    # mean RGB by rows then columns: a CPU reduces [H, W*3] along H several times faster than [H*W, 3]
    rows = tf.reduce_mean(tf.reshape(x, tf.concat([lead, [height, width * 3]], 0)), axis=-2)
    mean = tf.reduce_mean(tf.reshape(rows, tf.concat([lead, [width, 3]], 0)), axis=-2)      # [.., 3]
    shift = weight * value_scale * tf.reduce_sum(mean * tf.constant(_LUMA, tf.float32), -1)
    pixels = tf.reshape(x, tf.concat([lead, [height * width, 3]], 0))
    y = tf.matmul(pixels, maps * value_scale, transpose_b=True) + shift[..., None, None]
    return tf.reshape(tf.clip_by_value(y, 0.0, 1.0), tf.shape(x))


# ---- the blur ----

def blur_kernel_size(side, fraction=BLUR_FRACTION):
    """Odd Gaussian kernel size for a crop side: 2 * floor(fraction * side / 2) + 1 (224 -> 23, 96 -> 9)."""
    return 2 * int(fraction * side / 2) + 1


def _blur_along_1(x, taps):
    """x [N, L + k - 1, M] -> [N, L, M]: 'valid' blur along axis 1 with per-image taps [N, k].

    The M values of a row (and, for a batch, all images) are laid out as the channels of one 1-D
    signal, so one depthwise conv serves every image with its own sigma; it runs vectorised over
    those thousands of channels (a 3-channel depthwise conv is several times slower on a CPU).
    """
    single, length, m = x.shape[0] == 1, x.shape[1], x.shape[2]
    y = x if single else tf.transpose(x, [1, 0, 2])                       # [L', N, M]
    y = tf.reshape(y, [1, 1, length, -1])
    kernel = tf.repeat(tf.transpose(taps), m, axis=1)[None, :, :, None]    # [1, k, N*M, 1]
    y = tf.nn.depthwise_conv2d(y, kernel, [1, 1, 1, 1], "VALID")
    out = length - taps.shape[1] + 1
    return tf.reshape(y, [1, out, m]) if single else tf.transpose(tf.reshape(y, [out, -1, m]), [1, 0, 2])


def _gaussian_taps(sigma, k):
    """Normalised Gaussian taps [N, k] for sigmas [N] (pixels), k odd."""
    r = k // 2
    taps = tf.exp(-tf.square(tf.range(-r, r + 1, dtype=tf.float32)) / (2.0 * tf.square(sigma[:, None])))
    return tf.ensure_shape(taps / tf.reduce_sum(taps, axis=1, keepdims=True), [None, k])


def _separable_blur(x, taps):
    """Blur x [N, H, W, C] (static H, W, C) with taps [N, k] per image, vertical then horizontal,
    borders reflected."""
    _, height, width, ch = x.shape
    r = taps.shape[1] // 2
    y = _blur_along_1(tf.reshape(_reflect_rows(x, r), [-1, height + 2 * r, width * ch]), taps)  # vertical
    y = tf.transpose(tf.reshape(y, [-1, height, width, ch]), [0, 2, 1, 3])
    y = _blur_along_1(tf.reshape(_reflect_rows(y, r), [-1, width + 2 * r, height * ch]), taps)  # horizontal
    return tf.transpose(tf.reshape(y, [-1, width, height, ch]), [0, 2, 1, 3])


def _reflect_rows(x, r):
    """x [N, L, ...] -> [N, L + 2r, ...] mirrored at both ends without repeating the edge row (as
    tf.pad REFLECT, which is several times slower on a CPU than this concat)."""
    return tf.concat([tf.reverse(x[:, 1:r + 1], [1]), x, tf.reverse(x[:, -r - 1:-1], [1])], axis=1)


def _unit_blur(x, taps):
    """One image [H, W, 3] in [0, 1] blurred with taps [1, k], still <= 1 (taps sum to 1 up to rounding).

    Sides up to MATRIX_BLUR_MAX_SIDE (SwAV's 96-px crops) by `_matrix_blur`, larger by the depthwise
    `_separable_blur`: the same result, whichever measured cheaper at that size (bench/README.md).
    """
    if max(x.shape[0], x.shape[1]) <= MATRIX_BLUR_MAX_SIDE:
        return tf.minimum(_matrix_blur(x, taps[0]), 1.0)
    return tf.minimum(_separable_blur(x[None], taps)[0], 1.0)


def _blur_matrix(taps, n):
    """Banded [n, n] matrix B with (B v)_i = sum_t taps_t v_reflect(i + t - r): a 1-D blur of a
    length-n signal with borders reflected as `_reflect_rows` (r = k // 2; taps [k], k odd)."""
    k = taps.shape[-1]
    rows = np.repeat(np.arange(n), k)
    cols = np.abs(rows + np.tile(np.arange(k), n) - k // 2)
    cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)             # mirror at both ends
    return tf.scatter_nd(np.stack([rows, cols], 1), tf.tile(taps, [n]), [n, n])  # repeats add up


def _matrix_blur(x, taps):
    """Separable blur of one image x [H, W, C] (static shape) with taps [k] as two matrix products,
    Y = B_H X B_W^T per channel, borders reflected: no padding copies, one transpose.

    The first product is taken transposed, (B_H X)^T = X^T B_H^T with X as [H, W*C], so that its
    rows (w, c) put W first for the second product B_W [W, W] @ [W, C*H]; the result [W, C, H] is
    transposed back to [H, W, C]. Dense products cost H*W*C*(H + W) multiply-adds against
    H*W*C*2k for the depthwise convolution, but at 96 px they beat it on a CPU (fewer, faster ops).
    """
    height, width, ch = x.shape
    along_h = _blur_matrix(taps, height)
    along_w = along_h if width == height else _blur_matrix(taps, width)  # crops are square: build once
    y = tf.matmul(tf.reshape(x, [height, width * ch]), along_h, transpose_a=True, transpose_b=True)  # [W*C, H]
    y = tf.matmul(along_w, tf.reshape(y, [width, ch * height]))                                    # [W, C*H]
    return tf.transpose(tf.reshape(y, [width, ch, height]), [2, 0, 1])



def gaussian_blur(image, sigma, kernel_size=None):
    """The host path's Gaussian blur of one image, borders reflected (``tf.pad(mode="REFLECT")``).

    Args:
        image: [H, W, C] float32 in [0, 1], static shape.
        sigma: blur sigma in pixels.
        kernel_size: odd number of taps; default `blur_kernel_size` of the shorter side (below 3: unchanged).
    Returns:
        Same shape, float32 in [0, 1].
    """
    k = kernel_size or blur_kernel_size(min(image.shape[0], image.shape[1]))
    if k < 3:
        return image
    return _unit_blur(image, _gaussian_taps(tf.constant([sigma], tf.float32), k))


def augment_crops(crops, config=SWAV_COLOR, seed=None, value_scale=1.0):
    """SwAV's colour augmentation of one example's crops on the host: what ``multicrop(augment=True)`` runs.

    Per crop, the jitter and grayscale (each with its probability) are one affine colour map, clipped
    once: without clips between them the jitter ops commute (brightness and contrast are scalar maps,
    saturation scales and hue rotates the chroma plane, both keeping luma), so
    y = clip(G^g b c K(s, d) x + (1 - c) b mean_luma(x) 1), G the grayscale projection, g its coin.
    The one deviation from SwAV's torchvision chain (clip after each op, in a random order; as
    `ColorAugment` does): a strong brightening then a contrast drop keeps highlight detail that the
    chain flattens. Then the blur with probability ``blur_p`` (none for crops below 3 taps). All
    crops' parameters are drawn at once (few ops), then one pass per crop.

    Args:
        crops: sequence of [S, S, 3] float32 crops (static shapes, sizes may differ), values in
            [0, 1 / value_scale].
        config: `ColorConfig`.
        seed: [2] int seed (None: random).
        value_scale: factor that brings the values to [0, 1] (1/255 for resized uint8; folded into the map).
    Returns:
        A tuple of the crops, float32 in [0, 1].
    """
    total, seeds = len(crops), split_seed(seed, 3)
    maps, weights = _jitter_maps(total, seeds[0], config)
    blurs = _uniform([total], seeds[1]) < config.blur_p
    sigmas = _uniform([total], seeds[2], *config.sigma)
    sides = [min(c.shape[0], c.shape[1]) for c in crops]
    taps = {side: _gaussian_taps(sigmas, blur_kernel_size(side)) for side in dict.fromkeys(sides)}
    out = []
    for i, (crop, side) in enumerate(zip(crops, sides)):
        crop = _apply_fused_map(crop, maps[i], weights[i], value_scale)
        if blur_kernel_size(side) >= 3:
            crop = tf.cond(blurs[i], lambda c=crop, t=taps[side][i:i + 1]: _unit_blur(c, t), lambda c=crop: c)
        out.append(crop)
    return tuple(out)


def augmentation_gallery(crop, draws=4, seed=0, config=SWAV_COLOR):
    """Each augmentation of the host path alone (always applied), on ``draws`` copies of one crop.

    Returns:
        dict name -> float32 [draws, S, S, 3]; the last entry is the full chain with its
        probabilities (a flip with p 1/2, then `augment_crops`), which is what training sees.
    """
    x = tf.repeat(tf.convert_to_tensor(crop, tf.float32)[None], draws, axis=0)
    seeds = split_seed(seed, 5)

    def only(**on):  # one augmentation, always applied
        return dataclasses.replace(config, **{"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, **on})

    def colour(images, cfg, s):
        return tf.stack(augment_crops(tf.unstack(images), cfg, s))

    return {"crop": x, "flip": tf.reverse(x, [2]),
            f"colour jitter (s={config.strength:g})": colour(x, only(jitter_p=1.0), seeds[0]),
            "grayscale": colour(x, only(gray_p=1.0), seeds[1]),
            "Gaussian blur": colour(x, only(blur_p=1.0), seeds[2]),
            "SwAV chain": colour(tf.image.stateless_random_flip_left_right(x, seeds[3]), config, seeds[4])}


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
        x = _maybe(x, u[:, _COIN_JITTER], cfg.jitter_p, lambda y: _jitter_batch(y, u, cfg.strength))
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
    return x[..., 0] * _LUMA[0] + x[..., 1] * _LUMA[1] + x[..., 2] * _LUMA[2]


def _gray_batch(x):
    """Grayscale: luma in all 3 channels, [B, H, W, 3] -> [B, H, W, 3] (R == G == B exactly)."""
    return keras.ops.repeat(_luma(x)[..., None], 3, axis=-1)


def _jitter_batch(x, u, strength):
    """SwAV's colour jitter of a batch in keras.ops: the four ops in a random order per image, clipped after each.

    Args:
        x: [B, H, W, 3] float32 in [0, 1].
        u: [B, _DRAWS] uniforms; reads the factor, hue and order columns.
        strength: jitter strength s.
    Returns:
        [B, H, W, 3] float32 in [0, 1].
    """
    ops, a = keras.ops, 0.8 * strength
    b, c, s = [ops.maximum(1.0 - a + 2.0 * a * u[:, i], 0.0) for i in (_BRIGHT, _CONTRAST, _SATURATION)]
    turn = 2.0 * math.pi * 0.2 * strength * (2.0 * u[:, _HUE] - 1.0)
    eye, gray, hue_sin = [ops.convert_to_tensor(m.astype(np.float32)) for m in (np.eye(3), _GRAY, _HUE_SIN)]
    expand = lambda v: v[:, None, None]  # noqa: E731  [B] -> [B, 1, 1]
    maps = ops.stack([expand(b) * eye, expand(c) * eye, gray + expand(s) * (eye - gray),
                      gray + expand(ops.cos(turn)) * (eye - gray) + expand(ops.sin(turn)) * hue_sin], axis=1)
    order = ops.argsort(u[:, _ORDER:_ORDER + 4], axis=-1)               # [B, 4]: a random permutation
    for slot in range(4):
        pick = ops.one_hot(order[:, slot], 4, dtype="float32")          # [B, 4]: this slot's op
        m = ops.sum(pick[:, :, None, None] * maps, axis=1)              # [B, 3, 3]
        shift = pick[:, 1] * (1.0 - c) * ops.mean(_luma(x), axis=(1, 2))  # contrast only: (1 - c) mean luma
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
    """Separable Gaussian blur with its own sigma per image, borders reflected (as `gaussian_blur`).

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
