"""The SwAV multi-crop pipeline on ``tf.data``: every crop of an example from ONE source image, batched.

Follows SwAV (Caron et al. 2020, arXiv 2006.09882; facebookresearch/swav ``src/multicropdataset.py``):
per crop a random resized crop by *area* and aspect ratio of the original image (the windows and the
``MultiCropConfig`` spec are `kitlib.swav.geometry`'s) and a horizontal flip; the crop's colours are
`kitlib.swav.color`'s concern (`kitlib.swav.color_host.augment_crops` on the host, or the
`kitlib.swav.color.ColorAugment` layer in the train step with ``augment="device"``). Randomness is
stateless: the pipeline derives a seed per example from ``tf.data.Dataset.random``, so the same seed gives
the same crops however many threads run the map.

Each JPEG is decoded once, only the window that holds all its crops and at the coarsest libjpeg
scale (1/2, 1/4, 1/8) that upsamples no crop more than ``max_upscale`` (default 2: an 800x600
Cassava image decodes at 400x300, ImageNet's size); records are shuffled encoded; the map runs on a
private thread pool (`pipeline_options`). Figures: bench/README.md.
"""

from kitlib import hosts
from kitlib.compat import tf
from kitlib.data import tfrecords
from kitlib.data.tfrecords import AUTOTUNE
from kitlib import runtime
from kitlib.swav.color import SWAV_COLOR
from kitlib.swav.color_host import augment_crops, split_seed
from kitlib.swav.geometry import (CROP_RATIO, SWAV_PAPER, MultiCropConfig, _resized_window,
                                  _uniform, _unit, parse_multicrop_spec, sample_crop_boxes)

# where SwAV's colour distortion runs: host (tf.data), device (the compiled step), none (crops only)
AUGMENT_MODES = ("host", "device", "none")

MAX_UPSCALE = 2.0              # JPEG decode scale: no crop upsampled more than 2x from decoded pixels
JPEG_SCALES = (1, 2, 4, 8)    # the reduced sizes libjpeg decodes natively (ratio=...)
_KEY_SALT = 0x5EED             # second word of each example's [key, salt] seed in `multicrop`


# ============ one example -> its crops ============

def jpeg_scale_index(boxes, sizes, shape, max_upscale=1.0):
    """Index (int32 scalar) into `JPEG_SCALES` of the coarsest scale at which no crop is upsampled more than
    ``max_upscale`` times from its window (1.0: every window keeps at least its crop's side).

    Args:
        boxes: [V, 4] windows (y0, x0, h, w) in pixels of the full image. sizes: [V] float32 crop sides.
        shape: (height, width) of the full image (a decoded side keeps at least one pixel).
    """
    fit = tf.reduce_min(max_upscale * tf.minimum(boxes[:, 2], boxes[:, 3]) / sizes)
    small = tf.reduce_min(tf.cast(shape, tf.float32))  # keep at least one pixel per side
    index = tf.constant(0)
    for i, scale in enumerate(JPEG_SCALES[1:], start=1):
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
        index = jpeg_scale_index(boxes, sizes, shape, max_upscale)
        scale = tf.gather(tf.constant(JPEG_SCALES, tf.float32), index)
        scaled_shape = tf.cast(tf.math.ceil(tf.cast(shape, tf.float32) / scale), tf.int32)
        top_left = tf.cast(tf.floor(tf.reduce_min(boxes[:, :2], 0) / scale), tf.int32)
        bottom_right = tf.cast(tf.math.ceil(tf.reduce_max(boxes[:, :2] + boxes[:, 2:], 0) / scale), tf.int32)
        top_left = tf.clip_by_value(top_left, 0, scaled_shape - 1)
        extent = tf.clip_by_value(bottom_right, top_left + 1, scaled_shape) - top_left
        window = tf.concat([top_left, extent], 0)
        image = tf.switch_case(index, [lambda r=r: tf.image.decode_and_crop_jpeg(
            contents, window, channels=3, ratio=r, dct_method=dct_method) for r in JPEG_SCALES])
        return image, boxes / scale - tf.cast(tf.concat([top_left, [0, 0]], 0), tf.float32)

    def other():
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return image, boxes_for(tf.shape(image)[:2])

    return tf.cond(tf.io.is_jpeg(contents), jpeg, other)


def multicrop_example(image, config, augment="host", seed=None, ratio=CROP_RATIO, dct_method="INTEGER_FAST",
                      max_upscale=MAX_UPSCALE, color=SWAV_COLOR):
    """All crops of one source image.

    Args:
        image: uint8 [H, W, 3], float [H, W, 3] in [0, 1], or encoded bytes (scalar tf.string; JPEG
            is decoded once, only the needed window and scale; PNG/GIF/BMP decoded in full).
        config: `kitlib.swav.geometry.MultiCropConfig`.
        augment: one of `AUGMENT_MODES`: "none": crops only; "device": crops + flips (colour on the
            accelerator with `kitlib.swav.color.ColorAugment`); "host": the full SwAV augmentation here (flip,
            then `kitlib.swav.color_host.augment_crops`: one clipped colour map and the blur per crop).
        seed: [2] int seed (None: random).
        dct_method: libjpeg IDCT ("INTEGER_FAST": ~20 % faster, +-1 grey level; "" for the default).
        max_upscale: JPEG bytes only: decode at the coarsest libjpeg scale (1/2, 1/4, 1/8) at which
            no crop is upsampled more than this from its window's decoded pixels. 2.0 (default):
            an 800x600 Cassava JPEG decodes at 1/2 (400x300, ImageNet's typical size) with SwAV's
            crops, as SwAV's RandomResizedCrop upsamples a 0.14-area ImageNet window ~1.6x to 224;
            1.0: every window keeps at least its crop's resolution (full quality, slower).
        color: `kitlib.swav.color.ColorConfig` of the host colour augmentation (``augment="host"`` only).
    Returns:
        A tuple of config.total_crops float32 [S, S, 3] in [0, 1], big crops first.
    """
    mode = _check_mode(augment)
    groups = len(config.size_crops)
    seeds = split_seed(seed, groups + 2)  # one per group's windows, the flips, the colours
    sizes = tf.constant(config.crop_sizes, tf.float32)

    boxes_for = _window_sampler(config, seeds, ratio)

    def crops_from(pixels, boxes):
        total, unit = config.total_crops, _unit(pixels)
        flips = _uniform([total], seeds[groups]) < config.flip_p if mode != "none" else [None] * total
        crops = [_resized_window(pixels, boxes[i], size, flips[i]) for i, size in enumerate(config.crop_sizes)]
        if mode == "host":
            return augment_crops(crops, color, seeds[groups + 1], unit)
        return tuple(crop * unit for crop in crops) if pixels.dtype == tf.uint8 else tuple(crops)

    if image.dtype == tf.string:
        return crops_from(*_decode_window(image, boxes_for, sizes, dct_method, max_upscale))
    return crops_from(image, boxes_for(tf.shape(image)[:2]))


def _check_mode(augment):
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {augment!r}")
    return augment


# ============ datasets ============

def _images_of(dataset):
    """The image component of kitlib.data.tfrecords dicts (or the elements themselves when they are images)."""
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "image" not in spec:
            raise ValueError(f"dataset dicts have no 'image' key (keys: {sorted(spec)}); pass "
                             "kitlib.data.tfrecords.load_dataset(...) output or a dataset of images")
        return dataset.map(lambda el: el["image"])
    if (not isinstance(spec, tf.TensorSpec) or spec.shape.rank not in (0, 3)
            or (spec.shape.rank == 3 and spec.shape[-1] not in (None, 3))):
        raise ValueError(f"multicrop needs RGB images [H, W, 3], encoded bytes or kitlib.data.tfrecords dicts, "
                         f"got elements {spec}; convert grayscale with tf.image.grayscale_to_rgb")
    return dataset


def multicrop(dataset, config=SWAV_PAPER, augment="host", seed=None, ratio=CROP_RATIO, dct_method="INTEGER_FAST",
              max_upscale=MAX_UPSCALE, color=SWAV_COLOR):
    """Dataset of tuples of crops, every crop of an element cut from that element's one image.

    Args:
        dataset: ``kitlib.data.tfrecords.load_dataset`` dicts (decoded, or ``decode=False`` bytes: preferred,
            decoded once here), or a dataset of images / encoded bytes.
        config: `kitlib.swav.geometry.MultiCropConfig` (default SWAV_PAPER: 2 x 224 + 6 x 96).
        augment: "host", "device" or "none" (see `multicrop_example`).
        seed: int for reproducible crops (same seed, same input order -> same crops; each new
            iteration draws new crops); None: random.
        ratio, dct_method, max_upscale, color: as `multicrop_example` (max_upscale=1.0: full-quality decode).
    Returns:
        tf.data.Dataset of tuples of config.total_crops float32 [S, S, 3] in [0, 1], big first.
    """
    _check_mode(augment)
    images = _images_of(dataset)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)  # one key per element

    @tf.autograph.experimental.do_not_convert  # plain graph code: skipping AutoGraph halves tracing
    def crops(image, key):
        return multicrop_example(image, config, augment, tf.stack([key, tf.constant(_KEY_SALT, tf.int64)]),
                                 ratio, dct_method, max_upscale, color)

    dataset = tf.data.Dataset.zip((images, keys)).map(crops, num_parallel_calls=AUTOTUNE,
                                                      deterministic=seed is not None)
    return dataset.with_options(pipeline_options())


def pipeline_options(cores=None, chips=None, nodes=None):
    """tf.data options for the multi-crop pipeline: a private pool sized by `kitlib.runtime.input_threads`.

    By default tf.data shares a pool of one thread per core with the rest of the process; on a
    2-core machine the multi-crop map then keeps ~1.7 of the 2 cores busy, with a pool of 4-6
    threads ~1.85 (bench/pipeline.py: about +10 % images/s). Up to 16 cores one thread per core was best;
    a large host gets what its chips need, within one NUMA node, not one thread per core (224 on a v5e-8 VM).

    Args:
        cores, chips, nodes: the host to size the pool for (defaults: `kitlib.runtime.usable_cores`, the CPUs
            this process may run on; `kitlib.runtime.local_chips`; `kitlib.runtime.numa_nodes`).
    """
    options = tf.data.Options()
    options.threading.private_threadpool_size = runtime.input_threads(
        cores or runtime.usable_cores(), runtime.local_chips() if chips is None else chips,
        runtime.numa_nodes() if nodes is None else nodes)
    return options


def batch_crops(dataset, batch_size):
    """Batch a multicrop dataset with static shapes: tuples of [batch_size, S, S, 3] (drop_remainder)."""
    return dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)


def multicrop_batches(dataset, config=SWAV_PAPER, batch_size=64, augment="host", shuffle_buffer=1024,
                      seed=None, ratio=CROP_RATIO, max_upscale=MAX_UPSCALE, color=SWAV_COLOR):
    """Training input for SwAV: shuffle encoded records, crop (and augment), batch, prefetch.

    Args:
        dataset: ``kitlib.data.tfrecords.load_dataset(files, decode=False)`` (bytes are cheap to shuffle; a
            shuffle buffer of decoded 800x600 images holds 1.4 MB each) or any `multicrop` input.
        config: `kitlib.swav.geometry.MultiCropConfig`.
        batch_size: images per batch (the global batch under data parallelism).
        augment: "host": full SwAV augmentation on the host; "device": geometry and flips on the
            host, then call `ColorAugment` on each batch inside the train step; "none": crops only.
        shuffle_buffer: records in the shuffle buffer (0: no shuffle).
        seed: int for a reproducible order and crops.
        ratio, max_upscale, color: as `multicrop_example`.
    Returns:
        tf.data.Dataset of tuples of config.total_crops float32 [batch_size, S, S, 3] in [0, 1].
    """
    images = _images_of(dataset)
    if shuffle_buffer:
        images = images.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    crops = multicrop(images, config, augment, seed, ratio, max_upscale=max_upscale, color=color)
    return batch_crops(crops, batch_size).prefetch(AUTOTUNE)


# ============ data for the pictures (kitlib.viz, notebook 03) ============

def multicrop_preview(dataset, config=SWAV_PAPER, n=4, augment="none", seed=0):
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


# ============ batches of a data folder's shards ============

_CACHE_LIMIT = 5_000  # cache encoded records in memory below this many images


def training_batches(files, crops, global_batch, augmentation="host", seed=None, color_config=SWAV_COLOR,
                     shares=1, owned=None, cache=True):
    """Endless multi-crop batches of the training shards: ((crop_1, ..., crop_V),) with each crop
    [rows, S_v, S_v, 3] float32 in [0, 1] — the 1-tuple is Keras's "inputs only" element.

    The global batch is the concatenation of `shares` input streams of global_batch / shares rows each;
    stream s reads every shares-th TFRecord shard from s (`kitlib.hosts.share_of`) with its own seed. A
    process builds the streams it `owned` (its rows of the global batch, in order), so 2 processes owning
    one stream each feed the same global batches as 1 process owning both.

    Args:
        files: TFRecord shards (``kitlib.data.tfrecords.list_tfrecords``). crops: spec or MultiCropConfig.
        global_batch: images per step over all devices. augmentation: "host" | "device" | "none".
        seed: int for a reproducible order and crops (None: shards interleaved as they stream in; the
            ``pretrain`` command always has one, drawn when not given).
        color_config: `kitlib.swav.color.ColorConfig` of the host colour augmentation.
        shares: input streams of the global batch. owned: the streams this process builds (default all),
            so rows = global_batch / shares * len(owned). cache: keep small sets' encoded records in memory
            (False for a few steps, which would leave the cache half-filled).
    """
    owned = list(range(shares) if owned is None else owned)
    streams = [_stream(hosts.share_of(files, s, shares), crops, global_batch // shares, augmentation,
                       None if seed is None else (seed + 1_000_003 * s) % 2**31, color_config, cache) for s in owned]
    if len(streams) == 1:
        return streams[0].map(lambda *crops: (tuple(crops),))
    joined = tf.data.Dataset.zip(tuple(streams))  # one element: each stream's tuple of crops
    return joined.map(lambda *parts: (tuple(tf.concat(views, 0) for views in zip(*parts)),))


def _stream(files, crops, batch, augmentation, seed, color_config, cache):
    """One input stream of `training_batches`: batches of `batch` images' crops from `files`."""
    # a seed asks for a reproducible run: shards mixed in a fixed order instead of as they stream in
    records = tfrecords.load_dataset(files, labeled=False, decode=False, reproducible=seed is not None)
    num_images = tfrecords.count_data_items(files)
    if cache and num_images <= _CACHE_LIMIT:
        records = records.cache()  # encoded bytes: small, and spares re-reading the shards
    return multicrop_batches(records.repeat(), crop_config(crops), batch, augment=augmentation,
                                       shuffle_buffer=min(num_images, 1024), seed=seed, color=color_config)


def crop_config(crops):
    """`crops` as a `kitlib.swav.geometry.MultiCropConfig` (a spec string parsed)."""
    return crops if isinstance(crops, MultiCropConfig) else parse_multicrop_spec(crops)
