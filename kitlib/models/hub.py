"""Where a backbone given by a handle lives on disk (``resolve_backbone``): a local SavedModel, a Kaggle
input, the TF Hub cache, or the network when it answers (probed in seconds, so offline fails fast).

Handles: TF-Hub URLs (``https://tfhub.dev/google/bit/m-r50x1/1``) and Kaggle Models handles
(``google/bit/tensorFlow2/m-r50x1``). The SavedModel found is read by ``kitlib.models.bit_weights``.
"""

import glob
import hashlib
import os
import re
import socket
import tempfile
import urllib.parse

from kitlib.locations import KAGGLE_INPUT

# ============ backbone + zero head ============


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
