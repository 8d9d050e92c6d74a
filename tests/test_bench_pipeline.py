"""bench/pipeline.py's timing helpers (the figures themselves are printed by the bench, never tested)."""

import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("pipeline")


def test_one_pass_times_the_images_after_the_start_up(bench):
    seen = []
    batches = tf.data.Dataset.range(100).map(lambda i: (tf.fill([4, 2, 2, 3], tf.cast(i, tf.float32)),))
    rate, cpu_ms, start_up = bench.one_pass(batches, 20, per_batch=lambda b: seen.append(int(b[0][0, 0, 0, 0])),
                                            warm_images=8)
    assert seen == list(range(7))               # 2 batches of start-up, then 5 timed batches of 4 images
    assert rate > 0 and cpu_ms >= 0 and start_up > 0
    records = tf.data.Dataset.range(25).map(lambda i: {"image": tf.zeros([3, 3, 3], tf.uint8)})
    with pytest.raises(ValueError, match="ended after 25 images"):  # a decoded record counts as one image
        bench.one_pass(records, 20, warm_images=8)


def test_one_pass_says_when_the_dataset_is_too_short(bench):
    batches = tf.data.Dataset.range(3).map(lambda i: (tf.zeros([4, 2, 2, 3]),))
    with pytest.raises(ValueError, match="ended after 12 images, before 4 \\+ 20"):
        bench.one_pass(batches, 20, warm_images=4)


def test_one_pass_can_time_a_fixed_duration(bench):
    batches = tf.data.Dataset.range(1000).map(lambda i: (tf.zeros([4, 2, 2, 3]),))
    calls = []
    rate, _, _ = bench.one_pass(batches, per_batch=lambda b: (calls.append(1), time.sleep(0.02)), warm_images=4,
                                seconds=0.2)
    assert 6 <= len(calls) - 1 <= 40             # ~0.2 s of 0.02-s batches, far short of the 250 on offer
    assert 4 * 10 <= rate <= 4 / 0.02 * 1.05     # images/s of what was timed, never faster than the sleeps allow
    with pytest.raises(ValueError, match="before 4 \\+ 5 s of"):
        bench.one_pass(batches.take(3), warm_images=4, seconds=5)
    with pytest.raises(ValueError, match="needs n_images or seconds"):
        bench.one_pass(batches)


def test_within_rounds_is_the_median_of_per_round_ratios(bench):
    runs = [(400.0, 4.0, 0.3), (300.0, 5.0, 0.3), (500.0, 4.0, 0.3)]
    zipped = [(100.0, 16.0, 8.0), (100.0, 20.0, 8.0), (100.0, 18.0, 8.0)]
    wall, cpu = bench.within_rounds(runs, zipped)
    assert wall == pytest.approx(4.0) and cpu == pytest.approx(np.median([4.0, 4.0, 4.5]))


def test_color_step_runs_the_layer_jitted_on_tf_batches_with_fresh_draws(bench):
    from kitlib.swav import color

    step = bench.color_step(color.ColorAugment(seed=0, jitter_p=1.0, blur_p=0.0))  # "+ColorAugment here"
    batch = (tf.fill([4, 8, 8, 3], 0.5) + tf.range(3, dtype=tf.float32) / 10, tf.fill([4, 4, 4, 3], 0.3))
    first, second = step(batch), step(batch)
    assert [tuple(c.shape) for c in first] == [(4, 8, 8, 3), (4, 4, 4, 3)] and first[0].dtype == "float32"
    assert all(0.0 <= float(c.min()) and float(c.max()) <= 1.0 for c in first)
    assert not np.allclose(first[0], second[0]), "every batch draws anew"
