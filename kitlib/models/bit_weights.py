"""The released BiT weights in and out of `kitlib.models.resnetv2`: official ``.npz`` files and TF2 SavedModels.

    from_npz(path)              a backbone with the official ``.npz`` weights (``BiT-M-R50x1.npz``)
    from_saved_model(path)      with the weights of a BiT TF2 SavedModel (TF-Hub / Kaggle Models)
    save_npz(model, path)       the weights in the official ``.npz`` naming (inverse of ``from_npz``)
    official_variables(model)   {official name: Keras variable}, how weights are mapped by name

Keras layer names carry the official structure (``block2_unit01_b_conv`` is
``resnet/block2/unit01/b/standardized_conv2d/kernel``).
"""

import os
import re

import numpy as np

from kitlib.compat import keras
from kitlib.models.resnetv2 import DEPTH_UNITS, build, parse_name
from kitlib.models.resnetv2_layers import GROUPS, GroupNorm, StandardizedConv2D

ops = keras.ops


GROUPS_KEY = "kitlib/groups"  # written by save_npz only for non-standard GroupNorm groups (tiny variants)
_LAYER_RE = re.compile(r"^block(\d+)_unit(\d+)_([abc])_(conv|gn|proj)$")
_CONV_SUFFIX_RE = re.compile(r"/standardized_conv2d_\d+/")
_GN_SUFFIX_RE = re.compile(r"/group_norm(?:alization)?(?:_\d+)?/")
_BARE_RE = re.compile(r"^(?:root_block|block\d+|group_norm|head)/")
_UNIT_KEY_RE = re.compile(r"^resnet/block(\d+)/unit(\d+)/")
ROOT_KEY = "resnet/root_block/standardized_conv2d/kernel"
HEAD_PREFIX = "resnet/head/"


def _official_key(layer_name):
    """Official ``.npz`` prefix ("resnet/block1/unit01/a/group_norm/") of one of our layer names, or None."""
    if layer_name == "root_conv":
        return "resnet/root_block/standardized_conv2d/"
    if layer_name == "pre_head_gn":
        return "resnet/group_norm/"
    match = _LAYER_RE.match(layer_name)
    if not match:
        return None
    block, unit, part, kind = match.groups()
    sub = {"conv": "standardized_conv2d/", "gn": "group_norm/", "proj": "proj/standardized_conv2d/"}[kind]
    return f"resnet/block{int(block)}/unit{int(unit):02d}/{part}/{sub}"


def _all_layers(model):
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except (AttributeError, TypeError):  # pragma: no cover - older Keras
        return list(model.layers)


def official_variables(model):
    """{official name: keras Variable} for every BiT weight of ``model`` (a backbone, or a model holding one)."""
    found = {}
    for layer in _all_layers(model):
        prefix = _official_key(layer.name)
        if prefix is None or not isinstance(layer, (StandardizedConv2D, GroupNorm)):
            continue
        names = ("kernel",) if isinstance(layer, StandardizedConv2D) else ("gamma", "beta")
        for name in names:
            key = prefix + name
            if key in found:
                raise ValueError(f"model {model.name!r} holds more than one BiT layer named {layer.name!r}")
            found[key] = getattr(layer, name)
    if ROOT_KEY not in found:
        raise ValueError(f"model {model.name!r} holds no BiT ResNet-v2 layers (no 'root_conv')")
    return found


def normalize_key(name):
    """An official weight name from a file / SavedModel variable name: ``:0`` dropped, anything before
    ``resnet/`` dropped (``resnet/`` added where the name starts at ``root_block/``, ``blockN/``...),
    ``standardized_conv2d_1`` / ``group_norm_2`` / ``group_normalization`` read as the plain names."""
    name = name.split(":")[0]
    if "resnet/" in name:
        name = name[name.index("resnet/"):]
    elif _BARE_RE.match(name):
        name = "resnet/" + name
    name = _CONV_SUFFIX_RE.sub("/standardized_conv2d/", name)
    return _GN_SUFFIX_RE.sub("/group_norm/", name)


# --------------------------------------------------------------------------------------------- weights
def _arch_from_weights(weights, source):
    """(num_units, width) from official-named arrays; ValueError naming ``source`` when they are not BiT."""
    units = {}
    for key in weights:
        match = _UNIT_KEY_RE.match(key)
        if match:
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    root = weights.get(ROOT_KEY)
    if root is None or np.ndim(root) != 4 or sorted(units) != [1, 2, 3, 4]:
        found = ", ".join(list(weights)[:6]) or "nothing"
        raise ValueError(f"{source} does not hold BiT ResNet-v2 weights (no {ROOT_KEY!r} and "
                         f"resnet/block1..4/unitNN/...); found {len(weights)} arrays: {found}")
    num_units = []
    for block in (1, 2, 3, 4):
        numbers = sorted(units[block])
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{source}: block{block} has units {numbers}; expected unit01..unit{len(numbers):02d}")
        num_units.append(len(numbers))
    return tuple(num_units), np.shape(root)[-1] / 64


def _groups_from_weights(weights, groups):
    if groups is not None:
        return int(groups)
    if GROUPS_KEY in weights:
        return int(np.asarray(weights[GROUPS_KEY]).reshape(-1)[0])
    return GROUPS


def _model_from_weights(weights, source, label, groups=None, input_range="unit"):
    """A model with the architecture the arrays describe, weights assigned (official names)."""
    num_units, width = _arch_from_weights(weights, source)
    depth = next((d for d, u in DEPTH_UNITS.items() if u == num_units), None)
    parsed = parse_name(label, default=None)
    name = None
    if parsed is not None and depth is not None and parsed == (depth, width):
        name = os.path.basename(os.fspath(label).rstrip("/\\")).removesuffix(".npz") or None
    name = name if name and re.fullmatch(r"[A-Za-z0-9_.-]+", name) else None
    model = build((depth, width), num_units=num_units, input_range=input_range,
                  groups=_groups_from_weights(weights, groups), name=name)
    assign_weights(model, weights, source)
    return model


def assign_weights(model, weights, source="weights"):
    """Copy official-named arrays into ``model``'s BiT layers (GroupNorm params of any shape with C
    values). Head weights and ``kitlib/`` metadata are ignored; any other unmatched or missing name, or
    a shape mismatch, is a ValueError naming ``source``."""
    variables = official_variables(model)
    extra = [k for k in weights if k not in variables and not k.startswith(HEAD_PREFIX)
             and not k.startswith("kitlib/")]
    missing = [k for k in variables if k not in weights]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights of {model.name} missing, e.g. {', '.join(missing[:5])}")
        if extra:
            parts.append(f"{len(extra)} names not matched, e.g. {', '.join(extra[:5])}")
        raise ValueError(f"{source}: the names do not map to BiT ResNet-v2 weights: {'; '.join(parts)}")
    for key, variable in variables.items():
        value = np.asarray(weights[key], dtype=np.float32)
        if key.endswith(("/gamma", "/beta")):
            value = value.reshape(-1)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"{source}: {key} has shape {value.shape}; {model.name} expects {tuple(variable.shape)}")
        variable.assign(value)


def _normalized(named_arrays, source):
    weights = {}
    for name, value in named_arrays:
        key = normalize_key(name)
        if key in weights:
            raise ValueError(f"{source}: two arrays map to {key!r} (one is {name!r})")
        weights[key] = value
    return weights


def from_npz(path, groups=None, input_range="unit"):
    """A BiT backbone with the weights of an official ``.npz`` (``BiT-M-R50x1.npz``): [0, 1] images ->
    features [N, 2048*w], every weight trainable.

    The architecture is read from the arrays (units per stage by counting ``resnet/blockB/unitUU`` keys,
    width from the root kernel's out channels / 64), which agrees with the file name for official files;
    the name only names the model. ``standardized_conv2d_1``-style names are read as the plain ones; the
    head (``resnet/head/...``) is ignored. ``groups`` overrides the GroupNorm groups (default: 32, or
    what ``save_npz`` recorded for a non-standard model).

    Raises:
        FileNotFoundError; ValueError naming the file and what it holds when it is not BiT.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BiT weights file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError(f"a single array of shape {np.shape(data)}, not an .npz archive")
        with data:
            arrays = [(k, data[k]) for k in data.files]
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path!r} is not a readable .npz archive of BiT weights: {err}") from err
    return _model_from_weights(_normalized(arrays, repr(path)), repr(path), path, groups, input_range)


def save_npz(model, path):
    """Write the BiT weights of ``model`` (a backbone, or a model holding one) as an ``.npz`` in the
    official naming (HWIO kernels, float32); ``from_npz`` reads it back. Non-standard GroupNorm groups
    are recorded under ``kitlib/groups``. Returns the path."""
    path = os.fspath(path)
    arrays = {k: np.asarray(ops.convert_to_numpy(v.value), dtype=np.float32)
              for k, v in official_variables(model).items()}
    groups = {layer.groups for layer in _all_layers(model) if isinstance(layer, GroupNorm)}
    if groups != {GROUPS}:
        if len(groups) != 1:
            raise ValueError(f"model {model.name!r} mixes GroupNorm groups {sorted(groups)}")
        arrays[GROUPS_KEY] = np.asarray([groups.pop()], dtype=np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as handle:  # np.savez would append .npz to other suffixes
        np.savez(handle, **arrays)
    return path


def _saved_model_variables(obj):
    """The tf.Variables a loaded SavedModel holds: its ``variables`` (TF-Hub modules export them) or,
    for a plain tf.Module, every variable reachable through its tracked children."""
    from kitlib.compat import tf  # noqa: PLC0415 - TF only reads the SavedModel

    listed = getattr(obj, "variables", None)
    if listed:
        return list(listed)
    found, seen, stack = [], set(), [obj]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, tf.Variable):
            found.append(node)
            continue
        try:
            children = node._trackable_children()
        except Exception:  # noqa: BLE001 - not every node lists children
            continue
        stack.extend(children.values())
    return found


def from_saved_model(path_or_url, groups=None, input_range="unit"):
    """A BiT backbone with the weights of a BiT TF2 SavedModel (TF-Hub / Kaggle Models ``m-r50x1``, a
    local folder, or a URL resolved with tensorflow_hub): [0, 1] images -> features [N, 2048*w].

    The SavedModel is only read (``tf.saved_model.load``); its variables are mapped by name
    (``resnet/block1/unit01/a/standardized_conv2d/kernel:0`` ...). Like the TF-Hub modules, the model
    takes [0, 1] images and scales them to [-1, 1] itself, so the features agree.

    Raises:
        ValueError naming the folder and the unmatched names when the variables are not BiT's.
    """
    from kitlib.compat import tf  # noqa: PLC0415

    source = os.fspath(path_or_url)
    local = os.path.expanduser(source)
    if not os.path.isdir(local):
        if "://" not in source:
            raise FileNotFoundError(f"BiT SavedModel {source!r}: no such folder, and not a URL")
        import tensorflow_hub as hub  # noqa: PLC0415 - pulls in tf_keras; only for resolving a handle

        local = hub.resolve(source)
    if not os.path.isfile(os.path.join(local, "saved_model.pb")):
        raise ValueError(f"{local!r} holds no saved_model.pb; give the folder of a BiT TF2 SavedModel")
    loaded = tf.saved_model.load(local)
    variables = _saved_model_variables(loaded)
    arrays = [(v.name, v.numpy()) for v in variables]
    weights = _normalized(arrays, repr(local))
    if ROOT_KEY not in weights:
        names = ", ".join(v.name for v in variables[:6]) or "no variables"
        raise ValueError(f"SavedModel {local!r} does not hold BiT ResNet-v2 variables: no {ROOT_KEY!r} "
                         f"among {len(variables)} variables; unmatched names: {names}")
    parts = [p for p in re.split(r"[/\\]", source) if p]
    label = next((p for p in reversed(parts[-3:]) if parse_name(p, default=None)), "")  # .../m-r50x1/1
    return _model_from_weights(weights, f"SavedModel {local!r}", label, groups, input_range)
