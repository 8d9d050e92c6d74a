"""The bundled sample: small, synthetic, deterministic, in the competition's exact layout.

``python -m kitlib make-sample --out data/sample`` draws cassava-like leaves procedurally (numpy
only) whose five classes differ visibly, the way the diseases do:

    0 CBB   angular brown spots with yellow halos
    1 CBSD  yellow streaks along the veins
    2 CGM   pale green mottling (many small faint speckles)
    3 CMD   yellow-green mosaic on distorted, narrow lobes
    4 Healthy  plain green with light veins

Running it again on the same machine writes byte-identical files (seeded numpy + TensorFlow's JPEG
encoder); another CPU may round a few pixels the other way (float SIMD kernels differ), so elsewhere the
files, names, labels and records are the same and the pixels agree within a few levels. The
images are synthetic: they exercise the code paths, they are not the real data (see data/README.md).
"""

import csv
import dataclasses
import json
import os

import numpy as np

from kitlib import checks, command
from kitlib.command import setting
from kitlib.data import competition
from kitlib.data.tfrecords import CLASS_NAMES
from kitlib.data.writing import write_tfrecords

HEIGHT, WIDTH = 256, 340  # 4:3 like the competition's 800x600, short side 256 so 224-px crops are real crops
TRAIN_PER_CLASS = 20
NUM_TEST = 15
TRAIN_SHARD_SIZE = 25  # 4 train shards, so file-level splits have something to split
JPEG_QUALITY = 85
SEED = 2020


def _smooth_noise(rng, h, w, cells):
    """Low-frequency noise in [0, 1]: a coarse random grid, bilinearly upsampled to [h, w]."""
    gh, gw = cells, max(2, int(cells * w / h))
    grid = rng.random((gh + 1, gw + 1))
    y = np.linspace(0, gh, h, endpoint=False)
    x = np.linspace(0, gw, w, endpoint=False)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _paint(image, mask, color, alpha=1.0):
    """Blend ``color`` (RGB 0..255) into ``image`` [H, W, 3] float where ``mask`` (bool or [0, 1])."""
    m = mask.astype(np.float32)[..., None] * alpha
    image[:] = image * (1 - m) + np.asarray(color, np.float32) * m


def draw_leaf(label, rng, height=HEIGHT, width=WIDTH):
    """One synthetic leaf photo of class ``label``.

    Returns:
        uint8 [height, width, 3].
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # background: soil and grass, low-frequency blotches
    soil = _smooth_noise(rng, height, width, 6)[..., None]
    image = (np.array([95, 80, 55]) * (0.7 + 0.5 * soil) + np.array([20, 45, 10]) * (1 - soil)).astype(np.float32)

    # leaf: a palmate blade of n lobes around (cy, cx), rotated at random
    cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    radius = rng.uniform(0.42, 0.5) * height
    n_lobes = int(rng.integers(5, 8))
    phase = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx) + phase
    sharpness = 3.0 if label == 3 else 1.2  # CMD: narrow, distorted lobes
    lobe = np.abs(np.cos(n_lobes * theta / 2)) ** sharpness
    if label == 3:
        lobe = lobe * (0.75 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6)))
    leaf = r < radius * (0.25 + 0.75 * lobe)
    shade = _smooth_noise(rng, height, width, 4)
    green = np.array([55, 125, 40]) * rng.uniform(0.85, 1.1)
    _paint(image, leaf, green)
    image *= (0.85 + 0.25 * shade)[..., None]

    # veins: thin lines along each lobe's axis
    lobe_axis = np.abs(np.sin(n_lobes * theta / 2)) * r
    veins = leaf & (lobe_axis < 1.6) & (r > 4)
    _paint(image, veins, (150, 190, 110), 0.8)

    if label == 0:  # CBB: angular (diamond-shaped) brown lesions with a yellow halo
        for _ in range(int(rng.integers(6, 12))):
            t, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.7) * radius
            sy, sx, size = cy + rr * np.sin(t), cx + rr * np.cos(t), rng.uniform(6, 14)
            a = rng.uniform(0, np.pi / 2)
            u = np.abs((yy - sy) * np.cos(a) + (xx - sx) * np.sin(a))
            v = np.abs(-(yy - sy) * np.sin(a) + (xx - sx) * np.cos(a))
            _paint(image, leaf & (u + v < size * 1.4), (200, 190, 60), 0.7)
            _paint(image, leaf & (u + v < size), (95, 55, 25))
    elif label == 1:  # CBSD: yellow chlorotic bands along the veins
        band = leaf & (lobe_axis < rng.uniform(5, 8)) & (r > radius * 0.2)
        _paint(image, band, (215, 200, 70), 0.85)
        _paint(image, veins, (120, 90, 40), 0.5)
    elif label == 2:  # CGM: faint pale mottling, many small speckles
        speck = _smooth_noise(rng, height, width, 40) > 0.72
        _paint(image, leaf & speck, (160, 200, 110), 0.55)
    elif label == 3:  # CMD: strong yellow-green mosaic
        mosaic = _smooth_noise(rng, height, width, 14) > 0.55
        _paint(image, leaf & mosaic, (200, 210, 80), 0.8)
    image += rng.normal(0, 4, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _image_ids(rng, n):
    """n distinct competition-style ids such as '1000015157.jpg'."""
    ids = []
    while len(ids) < n:
        name = f"{int(rng.integers(1_000_000_000, 4_300_000_000))}.jpg"
        if name not in ids:
            ids.append(name)
    return ids


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(competition.CSV_HEADER)
        w.writerows(rows)


def make_sample(out_dir, train_per_class=TRAIN_PER_CLASS, num_test=NUM_TEST, seed=SEED, progress=True):
    """Write the sample in the competition's layout into ``out_dir``; returns a summary dict."""
    from kitlib.compat import tf  # noqa: PLC0415 - the JPEG encoder

    rng = np.random.default_rng(seed)
    labels = [c for c in range(len(CLASS_NAMES)) for _ in range(train_per_class)]
    labels = [int(x) for x in rng.permutation(labels)]
    ids = _image_ids(rng, len(labels) + num_test)
    train_ids, test_ids = ids[:len(labels)], ids[len(labels):]
    test_labels = [int(x) for x in rng.integers(0, len(CLASS_NAMES), num_test)]
    train_paths, test_paths = (competition.split_paths(out_dir, split) for split in ("train", "test"))
    for paths in (train_paths, test_paths):
        os.makedirs(paths.images_dir, exist_ok=True)

    def render(names, classes, folder):
        records = []
        for i, (name, label) in enumerate(zip(names, classes)):
            pixels = draw_leaf(label, np.random.default_rng([seed, label, i]))
            jpeg = tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY, optimize_size=True).numpy()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(jpeg)
            records.append({"image": jpeg, "image_name": name, "target": label})
            if progress and ((i + 1) % 25 == 0 or i + 1 == len(names)):
                print(f"{os.path.basename(folder)}: {i + 1}/{len(names)}", flush=True)
        return records

    train = render(train_ids, labels, train_paths.images_dir)
    test = render(test_ids, test_labels, test_paths.images_dir)
    for paths in (train_paths, test_paths):
        os.makedirs(paths.tfrecords_dir, exist_ok=True)
        for old in os.listdir(paths.tfrecords_dir):  # a rerun must not leave shards with other counts behind
            os.remove(os.path.join(paths.tfrecords_dir, old))
    write_tfrecords(train, train_paths.tfrecords_dir, labeled=True, shard_size=TRAIN_SHARD_SIZE)
    write_tfrecords(test, test_paths.tfrecords_dir, labeled=False, shard_size=TRAIN_SHARD_SIZE)

    _write_csv(train_paths.csv, zip(train_ids, labels))
    _write_csv(os.path.join(out_dir, competition.SAMPLE_SUBMISSION_FILE),
               ((name, 4) for name in test_ids))  # the competition's file predicts 4 everywhere
    with open(train_paths.label_map, "w") as f:
        json.dump({str(i): name for i, name in enumerate(CLASS_NAMES)}, f)
    return {"train": len(train_ids), "test": len(test_ids), "out_dir": out_dir}


@dataclasses.dataclass(frozen=True)
class SampleConfig(command.Config):
    """What ``python -m kitlib make-sample`` asks for (each field is a flag)."""
    out_dir: str = setting("data/sample", "output folder", flag="--out")
    train_per_class: int = setting(TRAIN_PER_CLASS, "train images per class", flag="--per-class",
                                   valid=checks.positive())
    num_test: int = setting(NUM_TEST, "number of test images", flag="--test", valid=checks.positive())
    seed: int = setting(SEED, "seed of the drawings and the image ids (the bundled sample's is 2020)",
                        valid=checks.integer(0))
    verbose: int = setting(1, "0 silent, 1 progress", choices=(0, 1))

    @classmethod
    def smoke(cls, **overrides):
        """Two images per class and three test images."""
        return cls(**dict(dict(train_per_class=2, num_test=3), **overrides))


CONFIG = SampleConfig


def plan(config, rt=None):
    """Nothing to choose: the sample's size, classes and shards as facts (no devices are needed)."""
    from kitlib import command  # noqa: PLC0415

    facts = dict(classes=len(CLASS_NAMES), train=config.train_per_class * len(CLASS_NAMES), test=config.num_test,
                 train_shard_size=TRAIN_SHARD_SIZE, size=[HEIGHT, WIDTH])
    return command.Plan("make-sample", config, {}, facts)


def run(plan):
    """Write the sample as planned; returns `make_sample`'s summary."""
    config = plan.settings
    summary = make_sample(config.out_dir, config.train_per_class, config.num_test, config.seed,
                          progress=bool(config.verbose))
    if config.verbose:
        print(f"wrote {summary['train']} train and {summary['test']} test images to {summary['out_dir']}")
    return summary
