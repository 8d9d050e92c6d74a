"""Multi-crop geometry: random resized crop windows and the multi-crop specification ``COUNTxSIZE@MIN-MAX,...``.

A crop window is drawn by its area (a fraction of the original image's, the ``scale`` range) and its
aspect ratio (log-uniform in ``CROP_RATIO``), as torchvision's RandomResizedCrop; every draw is a stateless
op of its seed, so a seeded pipeline is reproducible.
"""

import dataclasses
import math
import re

from kitlib.compat import tf
from kitlib.swav.color_host import as_seed

CROP_RATIO = (3 / 4, 4 / 3)    # aspect-ratio range of random resized crops (torchvision default)
def _uniform(shape, seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


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
    u = _uniform([num, 4], as_seed(seed))
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


_SPEC_PART = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*@\s*(\d*\.?\d+)\s*-\s*(\d*\.?\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class MultiCropConfig:
    """Crops per example, by resolution group (swav ``--size_crops --nmb_crops --min/max_scale_crops``).

    Args:
        size_crops: output side per group, big first, e.g. (224, 96).
        num_crops: crops per group, e.g. (2, 6).
        min_scale, max_scale: area fraction range per group, 0 < min <= max <= 1.
        flip_p: probability of a left-right flip per crop (SwAV 0.5; not part of `spec`).
    """

    size_crops: tuple
    num_crops: tuple
    min_scale: tuple
    max_scale: tuple
    flip_p: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"MultiCropConfig.flip_p is a probability in [0, 1], got {self.flip_p}")
        fields = {name: tuple(getattr(self, name)) for name in ("size_crops", "num_crops", "min_scale", "max_scale")}
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
        """The spec string of the crop groups (inverse of `from_spec` for the default flip_p)."""
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
# 2 x 224 + 3 x 96: the zipped baseline's crops in bench/pipeline.py
FIVE_CROPS = MultiCropConfig((224, 96), (2, 3), (0.14, 0.05), (1.0, 0.14))


def parse_multicrop_spec(spec):
    """`MultiCropConfig` from a spec string such as ``"2x224@0.14-1,6x96@0.05-0.14"`` (CLI flag)."""
    return MultiCropConfig.from_spec(spec)
