"""Data in, whatever its layout: the competition's TFRecords, JPEG folders, tfds, and the bundled sample.

    tfrecords   reading the competition's TFRecord shards (label map, file lists, parsing, corrupt records)
    writing     writing shards in the same format
    sources     a training source (train / validation split) or a test source from any supported layout
    layout      checking a data folder against the competition's layout, one line per problem
    sample      the small synthetic sample in ``data/sample`` (``python -m kitlib make-sample``)

Importing this package imports nothing else; TensorFlow is loaded by the modules that read data.
"""
