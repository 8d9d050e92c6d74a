"""Input-pipeline throughput: kitlib multi-crop vs the zipped baseline vs decoding alone.

    .venv/bin/python bench/pipeline.py [--images 512] [--seconds 10] [--passes 3] [--intra-op-threads both|0|1]

Writes ``--images`` 800x600 JPEGs (synthetic leaves from ``kitlib.data.sample`` with sensor noise, ~115 KB
each like the competition's files) into 4 shards, then times passes of ``--seconds`` per pipeline over
the shards read endlessly: each pass a fresh iterator whose first 128 images (its start-up) are untimed
and reported apart, passes in rounds of one per pipeline so a slow spell hits all alike. By default it
runs twice, in two processes, at TensorFlow's default threading and at one thread per CPU op (what
`kitlib.runtime.setup` sets with an accelerator). About twelve minutes on 2 cores; the figures, when
each mode wins and the history of the method are in bench/README.md.

Pipelines:
    decode floor        load_dataset(decode=True): read + full-resolution decode, nothing else.
    zipped baseline     five independently shuffled crop datasets zipped, as a first attempt often
                        does: squash-resize, 23-px blur, jitter s=0.5, its tf.data options.
    kitlib host         multicrop(decode=False records, augment="host"): one decode, full SwAV
                        augmentation on the host; "max_upscale=1" decodes windows at full resolution.
    kitlib device       multicrop(..., augment="device"): the host part when ColorAugment runs in
                        the train step; "+ColorAugment here" runs that layer on this CPU too.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from kitlib import runtime  # noqa: E402
from kitlib.data import tfrecords, writing
from kitlib.data.sample import draw_leaf  # noqa: E402
from kitlib.swav import color, geometry, multicrop

HEIGHT, WIDTH = 600, 800     # Cassava's image size
JPEG_QUALITY = 92            # with the noise below: ~115 KB per image, like the competition's files
NOISE_STD = 3.0              # extra sensor noise (grey levels): real photos are not smooth
NUM_LEAVES = 8               # distinct drawings; every image is a shifted/flipped/noised copy
BATCH = 32                   # the zipped baseline's batch size
WARM_IMAGES = 4 * BATCH      # untimed start of every pass (see one_pass)
ZIPPED_SHUFFLE = 1024        # the zipped baseline's shuffle buffer per loader
AUTO = tf.data.AUTOTUNE
ZIPPED_ROW = "zipped baseline: 2x224+3x96 loaders"


def write_shards(out_dir, n, seed=0):
    """n 800x600 JPEGs in 4 shards; returns the shard paths."""
    rng = np.random.default_rng(seed)
    leaves = [draw_leaf(i % 5, np.random.default_rng([seed, i]), HEIGHT, WIDTH) for i in range(NUM_LEAVES)]

    def examples():
        for i in range(n):
            image = np.roll(leaves[i % NUM_LEAVES], (rng.integers(HEIGHT), rng.integers(WIDTH)), axis=(0, 1))
            image = image[:, ::-1] if rng.random() < 0.5 else image
            noisy = np.clip(image + rng.normal(0, NOISE_STD, image.shape), 0, 255).astype(np.uint8)
            jpeg = tf.io.encode_jpeg(noisy, quality=JPEG_QUALITY).numpy()
            yield {"image": jpeg, "image_name": f"{i}.jpg", "target": i % 5}

    return writing.write_tfrecords(examples(), out_dir, shard_size=-(-n // 4))


# ============ the zipped baseline: five independently shuffled crop datasets zipped ============

ZIPPED_RESIZE = {224: 260, 96: 160}   # the baseline squashes the whole image to this square first
ZIPPED_BLUR_KERNEL = 23               # for every crop size
ZIPPED_JITTER_STRENGTH = 0.5


# Every helper is a tf.function, as a first attempt writes them (nested functions cost it ~3 % more CPU).

@tf.function
def _zipped_apply(fn, x, p):
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)


@tf.function
def _zipped_blur(x):
    sigma = tf.random.uniform([], 0.1, 2.0)
    r = ZIPPED_BLUR_KERNEL // 2
    taps = tf.exp(-tf.square(tf.range(-r, r + 1, dtype=tf.float32)) / (2 * sigma**2))
    taps = tf.tile((taps / tf.reduce_sum(taps))[:, None, None, None], [1, 1, 3, 1])
    y = tf.nn.depthwise_conv2d(x[None], taps, [1, 1, 1, 1], "SAME")                       # zero padding
    y = tf.nn.depthwise_conv2d(y, tf.transpose(taps, [1, 0, 2, 3]), [1, 1, 1, 1], "SAME")
    return y[0]


@tf.function
def _zipped_jitter(x, s=ZIPPED_JITTER_STRENGTH):
    x = tf.image.random_brightness(x, 0.8 * s)                     # fixed order, additive brightness
    x = tf.image.random_contrast(x, 1 - 0.8 * s, 1 + 0.8 * s)
    x = tf.image.random_saturation(x, 1 - 0.8 * s, 1 + 0.8 * s)
    x = tf.image.random_hue(x, 0.2 * s)
    return tf.clip_by_value(x, 0.0, 1.0)


@tf.function
def _zipped_gray(x):
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])


@tf.function
def _zipped_augment(crop):
    crop = _zipped_apply(tf.image.flip_left_right, crop, 0.5)
    crop = _zipped_apply(_zipped_blur, crop, 0.5)
    crop = _zipped_apply(_zipped_jitter, crop, 0.8)
    return _zipped_apply(_zipped_gray, crop, 0.2)


@tf.function
def _zipped_resize_crop(image, min_scale, max_scale, size):
    side = ZIPPED_RESIZE[size]
    image = tf.image.resize(image, [side, side])                                  # squashed to a square
    edge = tf.cast(tf.random.uniform([], min_scale * side, max_scale * side), tf.int32)  # side, not area
    return tf.image.resize(tf.image.random_crop(image, [edge, edge, 3]), [size, size])


@tf.function
def _zipped_crop(example, size, min_scale, max_scale):
    image = tf.image.convert_image_dtype(example["image"], tf.float32)
    return _zipped_augment(_zipped_resize_crop(image, min_scale, max_scale, size))


def _zipped_record(serialized):
    """The baseline's read_tfrecord: parse, decode the JPEG (no checks)."""
    example = tf.io.parse_single_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string),
                                                      "target": tf.io.FixedLenFeature([], tf.int64)})
    return {"image": tf.image.decode_jpeg(example["image"], channels=3), "label": tf.cast(example["target"], tf.int32)}


def zipped_load(files):
    """The baseline's load_dataset: shards read interleaved in any order, each record parsed and decoded."""
    options = tf.data.Options()
    options.deterministic = False
    records = tf.data.TFRecordDataset(files, num_parallel_reads=AUTO).with_options(options)
    return records.map(_zipped_record, num_parallel_calls=AUTO)


def zipped_pipeline(files, config=geometry.FIVE_CROPS):
    """The zipped baseline over ``files`` read endlessly: batches of 32, one crop per loader, each crop
    from a different image (why that cannot train: notebooks/03_visualize_crops.ipynb; here it is only
    timed)."""
    options = tf.data.Options()
    options.deterministic = False
    options.threading.max_intra_op_parallelism = 1
    source = zipped_load(files).repeat()   # iterated once per loader: five reads, five decodes
    loaders = []
    for size, count, lo, hi in zip(config.size_crops, config.num_crops, config.min_scale, config.max_scale):
        for _ in range(count):
            loader = source.shuffle(ZIPPED_SHUFFLE).map(lambda ex, s=size, a=lo, b=hi: _zipped_crop(ex, s, a, b),
                                                        num_parallel_calls=AUTO)
            loaders.append(loader.with_options(options))
    return tf.data.Dataset.zip(tuple(loaders)).batch(BATCH).prefetch(AUTO)


# ============ the device mode's colour work, here on the CPU ============

def color_step(layer):
    """A ``per_batch`` step that runs ``layer`` (`kitlib.swav.color.ColorAugment`) on a batch of crops as the JAX
    train step does: jitted, its SeedGenerator state threaded through ``stateless_call`` (fresh draws
    every batch), fed numpy (``.numpy()`` of the tf.data batch); it waits for the result and returns
    it (a list of float32 [B, S, S, 3] jax arrays)."""
    import jax

    apply = jax.jit(lambda state, crops: layer.stateless_call([], state, crops, training=True))
    state = [v.value for v in layer.non_trainable_variables]

    def step(batch):
        nonlocal state
        out, state = apply(state, [crops.numpy() for crops in batch])
        return jax.block_until_ready(out)

    return step


# ============ timing ============

def _images_in(element):
    """Source images in one element: a batch of crops (tuple of [B, S, S, 3]) or one decoded record."""
    return 1 if isinstance(element, dict) else int(element[0].shape[0])


def one_pass(dataset, n_images=None, per_batch=None, warm_images=WARM_IMAGES, seconds=None):
    """(source images/s, CPU ms per image, start-up s) of one pass over a fresh iterator.

    The first ``warm_images`` are the start-up, untimed: building the iterator (instantiating and
    optimising the map functions: ~0.3 s for the kit's host mode), starting its threads and filling
    its buffers (the zipped baseline's five 1024-image shuffle buffers). Then the steady state that
    training runs in is timed (kitlib.swav.pretrain reads one iterator over ``records.repeat()`` for the
    whole run; the baseline's loop makes a fresh one per ~14k-image epoch): ``n_images`` images, or as
    many as come in ``seconds``, whichever is reached first. A finite dataset must hold more than that, so that
    no shuffle buffer drains in the window; the bench reads its shards endlessly.
    CPU time is this process's user + system time over the window (all threads).
    """
    if n_images is None and seconds is None:
        raise ValueError("one_pass needs n_images or seconds (or both)")
    step = per_batch or (lambda element: element)
    start = time.perf_counter()
    iterator, seen = iter(dataset), 0

    def take():
        element = next(iterator, None)
        if element is None:
            raise ValueError(f"the dataset ended after {seen} images, before {warm_images} + "
                             f"{n_images if n_images is not None else f'{seconds} s of'}: give it more records")
        step(element)
        return _images_in(element)

    while seen < warm_images:
        seen += take()
    start_up, warm = time.perf_counter() - start, seen
    start, start_cpu = time.perf_counter(), time.process_time()
    while ((n_images is None or seen - warm < n_images)
           and (seconds is None or time.perf_counter() - start < seconds)):
        seen += take()
    timed = seen - warm
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return timed / wall, cpu * 1000 / timed, start_up


def pipelines(shards):
    """The rows to time: (name, endless dataset of batches, per-batch step or None), the floor and the
    zipped baseline first."""
    records = tfrecords.load_dataset(shards, decode=False).repeat()
    color_on_cpu = color_step(color.ColorAugment())
    rows = [
        ("decode floor (full res, default IDCT)", tfrecords.load_dataset(shards, decode=True).repeat(), None),
        (ZIPPED_ROW, zipped_pipeline(shards), None),
    ]
    for name, config in (("FIVE_CROPS 2x224+3x96", geometry.FIVE_CROPS),
                         ("SWAV_PAPER 2x224+6x96", geometry.SWAV_PAPER)):
        host = multicrop.batch_crops(multicrop.multicrop(records, config, augment="host"), BATCH)
        device = multicrop.batch_crops(multicrop.multicrop(records, config, augment="device"), BATCH)
        rows += [(f"kitlib host, {name}", host.prefetch(AUTO), None)]
        if config is geometry.FIVE_CROPS:  # the decode-scale policy off: every window at full resolution
            full = multicrop.multicrop(records, config, augment="host", max_upscale=1.0)
            full = multicrop.batch_crops(full, BATCH).prefetch(AUTO)
            rows += [(f"kitlib host max_upscale=1, {name}", full, None)]
        rows += [(f"kitlib device (host part), {name}", device.prefetch(AUTO), None)]
        if config is geometry.FIVE_CROPS:
            rows += [(f"kitlib device +ColorAugment here, {name}", device.prefetch(AUTO), color_on_cpu)]
    return rows


def print_summary(passes, floor_row):
    """The table of every pipeline's passes, then each kitlib row against the zipped baseline and the
    decode floor."""
    print(f"\n{'pipeline':56s} {'images/s (median)':>18s} {'CPU ms/image':>13s} {'start-up s':>11s}")
    for name, runs in passes.items():
        best = max(runs)
        print(f"{name:56s} {best[0]:9.0f} ({np.median([r[0] for r in runs]):5.0f}) {best[1]:13.2f} "
              f"{np.median([r[2] for r in runs]):11.2f}")
    floor, zipped = passes[floor_row], passes[ZIPPED_ROW]
    print("\nspeed-up vs the zipped baseline and fraction of the full-resolution decode floor, each the median "
          "over the rounds of the ratio within a round, by wall time (by CPU time in brackets):")
    for name, runs in passes.items():
        if name.startswith("kitlib"):
            (zip_wall, zip_cpu), (floor_wall, floor_cpu) = within_rounds(runs, zipped), within_rounds(runs, floor)
            print(f"{name:56s} {zip_wall:5.1f}x ({zip_cpu:4.1f}x) zipped  {floor_wall:5.2f} ({floor_cpu:4.2f}) floor")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="800x600 images to write (default 512)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed seconds per pass, after its start-up; the shards are read endlessly (default 10)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per pipeline (default 3)")
    parser.add_argument("--intra-op-threads", default="both", choices=["both", "0", "1"],
                        help="threads per CPU op: 1 is what runtime.configure_host_threads sets on a GPU/TPU "
                             "host, whose CPUs only feed the accelerator; 0 is TensorFlow's default (one per "
                             "core); both (default): one run with each, in two processes, then the kit at 1 "
                             "against the zipped baseline at its faster setting")
    parser.add_argument("--pool-threads", default=None, metavar="N,N,...",
                        help="instead: the kit's device-mode pipeline (its host part) at each private pool size, "
                             "images/s against threads (what kitlib.runtime.input_threads chooses from)")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # where a child run leaves its passes
    args = parser.parse_args(argv)
    if args.pool_threads:
        return sweep_pool_threads([int(n) for n in args.pool_threads.split(",")], args)
    if args.intra_op_threads == "both":
        return compare_thread_settings(argv or sys.argv[1:])
    threads = runtime.configure_host_threads(int(args.intra_op_threads), verbose=False)
    written = args.images - args.images % BATCH
    print(f"machine: {runtime.usable_cores()} of {os.cpu_count()} CPU cores usable, TensorFlow {tf.__version__}, "
          f"{threads or 'default (one per core)'} thread(s) per CPU op, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shards = write_shards(tmp, written)
        size_kb = sum(os.path.getsize(f) for f in shards) / written / 1024
        print(f"wrote {written} {WIDTH}x{HEIGHT} JPEGs ({size_kb:.0f} KB each) in {time.perf_counter() - t0:.0f} s; "
              f"passes of {WARM_IMAGES} untimed images + {args.seconds:g} s timed, the shards read endlessly\n")
        rows = pipelines(shards)
        passes = {name: [] for name, _, _ in rows}
        for round_ in range(args.passes):  # rounds of one pass per pipeline: drifts hit all alike
            for name, dataset, step in rows:
                passes[name].append(one_pass(dataset, per_batch=step, seconds=args.seconds))
            print(f"round {round_ + 1}/{args.passes}: " + ", ".join(
                f"{run[0]:.0f}" for run in (passes[name][-1] for name, _, _ in rows)) + " images/s", flush=True)
    print_summary(passes, floor_row=rows[0][0])
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rows": [name for name, _, _ in rows], "passes": passes}, out)


def sweep_pool_threads(sizes, args):
    """Images/s (CPU ms per image) of the device-mode FIVE_CROPS pipeline's host part at each pool size, in
    rounds of one pass per size (drifts hit all alike), at 1 thread per CPU op as on an accelerator host."""
    runtime.configure_host_threads(1, verbose=False)
    cores, nodes = runtime.usable_cores(), runtime.numa_nodes()
    print(f"machine: {cores} usable cores in {nodes} NUMA node(s); the kit would choose "
          f"{runtime.input_threads(cores, 0, nodes)} threads with no chip, "
          f"{runtime.input_threads(cores, 8, nodes)} for 8 chips")
    written = args.images - args.images % BATCH
    with tempfile.TemporaryDirectory() as tmp:
        records = tfrecords.load_dataset(write_shards(tmp, written), decode=False).repeat()
        runs = {n: [] for n in sizes}
        for round_ in range(args.passes):
            for n in sizes:
                options = tf.data.Options()
                options.threading.private_threadpool_size = n
                device = multicrop.batch_crops(multicrop.multicrop(records, geometry.FIVE_CROPS, augment="device"),
                                               BATCH).prefetch(AUTO).with_options(options)
                runs[n].append(one_pass(device, seconds=args.seconds))
            print(f"round {round_ + 1}/{args.passes}: " + ", ".join(f"{n}: {runs[n][-1][0]:.0f}" for n in sizes),
                  flush=True)
    print(f"\n{'pool threads':>12s} {'images/s (best, median)':>24s} {'CPU ms/image':>13s}")
    for n in sizes:
        print(f"{n:12d} {max(runs[n])[0]:12.0f} ({np.median([r[0] for r in runs[n]]):6.0f}) {max(runs[n])[1]:13.2f}")


def within_rounds(runs, reference):
    """(wall, CPU) speed-up of ``runs`` over ``reference``: medians over the rounds of the ratio of
    images/s and of the inverse ratio of CPU ms, each within one round."""
    pairs = list(zip(runs, reference))
    return (float(np.median([run[0] / ref[0] for run, ref in pairs])),
            float(np.median([ref[1] / run[1] for run, ref in pairs])))


def compare_thread_settings(argv):
    """Run the bench at 0 (TensorFlow's default) and at 1 thread per CPU op, each in its own process
    (the setting is fixed once TensorFlow starts), then set the kit at 1 -- what it uses on an
    accelerator host -- against the zipped baseline at whichever setting suits it better."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in ("0", "1"):
            print(f"\n===== {threads if threads == '1' else 'default'} thread(s) per CPU op =====", flush=True)
            path = os.path.join(tmp, f"{threads}.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--intra-op-threads", threads,
                            "--json", path], check=True)
            with open(path) as f:
                runs[threads] = json.load(f)
    best = lambda threads, name: max(tuple(p) for p in runs[threads]["passes"][name])  # noqa: E731
    zipped_threads = max(("0", "1"), key=lambda t: best(t, ZIPPED_ROW)[0])
    zipped = best(zipped_threads, ZIPPED_ROW)
    print(f"\nthe kit at 1 thread per CPU op against the zipped baseline at its faster setting "
          f"({'default' if zipped_threads == '0' else '1'} thread(s) per op: {zipped[0]:.0f} images/s, "
          f"{zipped[1]:.2f} CPU ms), "
          "best passes, by wall time (by CPU time in brackets):")
    for name in runs["1"]["rows"]:
        if name.startswith("kitlib"):
            rate, cpu = best("1", name)[:2]
            print(f"{name:56s} {rate / zipped[0]:5.1f}x ({zipped[1] / cpu:4.1f}x) zipped")


if __name__ == "__main__":
    main()
