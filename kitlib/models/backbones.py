"""Backbones, the one home: images float [N, H, W, 3] in [0, 1] -> features [N, F], as Keras 3 models.

    build(name)        a fresh backbone: "small_cnn" (CPU tests, demos), "resnet50" (SwAV's), or a BiT
                       ResNetV2 name ("BiT-M-R50x1", "R50x1", ...; see `kitlib.models.resnetv2`).
    save(model, path)  the backbone as a ``.keras`` file (what ``pretrain`` exports).
    load(source)       any backbone the kit can read, every weight trainable:
                       - a kit ``.keras`` backbone (``pretrain``'s ``backbone.keras``),
                       - an official BiT ``.npz`` (``BiT-M-R50x1.npz``; architecture from the name or shapes),
                       - a BiT TF2 SavedModel directory, or a TF-Hub / Kaggle Models handle that resolves
                         to one (attached under /kaggle/input, or downloaded when online).
All of them take [0, 1] inputs; the same weights through any route give the same features.
"""

import os

from kitlib.compat import keras

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # inputs are [0, 1]; the backbone standardises them itself
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_CNN_WIDTHS = (32, 64, 128)       # CPU tests and demos: three stride-2 conv blocks
SMALL_CNN_BN_MOMENTUM = 0.9            # PyTorch's 0.1: moving statistics settle within a short run
KIT_NAMES = ("small_cnn", "small_cnn_grid", "small_cnn_pyramid", "resnet50")


@keras.saving.register_keras_serializable(package="kitlib")
class GridPool(keras.layers.Layer):
    """Average over each quadrant of a feature map: [N, h, w, C] -> [N, 4 C] (any h, w >= 1).

    The halves overlap by the middle row/column when h or w is odd, so every crop size works. Global
    average pooling throws away where a pattern sits; on small images (digits, tiles) that layout is
    much of the signal, and 2 x 2 cells keep it at 4x the width.
    """

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        rows = (x[:, :(h + 1) // 2], x[:, h // 2:])
        cells = [keras.ops.mean(part[:, :, cols], axis=(1, 2)) for part in rows
                 for cols in (slice(0, (w + 1) // 2), slice(w // 2, None))]
        return keras.ops.concatenate(cells, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4 * input_shape[-1])


@keras.saving.register_keras_serializable(package="kitlib")
class PyramidPool(GridPool):
    """A two-level spatial pyramid (He et al. 2014) of a feature map, [N, h, w, C] -> [N, 5 C]: the global
    average, then the 2 x 2 quadrant averages scaled by 1/2, so that the four quadrants together weigh as much
    as the global level in a dot product or a cosine. Global pooling keeps texture and colour wherever they
    sit; the quadrants keep where a stroke sits. Which of the two carries the class depends on the data, so
    the features keep both, and training (or a kNN, or a linear head) uses whichever does."""

    def call(self, x):
        return keras.ops.concatenate([keras.ops.mean(x, axis=(1, 2)), 0.5 * super().call(x)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 5 * input_shape[-1])


def _standardize(inputs):
    return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD],
                                      name="standardize")(inputs)


def build(name="resnet50"):
    """A randomly initialised backbone: float [N, H, W, 3] in [0, 1] (any H, W) -> features [N, F].

    Args:
        name: "resnet50" (keras.applications, F = 2048, SwAV's), "small_cnn" (3 conv-BN-ReLU blocks,
            global average pooling, F = 128: CPU tests and demos), "small_cnn_grid" (the same, its 2 x 2
            quadrants: F = 512), "small_cnn_pyramid" (both: F = 640, the small-data recipe's), or a BiT name
            such as "BiT-M-R50x1" (GroupNorm + WS).
    Returns:
        keras.Model; BatchNorm (where there is any) follows the ``training`` argument.
    """
    if name not in KIT_NAMES:
        from kitlib.models import resnetv2  # noqa: PLC0415

        if resnetv2.parse_name(name, default=None) is None:
            raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(KIT_NAMES)} or a BiT name "
                             "such as 'BiT-M-R50x1'")
        return resnetv2.build(name)
    inputs = keras.Input((None, None, 3), name="images")
    x = _standardize(inputs)
    if name == "resnet50":
        resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3),
                                             pooling="avg")
        features = resnet(x)
    else:
        for width in SMALL_CNN_WIDTHS:
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=SMALL_CNN_BN_MOMENTUM)(x)
            x = keras.layers.ReLU()(x)
        pool = dict(small_cnn_grid=GridPool, small_cnn_pyramid=PyramidPool).get(name, keras.layers.GlobalAveragePooling2D)
        features = pool(name="features")(x)
    return keras.Model(inputs, features, name=name)


def save(model, path):
    """Write a backbone as a ``.keras`` file (float32 weights); returns the path."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"a backbone is saved as a .keras file; got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    return path


def load(source, **resolve_kwargs):
    """A backbone from disk (or a handle), every weight trainable: [N, H, W, 3] in [0, 1] -> [N, F].

    Args:
        source: a ``.keras`` file, a BiT ``.npz``, a BiT TF2 SavedModel directory, or a TF-Hub /
            Kaggle Models handle (``google/bit/tensorFlow2/m-r50x1``, ``https://tfhub.dev/...``).
        resolve_kwargs: passed to `kitlib.models.hub.resolve_backbone` for handles (cache_dir, input_root).
    Returns:
        keras.Model.
    Raises:
        FileNotFoundError / ValueError naming the file and what was found instead.
    """
    source = os.fspath(source)
    if source.endswith(".keras"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"backbone file {source!r} does not exist")
        from kitlib.models import resnetv2  # noqa: F401,PLC0415 - registers the BiT layers for deserialisation

        model = keras.saving.load_model(source, compile=False)
        model.trainable = True
        return model
    if source.endswith(".npz"):
        from kitlib.models import bit_weights  # noqa: PLC0415

        return bit_weights.from_npz(source)
    from kitlib.models import bit_weights, hub  # noqa: PLC0415

    kit_file = os.path.join(source, "backbone.keras")
    if os.path.isfile(kit_file):  # a pretrain output folder
        return load(kit_file)
    # a local BiT SavedModel folder, or a handle resolved to one (attached, cached or downloaded)
    return bit_weights.from_saved_model(hub.resolve_backbone(source, **resolve_kwargs))
