"""Writing TFRecord shards in the competition's format (``image``, ``image_name``, ``target``)."""

import os

from kitlib.compat import tf
from kitlib.data.tfrecords import DataError

_DEFAULT_SHARD_SIZE = 1_000  # images per shard when writing; the competition used ~1,300
def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _as_jpeg(image, quality=90):
    if isinstance(image, bytes):
        return image
    return tf.io.encode_jpeg(tf.convert_to_tensor(image, tf.uint8), quality=quality).numpy()


def serialize_example(image, image_name=None, target=None):
    """A ``tf.train.Example`` in the competition's format, serialized to bytes."""
    feature = {"image": _bytes_feature(_as_jpeg(image))}
    if image_name is not None:
        feature["image_name"] = _bytes_feature(image_name.encode() if isinstance(image_name, str) else image_name)
    if target is not None:
        feature["target"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(target)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def write_tfrecords(examples, out_dir, labeled=True, prefix=None, shard_size=_DEFAULT_SHARD_SIZE):
    """Write examples as shards named like the competition's: ``{prefix}{NN}-{count}.tfrec``.

    Args:
        examples: iterable of dicts with "image" (JPEG bytes, or a uint8 [H, W, 3] array that is
            JPEG-encoded), "image_name" (str/bytes, optional) and, when ``labeled``, "target" or "label" (int).
        out_dir: created if missing.
        labeled: True writes train shards (every example needs a target); False writes test shards,
            which carry no target (a "target"/"label" of the examples is ignored).
        prefix: the shard names' start; None: "ld_train" when ``labeled``, else "ld_test".
        shard_size: records per shard.
    Returns:
        The shard paths, in order.
    """
    if prefix is None:
        prefix = "ld_train" if labeled else "ld_test"
    os.makedirs(out_dir, exist_ok=True)
    paths, buffer = [], []

    def flush():
        path = os.path.join(out_dir, f"{prefix}{len(paths):02d}-{len(buffer)}.tfrec")
        with tf.io.TFRecordWriter(path) as writer:
            for record in buffer:
                writer.write(record)
        paths.append(path)
        buffer.clear()

    for i, ex in enumerate(examples):
        target = ex.get("target", ex.get("label")) if labeled else None
        if labeled and target is None:
            raise DataError(f"example {i} has no 'target'/'label'; train shards need one (or pass labeled=False for test shards)")
        buffer.append(serialize_example(ex["image"], ex.get("image_name"), target))
        if len(buffer) == shard_size:
            flush()
    if buffer:
        flush()
    if not paths:
        raise DataError("write_tfrecords got no examples; nothing written")
    return paths
