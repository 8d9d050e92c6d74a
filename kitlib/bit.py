"""BiT's classifier: a backbone with a zero-initialised head (``build_classifier``), a small backbone for
tests and demos (``make_tiny_backbone``), and where a BiT backbone given by a handle lives on disk
(``resolve_backbone``: a local SavedModel, a Kaggle input, the TF Hub cache, or the network when it answers).

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", arXiv 1912.11370. The rule
that sets the run's length and learning rate is ``kitlib.bit_hyperrule``; the input pipeline and MixUp are
``kitlib.bit_input``. Backbones are Keras 3 models from ``kitlib.backbones`` (images [N, H, W, 3] in [0, 1]
-> [N, F]); compute is Keras 3 (JAX).
"""

import glob
import hashlib
import os
import re
import socket
import tempfile
import urllib.parse

import numpy as np

from kitlib import export
from kitlib.compat import keras
from kitlib.runtime import KAGGLE_INPUT


# ============ backbone + zero head ============


def build_classifier(backbone, num_classes, image_size, name="bit_classifier"):
    """images float32 [N, S, S, 3] in [0, 1] -> float32 logits [N, C]: backbone + zero-initialised head (BiT).

    Build it after ``runtime.setup()``: the variables are then laid out for the distribution in force
    (replicated under ``DataParallel``) and the layers follow its dtype policy. A backbone saved in
    float32 (``.keras``) is rebuilt in the global policy (bfloat16 compute on TPU); the head always
    computes and returns float32 logits.

    Args:
        backbone: a Keras model (``kitlib.backbones``) or a source for ``backbones.load``
            (.keras / .npz / SavedModel folder / handle). All its weights train.
        num_classes: C.
        image_size: S, the rule's crop size.
    Returns:
        keras.Model whose layers are [input, backbone, "head"].
    """
    if isinstance(backbone, (str, os.PathLike)):
        from kitlib import backbones  # noqa: PLC0415

        backbone = backbones.load(os.fspath(backbone))
    if keras.config.dtype_policy().name != "float32" and export.dtype_policies(backbone) == {"float32"}:
        backbone = export.with_dtype_policy(backbone)
    backbone.trainable = True
    inputs = keras.Input([image_size, image_size, 3], dtype="float32", name="images")
    features = backbone(inputs)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", bias_initializer="zeros",
                                dtype="float32", name="head")(features)
    return keras.Model(inputs, logits, name=name)


TINY_BACKBONES = ("small_cnn", "bit_tiny")


def make_tiny_backbone(path, name="small_cnn", seed=0):
    """Save a small randomly initialised Keras 3 backbone as ``path`` (.keras) and return the path.

    For tests, CPU smoke runs and notebooks without a real BiT: [N, H, W, 3] in [0, 1] -> [N, F].
    ``small_cnn``: three stride-2 conv-BN-ReLU blocks, F = 128 (``kitlib.backbones``); ``bit_tiny``:
    BiT's ResNet-v2 (GroupNorm + WS) with few channels and one unit per stage, F = 256
    (``kitlib.resnetv2.build_tiny``). Kernels are He-normal from a local numpy generator seeded with
    ``seed`` (no global seed is touched), so the file holds the same weights every time.
    """
    if name not in TINY_BACKBONES:
        raise ValueError(f"unknown tiny backbone {name!r}; choose one of {', '.join(TINY_BACKBONES)}")
    from kitlib import backbones, resnetv2  # noqa: PLC0415

    model = resnetv2.build_tiny() if name == "bit_tiny" else backbones.build(name)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim >= 2:  # conv / dense kernels; BatchNorm and Normalization values stay as built
            fan_in = int(np.prod(w.shape[:-1]))
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(w.dtype)
        weights.append(w)
    model.set_weights(weights)
    return backbones.save(model, os.fspath(path))


# ============ backbones: TF Hub, Kaggle Models, local SavedModel ============

_KAGGLE_MODELS_URL = "https://www.kaggle.com/models/"
_TFHUB_PREFIX = "https://tfhub.dev/"
# owner/model/framework/variation[/version], e.g. google/bit/tensorFlow2/m-r50x1/1
_KAGGLE_HANDLE = re.compile(r"^(?P<owner>[\w.-]+)/(?P<model>[\w.-]+)/(?P<framework>[\w.-]+)/"
                            r"(?P<variation>[\w.-]+)(?:/(?P<version>\d+))?$")
PROBE_TIMEOUT_S = 3.0  # one TCP connect, no retries: offline must fail in seconds, not minutes


def _is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _remote_parts(handle):
    """(url, model, framework, variation, version) for a TF Hub / Kaggle handle, or None if not remote."""
    if handle.startswith(("tfhub.dev/", "www.kaggle.com/", "kaggle.com/")):
        handle = "https://" + handle
    match = _KAGGLE_HANDLE.match(handle)
    if match and not handle.startswith((".", "/", "~")):
        parts = match.groupdict()
        version = parts["version"] or "1"
        url = _KAGGLE_MODELS_URL + f"{parts['owner']}/{parts['model']}/{parts['framework']}/{parts['variation']}/{version}"
        return url, parts["model"], parts["framework"], parts["variation"], parts["version"]
    if handle.startswith(("http://", "https://", "gs://")):
        path = urllib.parse.urlparse(handle).path.strip("/").split("/")
        if handle.startswith(_TFHUB_PREFIX) and len(path) >= 3:  # tfhub.dev/<owner>/<model>/<variation>/<version>
            version = path[3] if len(path) > 3 else None
            return handle, path[1], "tensorflow2", path[2], version
        if "kaggle.com" in handle and "models" in path:  # .../models/<owner>/<model>/<framework>/<variation>/<v>
            rest = [p for p in path[path.index("models") + 1:] if p not in ("frameworks", "variations", "versions")]
            if len(rest) >= 4:
                return handle, rest[1], rest[2], rest[3], rest[4] if len(rest) > 4 else None
        return handle, None, None, None, None
    return None


def _attached_model_dirs(model, framework, variation, version, input_root=KAGGLE_INPUT):
    """SavedModel folders of a Kaggle Model attached as notebook input: ROOT/model/framework/variation/version."""
    if model is None:
        return []
    found = []
    for fw in dict.fromkeys([framework.lower(), framework]):
        found += glob.glob(os.path.join(input_root, model, fw, variation, version or "*"))
    found = [d for d in found if _is_saved_model(d)]
    return sorted(found, key=lambda d: int(os.path.basename(d)) if os.path.basename(d).isdigit() else -1)


def can_connect(host, port=443, timeout=PROBE_TIMEOUT_S):
    """True if one TCP connection to host:port opens within ``timeout`` seconds (no retries)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_backbone(handle, cache_dir=None, input_root=KAGGLE_INPUT, reachable=None):
    """Where to load a backbone from, without ever waiting on an unreachable network.

    Order: a local SavedModel directory; the same model attached as a Kaggle input
    (``/kaggle/input/<model>/<framework>/<variation>/<version>``); the TF Hub download cache; the
    network (only if its host answers one quick connect).

    Args:
        handle: local directory, ``https://tfhub.dev/google/bit/m-r50x1/1``, a Kaggle Models URL, or
            a Kaggle handle ``google/bit/tensorFlow2/m-r50x1[/1]``.
        cache_dir: TF Hub cache (default: ``$TFHUB_CACHE_DIR`` or ``<tmp>/tfhub_modules``, as tensorflow_hub).
        input_root: where Kaggle mounts attached inputs.
        reachable: ``fn(host) -> bool`` probe of the network (default: one TCP connect, 3 s timeout).
    Returns:
        A local SavedModel directory, or the URL when its host answers (tensorflow_hub downloads it).
    Raises:
        ValueError: local path missing / not a SavedModel, or a remote handle that cannot be reached.
    """
    handle = os.fspath(handle)
    if os.path.isdir(os.path.expanduser(handle)):
        path = os.path.expanduser(handle)
        if not _is_saved_model(path):
            raise ValueError(f"backbone {handle!r} is a folder but holds no saved_model.pb (nor a pretrain "
                             "backbone.keras); pass a .keras / .npz file, or the folder of "
                             "a TF2 SavedModel (the one that contains saved_model.pb and variables/)")
        return path
    remote = _remote_parts(handle)
    if remote is None:
        raise ValueError(f"backbone {handle!r}: no such directory, and not a TF Hub URL or Kaggle Models "
                         "handle (owner/model/framework/variation[/version]); check the path")
    url, model, framework, variation, version = remote
    attached = _attached_model_dirs(model, framework, variation, version, input_root)
    if attached:
        return attached[-1]
    if cache_dir is None:
        cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    cached = os.path.join(cache_dir, hashlib.sha1(url.encode("utf8")).hexdigest())  # tensorflow_hub's layout
    if _is_saved_model(cached):
        return cached
    host = "storage.googleapis.com" if url.startswith("gs://") else urllib.parse.urlparse(url).hostname
    if not (reachable or can_connect)(host):
        example = os.path.join(input_root, model or "bit", (framework or "tensorflow2").lower(),
                               variation or "m-r50x1", version or "1")
        raise ValueError(
            f"backbone {handle!r} cannot be loaded: {host} is unreachable (internet off?) and the model is "
            f"neither attached under {input_root} nor in the TF Hub cache {cache_dir}. On Kaggle: "
            f"'Add Input' -> Models -> search '{model or 'BiT'}', attach the TensorFlow 2 variation "
            f"{variation or ''} and pass its folder, e.g. --backbone {example}. Elsewhere: download the "
            "SavedModel once where there is internet and pass its local directory (if you meant a local "
            "folder: it does not exist).")
    return url
