"""bench/pipeline_stages.py: each stage really stops where it says, and the table's arithmetic
(the figures themselves are printed by the bench, never tested)."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib.data import tfrecords, writing
from kitlib.swav import geometry
from tests.conftest import load_bench

CONFIG = geometry.MultiCropConfig.from_spec("1x32@0.3-1,2x16@0.05-0.3")
SHADES = (40, 120, 200)  # one solid grey per image: a JPEG keeps it within a grey level or two


@pytest.fixture(scope="module")
def stages():
    return load_bench("pipeline_stages")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    def examples():
        for i, shade in enumerate(SHADES):
            image = np.full([60, 80, 3], shade, np.uint8)
            yield {"image": tf.io.encode_jpeg(image).numpy(), "image_name": f"{i}.jpg", "target": i}

    return writing.write_tfrecords(examples(), str(tmp_path_factory.mktemp("stages")), shard_size=2)


@pytest.mark.slow
def test_every_stage_hands_the_batch_the_host_modes_shapes(stages, shards):
    pipelines = stages.stage_pipelines(shards, CONFIG)
    assert list(pipelines) == [*stages.STAGES, stages.FLOOR]
    for name in stages.STAGES:
        batch = next(iter(pipelines[name]))
        assert [tuple(crops.shape) for crops in batch] == [(stages.BATCH, s, s, 3) for s in CONFIG.crop_sizes], name
        assert all(crops.dtype == tf.float32 for crops in batch)
    assert next(iter(pipelines[stages.FLOOR]))[0].shape == (stages.BATCH, 3)  # one pixel per decoded image


@pytest.mark.slow
def test_the_first_stages_stop_before_and_after_the_decode(stages, shards):
    lengths = {len(record["image"].numpy()) for record in tfrecords.load_dataset(shards, decode=False)}
    pipelines = stages.stage_pipelines(shards, CONFIG)
    parsed = next(iter(pipelines[stages.STAGES[0]]))                 # every crop: the JPEG's length in bytes
    assert len(parsed) == CONFIG.total_crops and set(np.unique(parsed[0]).tolist()) <= lengths
    decoded = next(iter(pipelines[stages.STAGES[1]]))[0][:, 0, 0, 0].numpy()
    # the pixel read (an image's grey, within a level or two) plus the first window's top (< 60): each
    # value lies in the band of one shade, so the decode ran
    assert all(any(-2 <= value - shade < 60 for shade in SHADES) for value in decoded)


def test_report_gives_medians_and_what_each_stage_adds(stages):
    cpu = {stages.STAGES[0]: [0.5, 0.4, 0.6], stages.STAGES[1]: [2.0, 2.2, 1.9], stages.STAGES[2]: [2.6, 2.7, 2.5],
           stages.STAGES[3]: [3.2, 3.1, 3.3], stages.STAGES[4]: [4.0, 3.9, 4.2], stages.FLOOR: [2.1, 2.0, 2.3]}
    rows = {line[:28].strip(): line[28:].split() for line in stages.report(cpu).splitlines()[1:]}
    assert rows[stages.STAGES[0]] == ["0.50", "0.50"]
    assert rows[stages.STAGES[1]] == ["2.00", "1.50"]
    assert rows[stages.STAGES[2]] == ["2.60", "0.60"]
    assert rows[stages.STAGES[3]] == ["3.20", "0.60"]
    assert rows[stages.STAGES[4]] == ["4.00", "0.80"]
    assert rows[stages.FLOOR] == ["2.10"]


@pytest.mark.slow
def test_measure_times_every_stage_once_per_round(stages, shards):
    pipelines = stages.stage_pipelines(shards, CONFIG)
    cpu = stages.measure(pipelines, rounds=2, seconds=0.05, rng=np.random.default_rng(0))
    assert list(cpu) == list(pipelines) and all(len(runs) == 2 and min(runs) > 0 for runs in cpu.values())
