"""Where the host mode's CPU time goes: multicrop(augment="host") cut short stage by stage.

    .venv/bin/python bench/pipeline_stages.py [--images 256] [--seconds 6] [--rounds 5] [--intra-op-threads 1]

The shards of bench/pipeline.py (800x600 JPEGs, ~115 KB each), read endlessly. Every stage is a whole
pipeline, as the host mode runs it (read, parse, one map call per image on the kit's private pool,
batches of 32, prefetch), that stops one step further along:

    read + parse + batch        load_dataset(decode=False), then crops of the right shapes filled
                                with a number from the record (writing and batching the crops)
    + decode                    + the kit's one decode per image: the window that holds every crop,
                                at the libjpeg scale that ``max_upscale`` allows (1/2 for 800x600)
    + crop, resize, flip        multicrop(augment="device"): the host part of the device mode
    + colour, gray              multicrop(augment="host", color=ColorConfig(blur_p=0))
    + blur                      multicrop(augment="host"): the host mode
    full-resolution decode      read + parse + decode at full resolution (bench/pipeline.py's floor)

Rounds of one pass per stage, in a fresh random order each round (so a slow spell of a shared machine
does not always hit the same stage); the table gives the median CPU ms per image and what each stage
adds to the one before it. Default: one thread per CPU op, the setting on an accelerator host
(`kitlib.runtime.configure_host_threads`). Takes 3-4 minutes on 2 cores.
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from kitlib import runtime  # noqa: E402
from kitlib.data import tfrecords
from kitlib.swav import geometry, multicrop
from kitlib.swav.color import SWAV_COLOR  # noqa: E402
from kitlib.swav.color_host import split_seed  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import BATCH, WARM_IMAGES, one_pass, write_shards  # noqa: E402

STAGES = ("read + parse + batch", "+ decode", "+ crop, resize, flip", "+ colour, gray", "+ blur")
FLOOR = "full-resolution decode"


def _filled_crops(config, value):
    """The crops' shapes [S, S, 3] float32, every pixel ``value``: what a stage hands to the batch."""
    return tuple(tf.fill([size, size, 3], value) for size in config.crop_sizes)


def _example_until(stage, config):
    """Map function (encoded JPEG, [2] seed) -> crops, cut short after ``stage`` (0 or 1)."""
    sizes = tf.constant(config.crop_sizes, tf.float32)

    def example(contents, seed):
        if stage == 0:
            return _filled_crops(config, tf.cast(tf.strings.length(contents), tf.float32))
        seeds = split_seed(seed, len(config.size_crops) + 2)  # as multicrop_example splits it
        pixels, boxes = multicrop._decode_window(contents, multicrop._window_sampler(config, seeds), sizes,
                                                 "INTEGER_FAST", multicrop.MAX_UPSCALE)
        return _filled_crops(config, tf.cast(pixels[0, 0, 0], tf.float32) + boxes[0, 0])  # needs the pixels

    return example


def stage_pipelines(files, config=geometry.FIVE_CROPS):
    """{name: dataset of batches}: the stages of the host mode and the full-resolution decode."""
    records = tfrecords.load_dataset(files, decode=False).repeat()
    pipelines = {}
    for stage in (0, 1):
        keys = tf.data.Dataset.random(rerandomize_each_iteration=True)
        example = _example_until(stage, config)
        crops = tf.data.Dataset.zip((multicrop._images_of(records), keys)).map(
            lambda contents, key, f=example: f(contents, tf.stack([key, tf.constant(1, tf.int64)])),
            num_parallel_calls=tfrecords.AUTOTUNE, deterministic=False).with_options(multicrop.pipeline_options())
        pipelines[STAGES[stage]] = crops
    pipelines[STAGES[2]] = multicrop.multicrop(records, config, augment="device")
    no_blur = dataclasses.replace(SWAV_COLOR, blur_p=0.0)
    pipelines[STAGES[3]] = multicrop.multicrop(records, config, augment="host", color=no_blur)
    pipelines[STAGES[4]] = multicrop.multicrop(records, config, augment="host")
    pipelines = {name: multicrop.batch_crops(crops, BATCH).prefetch(tfrecords.AUTOTUNE)
                 for name, crops in pipelines.items()}
    floor = tfrecords.load_dataset(files, decode=True).repeat().map(lambda el: el["image"][0, 0])
    pipelines[FLOOR] = floor.batch(BATCH).map(lambda pixel: (pixel,)).prefetch(tfrecords.AUTOTUNE)
    return pipelines


def measure(pipelines, rounds, seconds, rng):
    """{name: [CPU ms per image, one per round]}, passes in a fresh random order every round."""
    cpu = {name: [] for name in pipelines}
    for round_ in range(rounds):
        for name in rng.permutation(list(pipelines)):
            cpu[name].append(one_pass(pipelines[name], seconds=seconds)[1])
        print(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{cpu[name][-1]:.2f}" for name in pipelines)
              + " CPU ms per image", flush=True)
    return cpu


def report(cpu):
    """The table: median CPU ms per image of each stage and what it adds to the stage before."""
    lines = [f"{'stage':28s} {'CPU ms/image':>13s} {'added':>7s}"]
    before = 0.0
    for name in STAGES:
        median = float(np.median(cpu[name]))
        lines.append(f"{name:28s} {median:13.2f} {median - before:7.2f}")
        before = median
    lines.append(f"{FLOOR:28s} {float(np.median(cpu[FLOOR])):13.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="800x600 images to write (default 256)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per pass (default 6)")
    parser.add_argument("--rounds", type=int, default=5, help="passes per stage (default 5)")
    parser.add_argument("--intra-op-threads", type=int, default=1, choices=[0, 1],
                        help="threads per CPU op: 1 (default, an accelerator host's setting) or 0 (TensorFlow's default)")
    parser.add_argument("--crops", default=geometry.FIVE_CROPS.spec,
                        help=f"multi-crop spec (default the zipped baseline's {geometry.FIVE_CROPS.spec})")
    args = parser.parse_args(argv)
    threads = runtime.configure_host_threads(args.intra_op_threads, verbose=False)
    config = geometry.parse_multicrop_spec(args.crops)
    print(f"machine: {runtime.usable_cores()} of {os.cpu_count()} CPU cores usable, TensorFlow {tf.__version__}, "
          f"{threads or 'default (one per core)'} thread(s) per CPU op; crops {config.spec}; "
          f"passes of {WARM_IMAGES} untimed images + {args.seconds:g} s timed")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_shards(tmp, max(args.images - args.images % BATCH, BATCH))
        cpu = measure(stage_pipelines(files, config), args.rounds, args.seconds, np.random.default_rng(0))
    print("\n" + report(cpu), flush=True)
    return cpu


if __name__ == "__main__":
    main()
