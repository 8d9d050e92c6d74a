"""What `kitlib.swav.pretrain.plan` reads from the images themselves before the rule chooses.

    typical_image_hw(files)  (height, width) of a typical training image (the rule's regime and crop size)
"""

import numpy as np

from kitlib.data import tfrecords


def typical_image_hw(files, records=8):
    """(height, width) of a typical training image: the median over the first `records` records.

    Raises:
        `kitlib.data.tfrecords.DataError` naming the first shard when there is no image record.
    """
    from kitlib.compat import tf  # noqa: PLC0415

    shapes = [tf.image.extract_jpeg_shape(ex["image"]).numpy()[:2] if tf.io.is_jpeg(ex["image"])
              else tf.shape(tf.io.decode_image(ex["image"], channels=3, expand_animations=False)).numpy()[:2]
              for ex in tfrecords.load_dataset(files, labeled=False, decode=False, ordered=True).take(records)]
    if not shapes:
        raise tfrecords.DataError(f"{files[0]}: no image records to read the image size from")
    return tuple(int(v) for v in np.median(np.array(shapes), axis=0))
