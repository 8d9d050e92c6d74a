"""Multi-crop augmentation for SwAV: every crop of one training example comes from ONE source image.

Follows SwAV (Caron et al. 2020, arXiv 2006.09882; facebookresearch/swav ``src/multicropdataset.py``):
per crop a random resized crop by *area* and aspect ratio of the original image, horizontal flip,
colour jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8 in random order, grayscale with p 0.2 and a
Gaussian blur (sigma in [0.1, 2]) with p 0.5. The transforms are small graph-safe functions in the
style of google-research/simclr ``data_util.py``; each works on one image [H, W, 3] or a batch
[N, H, W, 3] (independent draws per image) of float32 in [0, 1].

Randomness is stateless: every function takes ``seed`` (an int, or a [2] int tensor; None draws one),
and the pipeline derives a seed per example from ``tf.data.Dataset.random`` so the same seed gives
the same crops however many threads run the map.

Speed (bench/pipeline.py): each JPEG is decoded once, only the window that holds all its crops and
at the coarsest libjpeg scale (1/2, 1/4, 1/8) that upsamples no crop more than ``max_upscale``
(default 2: an 800x600 Cassava image decodes at 400x300, ImageNet's size; 1.0 keeps every window at
least its crop's resolution); records are shuffled encoded; blurs of small crops are two matrix
products, of large ones a depthwise convolution; the map runs on a private thread pool
(`pipeline_options`), best with one thread per CPU op (`kitlib.runtime.configure_host_threads`, which
`runtime.setup` applies when a GPU/TPU is attached). Colour work runs on the host
(``augment=True``: `fused_color_augment`'s one colour pass per crop, clipped once, see there) or,
with ``augment="device"``, in the train step through the `ColorAugment` layer (Keras 3, ``keras.ops``
on JAX, jitted with the step: the op-by-op chain of `color_augment`, parameters in a `ColorConfig`)
so the host only crops and flips.
"""

import dataclasses
import math
import re

import numpy as np

from kitlib.compat import keras, tf
from kitlib.runtime import usable_cores

JITTER_STRENGTH = 1.0          # SwAV's colour-jitter strength s (the seed notebook used 0.5)
JITTER_P, GRAY_P, BLUR_P, FLIP_P = 0.8, 0.2, 0.5, 0.5  # SwAV's probabilities per crop
BLUR_SIGMA = (0.1, 2.0)        # SwAV/SimCLR Gaussian-blur sigma range, in pixels of the crop
BLUR_FRACTION = 0.1            # SimCLR: blur kernel about 10 % of the crop side
MATRIX_BLUR_MAX_SIDE = 128     # host blur by matrix products up to this side, depthwise conv above
CROP_RATIO = (3 / 4, 4 / 3)    # aspect-ratio range of random resized crops (torchvision default)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights (torchvision rgb_to_grayscale)
MAX_UPSCALE = 2.0              # JPEG decode scale: no crop upsampled more than 2x from decoded pixels
_JPEG_SCALES = (1, 2, 4, 8)    # the reduced sizes libjpeg decodes natively (ratio=...)
_INT32_MAX = 2**31 - 1
_KEY_SALT = 0x5EED             # second word of each example's [key, salt] seed in `multicrop`
AUTOTUNE = tf.data.AUTOTUNE


# ============ seeds ============

def _as_seed(seed):
    """A [2] int64 seed for stateless ops: None draws one from the global generator."""
    if seed is None:  # int32 draws work on every device (TPU included)
        return tf.cast(tf.random.uniform([2], 0, _INT32_MAX, dtype=tf.int32), tf.int64)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    return tf.cast(seed, tf.int64)


def _split(seed, n):
    """n independent [2] seeds from one: [n, 2] int64."""
    return tf.random.experimental.stateless_split(_as_seed(seed), n)


def _uniform(shape, seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _leading(x):
    """[N] for a batch [N, H, W, C], [] for one image; raises on other ranks."""
    if x.shape.rank not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3] or a batch [N, H, W, 3], got shape {x.shape}")
    return tf.shape(x)[:1] if x.shape.rank == 4 else tf.zeros([0], tf.int32)


# ============ colour and blur: float [.., H, W, 3] in [0, 1] ============

# Each jitter op is an affine colour map per image, x -> clip(x M^T + t, 0, 1). With the gray
# projection G = 1 w^T (w: luma weights): brightness b I; contrast c I with t = (1 - c) mean gray;
# saturation G + s (I - G) (a blend with the gray image); hue G + cos(2 pi d) (I - G) + sin(2 pi d) H:
# a rotation of YIQ's chroma plane by d turns, as NVIDIA DALI does. torchvision rotates HSV hue
# instead: the same intent; here luma is kept exactly and it costs a 3x3 product, not an HSV trip.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = np.outer(np.ones(3), _LUMA)
_HUE_SIN = np.linalg.inv(_YIQ) @ np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]) @ _YIQ


def _as_batch(x):
    """(x as [N, H, W, C], a function giving a result back the caller's rank)."""
    _leading(x)
    return (x, lambda y: y) if x.shape.rank == 4 else (x[None], lambda y: y[0])


def random_apply(fn, x, p, seed=None):
    """fn(x) with probability p, else x: one coin for an image, one coin per image of a batch.

    Args:
        fn: callable on x (on a batch it must treat images independently).
        x: [H, W, C] or [N, H, W, C].
        p: probability in [0, 1].
    """
    coin = _uniform(_leading(x), _as_seed(seed)) < p
    if x.shape.rank == 3:
        return tf.cond(coin, lambda: fn(x), lambda: x)  # one image: skip the work on "no"
    # a full-shape condition: a broadcast select is several times slower on a CPU
    return tf.where(tf.broadcast_to(tf.reshape(coin, [-1, 1, 1, 1]), tf.shape(x)), fn(x), x)


def color_jitter(x, strength=JITTER_STRENGTH, seed=None):
    """Brightness, contrast, saturation (factors ~ U[1 - 0.8 s, 1 + 0.8 s]) and hue (shift ~
    U[-0.2 s, 0.2 s] turns) in a random order per image, clipped to [0, 1] after each op.

    torchvision ``ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` as in SwAV (hue: see the note above).

    Args:
        x: [H, W, 3] or [N, H, W, 3] float32 in [0, 1].
        strength: s (SwAV 1.0; the seed notebook used 0.5).
    Returns:
        Same shape, float32 in [0, 1].
    """
    a = 0.8 * strength
    seeds = _split(seed, 5)
    n = _leading(x)
    b, c, s = [tf.maximum(_uniform(n, seeds[i], 1.0 - a, 1.0 + a), 0.0) for i in range(3)]
    turn = 2.0 * math.pi * _uniform(n, seeds[3], -0.2 * strength, 0.2 * strength)
    eye, gray, hue_sin = [tf.constant(m, tf.float32) for m in (np.eye(3), _GRAY, _HUE_SIN)]
    expand = (lambda v: v) if x.shape.rank == 3 else (lambda v: v[:, None, None])  # [N] -> [N, 1, 1]
    b, c, s, turn = map(expand, (b, c, s, turn))
    maps = [b * eye, c * eye, gray + s * (eye - gray),
            gray + tf.cos(turn) * (eye - gray) + tf.sin(turn) * hue_sin]
    order = tf.argsort(_uniform(tf.concat([n, [4]], 0), seeds[4]), axis=-1)  # a random permutation
    if x.shape.rank == 3:  # one image: run only the op each slot draws, in its cheapest form
        ops = [lambda y: tf.minimum(y * b, 1.0),
               lambda y: tf.clip_by_value(c * y + (1.0 - c) * _mean_gray(y), 0.0, 1.0),
               lambda y: _apply_colour_map(y, maps[2]), lambda y: _apply_colour_map(y, maps[3])]
        for slot in range(4):
            x = tf.switch_case(order[slot], [lambda op=op, y=x: op(y) for op in ops])
        return x
    # a batch (static shapes for XLA/TPU): gather each image's map for this slot, one product each
    maps = tf.stack(maps, axis=1)                                                       # [N, 4, 3, 3]
    for slot in range(4):
        op = order[:, slot]
        shift = tf.where(op == 1, (1.0 - c[:, 0, 0]) * _mean_gray(x)[:, 0, 0, 0], 0.0)  # contrast only
        x = _apply_colour_map(x, tf.gather(maps, op, batch_dims=1), shift[:, None, None, None])
    return x


def _mean_gray(x):
    """Mean luma of each image: [H, W, 3] -> [1, 1, 1]; [N, H, W, 3] -> [N, 1, 1, 1]."""
    return tf.reduce_mean(tf.tensordot(x, tf.constant(_LUMA, tf.float32), axes=1)[..., None],
                          axis=[-3, -2, -1], keepdims=True)


def _apply_colour_map(x, m, shift=0.0):
    """clip(x M^T + shift, 0, 1) per pixel; m [3, 3] for an image, [N, 3, 3] for a batch."""
    y = tf.tensordot(x, tf.transpose(m), axes=1) if x.shape.rank == 3 else tf.einsum("nhwc,ndc->nhwd", x, m)
    return tf.clip_by_value(y + shift, 0.0, 1.0)


def color_drop(x):
    """Grayscale (ITU-R 601 luma) repeated to 3 channels: [.., H, W, 3] -> same shape."""
    return tf.tensordot(x, tf.constant(_GRAY.T, tf.float32), axes=1)


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


def gaussian_blur(x, sigma=BLUR_SIGMA, seed=None, kernel_size=None):
    """Separable Gaussian blur, sigma ~ U(sigma) per image, kernel about 10 % of the crop side.

    Args:
        x: [H, W, C] or [N, H, W, C] float32 with static H, W, C (borders are reflected).
        sigma: (lo, hi) in pixels.
        kernel_size: odd int; default `blur_kernel_size(min(H, W))`.
    Returns:
        Same shape.
    """
    x, restore = _as_batch(x)
    _, height, width, ch = x.shape
    k = kernel_size or blur_kernel_size(min(height, width))
    if k < 3:
        return restore(x)
    s = _uniform([x.shape[0] or tf.shape(x)[0]], _as_seed(seed), *sigma)
    return restore(_separable_blur(x, _gaussian_taps(s, k)))


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


def random_flip(x, seed=None):
    """Left-right flip with probability 1/2 (per image of a batch)."""
    return tf.image.stateless_random_flip_left_right(x, _as_seed(seed))


def color_augment(x, seed=None, strength=JITTER_STRENGTH, jitter_p=JITTER_P, gray_p=GRAY_P,
                  blur_p=BLUR_P, sigma=BLUR_SIGMA):
    """SwAV's per-crop colour distortion, then blur: jitter (p 0.8), grayscale (p 0.2), blur (p 0.5).

    Args:
        x: [S, S, 3] or [N, S, S, 3] float32 in [0, 1] (a crop, or a batch of same-size crops).
    Returns:
        Same shape, float32 in [0, 1].
    """
    seeds = _split(seed, 5)
    x = random_apply(lambda y: color_jitter(y, strength, seeds[0]), x, jitter_p, seeds[1])
    x = random_apply(color_drop, x, gray_p, seeds[2])
    return random_apply(lambda y: gaussian_blur(y, sigma, seeds[3]), x, blur_p, seeds[4])


def _fused_jitter_maps(n, seed, strength=JITTER_STRENGTH, jitter_p=JITTER_P, gray_p=GRAY_P):
    """Per image, SwAV's jitter (with prob. jitter_p) then grayscale (prob. gray_p) as one affine
    colour map (see `fused_color_augment`); factors drawn as `color_jitter` draws them.

    Returns:
        (M [n, 3, 3], k [n]) of `_jitter_map`.
    """
    a = 0.8 * strength
    u = _uniform(tf.stack([n, 6]), _as_seed(seed))
    jitter = u[:, 0] < jitter_p
    b, c, sat = [tf.where(jitter, tf.maximum(1.0 - a + 2.0 * a * u[:, i], 0.0), 1.0) for i in (2, 3, 4)]
    turn = tf.where(jitter, 0.2 * strength * (2.0 * u[:, 5] - 1.0), 0.0)
    return _jitter_map(b, c, sat, turn, u[:, 1] < gray_p)


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


def _unit_blur(x, taps):
    """One image [H, W, 3] in [0, 1] blurred with taps [1, k], still <= 1 (taps sum to 1 up to rounding).

    Small images (both sides <= MATRIX_BLUR_MAX_SIDE, e.g. SwAV's 96-px crops) go through
    `_matrix_blur`, larger ones through the depthwise `_separable_blur`: same result up to float
    rounding, whichever was cheaper at that size with TensorFlow's default thread pool (0.51 vs
    0.62 CPU-ms per 96-px crop). At one thread per op (`kitlib.runtime.configure_host_threads`) the
    depthwise path measured cheaper alone (0.17 vs 0.28 ms), but no end-to-end difference showed
    above this 2-core box's noise, so the split stays.
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


def _blur_where(x, coins, sigma, seed):
    """`gaussian_blur` of the images of a batch whose coin is True; the others are not touched
    (a gather and a scatter: the blur costs only the images it applies to)."""
    picked = tf.where(coins)[:, 0]

    def blur():
        blurred = tf.minimum(gaussian_blur(tf.gather(x, picked), sigma, seed), 1.0)  # float rounding
        return tf.tensor_scatter_nd_update(x, picked[:, None], blurred)

    return tf.cond(tf.size(picked) > 0, blur, lambda: x)


def fused_color_augment(x, seed=None, strength=JITTER_STRENGTH, jitter_p=JITTER_P, gray_p=GRAY_P,
                        blur_p=BLUR_P, sigma=BLUR_SIGMA, value_scale=1.0):
    """`color_augment` at the cost of one colour pass: jitter and grayscale fused into one affine
    colour map per image, clipped once; then the blur, only on the images whose coin says so.

    Without clipping between them the jitter ops commute: brightness and contrast are scalar maps,
    saturation scales and hue rotates the chroma plane; those two keep luma and the gray axis 1,
    contrast keeps the mean luma and brightness scales it. So per image, whatever the order drawn,
    y = clip(G^g b c K(s, d) x + (1 - c) b mean_luma(x) 1), with G the grayscale projection and g
    its coin. The deviation from SwAV's torchvision/PIL chain: values are clipped once at the end,
    not after each op (PIL clips each op's uint8 output), so e.g. a strong brightening followed by
    a contrast drop keeps highlight detail that PIL flattens, and the random order has no effect.
    Factors, probabilities and blur as `color_augment`; used by `multicrop(augment=True)`.

    Args:
        x: [S, S, 3] or [N, S, S, 3] float32 with values in [0, 1 / value_scale].
        value_scale: factor that brings x to [0, 1] (1/255 for resized uint8; folded into the map).
        strength, jitter_p, gray_p, blur_p, sigma: as `color_augment` (SwAV defaults).
    Returns:
        Same shape, float32 in [0, 1].
    """
    x, restore = _as_batch(x)
    n, seeds = tf.shape(x)[0], _split(seed, 3)
    maps, weight = _fused_jitter_maps(n, seeds[0], strength, jitter_p, gray_p)
    y = _apply_fused_map(x, maps, weight, value_scale)
    return restore(_blur_where(y, _uniform(tf.reshape(n, [1]), seeds[1]) < blur_p, sigma, seeds[2]))


# ============ geometry: windows by area and aspect ratio of the original image ============

def _max_area(height, width, ratio):
    """Largest w * h with w / h within ``ratio`` that fits in height x width."""
    aspect = width / height
    return tf.where(aspect > ratio[1], height * height * ratio[1],
                    tf.where(aspect < ratio[0], width * width / ratio[0], height * width))


def sample_crop_boxes(image_size, num, scale, ratio=CROP_RATIO, seed=None):
    """Random crop windows: area fraction ~ U(scale), then log aspect (w/h) uniform within ``ratio``.

    The aspect is drawn from the part of ``ratio`` at which the drawn area fits, so each window lies
    in the image with exactly its drawn area (an area that fits no allowed aspect is reduced to the
    largest that does). The image is never resized or squashed first.

    Args:
        image_size: (height, width) of the original image.
        num: number of windows (python int).
        scale: (lo, hi) fraction of the image area, 0 < lo <= hi <= 1.
        ratio: (lo, hi) aspect ratio width / height.
    Returns:
        [num, 4] float32 (y0, x0, h, w) in pixels: the window [y0, y0 + h) x [x0, x0 + w).
    """
    height = tf.cast(image_size[0], tf.float32)
    width = tf.cast(image_size[1], tf.float32)
    u = _uniform([num, 4], _as_seed(seed))
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * height * width
    area = tf.minimum(area, _max_area(height, width, ratio))
    # w = sqrt(area r) <= width and h = sqrt(area / r) <= height bound the aspect r
    log_lo = tf.maximum(math.log(ratio[0]), tf.math.log(area / height**2))
    log_hi = tf.maximum(tf.minimum(math.log(ratio[1]), tf.math.log(width**2 / area)), log_lo)
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = tf.minimum(tf.sqrt(area * aspect), width)
    h = tf.minimum(tf.sqrt(area / aspect), height)
    return tf.stack([(height - h) * u[:, 2], (width - w) * u[:, 3], h, w], axis=1)


def _resized_window(image, box, size, flip=None):
    """Window ``box`` (y0, x0, h, w; pixels, rounded to whole pixels) resized to [size, size, 3]
    float32 in the image's own range (0..255 for uint8; bilinear, half-pixel centres), mirrored
    left-right where the bool ``flip`` is True."""
    shape = tf.shape(image)[:2]
    start = tf.minimum(tf.cast(tf.floor(box[:2]), tf.int32), shape - 1)
    extent = tf.clip_by_value(tf.cast(tf.round(box[2:]), tf.int32), 1, shape - start)
    window = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [-1]], 0))
    if flip is not None:  # on the window: uint8 and, from a reduced-scale decode, smaller than the crop
        window = tf.cond(flip, lambda: tf.reverse(window, [1]), lambda: window)
    # float first: a CPU resizes float32 about twice as fast as uint8
    return tf.ensure_shape(tf.image.resize(tf.cast(window, tf.float32), [size, size]), [size, size, 3])


def _unit(image):
    """Factor that maps the image's values to [0, 1]: 1/255 for uint8, else 1."""
    return 1.0 / 255.0 if image.dtype == tf.uint8 else 1.0


def _crop(image, box, size):
    """Window ``box`` (y0, x0, h, w; pixels, rounded to whole pixels) resized to [size, size, 3]
    float32 in [0, 1] (bilinear, half-pixel centres)."""
    crop = _resized_window(image, box, size)
    return crop * _unit(image) if image.dtype == tf.uint8 else crop


def random_resized_crop(image, size, scale=(0.14, 1.0), ratio=CROP_RATIO, seed=None):
    """One random resized crop: a window by area and aspect of the original image, resized to size².

    Args:
        image: [H, W, 3] uint8 (0..255) or float (0..1).
        size: output side in pixels.
        scale: (lo, hi) area fraction (SwAV's big crops (0.14, 1)).
    Returns:
        [size, size, 3] float32 in [0, 1].
    """
    return _crop(image, sample_crop_boxes(tf.shape(image)[:2], 1, scale, ratio, seed)[0], size)


# ============ multi-crop configuration ============

_SPEC_PART = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*@\s*(\d*\.?\d+)\s*-\s*(\d*\.?\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class MultiCropConfig:
    """Crops per example, by resolution group (swav ``--size_crops --nmb_crops --min/max_scale_crops``).

    Args:
        size_crops: output side per group, big first, e.g. (224, 96).
        num_crops: crops per group, e.g. (2, 6).
        min_scale, max_scale: area fraction range per group, 0 < min <= max <= 1.
    """

    size_crops: tuple
    num_crops: tuple
    min_scale: tuple
    max_scale: tuple

    def __post_init__(self):
        fields = {f.name: tuple(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if len({len(v) for v in fields.values()}) != 1 or not self.size_crops:
            raise ValueError(f"MultiCropConfig needs one entry per resolution group in each field, got {fields}")
        if any(int(n) != n or n < 1 for n in self.num_crops + self.size_crops):
            raise ValueError(f"num_crops and size_crops must be positive integers, got {self.num_crops}, "
                             f"{self.size_crops}")
        for lo, hi in zip(self.min_scale, self.max_scale):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop scales are area fractions with 0 < min <= max <= 1, got ({lo}, {hi})")
        if list(self.size_crops) != sorted(self.size_crops, reverse=True):
            raise ValueError(f"size_crops must go from big to small (SwAV assigns codes on the first crops), "
                             f"got {self.size_crops}; reorder the groups")

    @classmethod
    def from_spec(cls, spec):
        """Parse ``"2x224@0.14-1,6x96@0.05-0.14"``: COUNTxSIZE@MIN-MAX groups, comma separated."""
        parts = str(spec).split(",")
        groups = []
        for i, part in enumerate(parts):
            match = _SPEC_PART.match(part)
            if match is None:
                raise ValueError(f"malformed multi-crop spec {spec!r}: group {i + 1} ({part.strip()!r}) is not "
                                 "COUNTxSIZE@MIN-MAX; write e.g. '2x224@0.14-1,6x96@0.05-0.14'")
            count, size, lo, hi = match.groups()
            groups.append((int(size), int(count), float(lo), float(hi)))
        return cls(*zip(*groups))

    @property
    def spec(self):
        """The spec string (inverse of `from_spec`)."""
        return ",".join(f"{n}x{s}@{lo:g}-{hi:g}" for s, n, lo, hi in
                        zip(self.size_crops, self.num_crops, self.min_scale, self.max_scale))

    @property
    def total_crops(self):
        return sum(self.num_crops)

    @property
    def crop_sizes(self):
        """Side of every crop in output order, e.g. (224, 224, 96, 96, 96)."""
        return tuple(s for s, n in zip(self.size_crops, self.num_crops) for _ in range(n))


SWAV_PAPER = MultiCropConfig((224, 96), (2, 6), (0.14, 0.05), (1.0, 0.14))     # SwAV's best ImageNet run
SEED_NOTEBOOK = MultiCropConfig((224, 96), (2, 3), (0.14, 0.05), (1.0, 0.14))  # the seed's 2x224 + 3x96


def parse_multicrop_spec(spec):
    """`MultiCropConfig` from a spec string such as ``"2x224@0.14-1,6x96@0.05-0.14"`` (CLI flag)."""
    return MultiCropConfig.from_spec(spec)


# ============ one example -> its crops ============

def _jpeg_scale_index(boxes, sizes, shape, max_upscale=1.0):
    """Index into _JPEG_SCALES of the coarsest scale at which no crop is upsampled more than
    ``max_upscale`` times from its window (1.0: every window keeps at least its crop's side)."""
    fit = tf.reduce_min(max_upscale * tf.minimum(boxes[:, 2], boxes[:, 3]) / sizes)
    small = tf.reduce_min(tf.cast(shape, tf.float32))  # keep at least one pixel per side
    index = tf.constant(0)
    for i, scale in enumerate(_JPEG_SCALES[1:], start=1):
        index = tf.where((fit >= scale) & (small >= scale), i, index)
    return index


def _window_sampler(config, seeds, ratio=CROP_RATIO):
    """Function (height, width) -> [config.total_crops, 4] windows (y0, x0, h, w) of every group,
    big crops first; group g draws with seeds[g]."""
    def boxes_for(shape):
        return tf.concat([sample_crop_boxes(shape, n, (lo, hi), ratio, seeds[g]) for g, (n, lo, hi)
                          in enumerate(zip(config.num_crops, config.min_scale, config.max_scale))], 0)

    return boxes_for


def _decode_window(contents, boxes_for, sizes, dct_method, max_upscale=1.0):
    """Decode once: a JPEG only over the union of the crop windows and at the coarsest libjpeg
    scale that upsamples no crop more than ``max_upscale`` times; PNG/GIF/BMP in full.

    Args:
        contents: scalar tf.string, encoded image.
        boxes_for: function (height, width) -> windows [V, 4] in pixels of the full image.
        sizes: [V] float32 crop sides.
        max_upscale: see `multicrop_example`.
    Returns:
        (image uint8 [h, w, 3], windows in the decoded image's pixels).
    """
    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)[:2]
        boxes = boxes_for(shape)
        index = _jpeg_scale_index(boxes, sizes, shape, max_upscale)
        scale = tf.gather(tf.constant(_JPEG_SCALES, tf.float32), index)
        scaled_shape = tf.cast(tf.math.ceil(tf.cast(shape, tf.float32) / scale), tf.int32)
        top_left = tf.cast(tf.floor(tf.reduce_min(boxes[:, :2], 0) / scale), tf.int32)
        bottom_right = tf.cast(tf.math.ceil(tf.reduce_max(boxes[:, :2] + boxes[:, 2:], 0) / scale), tf.int32)
        top_left = tf.clip_by_value(top_left, 0, scaled_shape - 1)
        extent = tf.clip_by_value(bottom_right, top_left + 1, scaled_shape) - top_left
        window = tf.concat([top_left, extent], 0)
        image = tf.switch_case(index, [lambda r=r: tf.image.decode_and_crop_jpeg(
            contents, window, channels=3, ratio=r, dct_method=dct_method) for r in _JPEG_SCALES])
        return image, boxes / scale - tf.cast(tf.concat([top_left, [0, 0]], 0), tf.float32)

    def other():
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return image, boxes_for(tf.shape(image)[:2])

    return tf.cond(tf.io.is_jpeg(contents), jpeg, other)


def multicrop_example(image, config, augment=True, seed=None, ratio=CROP_RATIO, dct_method="INTEGER_FAST",
                      max_upscale=MAX_UPSCALE):
    """All crops of one source image.

    Args:
        image: uint8 [H, W, 3], float [H, W, 3] in [0, 1], or encoded bytes (scalar tf.string; JPEG
            is decoded once, only the needed window and scale; PNG/GIF/BMP decoded in full).
        config: `MultiCropConfig`.
        augment: False: crops only; "device": crops + flips (colour on the accelerator with
            `ColorAugment`); True or "host": the full SwAV augmentation here (flip, then
            `fused_color_augment`: one clipped colour map and the blur per crop).
        seed: [2] int seed (None: random).
        dct_method: libjpeg IDCT ("INTEGER_FAST": ~20 % faster, +-1 grey level; "" for the default).
        max_upscale: JPEG bytes only: decode at the coarsest libjpeg scale (1/2, 1/4, 1/8) at which
            no crop is upsampled more than this from its window's decoded pixels. 2.0 (default):
            an 800x600 Cassava JPEG decodes at 1/2 (400x300, ImageNet's typical size) with SwAV's
            crops, as SwAV's RandomResizedCrop upsamples a 0.14-area ImageNet window ~1.6x to 224;
            1.0: every window keeps at least its crop's resolution (full quality, slower).
    Returns:
        A tuple of config.total_crops float32 [S, S, 3] in [0, 1], big crops first.
    """
    mode = _check_mode(augment)
    groups = len(config.size_crops)
    seeds = _split(seed, groups + 2)  # one per group's windows, the flips, the colours
    sizes = tf.constant(config.crop_sizes, tf.float32)

    boxes_for = _window_sampler(config, seeds, ratio)

    def crops_from(pixels, boxes):
        total, unit = config.total_crops, _unit(pixels)
        flips = _uniform([total], seeds[groups]) < FLIP_P if mode else [None] * total
        if mode == "host":  # all crops' colour maps and blur taps at once (few ops), then a pass per crop
            colour = _split(seeds[groups + 1], 3)
            maps, weights = _fused_jitter_maps(total, colour[0])
            blurs = _uniform([total], colour[1]) < BLUR_P
            sigmas = _uniform([total], colour[2], *BLUR_SIGMA)
            taps = {size: _gaussian_taps(sigmas, blur_kernel_size(size)) for size in config.size_crops}
        crops = []
        for i, size in enumerate(config.crop_sizes):
            crop = _resized_window(pixels, boxes[i], size, flips[i])
            if mode == "host":
                crop = _apply_fused_map(crop, maps[i], weights[i], unit)
                if blur_kernel_size(size) >= 3:
                    crop = tf.cond(blurs[i], lambda c=crop, t=taps[size][i:i + 1]: _unit_blur(c, t),
                                   lambda c=crop: c)
            elif pixels.dtype == tf.uint8:
                crop = crop * unit
            crops.append(crop)
        return tuple(crops)

    if image.dtype == tf.string:
        return crops_from(*_decode_window(image, boxes_for, sizes, dct_method, max_upscale))
    return crops_from(image, boxes_for(tf.shape(image)[:2]))


def _check_mode(augment):
    modes = {False: None, None: None, True: "host", "host": "host", "device": "device"}
    if augment not in modes:
        raise ValueError(f"augment must be True/'host', 'device' or False, got {augment!r}")
    return modes[augment]


# ============ datasets ============

def _images_of(dataset):
    """The image component of kitlib.data dicts (or the elements themselves when they are images)."""
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "image" not in spec:
            raise ValueError(f"dataset dicts have no 'image' key (keys: {sorted(spec)}); pass "
                             "kitlib.data.load_dataset(...) output or a dataset of images")
        return dataset.map(lambda el: el["image"])
    if (not isinstance(spec, tf.TensorSpec) or spec.shape.rank not in (0, 3)
            or (spec.shape.rank == 3 and spec.shape[-1] not in (None, 3))):
        raise ValueError(f"multicrop needs RGB images [H, W, 3], encoded bytes or kitlib.data dicts, "
                         f"got elements {spec}; convert grayscale with tf.image.grayscale_to_rgb")
    return dataset


def multicrop(dataset, config=SWAV_PAPER, augment=True, seed=None, ratio=CROP_RATIO, dct_method="INTEGER_FAST",
              max_upscale=MAX_UPSCALE):
    """Dataset of tuples of crops, every crop of an element cut from that element's one image.

    Args:
        dataset: ``kitlib.data.load_dataset`` dicts (decoded, or ``decode=False`` bytes: preferred,
            decoded once here), or a dataset of images / encoded bytes.
        config: `MultiCropConfig` (default SWAV_PAPER: 2 x 224 + 6 x 96).
        augment: True/"host", "device" or False (see `multicrop_example`).
        seed: int for reproducible crops (same seed, same input order -> same crops; each new
            iteration draws new crops); None: random.
        ratio, dct_method, max_upscale: as `multicrop_example` (max_upscale=1.0: full-quality decode).
    Returns:
        tf.data.Dataset of tuples of config.total_crops float32 [S, S, 3] in [0, 1], big first.
    """
    _check_mode(augment)
    images = _images_of(dataset)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)  # one key per element

    @tf.autograph.experimental.do_not_convert  # plain graph code: skipping AutoGraph halves tracing
    def crops(image, key):
        return multicrop_example(image, config, augment, tf.stack([key, tf.constant(_KEY_SALT, tf.int64)]),
                                 ratio, dct_method, max_upscale)

    dataset = tf.data.Dataset.zip((images, keys)).map(crops, num_parallel_calls=AUTOTUNE,
                                                      deterministic=seed is not None)
    return dataset.with_options(pipeline_options())


def pipeline_options(cores=None):
    """tf.data options for the multi-crop pipeline: a private pool of max(4, cores) threads.

    By default tf.data shares a pool of one thread per core with the rest of the process; on a
    2-core machine the multi-crop map then keeps ~1.7 of the 2 cores busy, with a pool of 4-6
    threads ~1.85 (bench/pipeline.py: about +10 % images/s). With many cores the pool has one
    thread per core, like the default one.

    Args:
        cores: CPU count to size the pool for (default: `kitlib.runtime.usable_cores`, the CPUs
            this process may run on).
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = max(4, cores or usable_cores())
    return options


def batch_crops(dataset, batch_size):
    """Batch a multicrop dataset with static shapes: tuples of [batch_size, S, S, 3] (drop_remainder)."""
    return dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)


def multicrop_batches(dataset, config=SWAV_PAPER, batch_size=64, augment=True, shuffle_buffer=1024,
                      seed=None, ratio=CROP_RATIO, max_upscale=MAX_UPSCALE):
    """Training input for SwAV: shuffle encoded records, crop (and augment), batch, prefetch.

    Args:
        dataset: ``kitlib.data.load_dataset(files, decode=False)`` (bytes are cheap to shuffle; a
            shuffle buffer of decoded 800x600 images holds 1.4 MB each) or any `multicrop` input.
        config: `MultiCropConfig`.
        batch_size: images per batch (the global batch under data parallelism).
        augment: True/"host": full SwAV augmentation on the host; "device": geometry and flips on the
            host, then call `ColorAugment` on each batch inside the train step; False: crops only.
        shuffle_buffer: records in the shuffle buffer (0: no shuffle).
        seed: int for a reproducible order and crops.
        ratio, max_upscale: as `multicrop_example`.
    Returns:
        tf.data.Dataset of tuples of config.total_crops float32 [batch_size, S, S, 3] in [0, 1].
    """
    images = _images_of(dataset)
    if shuffle_buffer:
        images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    crops = multicrop(images, config, augment, seed, ratio, max_upscale=max_upscale)
    return batch_crops(crops, batch_size).prefetch(AUTOTUNE)


# ============ for pictures (notebook 03) ============

def multicrop_preview(dataset, config=SWAV_PAPER, n=4, augment=False, seed=0):
    """The first n source images and their crops, as numpy, for `kitlib.viz.show_crops`.

    Args:
        dataset, config, augment, seed: as `multicrop` (use an ordered dataset to see the same images).
        n: number of source images.
    Returns:
        (sources: list of n uint8 [H, W, 3], crops: tuple of config.total_crops float32 [n, S, S, 3]).
    """
    images = _images_of(dataset).take(n)
    sources = [_as_uint8(x).numpy() for x in images]
    crops = next(iter(batch_crops(multicrop(images, config, augment, seed), len(sources))))
    return sources, tuple(c.numpy() for c in crops)


def _as_uint8(image):
    if image.dtype == tf.string:
        return tf.io.decode_image(image, channels=3, expand_animations=False)
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.round(255.0 * tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 1.0)), tf.uint8)


def augmentation_gallery(crop, draws=4, seed=0, strength=JITTER_STRENGTH):
    """Each SwAV augmentation alone (always applied), on ``draws`` copies of one crop.

    Returns:
        dict name -> float32 [draws, S, S, 3]; the last entry is the full SwAV chain (with its
        probabilities), which is what training sees.
    """
    x = tf.repeat(tf.convert_to_tensor(crop, tf.float32)[None], draws, axis=0)
    seeds = _split(seed, 4)
    return {"crop": x, "flip": tf.reverse(x, [2]),
            f"colour jitter (s={strength:g})": color_jitter(x, strength, seeds[0]),
            "grayscale": color_drop(x), "Gaussian blur": gaussian_blur(x, seed=seeds[1]),
            "SwAV chain": color_augment(random_flip(x, seeds[2]), seeds[3], strength)}


def window_stats(config, image_size, draws=2000, ratio=CROP_RATIO, seed=0):
    """Area fractions and aspect ratios (w/h) of windows drawn as `multicrop` draws them, per group.

    Returns:
        dict "S px crops" -> {"area": [draws], "aspect": [draws], "scale": (min, max)} (numpy).
    """
    stats = {}
    for g, (size, lo, hi) in enumerate(zip(config.size_crops, config.min_scale, config.max_scale)):
        _, _, h, w = tf.unstack(sample_crop_boxes(image_size, draws, (lo, hi), ratio, [seed, g]), axis=1)
        area = (h * w / float(image_size[0] * image_size[1])).numpy()
        stats[f"{size} px crops"] = {"area": area, "aspect": (w / h).numpy(), "scale": (lo, hi)}
    return stats


# ============ colour augmentation on the accelerator ============

@dataclasses.dataclass(frozen=True)
class ColorConfig:
    """SwAV's per-crop colour distortion and blur: the parameters `ColorAugment` uses.

    Args:
        strength: colour-jitter strength s: brightness, contrast and saturation factors ~
            U[1 - 0.8 s, 1 + 0.8 s], hue shift ~ U[-0.2 s, 0.2 s] turns (SwAV 1.0).
        jitter_p: probability of the jitter per image (SwAV 0.8).
        gray_p: probability of grayscale per image (SwAV 0.2).
        blur_p: probability of the Gaussian blur per image (SwAV 0.5).
        sigma: (lo, hi) blur sigma range in pixels of the crop, sigma ~ U[lo, hi] per image.

    The field names are `color_augment`'s and `fused_color_augment`'s keyword arguments, so the host
    path reads the same config: ``color_augment(x, seed, **config.as_kwargs())``.
    """

    strength: float = JITTER_STRENGTH
    jitter_p: float = JITTER_P
    gray_p: float = GRAY_P
    blur_p: float = BLUR_P
    sigma: tuple = BLUR_SIGMA

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
        """The fields as a dict: keyword arguments of `color_augment` and `fused_color_augment`."""
        return dataclasses.asdict(self)


SWAV_COLOR = ColorConfig()  # SwAV's settings: strength 1, jitter 0.8, grayscale 0.2, blur 0.5, sigma 0.1-2

# columns of the one uniform draw [B, _DRAWS] per batch of crops in ColorAugment
_COIN_JITTER, _COIN_GRAY, _COIN_BLUR, _BRIGHT, _CONTRAST, _SATURATION, _HUE, _ORDER, _SIGMA = 0, 1, 2, 3, 4, 5, 6, 7, 11
_DRAWS = 12


class ColorAugment(keras.layers.Layer):
    """SwAV colour jitter, grayscale and blur of batches of crops, inside the (jitted) train step.

    Use with ``multicrop_batches(..., augment="device")`` so the host only decodes, crops and flips:
    ``crops = ColorAugment()(crops, training=True)`` at the start of the model's forward pass. The
    maths is `color_augment`'s, written with ``keras.ops`` only (backend-agnostic; runs under
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
    """`color_jitter` of a batch in keras.ops: the four ops in a random order per image, clipped after each.

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
