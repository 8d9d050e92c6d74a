"""BiT (Big Transfer) ResNet-v2 as a native Keras 3 model: GroupNorm + weight standardisation.

    build("BiT-M-R50x1")        a fresh backbone, float images [N, H, W, 3] in [0, 1] -> features [N, 2048*w]
    build_tiny()                a few-channel, one-unit-per-stage variant for tests and demos
    parse_name(name)            "BiT-M-R50x1", "R101x3", "BiT-S-R50x1.npz" -> (depth, width)

The released weights (official ``.npz`` files, TF2 SavedModels) are read and written by
``kitlib.models.bit_weights``.

The architecture (BiT paper; google-research/big_transfer): pre-activation bottleneck units whose convs
are weight-standardised (kernel minus its mean over H, W, in-channels, over sqrt(var + 1e-10)), GroupNorm
with 32 groups and eps 1e-5. Root: zero-pad 3, 7x7/2 conv (64w), zero-pad 1, 3x3/2 max-pool. Unit:
a = GN-ReLU-1x1 conv (f), b = GN-ReLU-pad 1-3x3 conv (stage stride), c = GN-ReLU-1x1 conv (4f), plus a
strided 1x1 projection of the pre-activated input (a's GN-ReLU) on each stage's first unit. Stage strides
1, 2, 2, 2; f = 64w * 2^(i-1). Pre-head GN-ReLU-global average pool.

The raw weights expect inputs (x - 127.5) / 127.5 of 0..255 pixels, i.e. 2x - 1 of [0, 1] images; the
model takes [0, 1] images and scales them itself, as the TF-Hub SavedModels do, so both give the same
features. The standardisation and GroupNorm compute in float32 whatever the dtype policy (mixed_bfloat16
on TPU); the pre-head GN, ReLU and pooling run in float32, so features are float32.

Keras layer names carry the official structure (``block2_unit01_b_conv`` is
``resnet/block2/unit01/b/standardized_conv2d/kernel``), which is how ``kitlib.models.bit_weights`` maps
weights by name. The layers themselves (weight-standardised conv, GroupNorm) are
``kitlib.models.resnetv2_layers``; importing this module registers them for ``.keras`` files.
"""

import os
import re

from kitlib.compat import keras
from kitlib.models.resnetv2_layers import GROUPS, GroupNorm, StandardizedConv2D

# the pre-head GroupNorm, ReLU and pooling compute in float32 under any policy: features stay float32
FLOAT32_LAYERS = ("pre_head_gn", "pre_head_relu", "features")

ops = keras.ops

DEPTH_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTHS = (1, 2, 3, 4)
OFFICIAL = ("R50x1", "R50x3", "R101x1", "R101x3", "R152x2", "R152x4")  # the released BiT-S / BiT-M models
STRIDES = (1, 2, 2, 2)
INPUT_RANGES = ("unit", "symmetric")  # [0, 1] images (scaled to [-1, 1] inside) or already [-1, 1]
TINY = {"width": 0.125, "num_units": (1, 1, 1, 1), "groups": 4}  # 8 root channels, 256 features

_NAME_RE = re.compile(r"^(?:bit-)?(?:[sml]-)?r(\d+)x(\d+)(?:-[a-z0-9_.-]+)?$")
# --------------------------------------------------------------------------------------------- names
def valid_names():
    return ", ".join(f"BiT-M-{n}" for n in OFFICIAL)


def parse_name(name, default=ValueError):
    """(depth, width) of a BiT name: "BiT-M-R50x1", "BiT-S-R101x3", "R50x1", "r152x4", "m-r50x1",
    a file name such as "BiT-M-R50x1.npz" / "BiT-M-R50x1-ILSVRC2012.npz" (any folder), or a
    (depth, width) pair. Depth 50/101/152, width 1-4.

    Returns ``default`` when ``name`` is not one; without a default, raises ValueError listing valid names.
    """
    parsed = None
    if isinstance(name, (tuple, list)) and len(name) == 2:
        depth, width = name
        if depth in DEPTH_UNITS and width in WIDTHS:
            parsed = (int(depth), int(width))
    elif isinstance(name, (str, os.PathLike)):
        base = os.path.basename(os.fspath(name).rstrip("/\\")).lower()
        for ext in (".npz", ".h5", ".keras"):
            if base.endswith(ext):
                base = base[: -len(ext)]
        match = _NAME_RE.match(base)
        if match:
            depth, width = int(match.group(1)), int(match.group(2))
            if depth in DEPTH_UNITS and width in WIDTHS:
                parsed = (depth, width)
    if parsed is not None:
        return parsed
    if default is ValueError:
        raise ValueError(f"{name!r} is not a BiT ResNet-v2 name; use one of {valid_names()} (or 'R50x1', "
                         "'BiT-S-...'; depth 50/101/152, width 1-4)")
    return default


# --------------------------------------------------------------------------------------------- model
def _arch(name_or_arch, num_units):
    """(depth or None, width, units per stage)."""
    if isinstance(name_or_arch, (tuple, list)) and len(name_or_arch) == 2:
        depth, width = name_or_arch
    else:
        depth, width = parse_name(name_or_arch)
    if num_units is None:
        if depth not in DEPTH_UNITS:
            raise ValueError(f"depth {depth!r}: use one of {sorted(DEPTH_UNITS)}, or give num_units")
        num_units = DEPTH_UNITS[depth]
    num_units = tuple(int(n) for n in num_units)
    if len(num_units) != 4 or min(num_units) < 1:
        raise ValueError(f"num_units must be 4 positive counts (one per stage); got {num_units}")
    root = 64 * float(width)
    if root < 1 or abs(root - round(root)) > 1e-6:
        raise ValueError(f"width {width!r} must make 64*width a positive whole number of channels")
    if DEPTH_UNITS.get(depth) != num_units:
        depth = next((d for d, u in DEPTH_UNITS.items() if u == num_units), None)
    return depth, width, num_units


def _model_name(depth, width, num_units):
    w = int(width) if float(width).is_integer() else width
    if depth is not None:
        return f"BiT-R{depth}x{w}"
    return f"BiT-units{'-'.join(map(str, num_units))}-x{w}".replace(".", "p")


def _unit(x, prefix, filters, stride, groups):
    """One pre-activation bottleneck unit; projects the shortcut when the shape changes."""
    pre = GroupNorm(groups, name=f"{prefix}_a_gn")(x)
    pre = keras.layers.ReLU(name=f"{prefix}_a_relu")(pre)
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = StandardizedConv2D(4 * filters, 1, strides=stride, name=f"{prefix}_a_proj")(pre)
    else:
        shortcut = x
    y = StandardizedConv2D(filters, 1, name=f"{prefix}_a_conv")(pre)
    y = GroupNorm(groups, name=f"{prefix}_b_gn")(y)
    y = keras.layers.ReLU(name=f"{prefix}_b_relu")(y)
    y = keras.layers.ZeroPadding2D(1, name=f"{prefix}_b_pad")(y)
    y = StandardizedConv2D(filters, 3, strides=stride, name=f"{prefix}_b_conv")(y)
    y = GroupNorm(groups, name=f"{prefix}_c_gn")(y)
    y = keras.layers.ReLU(name=f"{prefix}_c_relu")(y)
    y = StandardizedConv2D(4 * filters, 1, name=f"{prefix}_c_conv")(y)
    return keras.layers.Add(name=f"{prefix}_add")([shortcut, y])


def build(name_or_arch="BiT-M-R50x1", num_units=None, input_range="unit", groups=GROUPS, name=None):
    """A randomly initialised BiT ResNet-v2: float [N, H, W, 3] (any H, W) -> features [N, 2048*width].

    Args:
        name_or_arch: a BiT name ("BiT-M-R50x1", "R101x3", ...) or (depth, width); with ``num_units``
            given, depth may be None and width any positive multiple of 1/64 (tiny test variants).
        num_units: units per stage (4 ints); default from the depth, (3, 4, 6, 3) for R50.
        input_range: "unit" (images in [0, 1], scaled to 2x - 1 inside: what the weights expect) or
            "symmetric" (images already in [-1, 1]).
        groups: GroupNorm groups (32 in BiT); must divide 64*width.
        name: the Keras model name (default "BiT-R50x1" etc.).
    Returns:
        keras.Model; every weight trainable, float32 variables. Layers are named after the official
        weights (see `kitlib.models.bit_weights.official_variables`).
    """
    depth, width, num_units = _arch(name_or_arch, num_units)
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}; got {input_range!r}")
    root = int(round(64 * float(width)))
    if root % int(groups):
        raise ValueError(f"GroupNorm groups={groups} must divide the root width 64*{width} = {root}")
    inputs = keras.Input((None, None, 3), name="images")
    x = inputs
    if input_range == "unit":
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_symmetric")(x)
    x = keras.layers.ZeroPadding2D(3, name="root_pad")(x)
    x = StandardizedConv2D(root, 7, strides=2, name="root_conv")(x)
    x = keras.layers.ZeroPadding2D(1, name="root_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="root_pool")(x)
    for block, (units, stride) in enumerate(zip(num_units, STRIDES), start=1):
        filters = root * 2 ** (block - 1)
        for unit in range(1, units + 1):
            x = _unit(x, f"block{block}_unit{unit:02d}", filters, stride if unit == 1 else 1, groups)
    gn_name, relu_name, pool_name = FLOAT32_LAYERS
    x = GroupNorm(groups, name=gn_name, dtype="float32")(x)
    x = keras.layers.ReLU(name=relu_name, dtype="float32")(x)
    features = keras.layers.GlobalAveragePooling2D(name=pool_name, dtype="float32")(x)
    if name is None and isinstance(name_or_arch, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name_or_arch):
        name = name_or_arch  # "BiT-M-R50x1"
    model = keras.Model(inputs, features, name=name or _model_name(depth, width, num_units))
    model.trainable = True
    return model


def build_tiny(width=TINY["width"], num_units=TINY["num_units"], groups=TINY["groups"], input_range="unit"):
    """A few-channel BiT for tests and demos: 8 root channels, one unit per stage, 4 GroupNorm groups,
    256 features; the same architecture and naming as the real ones (``kitlib.models.bit_weights.save_npz`` /
    ``from_npz`` work)."""
    return build((None, width), num_units=num_units, input_range=input_range, groups=groups,
                 name=_model_name(None, width, num_units).replace("BiT-", "BiT-tiny-"))
