"""kitlib.swav.survey: the typical image size read from shards of known images (JPEG and PNG), and the one-line
error naming the shard when there are none."""

import numpy as np
import pytest

from kitlib.compat import tf
from kitlib.data import tfrecords, writing
from kitlib.swav import survey


def _shard(folder, images):
    writing.write_tfrecords(({"image": image, "image_name": f"{i}.img", "target": 0} for i, image in enumerate(images)),
                            str(folder), shard_size=100)
    return sorted(str(p) for p in folder.glob("*.tfrec"))


def test_the_typical_size_is_the_median_of_the_first_records(tmp_path):
    sizes = [(32, 48), (40, 40), (64, 96), (300, 300)]
    files = _shard(tmp_path / "jpg", [np.zeros((h, w, 3), np.uint8) for h, w in sizes])
    assert survey.typical_image_hw(files) == (52, 72)       # the median of the four
    assert survey.typical_image_hw(files, records=1) == (32, 48)
    png = _shard(tmp_path / "png", [tf.io.encode_png(np.zeros((h, w, 3), np.uint8)).numpy() for h, w in sizes[:3]])
    assert survey.typical_image_hw(png) == (40, 48)


def test_no_records_is_one_error_naming_the_shard(tmp_path):
    (tmp_path / "train_tfrecords").mkdir()
    empty = str(tmp_path / "train_tfrecords" / "ld_train00-0.tfrec")
    with tf.io.TFRecordWriter(empty):
        pass
    with pytest.raises(tfrecords.DataError, match="ld_train00-0.tfrec: shard holds no records"):
        survey.typical_image_hw([empty])
