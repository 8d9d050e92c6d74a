"""kitlib.augment: one source image per example, crop geometry, augmentation rates, determinism, specs."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib import augment, data, runtime
from kitlib.augment import MultiCropConfig

SMALL = MultiCropConfig.from_spec("2x32@0.14-1,3x16@0.05-0.14")  # SwAV's scales, tiny crops: fast
N_DRAWS = 4000     # draws per probability estimate: the standard error of a rate is <= 0.008
RATE_TOL = 0.03    # ~4 standard errors


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
    return data.write_tfrecords(({"image": _solid(i), "image_name": f"{i}.jpg", "target": i % 5}
                                 for i in range(12)), str(out), shard_size=6)


# ============ one source image per example ============

def test_crops_of_one_example_share_the_source_image(solid_shards):
    records = data.load_dataset(solid_shards, decode=False, ordered=True)
    batches = augment.multicrop_batches(records, SMALL, batch_size=4, augment="device", shuffle_buffer=12, seed=1)
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
        for i, crops in enumerate(augment.multicrop(dataset, SMALL, augment=False, seed=0)):
            assert [c.shape[0] for c in crops] == list(SMALL.crop_sizes), name
            assert {_source_of(c) for c in crops} == {i}, name


# ============ sizes, dtype, range ============

def test_augmented_crops_are_float32_in_unit_range_big_first(solid_shards):
    records = data.load_dataset(solid_shards, decode=False, ordered=True)
    batch = next(iter(augment.multicrop_batches(records, SMALL, batch_size=6, augment=True, seed=0)))
    assert [tuple(c.shape) for c in batch] == [(6, s, s, 3) for s in SMALL.crop_sizes]
    for crop in batch:
        assert crop.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(crop)) and float(tf.reduce_max(crop)) <= 1.0


def test_batches_have_static_shapes_and_drop_the_remainder(solid_shards):
    records = data.load_dataset(solid_shards, decode=False)
    batches = augment.multicrop_batches(records, SMALL, batch_size=5, augment=False, shuffle_buffer=0)
    assert [tuple(spec.shape) for spec in batches.element_spec] == [(5, s, s, 3) for s in SMALL.crop_sizes]
    assert sum(1 for _ in batches) == 12 // 5


# ============ geometry ============

@pytest.mark.parametrize("height, width", [(600, 800), (800, 600), (100, 1000)])
@pytest.mark.parametrize("scale", [(0.14, 1.0), (0.05, 0.14)])
def test_drawn_windows_keep_area_and_aspect_within_bounds(height, width, scale):
    boxes = augment.sample_crop_boxes((height, width), 5000, scale, seed=3).numpy()
    y0, x0, h, w = boxes.T
    area = h * w / (height * width)
    aspect = w / h
    assert (y0 >= 0).all() and (x0 >= 0).all()
    assert (y0 + h <= height + 1e-3).all() and (x0 + w <= width + 1e-3).all()
    assert (area <= scale[1] + 1e-5).all() and (3 / 4 - 1e-5 <= aspect).all() and (aspect <= 4 / 3 + 1e-5).all()
    fits = 4 / 3 * min(height, width) ** 2 / (height * width)  # largest area fraction with aspect <= 4/3
    if fits >= scale[1]:  # every drawn area fits: the area fraction is uniform on the scale range
        assert (area >= scale[0] - 1e-5).all()
        assert abs(area.mean() - sum(scale) / 2) < 0.01 * (scale[1] - scale[0]) + 0.005


def test_full_area_window_of_a_wide_image_is_not_squashed():
    y0, x0, h, w = augment.sample_crop_boxes((400, 800), 200, (1.0, 1.0), seed=0).numpy().T
    np.testing.assert_allclose(h, 400, rtol=1e-5)           # as tall as the image ...
    np.testing.assert_allclose(w / h, 4 / 3, rtol=1e-5)      # ... and only as wide as the aspect allows


def test_random_resized_crop_returns_the_requested_size():
    crop = augment.random_resized_crop(tf.constant(_solid(7, 90, 120)), 24, seed=5)
    assert crop.shape == (24, 24, 3) and crop.dtype == tf.float32
    assert _source_of(crop) == 7


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
        boxes = augment.sample_crop_boxes((480, 640), 1, (0.3, 1.0), seed=i)
        index = int(augment._jpeg_scale_index(boxes, tf.constant(config.size_crops[:1], tf.float32), (480, 640)))
        assert (augment._JPEG_SCALES[index] >= scale) if scale > 1 else index == 0
        from_bytes = augment.multicrop_example(jpeg, config, augment=False, seed=seed, dct_method="",
                                               max_upscale=1.0)  # full quality: windows keep their crop's size
        from_pixels = augment.multicrop_example(tf.io.decode_jpeg(jpeg), config, augment=False, seed=seed)
        for a, b in zip(from_bytes, from_pixels):  # same windows (whole pixels of the decoded scale)
            assert float(tf.reduce_mean(tf.abs(a - b))) <= tolerance


@pytest.mark.parametrize("max_upscale, usual_ratio", [(2.0, 2), (1.0, 1)])
def test_decode_scale_of_an_800x600_jpeg_follows_max_upscale(max_upscale, usual_ratio):
    config, shape = augment.SWAV_PAPER, (600, 800)
    sizes = np.array(config.crop_sizes, np.float32)
    ratios = []
    for i in range(100):
        boxes = tf.concat([augment.sample_crop_boxes(shape, n, (lo, hi), seed=[i, g]) for g, (n, lo, hi)
                           in enumerate(zip(config.num_crops, config.min_scale, config.max_scale))], 0)
        ratio = augment._JPEG_SCALES[int(augment._jpeg_scale_index(boxes, sizes, shape, max_upscale))]
        sides = np.minimum(boxes[:, 2], boxes[:, 3]) / ratio                 # window sides, decoded pixels
        assert (sizes / sides <= max_upscale + 1e-4).all(), "a crop is upsampled more than max_upscale"
        ratios.append(ratio)
    assert min(ratios) == usual_ratio and np.mean(np.equal(ratios, usual_ratio)) >= 0.9
    assert augment.MAX_UPSCALE == 2.0  # the default: 800x600 decodes at 1/2 (400x300) with SwAV's crops


def test_flipped_window_is_the_mirror_image_of_the_window():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 50, 3)), tf.uint8)
    box = tf.constant([3.2, 0.0, 30.0, 21.7])  # touches the left edge
    plain = augment._resized_window(image, box, 16, tf.constant(False))
    flipped = augment._resized_window(image, box, 16, tf.constant(True))
    np.testing.assert_allclose(flipped, tf.reverse(plain, [1]), atol=1e-4)
    np.testing.assert_allclose(plain / 255.0, augment._crop(image, box, 16), atol=1e-6)


# ============ determinism ============

def test_same_seed_same_crops_other_seed_other_crops():
    texture = tf.data.Dataset.from_tensor_slices(tf.random.stateless_uniform([3, 40, 50, 3], [1, 2]))
    config = MultiCropConfig.from_spec("1x16@0.14-1,1x8@0.05-0.14")

    def crops(dataset):
        return [c.numpy() for element in dataset for c in element]

    seven = augment.multicrop(texture, config, augment=True, seed=7)
    first, again = crops(seven), crops(augment.multicrop(texture, config, augment=True, seed=7))
    other = crops(augment.multicrop(texture, config, augment=True, seed=8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert not any(np.array_equal(a, b) for a, b in zip(first, crops(seven))), "each epoch draws new crops"


# ============ augmentation rates and blocks ============

def _rate(flags):
    return float(np.mean(np.asarray(flags)))


def test_random_apply_fires_with_probability_p_for_images_and_batches():
    image = tf.zeros([2, 2, 3])
    single = tf.function(lambda s: augment.random_apply(lambda x: x + 1.0, image, 0.3, s)[0, 0, 0])
    seeds = tf.random.stateless_uniform([800, 2], [0, 1], maxval=2**30, dtype=tf.int64)
    assert abs(_rate([single(s) for s in seeds]) - 0.3) < 0.05
    batch = augment.random_apply(lambda x: x + 1.0, tf.zeros([N_DRAWS, 2, 2, 3]), 0.3, seed=5)
    assert abs(_rate(batch[:, 0, 0, 0]) - 0.3) < RATE_TOL


def test_each_swav_augmentation_fires_with_its_probability():
    assert (augment.JITTER_P, augment.GRAY_P, augment.BLUR_P, augment.FLIP_P) == (0.8, 0.2, 0.5, 0.5)
    pattern = np.zeros([32, 32, 3], np.float32)                      # 32 px: a 3-tap blur kernel
    pattern[:, :16] = [0.9, 0.3, 0.1]
    pattern[:, 16:] = [0.1, 0.5, 0.8]                                # colourful, asymmetric, with an edge
    x = tf.constant(np.broadcast_to(pattern, [N_DRAWS, 32, 32, 3]))
    changed = lambda y: tf.reduce_max(tf.abs(y - x), axis=[1, 2, 3]) > 1e-4  # noqa: E731
    only = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    jittered = augment.color_augment(x, seed=1, **{**only, "jitter_p": augment.JITTER_P})
    grayed = augment.color_augment(x, seed=2, **{**only, "gray_p": augment.GRAY_P})
    blurred = augment.color_augment(x, seed=3, sigma=(1.0, 2.0), **{**only, "blur_p": augment.BLUR_P})
    flipped = augment.random_flip(x, seed=4)
    assert abs(_rate(changed(jittered)) - 0.8) < RATE_TOL
    assert abs(_rate(changed(grayed)) - 0.2) < RATE_TOL
    assert abs(_rate(changed(blurred)) - 0.5) < RATE_TOL
    assert abs(_rate(changed(flipped)) - 0.5) < RATE_TOL
    all_on = augment.color_augment(x, seed=5)                        # defaults: gray only via color_drop
    is_gray = tf.reduce_max(tf.abs(all_on - tf.reduce_mean(all_on, -1, keepdims=True)), axis=[1, 2, 3]) < 1e-5
    assert abs(_rate(is_gray) - 0.2) < RATE_TOL


def test_color_jitter_keeps_range_gray_stays_gray_and_strength_zero_is_identity():
    x = tf.random.stateless_uniform([64, 12, 12, 3], [3, 4])
    jittered = augment.color_jitter(x, seed=1)
    assert float(tf.reduce_min(jittered)) >= 0.0 and float(tf.reduce_max(jittered)) <= 1.0
    np.testing.assert_allclose(augment.color_jitter(x, strength=0.0, seed=1), x, atol=1e-5)
    gray = tf.repeat(x[..., :1], 3, axis=-1)                        # saturation and hue act on chroma only
    out = augment.color_jitter(gray, seed=2)
    np.testing.assert_allclose(out, tf.repeat(out[..., :1], 3, axis=-1), atol=1e-5)
    one = augment.color_jitter(x[0], seed=3)                         # the single-image path
    assert one.shape == (12, 12, 3) and float(tf.reduce_max(tf.abs(one - x[0]))) > 1e-3


def _jitter_ops_in_order(x, b, c, s, d, order):
    """torchvision's four jitter ops as maps in RGB (hue: the YIQ rotation), in ``order``, no clipping."""
    luma = np.array([0.299, 0.587, 0.114])
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = 2 * np.pi * d
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    ops = {"brightness": lambda y: b * y,
           "contrast": lambda y: c * y + (1 - c) * (y @ luma).mean(),
           "saturation": lambda y: s * y + (1 - s) * (y @ luma)[..., None],
           "hue": lambda y: y @ (np.linalg.inv(yiq) @ rotation @ yiq).T}
    for name in order:
        x = ops[name](x)
    return x


@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation", "hue"),
                                   ("hue", "saturation", "contrast", "brightness"),
                                   ("contrast", "hue", "brightness", "saturation")])
def test_fused_jitter_map_equals_the_four_ops_in_any_order_when_nothing_clips(order):
    x = 0.4 + 0.2 * np.random.default_rng(1).random((12, 12, 3))       # mid-range: no op leaves [0, 1]
    b, c, s, d = 1.15, 0.8, 1.2, 0.05
    maps, weight = augment._jitter_map(*[tf.constant([v], tf.float32) for v in (b, c, s, d)], tf.constant([False]))
    fused = augment._apply_fused_map(tf.constant(x * 255.0, tf.float32), maps[0], weight[0], 1 / 255)
    np.testing.assert_allclose(fused, _jitter_ops_in_order(x, b, c, s, d, order), atol=1e-5)
    maps, weight = augment._jitter_map(*[tf.constant([v], tf.float32) for v in (b, c, s, d)], tf.constant([True]))
    gray = augment._apply_fused_map(tf.constant(x, tf.float32), maps[0], weight[0], 1.0)
    expected = _jitter_ops_in_order(x, b, c, s, d, order) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(expected[..., None], 3, -1), atol=1e-5)


def test_fused_color_augment_fires_with_swav_probabilities_and_keeps_range():
    pattern = np.zeros([32, 32, 3], np.float32)
    pattern[:, :16], pattern[:, 16:] = [0.9, 0.3, 0.1], [0.1, 0.5, 0.8]
    x = tf.constant(np.broadcast_to(pattern, [N_DRAWS, 32, 32, 3]))
    changed = lambda y: tf.reduce_max(tf.abs(y - x), axis=[1, 2, 3]) > 1e-4  # noqa: E731
    only = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    rates = {name: _rate(changed(augment.fused_color_augment(x, seed=i, sigma=(1.0, 2.0), **{**only, name: p})))
             for i, (name, p) in enumerate([("jitter_p", 0.8), ("gray_p", 0.2), ("blur_p", 0.5)])}
    assert abs(rates["jitter_p"] - 0.8) < RATE_TOL and abs(rates["gray_p"] - 0.2) < RATE_TOL
    assert abs(rates["blur_p"] - 0.5) < RATE_TOL
    full = augment.fused_color_augment(x * 255.0, seed=5, value_scale=1 / 255)   # 0..255 input
    np.testing.assert_allclose(full, augment.fused_color_augment(x, seed=5), atol=1e-5)
    assert float(tf.reduce_min(full)) >= 0.0 and float(tf.reduce_max(full)) <= 1.0
    is_gray = tf.reduce_max(tf.abs(full - tf.reduce_mean(full, -1, keepdims=True)), axis=[1, 2, 3]) < 1e-5
    assert abs(_rate(is_gray) - 0.2) < RATE_TOL
    assert augment.fused_color_augment(x[0], seed=1).shape == (32, 32, 3)      # one image


def test_host_multicrop_grays_about_a_fifth_of_the_crops():
    images = tf.data.Dataset.from_tensor_slices(np.stack([_solid(i % 50) for i in range(200)]))
    crops = next(iter(augment.multicrop(images, SMALL, augment=True, seed=3).batch(200)))
    gray = [tf.reduce_max(tf.abs(c - tf.reduce_mean(c, -1, keepdims=True)), axis=[1, 2, 3]) < 1e-5 for c in crops]
    assert abs(_rate(tf.concat(gray, 0)) - 0.2) < 0.05   # 1000 crops: standard error 0.013


def test_gaussian_blur_equals_a_reflect_padded_2d_convolution():
    x = tf.random.stateless_uniform([3, 30, 40, 3], [5, 6])
    out = augment.gaussian_blur(x, sigma=(1.5, 1.5), seed=0, kernel_size=7)
    taps = np.exp(-np.arange(-3, 4) ** 2 / (2 * 1.5 ** 2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]], mode="REFLECT")
    expected = tf.nn.depthwise_conv2d(padded, np.tile(kernel[:, :, None, None], [1, 1, 3, 1]).astype(np.float32),
                                      [1, 1, 1, 1], "VALID")
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("height, width", [(96, 96), (40, 72), (160, 160)])
def test_host_blur_by_matrices_or_convolution_equals_the_2d_convolution(height, width):
    # _unit_blur takes the matrix route up to MATRIX_BLUR_MAX_SIDE and the depthwise one above it
    x = tf.random.stateless_uniform([height, width, 3], [7, height])
    taps = augment._gaussian_taps(tf.constant([1.3]), 9)
    one_d = taps.numpy()[0]
    padded = tf.pad(x[None], [[0, 0], [4, 4], [4, 4], [0, 0]], mode="REFLECT")
    kernel = np.tile(np.outer(one_d, one_d)[:, :, None, None], [1, 1, 3, 1]).astype(np.float32)
    expected = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    np.testing.assert_allclose(augment._unit_blur(x, taps), expected, atol=1e-5)


def test_multicrop_runs_on_a_private_pool_of_at_least_four_threads():
    images = tf.data.Dataset.from_tensor_slices(np.stack([_solid(i) for i in range(4)]))
    crops = augment.batch_crops(augment.multicrop(images, SMALL, augment=False, seed=0), 2)
    assert crops.options().threading.private_threadpool_size == max(4, runtime.usable_cores())
    assert augment.pipeline_options(cores=96).threading.private_threadpool_size == 96
    assert len(list(crops)) == 2                                   # and it runs


def test_encoded_images_are_decoded_once_jpeg_or_png():
    fn = tf.function(lambda b: augment.multicrop_example(b, SMALL, augment=True, seed=tf.constant([1, 2])))
    graph = fn.get_concrete_function(tf.TensorSpec([], tf.string)).graph.as_graph_def()
    ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    assert ops.count("DecodeImage") == 1                            # PNG/GIF/BMP: one full decode
    assert ops.count("DecodeAndCropJpeg") == len(augment._JPEG_SCALES)  # one per scale, one runs


def test_blur_matrix_is_the_reflected_banded_filter():
    matrix = augment._blur_matrix(tf.constant([0.25, 0.5, 0.25]), 4).numpy()
    np.testing.assert_allclose(matrix, [[0.5, 0.5, 0, 0],          # row 0 reads x1, x0, x1
                                        [0.25, 0.5, 0.25, 0],
                                        [0, 0.25, 0.5, 0.25],
                                        [0, 0, 0.5, 0.5]])


@pytest.mark.parametrize("side, kernel", [(224, 23), (96, 9), (160, 17), (32, 3)])
def test_blur_kernel_follows_the_crop_size(side, kernel):
    assert augment.blur_kernel_size(side) == kernel
    impulse = np.zeros([1, side, side, 3], np.float32)
    impulse[0, side // 2, side // 2] = 1.0
    blurred = augment.gaussian_blur(tf.constant(impulse), sigma=(2.0, 2.0), seed=0).numpy()
    assert (blurred[0, side // 2, :, 0] > 0).sum() == kernel       # the impulse spreads over the kernel
    np.testing.assert_allclose(blurred.sum(), 3.0, rtol=1e-4)       # normalised taps keep the mean
    flat = augment.gaussian_blur(tf.fill([side, side, 3], 0.5), seed=1)  # reflected borders: no dark frame
    np.testing.assert_allclose(flat, 0.5, atol=1e-5)


# ============ ColorAugment: the colour chain as a Keras 3 layer (keras.ops, run on JAX) ============

N_LAYER = 600      # images per rate estimate of the layer: binomial standard error <= 0.021
STD_TOL = 4.5      # tolerance in binomial standard errors


def _binomial_tol(p, n=N_LAYER):
    return STD_TOL * np.sqrt(p * (1 - p) / n)


def _pattern_batch(n, side=32):
    """n copies of a colourful image with an edge: every jitter, grayscale or blur changes it."""
    pattern = np.zeros([side, side, 3], np.float32)
    pattern[:, :side // 2], pattern[:, side // 2:] = [0.9, 0.3, 0.1], [0.1, 0.5, 0.8]
    return np.ascontiguousarray(np.broadcast_to(pattern, [n, side, side, 3]))


def _changed(y, x):
    return np.abs(np.asarray(y) - x).max(axis=(1, 2, 3)) > 1e-4


def _is_gray(y):
    y = np.asarray(y)
    return np.abs(y - y.mean(-1, keepdims=True)).max(axis=(1, 2, 3)) < 1e-6


@pytest.mark.slow  # the first eager call compiles every op: 3-7 s on 2 shared cores
def test_color_augment_layer_keeps_inputs_when_not_training_and_shape_dtype_range_when_training():
    import jax.numpy as jnp
    from kitlib.compat import keras

    crops = [np.random.default_rng(s).random([N_LAYER, s, s, 3]).astype(np.float32) for s in (32, 16)]
    layer = augment.ColorAugment(seed=3)
    assert layer.compute_dtype == "float32" and layer.color_config == augment.SWAV_COLOR
    same = layer(crops, training=False)
    assert isinstance(same, list) and all(np.array_equal(a, b) for a, b in zip(same, crops))
    one = jnp.asarray(crops[0])
    assert layer(one, training=False) is one
    np.testing.assert_array_equal(layer(one, training=jnp.asarray(False)), one)  # a tensor learning phase
    out = layer(tuple(crops), training=True)
    assert isinstance(out, tuple) and [o.shape for o in out] == [c.shape for c in crops]
    for o, c in zip(out, crops):
        assert o.dtype == "float32" and float(o.min()) >= 0.0 and float(o.max()) <= 1.0
        assert _changed(o, c).mean() > 0.5
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = augment.ColorAugment(seed=3)
        out = mixed([jnp.asarray(c, "bfloat16") for c in crops], training=True)
        assert mixed.compute_dtype == "float32" and all(o.dtype == "float32" for o in out)
        assert all(float(o.min()) >= 0.0 and float(o.max()) <= 1.0 for o in out)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_color_augment_layer_fires_with_the_configured_probabilities():
    x = _pattern_batch(N_LAYER)                                       # 32 px: 3 blur taps
    off = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    for i, (name, p) in enumerate([("jitter_p", 0.8), ("gray_p", 0.2), ("blur_p", 0.5), ("blur_p", 0.3)]):
        layer = augment.ColorAugment(seed=i, sigma=(1.0, 2.0), **{**off, name: p})
        rate = _changed(layer(x, training=True), x).mean()
        assert abs(rate - p) < _binomial_tol(p), (name, p, rate)
    full = augment.ColorAugment(seed=7)(x, training=True)            # SwAV defaults
    gray = _is_gray(full)  # only the grayscale coin grays: saturation factors are >= 0.2
    assert abs(gray.mean() - augment.GRAY_P) < _binomial_tol(augment.GRAY_P)
    assert abs(_changed(full, x).mean() - (1 - 0.2 * 0.8 * 0.5)) < _binomial_tol(0.92)  # untouched: no op fired


def test_color_augment_layer_probabilities_zero_and_one_are_exact():
    x = _pattern_batch(N_LAYER)                                       # the shapes of the tests above
    off = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    np.testing.assert_array_equal(augment.ColorAugment(seed=0, **off)(x, training=True), x)
    assert _changed(augment.ColorAugment(seed=1, **{**off, "jitter_p": 1.0})(x, training=True), x).all()
    assert _is_gray(augment.ColorAugment(seed=2, **{**off, "gray_p": 1.0})(x, training=True)).all()
    blurred = augment.ColorAugment(seed=3, sigma=(1.0, 2.0), **{**off, "blur_p": 1.0})(x, training=True)
    assert _changed(blurred, x).all() and not _is_gray(blurred).any()
    tiny = np.random.default_rng(0).random([N_LAYER, 16, 16, 3]).astype(np.float32)  # 16 px: 1 tap, no blur
    np.testing.assert_array_equal(augment.ColorAugment(seed=4, **{**off, "blur_p": 1.0})(tiny, training=True), tiny)


@pytest.mark.slow
def test_color_augment_layer_matches_the_host_grayscale_and_blur():
    x = np.random.default_rng(1).random([4, 40, 56, 3]).astype(np.float32)
    host_gray = augment.color_augment(tf.constant(x), seed=0, jitter_p=0.0, gray_p=1.0, blur_p=0.0)
    np.testing.assert_allclose(augment.ColorAugment(jitter_p=0.0, gray_p=1.0, blur_p=0.0)(x), host_gray, atol=1e-6)
    np.testing.assert_allclose(host_gray, augment.color_drop(tf.constant(x)), atol=1e-6)
    for side, sigma in ((32, 0.8), (96, 1.7), (40, 1.3)):                       # 3, 9 and 3 taps
        x = np.random.default_rng(side).random([3, side, side if side != 40 else 56, 3]).astype(np.float32)
        layer = augment.ColorAugment(jitter_p=0.0, gray_p=0.0, blur_p=1.0, sigma=(sigma, sigma), seed=0)
        host = augment.gaussian_blur(tf.constant(x), sigma=(sigma, sigma), seed=0)  # reflect padded
        np.testing.assert_allclose(layer(x, training=True), host, atol=1e-5)


@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation", "hue"),
                                   ("hue", "saturation", "contrast", "brightness"),
                                   ("contrast", "hue", "brightness", "saturation")])
def test_color_augment_layer_jitter_runs_the_drawn_order_with_a_clip_after_each_op(order):
    names = ("brightness", "contrast", "saturation", "hue")
    x = np.random.default_rng(2).random([2, 8, 8, 3])
    b, c, s, d = 1.7, 0.6, 1.5, 0.12                                 # strong: ops leave [0, 1] and clip
    a, strength = 0.8, 1.0
    u = np.zeros([2, augment._DRAWS], np.float32)
    u[:, augment._BRIGHT:augment._HUE] = [(f - 1 + a) / (2 * a) for f in (b, c, s)]
    u[:, augment._HUE] = (d / (0.2 * strength) + 1) / 2
    u[:, augment._ORDER:augment._ORDER + 4] = [0.1 + 0.2 * order.index(name) for name in names]  # ranks
    expected = x.copy()
    for i in range(2):                                                # per image: contrast's mean is its own
        for name in order:                                            # torchvision: clip after every op
            expected[i] = np.clip(_jitter_ops_in_order(expected[i], b, c, s, d, [name]), 0.0, 1.0)
    out = augment._jitter_batch(np.float32(x), u, strength)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    unclipped = _jitter_ops_in_order(x[0], b, c, s, d, order)
    assert np.abs(np.clip(unclipped, 0, 1) - expected[0]).max() > 1e-2  # the clips between ops matter


@pytest.mark.slow
def test_color_augment_layer_draws_fresh_parameters_every_jitted_step_and_repeats_with_a_seed():
    import jax
    from kitlib.compat import keras

    crops = [_pattern_batch(8, 32), _pattern_batch(8, 16)]
    layer = augment.ColorAugment(seed=5)
    step = jax.jit(lambda state, c: layer.stateless_call([], state, c, training=True))  # as Keras's trainer

    def start(seed):  # the initial SeedGenerator state of a fresh layer
        return [v.value for v in augment.ColorAugment(seed=seed).non_trainable_variables]

    first, state = step(start(5), crops)
    second, _ = step(state, crops)
    again, _ = step(start(5), crops)
    other, _ = step(start(6), crops)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)), "same seed, same draws"
    assert all(_changed(a, b).any() for a, b in zip(first, second)), "each step draws anew"
    assert all(_changed(a, b).any() for a, b in zip(first, other))

    class Model(keras.Model):  # as SwAVModel: the layer at the start of the forward pass, in Keras's jit
        def __init__(self):
            super().__init__()
            self.crop_augment = augment.ColorAugment(seed=5)

        def call(self, x, training=False):
            return self.crop_augment(x, training=True)

    model = Model()
    one, two = (model.predict(crops[0], batch_size=8, verbose=0) for _ in range(2))
    np.testing.assert_allclose(one, first[0], atol=1e-6)              # a fresh layer, seed 5: the same draws
    assert _changed(one, two).any()


def test_color_config_validates_round_trips_and_feeds_the_host_path():
    layer = augment.ColorAugment(augment.ColorConfig(gray_p=0.5), seed=9, blur_p=0.1)
    assert layer.color_config == augment.ColorConfig(gray_p=0.5, blur_p=0.1)
    clone = augment.ColorAugment.from_config(layer.get_config())
    assert clone.color_config == layer.color_config and clone.seed == 9
    assert augment.SWAV_COLOR.as_kwargs() == dict(strength=1.0, jitter_p=0.8, gray_p=0.2, blur_p=0.5, sigma=(0.1, 2.0))
    x = tf.random.stateless_uniform([4, 32, 32, 3], [1, 2])
    np.testing.assert_array_equal(augment.color_augment(x, 3, **augment.SWAV_COLOR.as_kwargs()),
                                  augment.color_augment(x, 3))
    with pytest.raises(ValueError, match="probability"):
        augment.ColorConfig(gray_p=1.5)
    with pytest.raises(ValueError, match="sigma"):
        augment.ColorConfig(sigma=(2.0, 1.0))


# ============ configuration ============

def test_spec_strings_round_trip_to_the_presets():
    assert augment.parse_multicrop_spec("2x224@0.14-1,6x96@0.05-0.14") == augment.SWAV_PAPER
    assert MultiCropConfig.from_spec(" 2 x 224 @ 0.14 - 1 , 3x96@0.05-0.14 ") == augment.SEED_NOTEBOOK
    assert MultiCropConfig.from_spec(augment.SWAV_PAPER.spec) == augment.SWAV_PAPER
    assert augment.SWAV_PAPER.total_crops == 8 and augment.SEED_NOTEBOOK.crop_sizes == (224, 224, 96, 96, 96)


@pytest.mark.parametrize("spec, message", [
    ("", "group 1 .* is not COUNTxSIZE@MIN-MAX"),
    ("2x224", "group 1 .*'2x224'"),
    ("2x224@0.14-1,6x96", "group 2 .*'6x96'"),
    ("2x224@0.14-1;6x96@0.05-0.14", "group 1"),
    ("x224@0.14-1", "is not COUNTxSIZE@MIN-MAX"),
    ("2x224@1-0.14", r"0 < min <= max <= 1"),
    ("2x224@0-1", r"0 < min <= max <= 1"),
    ("0x224@0.14-1", "positive integers"),
    ("6x96@0.05-0.14,2x224@0.14-1", "big to small"),
])
def test_malformed_specs_raise_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse_multicrop_spec(spec)


def test_bad_inputs_raise_a_clear_error():
    with pytest.raises(ValueError, match="no 'image' key"):
        augment.multicrop(tf.data.Dataset.from_tensor_slices({"pixels": tf.zeros([2, 8, 8, 3])}), SMALL)
    with pytest.raises(ValueError, match="RGB images"):
        augment.multicrop(tf.data.Dataset.from_tensor_slices(tf.zeros([2, 8, 8, 1])), SMALL)
    with pytest.raises(ValueError, match="augment must be"):
        augment.multicrop(tf.data.Dataset.from_tensor_slices(tf.zeros([2, 8, 8, 3])), SMALL, augment="gpu")
    with pytest.raises(ValueError, match="image .* or a batch"):
        augment.color_jitter(tf.zeros([8, 8]))
