"""kitlib.swav.geometry: crop windows by area and aspect ratio of the original image, and the multi-crop spec."""

import numpy as np
import pytest
import tensorflow as tf

from kitlib.swav import geometry as swav_geometry
from kitlib.swav.geometry import MultiCropConfig


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

@pytest.mark.parametrize("height, width", [(600, 800), (800, 600), (100, 1000)])
@pytest.mark.parametrize("scale", [(0.14, 1.0), (0.05, 0.14)])
def test_drawn_windows_keep_area_and_aspect_within_bounds(height, width, scale):
    boxes = swav_geometry.sample_crop_boxes((height, width), 5000, scale, seed=3).numpy()
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
    y0, x0, h, w = swav_geometry.sample_crop_boxes((400, 800), 200, (1.0, 1.0), seed=0).numpy().T
    np.testing.assert_allclose(h, 400, rtol=1e-5)           # as tall as the image ...
    np.testing.assert_allclose(w / h, 4 / 3, rtol=1e-5)      # ... and only as wide as the aspect allows

def test_random_resized_crop_returns_the_requested_size():
    crop = swav_geometry.random_resized_crop(tf.constant(_solid(7, 90, 120)), 24, seed=5)
    assert crop.shape == (24, 24, 3) and crop.dtype == tf.float32
    assert _source_of(crop) == 7

def test_spec_strings_round_trip_to_the_presets():
    assert swav_geometry.parse_multicrop_spec("2x224@0.14-1,6x96@0.05-0.14") == swav_geometry.SWAV_PAPER
    assert MultiCropConfig.from_spec(" 2 x 224 @ 0.14 - 1 , 3x96@0.05-0.14 ") == swav_geometry.FIVE_CROPS
    assert MultiCropConfig.from_spec(swav_geometry.SWAV_PAPER.spec) == swav_geometry.SWAV_PAPER
    assert swav_geometry.SWAV_PAPER.total_crops == 8 and swav_geometry.FIVE_CROPS.crop_sizes == (224, 224, 96, 96, 96)

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
        swav_geometry.parse_multicrop_spec(spec)
