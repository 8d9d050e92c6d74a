"""BiT fine-tuning: the BiT-HyperRule, MixUp, the input pipeline, and backbone + zero head.

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", arXiv 1912.11370.
``get_resolution`` / ``get_mixup`` / ``get_schedule`` / ``get_lr`` follow google-research/big_transfer
``bit_hyperrule.py`` exactly; ``HyperRule`` turns them into a Keras schedule and optimizer for any
batch size B, scaling steps, warmup and decay boundaries by 512/B and the learning rate by B/512,
so every phase falls at the same fraction of the run (the official colab scales only the length).

Backbones follow the kit's export convention: a TF2 SavedModel that ``hub.KerasLayer(path,
trainable=True)`` loads, float32 images [N, H, W, 3] in [0, 1] -> features [N, D]. BiT on TF Hub /
Kaggle Models, the SwAV export and ``make_tiny_backbone`` all fit it.
"""

import glob
import hashlib
import os
import re
import socket
import tempfile
import urllib.parse

import numpy as np
import tensorflow as tf

from kitlib import export
from kitlib.compat import keras

# ============ BiT-HyperRule (bit_hyperrule.py) ============

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


class BiTSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``base_lr``, then /10 after each boundary (the ``get_lr`` shape, any scale).

    lr(step) = base_lr * step / warmup_steps            for step < warmup_steps
             = base_lr / 10^(#{b in boundaries: b < step})  otherwise.
    Past the last step of the rule the final value is kept (training stops there).
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
        self._values = values

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.base_lr * step / self.warmup_steps
        boundaries = tf.constant(self.boundaries, tf.float32, shape=[len(self.boundaries)])
        # number of decays already applied; step may be a scalar or a vector of steps (for plots)
        passed = tf.reduce_sum(tf.cast(step[..., None] > boundaries, tf.int32), axis=-1)
        decayed = tf.gather(tf.constant(self._values, tf.float32), passed)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "boundaries": self.boundaries, "decay_factor": self.decay_factor}


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
        (already scaled to B), lr_schedule (a Keras LearningRateSchedule); ``optimizer()`` makes
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
        self.resize, self.crop = resolution if resolution is not None else get_resolution(self.image_hw)
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
        """A new SGD(lr_schedule, momentum 0.9); create it inside ``strategy.scope()``."""
        return keras.optimizers.SGD(learning_rate=self.lr_schedule, momentum=MOMENTUM)

    def as_dict(self):
        """The rule's values, for printing/logging once at the start of a run."""
        return {"image_hw": self.image_hw, "dataset_size": self.dataset_size, "batch_size": self.batch_size,
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


# ============ MixUp (Zhang et al. 2018, as BiT applies it) ============


def mixup(images, labels, alpha, seed=None):
    """Mix each example with the batch reversed: x' = lam x + (1 - lam) x[::-1], same for labels.

    One lam ~ Beta(alpha, alpha) per batch (tensorflow-probability), as in BiT's input pipeline.

    Args:
        images: [B, H, W, 3] float.
        labels: [B, C] one-hot (or soft) float labels.
        alpha: Beta concentration; 0 returns the inputs unchanged.
        seed: optional sampling seed.
    Returns:
        (images, labels) with the same shapes; label rows still sum to 1.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return images, labels
    import tensorflow_probability as tfp  # imported here: it is slow to import and only MixUp needs it

    lam = tfp.distributions.Beta(float(alpha), float(alpha)).sample(seed=seed)
    lam_x, lam_y = tf.cast(lam, images.dtype), tf.cast(lam, labels.dtype)
    images = lam_x * images + (1 - lam_x) * tf.reverse(images, axis=[0])
    labels = lam_y * labels + (1 - lam_y) * tf.reverse(labels, axis=[0])
    return images, labels


# ============ input pipeline ============


def _to_unit_float(image):
    """Encoded bytes (scalar tf.string), uint8 [H, W, 3] or float in [0, 1] -> float32 [H, W, 3] in [0, 1]."""
    if image.dtype == tf.string:  # kept encoded until here, so shuffle buffers hold JPEG bytes, not pixels
        from kitlib.data import decode_image

        image = decode_image(image)
    return tf.image.convert_image_dtype(image, tf.float32)


def preprocess_train(image, resize, crop):
    """Resize to resize x resize, random crop x crop, random left-right flip; float32 [crop, crop, 3] in [0, 1]."""
    image = tf.image.resize(_to_unit_float(image), [resize, resize])
    image = tf.image.random_crop(image, [crop, crop, 3])
    image = tf.image.random_flip_left_right(image)  # the official code always flips; we flip at random
    return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_eval(image, crop):
    """Resize to crop x crop (BiT evaluates at the crop size); float32 [crop, crop, 3] in [0, 1]."""
    return tf.clip_by_value(tf.image.resize(_to_unit_float(image), [crop, crop]), 0.0, 1.0)


def train_dataset(dataset, rule, num_classes, shuffle_buffer=2_048, seed=None):
    """Endless training batches: shuffle, augment, batch (static shapes), MixUp when the rule says so.

    Args:
        dataset: ``tf.data.Dataset`` of kit dicts with "image" (uint8 [H, W, 3], or the encoded bytes
            from ``decode=False``: then the shuffle buffer holds ~100 kB JPEGs instead of 1.4 MB
            decoded 800x600 images) and "label" (int32).
        rule: a ``HyperRule`` (resize, crop, batch_size, mixup_alpha).
        num_classes: C, for one-hot labels.
    Returns:
        Dataset of (images [B, crop, crop, 3] float32 in [0, 1], labels [B, C] float32).
    """
    def prepare(example):
        return (preprocess_train(example["image"], rule.resize, rule.crop),
                tf.one_hot(example["label"], num_classes, dtype=tf.float32))

    batches = (dataset.shuffle(shuffle_buffer, seed=seed).repeat()
               .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(rule.batch_size, drop_remainder=True))  # static shapes for TPU
    if rule.mixup_alpha > 0:
        batches = batches.map(lambda x, y: mixup(x, y, rule.mixup_alpha), num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def eval_dataset(dataset, crop, batch_size, num_classes):
    """Evaluation batches at the crop size: (images [b, crop, crop, 3] in [0, 1], one-hot labels [b, C])."""
    def prepare(example):
        return preprocess_eval(example["image"], crop), tf.one_hot(example["label"], num_classes, dtype=tf.float32)

    return (dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


# ============ backbones: TF Hub, Kaggle Models, local SavedModel ============

KAGGLE_INPUT = "/kaggle/input"
_KAGGLE_MODELS_URL = "https://www.kaggle.com/models/"
_TFHUB_PREFIX = "https://tfhub.dev/"
# owner/model/framework/variation[/version], e.g. google/bit/tensorFlow2/m-r50x1/1
_KAGGLE_HANDLE = re.compile(r"^(?P<owner>[\w.-]+)/(?P<model>[\w.-]+)/(?P<framework>[\w.-]+)/"
                            r"(?P<variation>[\w.-]+)(?:/(?P<version>\d+))?$")
_PROBE_TIMEOUT_S = 3.0  # one TCP connect, no retries: offline must fail in seconds, not minutes


def _is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _remote_parts(handle):
    """(url, model, framework, variation, version) for a TF Hub / Kaggle handle, or None if not remote."""
    if handle.startswith(("tfhub.dev/", "www.kaggle.com/", "kaggle.com/")):
        handle = "https://" + handle
    match = _KAGGLE_HANDLE.match(handle)
    if match and not handle.startswith((".", "/", "~")):
        parts = match.groupdict()
        version = parts["version"] or "1"
        url = _KAGGLE_MODELS_URL + f"{parts['owner']}/{parts['model']}/{parts['framework']}/{parts['variation']}/{version}"
        return url, parts["model"], parts["framework"], parts["variation"], parts["version"]
    if handle.startswith(("http://", "https://", "gs://")):
        path = urllib.parse.urlparse(handle).path.strip("/").split("/")
        if handle.startswith(_TFHUB_PREFIX) and len(path) >= 3:  # tfhub.dev/<owner>/<model>/<variation>/<version>
            version = path[3] if len(path) > 3 else None
            return handle, path[1], "tensorflow2", path[2], version
        if "kaggle.com" in handle and "models" in path:  # .../models/<owner>/<model>/<framework>/<variation>/<v>
            rest = [p for p in path[path.index("models") + 1:] if p not in ("frameworks", "variations", "versions")]
            if len(rest) >= 4:
                return handle, rest[1], rest[2], rest[3], rest[4] if len(rest) > 4 else None
        return handle, None, None, None, None
    return None


def _attached_model_dirs(model, framework, variation, version, input_root=KAGGLE_INPUT):
    """SavedModel folders of a Kaggle Model attached as notebook input: ROOT/model/framework/variation/version."""
    if model is None:
        return []
    found = []
    for fw in dict.fromkeys([framework.lower(), framework]):
        found += glob.glob(os.path.join(input_root, model, fw, variation, version or "*"))
    found = [d for d in found if _is_saved_model(d)]
    return sorted(found, key=lambda d: int(os.path.basename(d)) if os.path.basename(d).isdigit() else -1)


def _can_connect(host, port=443, timeout=_PROBE_TIMEOUT_S):
    """True if one TCP connection to host:port opens within ``timeout`` seconds (no retries)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_backbone(handle, cache_dir=None, input_root=KAGGLE_INPUT, reachable=None):
    """Where to load a backbone from, without ever waiting on an unreachable network.

    Order: a local SavedModel directory; the same model attached as a Kaggle input
    (``/kaggle/input/<model>/<framework>/<variation>/<version>``); the TF Hub download cache; the
    network (only if its host answers one quick connect).

    Args:
        handle: local directory, ``https://tfhub.dev/google/bit/m-r50x1/1``, a Kaggle Models URL, or
            a Kaggle handle ``google/bit/tensorFlow2/m-r50x1[/1]``.
        cache_dir: TF Hub cache (default: ``$TFHUB_CACHE_DIR`` or ``<tmp>/tfhub_modules``, as tensorflow_hub).
        input_root: where Kaggle mounts attached inputs.
        reachable: ``fn(host) -> bool`` probe of the network (default: one TCP connect, 3 s timeout).
    Returns:
        A local path or a URL for ``hub.KerasLayer``.
    Raises:
        ValueError: local path missing / not a SavedModel, or a remote handle that cannot be reached.
    """
    handle = os.fspath(handle)
    if os.path.isdir(os.path.expanduser(handle)):
        path = os.path.expanduser(handle)
        if not _is_saved_model(path):
            raise ValueError(f"backbone {handle!r} is a folder but holds no saved_model.pb; pass the folder of "
                             "a TF2 SavedModel (the one that contains saved_model.pb and variables/)")
        return path
    remote = _remote_parts(handle)
    if remote is None:
        raise ValueError(f"backbone {handle!r}: no such directory, and not a TF Hub URL or Kaggle Models "
                         "handle (owner/model/framework/variation[/version]); check the path")
    url, model, framework, variation, version = remote
    attached = _attached_model_dirs(model, framework, variation, version, input_root)
    if attached:
        return attached[-1]
    if cache_dir is None:
        cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    cached = os.path.join(cache_dir, hashlib.sha1(url.encode("utf8")).hexdigest())  # tensorflow_hub's layout
    if _is_saved_model(cached):
        return cached
    host = "storage.googleapis.com" if url.startswith("gs://") else urllib.parse.urlparse(url).hostname
    if not (reachable or _can_connect)(host):
        example = os.path.join(input_root, model or "bit", (framework or "tensorflow2").lower(),
                               variation or "m-r50x1", version or "1")
        raise ValueError(
            f"backbone {handle!r} cannot be loaded: {host} is unreachable (internet off?) and the model is "
            f"neither attached under {input_root} nor in the TF Hub cache {cache_dir}. On Kaggle: "
            f"'Add Input' -> Models -> search '{model or 'BiT'}', attach the TensorFlow 2 variation "
            f"{variation or ''} and pass its folder, e.g. --backbone {example}. Elsewhere: download the "
            "SavedModel once where there is internet and pass its local directory (if you meant a local "
            "folder: it does not exist).")
    return url


def load_backbone(handle, trainable=True, name="backbone", **resolve_kwargs):
    """A ``hub.KerasLayer`` (float32 images [N, H, W, 3] in [0, 1] -> features [N, D]), trainable.

    Use it inside a tf_keras model (``build_classifier``). Resolution as ``resolve_backbone``:
    an unreachable handle fails at once with advice instead of hanging in retries.
    """
    import tensorflow_hub as hub

    path = resolve_backbone(handle, **resolve_kwargs)
    # float32 always: hub SavedModels are float32 graphs, so a mixed policy must not cast their input.
    return hub.KerasLayer(path, trainable=trainable, dtype="float32", name=name)


def build_classifier(backbone, num_classes, image_size, name="bit_classifier"):
    """images [N, S, S, 3] in [0, 1] -> logits [N, C]: backbone + zero-initialised Dense head (BiT).

    Args:
        backbone: a layer from ``load_backbone`` (or a handle/path, loaded here). Build under
            ``strategy.scope()``.
        num_classes: C.
        image_size: S, the rule's crop size.
    """
    if isinstance(backbone, (str, os.PathLike)):
        backbone = load_backbone(backbone)
    inputs = keras.Input([image_size, image_size, 3], dtype="float32", name="images")
    features = backbone(inputs)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                                dtype="float32", name="head")(features)
    return keras.Model(inputs, logits, name=name)


# ============ a tiny hub-format backbone (tests, CPU smoke runs, the demo) ============


_TINY_EPS = 1e-12  # variance floor of the calibration (pooled features can vary by only ~1e-3)


class _TinyConvNet(tf.Module):
    """Two stride-2 3x3 convolutions + ReLU, global average pool, fixed affine: [N, H, W, 3] -> [N, 2 * width]."""

    def __init__(self, width, seed):
        super().__init__()
        rng = np.random.default_rng(seed)  # local generator: no global seed is touched

        def he(shape):  # He-normal init: std sqrt(2 / fan_in)
            return tf.Variable(rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape).astype(np.float32))

        self.kernels = [he([3, 3, 3, width]), he([3, 3, width, 2 * width])]
        self.biases = [tf.Variable(np.zeros(width, np.float32)), tf.Variable(np.zeros(2 * width, np.float32))]
        # fixed (not trained) feature affine, set by calibrate(): features = (pooled - shift) * scale
        self.shift = tf.Variable(np.zeros(2 * width, np.float32), trainable=False)
        self.scale = tf.Variable(np.ones(2 * width, np.float32), trainable=False)

    def pooled(self, images):
        x = images
        for kernel, bias in zip(self.kernels, self.biases):
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=2, padding="SAME") + bias)
        return tf.reduce_mean(x, axis=[1, 2])

    def calibrate(self, images, feature_std):
        """Data-dependent init: features of ``images`` get mean 0 and std ``feature_std`` per dimension.

        Pooled random-conv features share a large common part and differ between images by ~1 %;
        a head could not pick that up in a short run. Pretrained backbones need no such step.
        """
        mean, variance = tf.nn.moments(self.pooled(images), axes=[0])
        self.shift.assign(mean)
        self.scale.assign(feature_std * tf.math.rsqrt(variance + _TINY_EPS))

    def features(self, images):
        return (self.pooled(images) - self.shift) * self.scale


def make_tiny_backbone(path, width=8, seed=0, calibration_images=None, feature_std=1.0):
    """Export a small random conv net in the reusable hub format and return ``path``.

    The SavedModel root carries ``variables``, ``trainable_variables``, ``regularization_losses``
    and ``__call__(images, training)``, so ``load_backbone(path)`` gives a trainable layer.
    Good for tests and CPU smoke runs, not for accuracy.

    Args:
        path: output directory.
        width: channels of the first conv (the second has 2 * width); features [N, 2 * width].
        seed: weight seed.
        calibration_images: optional float [N, H, W, 3] in [0, 1]; when given, a fixed affine makes
            their features mean 0 / std ``feature_std`` per dimension (data-dependent init), so a
            short run on real images learns something.
        feature_std: target feature std after calibration.
    """
    net = _TinyConvNet(width, seed)
    if calibration_images is not None:
        net.calibrate(tf.convert_to_tensor(calibration_images, tf.float32), feature_std)

    @tf.function
    def call(images, training=False):
        del training  # no batch-norm or dropout: same function in both modes
        return net.features(images)

    return export.save_reusable(path, call, net, net.variables, net.trainable_variables)
