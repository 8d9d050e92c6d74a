"""BiT's fine-tuning input pipeline on ``tf.data``: augmentation, MixUp, batches with static shapes.

Training batches are float32 images in [0, 1] resized, randomly cropped and flipped, with one-hot labels
mixed by MixUp (Zhang et al. 2018, as BiT applies it: one lambda per batch); evaluation batches are
resized to the crop size, optionally padded to a fixed batch with zero-weight rows. Every random choice
(shuffle, crop, flip, MixUp's lambda) is a function of the seed and the example's position, so one run
gives the same batches on 1 device and on 8. The sizes come from a ``kitlib.bit.hyperrule.HyperRule``.
"""

import numpy as np

from kitlib.compat import tf
from kitlib.data.tfrecords import decode_image

# ============ randomness: stateless, from (seed, position) ============


def _stateless_seed(seed):
    """A stateless-op seed int64 [2] from an int (-> [seed, 0]) or a [2] tensor; None stays None."""
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], tf.int64)
    return tf.cast(seed, tf.int64)


# ============ MixUp (Zhang et al. 2018, as BiT applies it) ============


def sample_beta(alpha, seed=None):
    """One lambda ~ Beta(alpha, alpha) as a float32 scalar: G1 / (G1 + G2) with G ~ Gamma(alpha).

    Drawn in float64: at alpha = 0.1 a float32 Gamma draw underflows to 0 about once in 6,000.
    seed: None (stateful), an int or an int [2] tensor (stateless: the same seed, the same lambda).
    """
    alpha = tf.constant(float(alpha), tf.float64)
    seed = _stateless_seed(seed)
    if seed is None:
        g1, g2 = tf.random.gamma([], alpha, dtype=tf.float64), tf.random.gamma([], alpha, dtype=tf.float64)
    else:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        g1, g2 = (tf.random.stateless_gamma([], s, alpha, dtype=tf.float64) for s in tf.unstack(seeds))
    total = g1 + g2
    return tf.cast(tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5), tf.float32)


def mixup_partners(batch_size):
    """The MixUp partner of each row, int32 [batch_size]: its neighbour (0<->1, 2<->3, ...; an odd last row
    is its own). ``batch_size``: an int or a scalar tensor (inside ``tf.data``).

    Pairs of neighbours, rather than the batch reversed, keep every pair inside any even-sized run of
    rows: a process that feeds its rows of the global batch (`kitlib.hosts`) mixes exactly the pairs a
    single process would. The shuffle before batching makes neighbours as random a pairing as any.
    """
    rows = tf.range(batch_size, dtype=tf.int32)
    partners = tf.bitwise.bitwise_xor(rows, 1)
    return tf.where(partners < tf.cast(batch_size, tf.int32), partners, rows)


def mixup(images, labels, alpha, seed=None):
    """Mix each example with its neighbour (`mixup_partners`): x' = lam x + (1 - lam) x[partner], same for
    labels.

    One lam ~ Beta(alpha, alpha) per batch (``sample_beta``), as in BiT's input pipeline.

    Args:
        images: [B, H, W, 3] float.
        labels: [B, C] one-hot (or soft) float labels.
        alpha: Beta concentration; 0 returns the inputs unchanged.
        seed: None, an int or an int [2] tensor (see ``sample_beta``).
    Returns:
        (images, labels) with the same shapes; label rows still sum to 1.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return images, labels
    lam = sample_beta(alpha, seed)
    lam_x, lam_y = tf.cast(lam, images.dtype), tf.cast(lam, labels.dtype)
    partners = mixup_partners(tf.shape(images)[0])
    images = lam_x * images + (1 - lam_x) * tf.gather(images, partners)
    labels = lam_y * labels + (1 - lam_y) * tf.gather(labels, partners)
    return images, labels


# ============ input pipeline ============


def _to_unit_float(image):
    """Encoded bytes (scalar tf.string), uint8 [H, W, 3] or float in [0, 1] -> float32 [H, W, 3] in [0, 1]."""
    if image.dtype == tf.string:  # kept encoded until here, so shuffle buffers hold JPEG bytes, not pixels
        image = decode_image(image)
    return tf.image.convert_image_dtype(image, tf.float32)


def preprocess_train(image, resize, crop, seed=None):
    """Resize to resize x resize, random crop x crop, random left-right flip; float32 [crop, crop, 3] in [0, 1].

    seed: None (stateful random ops) or a stateless seed (int or int [2] tensor): the same seed gives
    the same crop and flip.
    """
    image = tf.image.resize(_to_unit_float(image), [resize, resize])
    seed = _stateless_seed(seed)
    if seed is None:
        image = tf.image.random_crop(image, [crop, crop, 3])
        image = tf.image.random_flip_left_right(image)  # the official code always flips; we flip at random
    else:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = tf.image.stateless_random_crop(image, [crop, crop, 3], seed=crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_eval(image, crop):
    """Resize to crop x crop (BiT evaluates at the crop size); float32 [crop, crop, 3] in [0, 1]."""
    return tf.clip_by_value(tf.image.resize(_to_unit_float(image), [crop, crop]), 0.0, 1.0)


def train_dataset(dataset, rule, num_classes, shuffle_buffer=2_048, seed=0, rows=None, skip_batches=0):
    """Endless training batches: shuffle, augment, batch (static shapes), MixUp when the rule says so.

    Deterministic given ``seed``: the shuffle is seeded, and each example's crop/flip and each batch's
    MixUp lambda use stateless ops seeded by (seed, position in the stream). With ``rows`` a process keeps
    only its rows of every global batch, dropped before decoding (each process decodes its own share), and
    gets exactly those rows of the batches one process would make.

    Args:
        dataset: ``tf.data.Dataset`` of kit dicts with "image" (uint8 [H, W, 3], or the encoded bytes
            from ``decode=False``: then the shuffle buffer holds ~100 kB JPEGs instead of 1.4 MB
            decoded 800x600 images) and "label" (int32).
        rule: a ``HyperRule`` (resize, crop, batch_size = the GLOBAL batch, mixup_alpha).
        num_classes: C, for one-hot labels.
        seed: int.
        rows: (start, stop), even, of the global batch's rows (None: all: one process).
        skip_batches: global batches to leave out at the start (a resumed run: those it trained on before). The
            stream is the same one, so a resumed run sees exactly the batches an uninterrupted one sees; the
            skipped examples are dropped as records, before anything is decoded.
    Returns:
        Dataset of (images [b, crop, crop, 3] float32 in [0, 1], labels [b, C] float32), b = stop - start
        (B without ``rows``).
    """
    seed = int(seed)
    start, stop = (0, rule.batch_size) if rows is None else rows
    if (start % 2 or stop % 2) and stop - start != rule.batch_size:
        raise ValueError(f"a process's rows {start}..{stop} of the global batch {rule.batch_size} must start and "
                         "end even (MixUp pairs neighbours): use a global batch divisible by 2 x the processes")

    def prepare(index, example):
        image = preprocess_train(example["image"], rule.resize, rule.crop,
                                 seed=tf.stack([tf.constant(seed, tf.int64), index]))
        return image, tf.one_hot(example["label"], num_classes, dtype=tf.float32)

    def mix(index, batch):
        images, labels = batch
        return mixup(images, labels, rule.mixup_alpha, seed=tf.stack([tf.constant(seed + 1, tf.int64), index]))

    # The shuffle is made per iterator (inside flat_map), not once here: Keras's fit() reads a first batch from
    # one iterator to build the model, then trains on a second one, and a shuffle made here would give both
    # iterators one seed generator for its reshuffles. The training order would then depend on how far the
    # first iterator's background prefetch had read (past the first epoch it draws the next seeds first): thread
    # timing, which once made an 8-device run train on other batches than the 1-device one. Per iterator, every
    # iterator gives the same stream: a function of the seed only.
    batches = tf.data.Dataset.range(1).flat_map(lambda _: dataset.shuffle(shuffle_buffer, seed=seed).repeat())
    batches = batches.enumerate().skip(skip_batches * rule.batch_size)
    if stop - start != rule.batch_size:  # this process's rows only, before any decoding
        batches = batches.filter(lambda index, _: (index % rule.batch_size >= start) & (index % rule.batch_size < stop))
    batches = (batches.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(stop - start, drop_remainder=True))  # static shapes: one compiled step
    if rule.mixup_alpha > 0:
        batches = batches.enumerate(start=skip_batches).map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def _pad_batch(images, labels, batch_size):
    """(images [b, S, S, 3], labels [b, C]) -> zero-padded to batch_size rows, plus weights [batch_size]
    (1 for real rows, 0 for padding)."""
    real = tf.shape(images)[0]
    missing = batch_size - real
    images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, missing], [0, 0]])
    weights = tf.concat([tf.ones([real]), tf.zeros([missing])], axis=0)
    images.set_shape([batch_size] + images.shape[1:].as_list())
    labels.set_shape([batch_size, labels.shape[-1]])
    weights.set_shape([batch_size])
    return images, labels, weights


def eval_dataset(dataset, crop, batch_size, num_classes, pad=False):
    """Evaluation batches at the crop size, in the dataset's order.

    Args:
        dataset: kit dicts ("image", "label"), see ``train_dataset``.
        crop: side S. batch_size: b. num_classes: C.
        pad: False -> (images [b, S, S, 3] in [0, 1], one-hot labels [b, C]) with a shorter last batch;
            True -> every batch exactly b rows, (images, labels, weights [b]) where padded rows (zeros)
            weigh 0: static shapes (one compiled step) that always split over the devices.
    """
    def prepare(example):
        return preprocess_eval(example["image"], crop), tf.one_hot(example["label"], num_classes, dtype=tf.float32)

    batches = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if pad:
        batches = batches.map(lambda x, y: _pad_batch(x, y, batch_size), num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)
