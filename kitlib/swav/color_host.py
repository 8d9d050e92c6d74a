"""SwAV's colour augmentation on the host: one example's crops in TensorFlow, inside the
``kitlib.swav.multicrop.multicrop`` map (`augment_crops`), and the gallery of each augmentation alone.

Jitter and grayscale are fused into one affine colour map per crop (`jitter_map`, `apply_color_map`),
clipped once, then the Gaussian blur with borders reflected (`gaussian_blur`); the parameters are a
``kitlib.swav.color.ColorConfig``, and ``kitlib.swav.color.ColorAugment`` is the same augmentation on the accelerator.

Randomness is stateless: every function takes ``seed`` (an int, or a [2] int tensor; None draws one).
"""

import dataclasses
import math

import numpy as np

from kitlib.compat import tf
from kitlib.swav.color import (GRAY_PROJECTION, HUE_SIN, LUMA, SWAV_COLOR,
                               blur_kernel_size)

MATRIX_BLUR_MAX_SIDE = 128     # host blur by matrix products up to this side, depthwise conv above
_INT32_MAX = 2**31 - 1


# ============ stateless seeds (shared with kitlib.swav.multicrop) ============

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


# ============ jitter and grayscale: one affine colour map per crop ============


def _jitter_maps(n, seed, config):
    """Per crop, the jitter (with prob. jitter_p) then grayscale (prob. gray_p) as one affine colour map.

    Returns:
        (M [n, 3, 3], k [n]) of `jitter_map`.
    """
    a = 0.8 * config.strength
    u = _uniform(tf.stack([n, 6]), as_seed(seed))
    jitter = u[:, 0] < config.jitter_p
    b, c, sat = [tf.where(jitter, tf.maximum(1.0 - a + 2.0 * a * u[:, i], 0.0), 1.0) for i in (2, 3, 4)]
    turn = tf.where(jitter, 0.2 * config.strength * (2.0 * u[:, 5] - 1.0), 0.0)
    return jitter_map(b, c, sat, turn, u[:, 1] < config.gray_p)


def jitter_map(brightness, contrast, saturation, hue, gray):
    """Brightness, contrast, saturation, hue (in turns) and grayscale as y = M x + k mean_luma(x) 1.

    Args:
        brightness, contrast, saturation, hue: [n] float factors; gray: [n] bool.
    Returns:
        (M [n, 3, 3]: G^gray b c (G + s cos(2 pi d) (I - G) + s sin(2 pi d) H), k [n]: (1 - c) b).
    """
    eye, gray_map, hue_sin = [tf.constant(m, tf.float32) for m in (np.eye(3), GRAY_PROJECTION, HUE_SIN)]
    expand = lambda v: v[:, None, None]  # noqa: E731  [n] -> [n, 1, 1]
    angle = 2.0 * math.pi * hue
    maps = expand(brightness * contrast) * (gray_map + expand(saturation * tf.cos(angle)) * (eye - gray_map)
                                            + expand(saturation * tf.sin(angle)) * hue_sin)
    maps = tf.where(expand(gray), tf.einsum("ij,njk->nik", gray_map, maps), maps)
    return maps, (1.0 - contrast) * brightness


def apply_color_map(x, maps, weight, value_scale):
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
    shift = weight * value_scale * tf.reduce_sum(mean * tf.constant(LUMA, tf.float32), -1)
    pixels = tf.reshape(x, tf.concat([lead, [height * width, 3]], 0))
    y = tf.matmul(pixels, maps * value_scale, transpose_b=True) + shift[..., None, None]
    return tf.reshape(tf.clip_by_value(y, 0.0, 1.0), tf.shape(x))


# ============ the blur ============


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


# ============ the whole host augmentation ============


def augment_crops(crops, config=SWAV_COLOR, seed=None, value_scale=1.0):
    """SwAV's colour augmentation of one example's crops on the host: what ``multicrop(augment="host")`` runs.

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
        crop = apply_color_map(crop, maps[i], weights[i], value_scale)
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
