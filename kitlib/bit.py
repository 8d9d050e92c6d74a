"""BiT fine-tuning pieces: the BiT-HyperRule, MixUp, the input pipeline, backbone + zero head, and
where a BiT backbone given by a handle lives on disk (``resolve_backbone``).

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", arXiv 1912.11370.
``get_resolution`` / ``get_mixup`` / ``get_schedule`` / ``get_lr`` follow google-research/big_transfer
``bit_hyperrule.py`` exactly; ``HyperRule`` turns them into a Keras 3 schedule (``keras.ops``, so it
runs inside the compiled JAX step) and optimizer for any batch size B, scaling steps, warmup and decay
boundaries by 512/B and the learning rate by B/512, so every phase falls at the same fraction of the
run (the official colab scales only the length).

Compute is Keras 3 (JAX); the input pipeline is ``tf.data`` and yields float32 images in [0, 1]. Every
random choice of the pipeline (shuffle, crop, flip, MixUp's lambda) is a function of the seed and the
example's position, so one run gives the same batches on 1 device and on 8.
Backbones are Keras 3 models from ``kitlib.backbones`` (images [N, H, W, 3] in [0, 1] -> [N, F]).
"""

import glob
import hashlib
import os
import re
import socket
import tempfile
import urllib.parse

import numpy as np

from kitlib import export
from kitlib.runtime import KAGGLE_INPUT
from kitlib.compat import keras, tf

ops = keras.ops

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


def mixup(images, labels, alpha, seed=None):
    """Mix each example with the batch reversed: x' = lam x + (1 - lam) x[::-1], same for labels.

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


def train_dataset(dataset, rule, num_classes, shuffle_buffer=2_048, seed=0):
    """Endless training batches: shuffle, augment, batch (static shapes), MixUp when the rule says so.

    Deterministic given ``seed``: the shuffle is seeded, and each example's crop/flip and each batch's
    MixUp lambda use stateless ops seeded by (seed, position in the stream).

    Args:
        dataset: ``tf.data.Dataset`` of kit dicts with "image" (uint8 [H, W, 3], or the encoded bytes
            from ``decode=False``: then the shuffle buffer holds ~100 kB JPEGs instead of 1.4 MB
            decoded 800x600 images) and "label" (int32).
        rule: a ``HyperRule`` (resize, crop, batch_size = the GLOBAL batch, mixup_alpha).
        num_classes: C, for one-hot labels.
        seed: int.
    Returns:
        Dataset of (images [B, crop, crop, 3] float32 in [0, 1], labels [B, C] float32).
    """
    seed = int(seed)

    def prepare(index, example):
        image = preprocess_train(example["image"], rule.resize, rule.crop,
                                 seed=tf.stack([tf.constant(seed, tf.int64), index]))
        return image, tf.one_hot(example["label"], num_classes, dtype=tf.float32)

    def mix(index, batch):
        images, labels = batch
        return mixup(images, labels, rule.mixup_alpha, seed=tf.stack([tf.constant(seed + 1, tf.int64), index]))

    batches = (dataset.shuffle(shuffle_buffer, seed=seed).repeat().enumerate()
               .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(rule.batch_size, drop_remainder=True))  # static shapes: one compiled step
    if rule.mixup_alpha > 0:
        batches = batches.enumerate().map(mix, num_parallel_calls=tf.data.AUTOTUNE)
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


# ============ backbone + zero head ============


def build_classifier(backbone, num_classes, image_size, name="bit_classifier"):
    """images float32 [N, S, S, 3] in [0, 1] -> float32 logits [N, C]: backbone + zero-initialised head (BiT).

    Build it after ``runtime.setup()``: the variables are then laid out for the distribution in force
    (replicated under ``DataParallel``) and the layers follow its dtype policy. A backbone saved in
    float32 (``.keras``) is rebuilt in the global policy (bfloat16 compute on TPU); the head always
    computes and returns float32 logits.

    Args:
        backbone: a Keras model (``kitlib.backbones``) or a source for ``backbones.load``
            (.keras / .npz / SavedModel folder / handle). All its weights train.
        num_classes: C.
        image_size: S, the rule's crop size.
    Returns:
        keras.Model whose layers are [input, backbone, "head"].
    """
    if isinstance(backbone, (str, os.PathLike)):
        from kitlib import backbones  # noqa: PLC0415

        backbone = backbones.load(os.fspath(backbone))
    if keras.config.dtype_policy().name != "float32" and export.dtype_policies(backbone) == {"float32"}:
        backbone = export.with_dtype_policy(backbone)
    backbone.trainable = True
    inputs = keras.Input([image_size, image_size, 3], dtype="float32", name="images")
    features = backbone(inputs)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                                dtype="float32", name="head")(features)
    return keras.Model(inputs, logits, name=name)


TINY_BACKBONES = ("small_cnn", "bit_tiny")


def make_tiny_backbone(path, name="small_cnn", seed=0):
    """Save a small randomly initialised Keras 3 backbone as ``path`` (.keras) and return the path.

    For tests, CPU smoke runs and notebooks without a real BiT: [N, H, W, 3] in [0, 1] -> [N, F].
    ``small_cnn``: three stride-2 conv-BN-ReLU blocks, F = 128 (``kitlib.backbones``); ``bit_tiny``:
    BiT's ResNet-v2 (GroupNorm + WS) with few channels and one unit per stage, F = 256
    (``kitlib.resnetv2.build_tiny``). Kernels are He-normal from a local numpy generator seeded with
    ``seed`` (no global seed is touched), so the file holds the same weights every time.
    """
    if name not in TINY_BACKBONES:
        raise ValueError(f"unknown tiny backbone {name!r}; choose one of {', '.join(TINY_BACKBONES)}")
    from kitlib import backbones, resnetv2  # noqa: PLC0415

    model = resnetv2.build_tiny() if name == "bit_tiny" else backbones.build(name)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim >= 2:  # conv / dense kernels; BatchNorm and Normalization values stay as built
            fan_in = int(np.prod(w.shape[:-1]))
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(w.dtype)
        weights.append(w)
    model.set_weights(weights)
    return backbones.save(model, os.fspath(path))


# ============ backbones: TF Hub, Kaggle Models, local SavedModel ============

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
        A local SavedModel directory, or the URL when its host answers (tensorflow_hub downloads it).
    Raises:
        ValueError: local path missing / not a SavedModel, or a remote handle that cannot be reached.
    """
    handle = os.fspath(handle)
    if os.path.isdir(os.path.expanduser(handle)):
        path = os.path.expanduser(handle)
        if not _is_saved_model(path):
            raise ValueError(f"backbone {handle!r} is a folder but holds no saved_model.pb (nor a pretrain "
                             "backbone.keras); pass a .keras / .npz file, or the folder of "
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
