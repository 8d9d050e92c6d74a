"""kitlib.swav.multicrop: every crop of an example from one image, decoded once, static shapes, seeded."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib import runtime
from kitlib.data import tfrecords, writing
from kitlib.swav import geometry as swav_geometry
from kitlib.swav import multicrop
from kitlib.swav.geometry import MultiCropConfig

SMALL = MultiCropConfig.from_spec("2x32@0.14-1,3x16@0.05-0.14")  # SwAV's scales, tiny crops: fast

def _colour(i):
    """A distinct RGB colour per example index, >= 40 levels apart from the others in some channel."""
    return np.array([30 + 45 * (i % 5), 30 + 45 * ((i // 5) % 5), 200 - 40 * (i // 25)], np.uint8)

def _solid(i, h=60, w=80):
    """A solid image: every crop of it, resized and flipped, still shows its colour (the source's id)."""
    return np.broadcast_to(_colour(i), (h, w, 3)).copy()

def _source_of(crop):
    """Index of the colour a crop shows, asserting the crop is uniform (came from one solid image)."""
    crop = np.asarray(crop) * 255.0
    assert crop.std(axis=(0, 1)).max() < 2.0, "a crop mixes several images"
    colours = np.stack([_colour(i) for i in range(50)]).astype(np.float32)
    distances = np.abs(colours - crop.mean(axis=(0, 1))).max(axis=1)
    assert distances.min() < 4.0, f"crop colour {crop.mean(axis=(0, 1))} is no source's colour"
    return int(distances.argmin())

@pytest.fixture(scope="module")
def solid_shards(tmp_path_factory):
    """12 solid-colour JPEG records in 2 shards, label = colour index."""
    out = tmp_path_factory.mktemp("solid")
    return writing.write_tfrecords(({"image": _solid(i), "image_name": f"{i}.jpg", "target": i % 5}
                                 for i in range(12)), str(out), shard_size=6)

def test_crops_of_one_example_share_the_source_image(solid_shards):
    records = tfrecords.load_dataset(solid_shards, decode=False, ordered=True)
    batches = multicrop.multicrop_batches(records, SMALL, batch_size=4, augment="device", shuffle_buffer=12, seed=1)
    seen = []
    for crops in batches:
        assert len(crops) == SMALL.total_crops
        for row in range(4):
            sources = {_source_of(crop[row]) for crop in crops}
            assert len(sources) == 1, f"row {row} mixes images {sources}"
            seen.extend(sources)
    assert sorted(seen) == list(range(12)), "each record must appear exactly once per epoch"
    assert seen != list(range(12)), "records should be shuffled"

def test_crops_come_from_decoded_dicts_plain_images_and_png_bytes():
    images = [_solid(i) for i in range(3)]
    sources = {
        "decoded dicts": tf.data.Dataset.from_tensor_slices({"image": np.stack(images), "label": [0, 1, 2]}),
        "uint8 images": tf.data.Dataset.from_tensor_slices(np.stack(images)),
        "float images": tf.data.Dataset.from_tensor_slices(np.stack(images).astype(np.float32) / 255.0),
        "png bytes": tf.data.Dataset.from_tensor_slices([tf.io.encode_png(im).numpy() for im in images]),
    }
    for name, dataset in sources.items():
        for i, crops in enumerate(multicrop.multicrop(dataset, SMALL, augment="none", seed=0)):
            assert [c.shape[0] for c in crops] == list(SMALL.crop_sizes), name
            assert {_source_of(c) for c in crops} == {i}, name

def test_augmented_crops_are_float32_in_unit_range_big_first(solid_shards):
    records = tfrecords.load_dataset(solid_shards, decode=False, ordered=True)
    batch = next(iter(multicrop.multicrop_batches(records, SMALL, batch_size=6, augment="host", seed=0)))
    assert [tuple(c.shape) for c in batch] == [(6, s, s, 3) for s in SMALL.crop_sizes]
    for crop in batch:
        assert crop.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(crop)) and float(tf.reduce_max(crop)) <= 1.0

def test_batches_have_static_shapes_and_drop_the_remainder(solid_shards):
    records = tfrecords.load_dataset(solid_shards, decode=False)
    batches = multicrop.multicrop_batches(records, SMALL, batch_size=5, augment="none", shuffle_buffer=0)
    assert [tuple(spec.shape) for spec in batches.element_spec] == [(5, s, s, 3) for s in SMALL.crop_sizes]
    assert sum(1 for _ in batches) == 12 // 5

@pytest.mark.parametrize("spec, scale, tolerance", [
    ("1x300@0.3-1", 1, 1e-6),               # 300-px crops need full resolution: window decode, exact
    ("2x32@0.3-1,2x16@0.05-0.1", 4, 0.05),  # windows >= 4x their crops: 1/4 or 1/8 scale decode
])
def test_jpeg_window_decode_gives_the_crops_of_a_full_decode(spec, scale, tolerance):
    yy, xx = np.mgrid[0:480, 0:640]
    smooth = np.stack([128 + 100 * np.sin(xx / 47.0), 128 + 100 * np.cos(yy / 31.0), np.full_like(xx, 90)], -1)
    jpeg = tf.io.encode_jpeg(smooth.astype(np.uint8), quality=95)
    config = MultiCropConfig.from_spec(spec)
    for i in range(3):
        seed = tf.constant([4, i], tf.int64)
        boxes = swav_geometry.sample_crop_boxes((480, 640), 1, (0.3, 1.0), seed=i)
        index = int(multicrop.jpeg_scale_index(boxes, tf.constant(config.size_crops[:1], tf.float32), (480, 640)))
        assert (multicrop.JPEG_SCALES[index] >= scale) if scale > 1 else index == 0
        from_bytes = multicrop.multicrop_example(jpeg, config, augment="none", seed=seed, dct_method="",
                                               max_upscale=1.0)  # full quality: windows keep their crop's size
        from_pixels = multicrop.multicrop_example(tf.io.decode_jpeg(jpeg), config, augment="none", seed=seed)
        for a, b in zip(from_bytes, from_pixels):  # same windows (whole pixels of the decoded scale)
            assert float(tf.reduce_mean(tf.abs(a - b))) <= tolerance

@pytest.mark.parametrize("max_upscale, usual_ratio", [(2.0, 2), (1.0, 1)])
def test_decode_scale_of_an_800x600_jpeg_follows_max_upscale(max_upscale, usual_ratio):
    config, shape = swav_geometry.SWAV_PAPER, (600, 800)
    sizes = np.array(config.crop_sizes, np.float32)
    ratios = []
    for i in range(100):
        boxes = tf.concat([swav_geometry.sample_crop_boxes(shape, n, (lo, hi), seed=[i, g]) for g, (n, lo, hi)
                           in enumerate(zip(config.num_crops, config.min_scale, config.max_scale))], 0)
        ratio = multicrop.JPEG_SCALES[int(multicrop.jpeg_scale_index(boxes, sizes, shape, max_upscale))]
        sides = np.minimum(boxes[:, 2], boxes[:, 3]) / ratio                 # window sides, decoded pixels
        assert (sizes / sides <= max_upscale + 1e-4).all(), "a crop is upsampled more than max_upscale"
        ratios.append(ratio)
    assert min(ratios) == usual_ratio and np.mean(np.equal(ratios, usual_ratio)) >= 0.9
    assert multicrop.MAX_UPSCALE == 2.0  # the default: 800x600 decodes at 1/2 (400x300) with SwAV's crops

def test_flipped_crops_are_the_mirror_images_of_the_crops():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 50, 3)), tf.uint8)
    config = MultiCropConfig.from_spec("8x16@0.3-1")                   # windows often touch an edge
    seed = tf.constant([5, 1], tf.int64)
    plain = multicrop.multicrop_example(image, config, augment="none", seed=seed)
    flipped = multicrop.multicrop_example(image, config, augment="device", seed=seed)  # the same windows, flipped
    mirrored = [not np.allclose(a, b, atol=1e-4) for a, b in zip(plain, flipped)]
    for a, b, m in zip(plain, flipped, mirrored):                      # the window flipped = the crop flipped
        np.testing.assert_allclose(b, tf.reverse(a, [1]) if m else a, atol=1e-4)
    assert 0 < sum(mirrored) < len(mirrored)

def test_same_seed_same_crops_other_seed_other_crops():
    texture = tf.data.Dataset.from_tensor_slices(tf.random.stateless_uniform([3, 40, 50, 3], [1, 2]))
    config = MultiCropConfig.from_spec("1x16@0.14-1,1x8@0.05-0.14")

    def crops(dataset):
        return [c.numpy() for element in dataset for c in element]

    seven = multicrop.multicrop(texture, config, augment="host", seed=7)
    first, again = crops(seven), crops(multicrop.multicrop(texture, config, augment="host", seed=7))
    other = crops(multicrop.multicrop(texture, config, augment="host", seed=8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert not any(np.array_equal(a, b) for a, b in zip(first, crops(seven))), "each epoch draws new crops"

def _rate(flags):
    return float(np.mean(np.asarray(flags)))

def test_host_multicrop_grays_about_a_fifth_of_the_crops():
    images = tf.data.Dataset.from_tensor_slices(np.stack([_solid(i % 50) for i in range(200)]))
    crops = next(iter(multicrop.multicrop(images, SMALL, augment="host", seed=3).batch(200)))
    gray = [tf.reduce_max(tf.abs(c - tf.reduce_mean(c, -1, keepdims=True)), axis=[1, 2, 3]) < 1e-5 for c in crops]
    assert abs(_rate(tf.concat(gray, 0)) - 0.2) < 0.05   # 1000 crops: standard error 0.013

def test_multicrop_runs_on_a_private_pool_sized_for_the_host():
    images = tf.data.Dataset.from_tensor_slices(np.stack([_solid(i) for i in range(4)]))
    crops = multicrop.batch_crops(multicrop.multicrop(images, SMALL, augment="none", seed=0), 2)
    here = runtime.input_threads(runtime.usable_cores(), runtime.local_chips(), runtime.numa_nodes())
    assert crops.options().threading.private_threadpool_size == here >= 4
    pool = lambda **host: multicrop.pipeline_options(**host).threading.private_threadpool_size  # noqa: E731
    assert pool(cores=96, chips=0, nodes=1) == 16 and pool(cores=224, chips=8, nodes=2) == 80
    assert len(list(crops)) == 2                                   # and it runs

@pytest.mark.slow
def test_encoded_images_are_decoded_once_jpeg_or_png():
    fn = tf.function(lambda b: multicrop.multicrop_example(b, SMALL, augment="host", seed=tf.constant([1, 2])))
    graph = fn.get_concrete_function(tf.TensorSpec([], tf.string)).graph.as_graph_def()
    ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    assert ops.count("DecodeImage") == 1                            # PNG/GIF/BMP: one full decode
    assert ops.count("DecodeAndCropJpeg") == len(multicrop.JPEG_SCALES)  # one per scale, one runs

def test_bad_inputs_raise_a_clear_error():
    with pytest.raises(ValueError, match="no 'image' key"):
        multicrop.multicrop(tf.data.Dataset.from_tensor_slices({"pixels": tf.zeros([2, 8, 8, 3])}), SMALL)
    with pytest.raises(ValueError, match="RGB images"):
        multicrop.multicrop(tf.data.Dataset.from_tensor_slices(tf.zeros([2, 8, 8, 1])), SMALL)
    with pytest.raises(ValueError, match="augment must be"):
        multicrop.multicrop(tf.data.Dataset.from_tensor_slices(tf.zeros([2, 8, 8, 3])), SMALL, augment="gpu")
    with pytest.raises(ValueError, match="flip_p"):
        MultiCropConfig((32,), (1,), (0.5,), (1.0,), flip_p=1.5)
