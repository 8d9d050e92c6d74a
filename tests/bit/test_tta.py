"""kitlib.bit.tta: the test-time views, flips and crops, and their presets."""

import os

import numpy as np
import pytest

from kitlib.bit import tta as bit_tta
from kitlib.compat import tf
from kitlib.data import tfrecords as data_tfrecords


def _quadrant_image(side=64):
    """uint8 [side, side, 3]: top-left red, top-right green, bottom-left blue, bottom-right white."""
    image = np.zeros([side, side, 3], np.uint8)
    h = side // 2
    image[:h, :h, 0] = image[:h, h:, 1] = image[h:, :h, 2] = 255
    image[h:, h:] = 255
    return image

def test_views_flip_and_cut_the_corners_of_the_image():
    views = bit_tta.tta_views(_quadrant_image(), 16, list(bit_tta.VIEWS), resize_per_crop=2.0).numpy()
    assert views.shape == (8, 16, 16, 3)
    by_name = dict(zip(bit_tta.VIEWS, views))
    red, green, blue, white = [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]
    np.testing.assert_allclose(by_name["identity"][0, 0], red)
    np.testing.assert_allclose(by_name["hflip"][0, 0], green)
    np.testing.assert_allclose(by_name["vflip"][0, 0], blue)
    for view, colour in (("top_left", red), ("top_right", green), ("bottom_left", blue), ("bottom_right", white)):
        np.testing.assert_allclose(by_name[view].reshape(-1, 3), np.tile(colour, (256, 1)), err_msg=view)
    np.testing.assert_allclose(by_name["centre"][[0, 0, -1, -1], [0, -1, 0, -1]], [red, green, blue, white])

def test_identity_view_is_the_validation_preprocessing_of_finetune(sample_dir):
    from kitlib.bit import inputs as bit_inputs

    image = data_tfrecords.decode_image(tf.io.read_file(os.path.join(sample_dir, "test_images", "1233559501.jpg")))
    view = bit_tta.tta_views(image, 48, "none")[0]
    np.testing.assert_allclose(view, bit_inputs.preprocess_eval(image, 48), atol=1e-6)

def test_presets_and_lists_name_views_and_unknown_views_are_refused():
    assert bit_tta.parse_tta("none") == ("identity",)
    assert bit_tta.parse_tta("flip") == ("identity", "hflip", "vflip")
    assert bit_tta.parse_tta("flip+crops") == bit_tta.VIEWS
    assert bit_tta.parse_tta("identity, hflip") == ("identity", "hflip")
    with pytest.raises(ValueError, match="unknown view"):
        bit_tta.parse_tta("identity,rotate90")
    with pytest.raises(ValueError, match="twice"):
        bit_tta.parse_tta(["hflip", "hflip"])
