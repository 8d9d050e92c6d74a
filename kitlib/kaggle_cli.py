"""``python -m kitlib kaggle ...``: the Kaggle round trip from one terminal, on the ``kaggle`` package's API.

    download     the competition's files (Cassava by default), unpacked, and the layout checked with kitlib.data
    publish-kit  ``kitlib/`` (+ pyproject.toml, README.md) as the dataset ``<you>/kitlib``, created or versioned;
                 attached to a notebook it is ``/kaggle/input/kitlib``, where every notebook's first cell looks
    push         a notebook of ``notebooks/`` as a Kaggle kernel on a TPU v5e-8, a T4 GPU or a CPU, with a clean
                 ``kernel-metadata.json`` (``--dry-run --out DIR`` only writes the folder: no credentials needed)
    status       a kernel run's state (``--wait``: poll until it ends)
    output       a kernel run's output files (``backbone.keras``, ``bit_classifier/``) into ``--out``

Why the module is ``kaggle_cli`` and not ``kaggle``: this file imports the ``kaggle`` package, and a module
named ``kaggle.py`` inside ``kitlib/`` would be that package whenever ``kitlib/`` itself is on ``sys.path``
(running any ``kitlib/*.py`` as a script puts its folder first), and ``kitlib.kaggle`` would read, in code and
in test patches, as the package itself.

The ``kaggle`` package (2.0.2) authenticates when it is imported and, without credentials, prints a notice and
exits the process. So it is imported only in `authenticated_api`, after `find_credentials` has found a token
(its output captured; the key is never printed or written). Every command takes ``get_api``, a function
returning the authenticated API object, so tests pass a stand-in.

Errors are one line with the fix (exit code 2); whatever a command writes is built in a temporary folder and
moved into place only when complete.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile

from kitlib import __version__
from kitlib.runtime import COMPETITION, KAGGLE_INPUT, repo_root

KIT_DATASET_SLUG = "kitlib"  # attached, it mounts at /kaggle/input/kitlib: the notebooks' first cell looks there
KIT_FILES = ("pyproject.toml", "README.md", "requirements.txt")  # uploaded next to kitlib/ (when present)
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
KAGGLE_URL = "https://www.kaggle.com"
OWNER_PLACEHOLDER = "YOUR-KAGGLE-USERNAME"  # the kernel id's owner in a --dry-run without credentials
CREDENTIALS_FIX = ("put your API token in ~/.kaggle/kaggle.json ({\"username\": ..., \"key\": ...}; Kaggle -> "
                   "Settings -> API -> Create New Token; chmod 600 it) or export KAGGLE_USERNAME and KAGGLE_KEY")

# --accelerator: the kit's three choices and the Kaggle machine shape each one asks for.
ACCELERATORS = {"tpu": "TpuV5E8", "gpu": "NvidiaTeslaT4", "cpu": None}
# Kaggle's own ids (Feb 2026) are accepted as they are; the value says which switch they need.
MACHINE_SHAPES = {"TpuV5E8": "tpu", "TpuV6E8": "tpu", "NvidiaTeslaT4": "gpu", "NvidiaTeslaT4Highmem": "gpu",
                  "NvidiaL4": "gpu", "NvidiaL4X1": "gpu", "NvidiaTeslaA100": "gpu", "NvidiaH100": "gpu",
                  "NvidiaRtxPro6000": "gpu"}
RETIRED_SHAPES = {"NvidiaTeslaP100": "gpu", "TpuV38": "tpu", "Tpu1VmV38": "tpu"}  # silently replaced by Kaggle


@dataclasses.dataclass(frozen=True)
class NotebookDefaults:
    """What `push` uses for a notebook unless told otherwise.

    accelerator: "tpu" | "gpu" | "cpu". internet: the kernel's internet switch. models: Kaggle Models
    sources (owner/model/framework/variation/version). kernels: numbers of the kit's notebooks whose
    kernel output this one reads (attached as kernel sources under the same owner).
    """
    accelerator: str
    internet: bool
    models: tuple = ()
    kernels: tuple = ()


# One row per notebook, by number. 01 pretrains on the TPU v5e-8 with the internet on; 02 fine-tunes BiT-M
# R50x1 read from Kaggle Models; 04 is the code-competition submission, scored with the internet off, and
# reads the classifier that the 02 kernel writes.
NOTEBOOK_DEFAULTS = {
    "01": NotebookDefaults("tpu", internet=True),
    "02": NotebookDefaults("gpu", internet=False, models=("google/bit/tensorFlow2/m-r50x1/1",)),
    "03": NotebookDefaults("cpu", internet=False),
    "04": NotebookDefaults("gpu", internet=False, kernels=("02",)),
}
FALLBACK_DEFAULTS = NotebookDefaults("cpu", internet=False)
TERMINAL_STATES = ("complete", "error", "cancel_requested", "cancel_acknowledged")


class KaggleCommandError(RuntimeError):
    """A problem the user can fix; the message is one line that says how."""


# ============ credentials and the API object ============


def kaggle_config_dir(environ=None, home=None, platform=sys.platform):
    """The folder the ``kaggle`` package reads ``kaggle.json`` from (its own rule, without importing it).

    ``KAGGLE_CONFIG_DIR``; else ``~/.kaggle``; on Linux, when ``~/.kaggle`` does not exist,
    ``$XDG_CONFIG_HOME/kaggle`` (default ``~/.config/kaggle``).
    """
    environ = os.environ if environ is None else environ
    if environ.get("KAGGLE_CONFIG_DIR"):
        return environ["KAGGLE_CONFIG_DIR"]
    home = os.path.expanduser("~") if home is None else home
    legacy = os.path.join(home, ".kaggle")
    if platform.startswith("linux") and not os.path.exists(legacy):
        return os.path.join(environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "kaggle")
    return legacy


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where a Kaggle token was found, and the account name when known. Never holds the key."""
    source: str
    username: str = None


def find_credentials(environ=None, home=None):
    """The credentials the ``kaggle`` package would use, without importing it; None when there are none.

    Looks at ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, ``KAGGLE_API_TOKEN``, ``kaggle.json`` in
    `kaggle_config_dir` (it needs "username" and "key"), and ``~/.kaggle/access_token``.
    """
    environ = os.environ if environ is None else environ
    home = os.path.expanduser("~") if home is None else home
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return Credentials("KAGGLE_USERNAME/KAGGLE_KEY", environ["KAGGLE_USERNAME"])
    if environ.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN", environ.get("KAGGLE_USERNAME"))
    path = os.path.join(kaggle_config_dir(environ, home), "kaggle.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and config.get("username") and config.get("key"):
        return Credentials(path, str(config["username"]))
    for name in ("access_token", "access_token.txt"):
        token = os.path.join(home, ".kaggle", name)
        if os.path.isfile(token) and os.path.getsize(token) > 0:
            return Credentials(token, environ.get("KAGGLE_USERNAME"))
    return None


def redact(text, environ=None):
    """``text`` with the values of KAGGLE_KEY / KAGGLE_API_TOKEN replaced by ``***``."""
    environ = os.environ if environ is None else environ
    for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        secret = environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def authenticated_api():
    """The ``kaggle`` package's ``KaggleApi``, authenticated; `KaggleCommandError` when there are no credentials.

    ``import kaggle`` authenticates (and exits without credentials), so it happens here, after
    `find_credentials`, with the package's printed notices captured and passed on (redacted) to stderr.
    """
    if find_credentials() is None:
        raise KaggleCommandError(f"no Kaggle credentials found: {CREDENTIALS_FIX}")
    notices = io.StringIO()
    try:
        with contextlib.redirect_stdout(notices):
            import kaggle  # noqa: PLC0415 - authenticates on import: only once credentials exist
            from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: PLC0415

            api = KaggleApi(enable_oauth=kaggle.enable_oauth)
            api.authenticate()  # a fresh object: reads the credentials as they are now
    except SystemExit:
        raise KaggleCommandError(f"Kaggle did not accept the credentials: {CREDENTIALS_FIX}") from None
    except Exception as err:  # noqa: BLE001 - e.g. an incomplete kaggle.json, a network error for a token
        raise KaggleCommandError(explain_api_error(err, "sign in to Kaggle")) from None
    if notices.getvalue().strip():
        print(redact(notices.getvalue().strip()), file=sys.stderr)
    return api


def _http_status(err):
    """The HTTP status of an API error (requests' HTTPError carries the response), else None."""
    return getattr(getattr(err, "response", None), "status_code", None)


def explain_api_error(err, action, competition=None):
    """One line saying why ``action`` failed and how to fix it.

    Args:
        err: the exception the ``kaggle`` API raised.
        action: what was attempted, e.g. "download cassava-leaf-disease-classification".
        competition: the competition slug when the action reads one (a 403 then means unaccepted rules).
    """
    status = _http_status(err)
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    if status == 403 and competition:
        return (f"Kaggle refused to {action} (403 Forbidden): accept the rules at "
                f"{KAGGLE_URL}/competitions/{competition}/rules with the account of your API token, then rerun")
    if status == 401:
        return (f"Kaggle rejected the credentials (401 Unauthorized) trying to {action}: create a new token at "
                f"{KAGGLE_URL}/settings (API -> Create New Token) and put it in ~/.kaggle/kaggle.json or "
                "KAGGLE_USERNAME/KAGGLE_KEY")
    if status == 403:
        return f"Kaggle refused to {action} (403 Forbidden: {detail}): check that your account owns or can see it"
    if status == 404:
        return f"Kaggle found nothing to {action} (404 Not Found): check the name (owner/slug as in its URL)"
    if status is not None:
        return f"Kaggle answered {status} trying to {action} ({detail}); retry later"
    if type(err).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "SSLError"):
        return f"could not reach Kaggle to {action} ({type(err).__name__}): check the internet connection and retry"
    if isinstance(err, ValueError):  # the package's own checks (and its 401/403 on a kernel, as ValueError)
        first = detail.split(". ")[0].rstrip(".")
        if "denied" in first.lower() and "kernel" in first.lower():
            return (f"Kaggle refused to {action} ({first}): use the id OWNER/SLUG of the kernel's URL "
                    f"({KAGGLE_URL}/code/OWNER/SLUG) and the credentials of the account that owns it")
        return f"the kaggle package refused to {action}: {first}"
    return f"could not {action}: {type(err).__name__}: {detail}"


# ============ notebooks and kernel folders (pure) ============


def notebooks_dir():
    """The kit's ``notebooks/`` folder."""
    return os.path.join(repo_root(), "notebooks")


def resolve_notebook(name, folder=None):
    """The ``.ipynb`` in ``notebooks/`` that ``name`` means: "01", "01_pretrain_swav_tpu", its file name or path.

    Raises `KaggleCommandError` for anything else, e.g. a notebook outside ``notebooks/``.
    """
    folder = os.path.realpath(notebooks_dir() if folder is None else folder)
    available = sorted(n for n in os.listdir(folder) if n.endswith(".ipynb")) if os.path.isdir(folder) else []
    if os.path.sep in name or (os.path.altsep and os.path.altsep in name):  # a path: it must be in notebooks/
        path = os.path.realpath(name)
        if os.path.dirname(path) == folder and os.path.basename(path) in available:
            return path
    else:
        stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name
        matches = [n for n in available if n[:-len(".ipynb")] == stem or n.split("_", 1)[0] == stem]
        if len(matches) == 1:
            return os.path.join(folder, matches[0])
    choices = ", ".join(n.split("_", 1)[0] for n in available) or "none found"
    raise KaggleCommandError(
        f"{name!r} is not a notebook of {folder}: push one of the kit's notebooks by number ({choices}) or "
        "file name; to push another notebook, put it in notebooks/ first")


def notebook_number(path):
    """"01" for ``.../01_pretrain_swav_tpu.ipynb`` (the part before the first underscore)."""
    return os.path.basename(path).split("_", 1)[0]


def kernel_slug(path):
    """The kernel slug of a kit notebook, e.g. ``kitlib-01-pretrain-swav-tpu``."""
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    return "kitlib-" + re.sub(r"[^a-z0-9]+", "-", stem).strip("-")


def kernel_title(path):
    """A title that Kaggle turns back into `kernel_slug` (``kitlib 01 pretrain swav tpu``)."""
    return kernel_slug(path).replace("-", " ")


def defaults_for(path):
    """The `NotebookDefaults` row of a notebook (`FALLBACK_DEFAULTS` when it has none)."""
    return NOTEBOOK_DEFAULTS.get(notebook_number(path), FALLBACK_DEFAULTS)


def machine_shape(accelerator):
    """(kind, machine_shape) for an --accelerator value: ("tpu", "TpuV5E8"), ("gpu", "NvidiaTeslaT4"),
    ("cpu", None), or a Kaggle id as it is (e.g. "NvidiaL4" -> ("gpu", "NvidiaL4"))."""
    value = (accelerator or "").strip()
    if value.lower() in ACCELERATORS:
        return value.lower(), ACCELERATORS[value.lower()]
    if value in MACHINE_SHAPES:
        return MACHINE_SHAPES[value], value
    if value in RETIRED_SHAPES:
        kind = RETIRED_SHAPES[value]
        raise KaggleCommandError(f"accelerator {value!r} is retired (Kaggle silently runs another machine): use "
                                 f"--accelerator {kind} ({ACCELERATORS[kind]})")
    raise KaggleCommandError(
        f"unknown accelerator {accelerator!r}: use --accelerator tpu (TpuV5E8), gpu (NvidiaTeslaT4) or cpu, "
        f"or a Kaggle id ({', '.join(MACHINE_SHAPES)})")


def parse_switch(value, what="--internet"):
    """True for "on", False for "off" (also true/false, yes/no, 1/0)."""
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise KaggleCommandError(f"{what} takes on or off, not {value!r}")


def check_ref(ref, parts, what, example):
    """``ref`` unchanged when it has ``parts`` non-empty '/'-separated parts; else one-line error."""
    pieces = str(ref).split("/")
    if len(pieces) != parts or not all(pieces):
        raise KaggleCommandError(f"{what} {ref!r} must look like {example}")
    if what == "model source" and not pieces[-1].isdigit():
        raise KaggleCommandError(f"{what} {ref!r}: the last part is the version number, e.g. {example}")
    return ref


def kernel_metadata(notebook, owner, accelerator, internet, competition=COMPETITION, kit_dataset=None,
                    datasets=(), models=(), kernels=(), private=True):
    """The ``kernel-metadata.json`` of a kit notebook, as a dict.

    Args:
        notebook: path of the .ipynb (its name gives id, title and code_file).
        owner: Kaggle user name (the kernel id is owner/slug).
        accelerator: an --accelerator value (`machine_shape`). internet: bool.
        competition: slug attached as a competition source (None/"": none).
        kit_dataset: the kit's dataset ref (default owner/kitlib); datasets: more owner/slug refs.
        models: owner/model/framework/variation/version refs. kernels: owner/slug refs.
        private: the kernel's visibility.
    Returns:
        dict with id, title, code_file, language, kernel_type, is_private, enable_gpu, enable_tpu,
        enable_internet, machine_shape (absent on CPU), and the four source lists; never ``docker_image``
        (a pinned image overrides the TPU VM: Kaggle/kaggle-cli issue #1197).
    """
    kind, shape = machine_shape(accelerator)
    kit = kit_dataset or f"{owner}/{KIT_DATASET_SLUG}"
    sources = [check_ref(d, 2, "dataset source", "owner/dataset-slug") for d in (kit, *datasets)]
    meta = {
        "id": f"{owner}/{kernel_slug(notebook)}",
        "title": kernel_title(notebook),
        "code_file": os.path.basename(notebook),
        "language": "python",
        "kernel_type": "notebook",
        "is_private": bool(private),
        "enable_gpu": kind == "gpu",
        "enable_tpu": kind == "tpu",
        "enable_internet": bool(internet),
    }
    if shape:
        meta["machine_shape"] = shape
    meta["competition_sources"] = [competition] if competition else []
    meta["dataset_sources"] = list(dict.fromkeys(sources))
    meta["model_sources"] = list(dict.fromkeys(
        check_ref(m, 5, "model source", "google/bit/tensorFlow2/m-r50x1/1") for m in models))
    meta["kernel_sources"] = list(dict.fromkeys(
        check_ref(k, 2, "kernel source", "owner/kernel-slug") for k in kernels))
    return meta


def clean_notebook(nb):
    """A copy of a notebook (nbformat 4 dict) ready to push: no outputs, no stale Kaggle settings.

    Drops ``metadata.kaggle`` (its ``accelerator`` / ``dockerImageVersionId`` / internet switches would
    override the kernel metadata), sets the python3 kernelspec, empties every code cell's outputs and
    execution count and removes per-cell run records (``execution``, ``papermill``).
    """
    nb = json.loads(json.dumps(nb))
    metadata = {k: v for k, v in nb.get("metadata", {}).items() if k != "kaggle"}
    metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    metadata.setdefault("language_info", {"name": "python"})
    nb["metadata"] = metadata
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("execution", "papermill")}
    return nb


def _temp_beside(path, prefix):
    """A new empty folder next to ``path`` (same file system, so it can be renamed into place)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.{prefix}-", dir=parent)


def _is_kernel_folder(path):
    """True for a folder `write_kernel_folder` wrote (only kernel-metadata.json and notebooks)."""
    names = os.listdir(path)
    return KERNEL_METADATA in names and all(n == KERNEL_METADATA or n.endswith(".ipynb") for n in names)


def require_free(out, what="--out", replaceable=None):
    """Raise unless ``out`` is absent, an empty folder, or accepted by ``replaceable(path)``."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise KaggleCommandError(f"{what} {out} is a file: choose a folder")
    if os.listdir(out) and not (replaceable and replaceable(out)):
        raise KaggleCommandError(f"{what} {out} is not empty: choose a new folder or remove it first")


def move_into_place(staged, out):
    """Rename the complete folder ``staged`` to ``out``; an existing ``out`` is swapped out, then removed."""
    old = None
    if os.path.exists(out):
        old = _temp_beside(out, "old")
        os.rmdir(old)
        os.replace(out, old)
    os.replace(staged, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_kernel_folder(notebook, metadata, out):
    """Write ``out/kernel-metadata.json`` and the cleaned notebook (`clean_notebook`), all or nothing.

    ``out`` may be absent, empty, or a kernel folder written before (replaced). Returns ``out``.
    """
    require_free(out, replaceable=_is_kernel_folder)
    with open(notebook, encoding="utf-8") as f:
        nb = clean_notebook(json.load(f))
    staged = _temp_beside(out, "kernel")
    try:
        with open(os.path.join(staged, metadata["code_file"]), "w", encoding="utf-8") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")
        with open(os.path.join(staged, KERNEL_METADATA), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
            f.write("\n")
        return move_into_place(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# ============ the competition layout (pure) ============

LAYOUT_FOLDERS = ("train_tfrecords", "test_tfrecords", "train_images", "test_images")
LAYOUT_FILES = ("train.csv", "label_num_to_disease_map.json", "sample_submission.csv")


@dataclasses.dataclass
class Layout:
    """What `check_layout` found in a data folder.

    shards / records: per split ("train", "test"), shard files and the records their names count.
    images: per split, image files in ``{split}_images/``. csv_rows: rows of train.csv (None: absent).
    classes: names from the label map (empty: absent). missing: expected entries that are absent.
    problems: entries present but unusable, or counts that disagree.
    """
    root: str
    shards: dict
    records: dict
    images: dict
    csv_rows: int
    classes: tuple
    missing: list
    problems: list

    @property
    def complete(self):
        """True when nothing is missing and nothing is wrong."""
        return not self.missing and not self.problems


def _csv_rows(path):
    with open(path, encoding="utf-8") as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)


def check_layout(root):
    """Compare a folder with the competition's layout (see `kitlib.data`); reads names only, writes nothing.

    Shards come from `kitlib.data.list_tfrecords` and are counted from their names with
    `kitlib.data.count_data_items`; the label map is read with `kitlib.data.read_label_map`.
    Returns a `Layout`.
    """
    from kitlib import data  # noqa: PLC0415 - TensorFlow: only when a layout is checked

    root = os.fspath(root)
    layout = Layout(root, {}, {}, {}, None, (), [], [])
    for split in ("train", "test"):
        folder = os.path.join(root, f"{split}_tfrecords")
        if not os.path.isdir(folder):
            layout.missing.append(f"{split}_tfrecords/")
        else:
            try:
                files = data.list_tfrecords(root, split)
                layout.shards[split] = len(files)
                layout.records[split] = data.count_data_items(files)
            except data.DataError as err:  # no shard, or a shard name without its record count
                layout.problems.append(str(err))
        folder = os.path.join(root, f"{split}_images")
        if not os.path.isdir(folder):
            layout.missing.append(f"{split}_images/")
        else:
            layout.images[split] = sum(1 for n in os.listdir(folder) if n.lower().endswith(data.IMAGE_EXTENSIONS))
            if not layout.images[split]:
                layout.problems.append(f"{split}_images/ holds no images")
    for name in LAYOUT_FILES:
        if not os.path.isfile(os.path.join(root, name)):
            layout.missing.append(name)
    if os.path.isfile(os.path.join(root, "train.csv")):
        layout.csv_rows = _csv_rows(os.path.join(root, "train.csv"))
    if os.path.isfile(os.path.join(root, "label_num_to_disease_map.json")):
        try:
            layout.classes = data.read_label_map(os.path.join(root, "label_num_to_disease_map.json"))
        except data.DataError as err:
            layout.problems.append(str(err))
    counts = {"train.csv rows": layout.csv_rows, "train_images/": layout.images.get("train"),
              "train shard records": layout.records.get("train")}
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        layout.problems.append("train counts disagree: " + ", ".join(f"{k} {v}" for k, v in known.items()))
    return layout


def describe_layout(layout):
    """Lines saying what is in a checked folder and what is missing."""
    lines = [f"{layout.root}:"]
    for split in ("train", "test"):
        if split in layout.shards:
            records = layout.records.get(split, "? (uncounted)")
            lines.append(f"  {split + '_tfrecords/':<18} {layout.shards[split]} shards, {records} records")
        if split in layout.images:
            lines.append(f"  {split + '_images/':<18} {layout.images[split]} images")
    if layout.csv_rows is not None:
        lines.append(f"  {'train.csv':<18} {layout.csv_rows} labelled images")
    if layout.classes:
        lines.append(f"  {'label map':<18} {len(layout.classes)} classes: {', '.join(layout.classes)}")
    lines += [f"  missing: {name}" for name in layout.missing]
    lines += [f"  problem: {text}" for text in layout.problems]
    lines.append("  layout complete: the kit's commands and notebooks can read it" if layout.complete else
                 "  layout incomplete: see the lines above")
    return lines


# ============ the kit as a dataset (pure) ============


def stage_kit(root, staging):
    """Copy ``root/kitlib`` (no caches) and `KIT_FILES` into ``staging``; returns the names staged."""
    shutil.copytree(os.path.join(root, "kitlib"), os.path.join(staging, "kitlib"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*"))
    names = ["kitlib/"]
    for name in KIT_FILES:
        if os.path.isfile(os.path.join(root, name)):
            shutil.copy2(os.path.join(root, name), os.path.join(staging, name))
            names.append(name)
    return names


def dataset_metadata(ref, license_name="unknown"):
    """``dataset-metadata.json`` for the kit's dataset ``owner/slug``."""
    return {"title": KIT_DATASET_SLUG, "id": ref, "licenses": [{"name": license_name}],
            "subtitle": "SwAV pretraining + BiT fine-tuning kit, Keras 3 on JAX",
            "description": ("kitlib, the Cassava SwAV + BiT kit. Attach this dataset: the notebooks' first cell "
                            f"finds the package in {KAGGLE_INPUT}/{KIT_DATASET_SLUG}/kitlib.")}


# ============ waiting ============


def status_name(response):
    """A kernel status response's state as lower-case text ("running", "complete", "error", ...)."""
    status = getattr(response, "status", response)
    return str(getattr(status, "name", status)).split(".")[-1].lower()


def wait_for(poll, done, interval, timeout, sleep=time.sleep, clock=time.monotonic, report=None):
    """Call ``poll()`` until ``done(result)`` or ``timeout`` seconds; returns (result, finished)."""
    start = clock()
    while True:
        result = poll()
        if report:
            report(result)
        if done(result):
            return result, True
        if timeout is not None and clock() - start + interval > timeout:
            return result, False
        sleep(interval)


# ============ commands ============


def _owner(args, api=None, placeholder=None):
    """The Kaggle user name: --owner, the credentials' user name, the API's, else ``placeholder``."""
    credentials = find_credentials()
    owner = (getattr(args, "owner", None) or (credentials and credentials.username)
             or (getattr(api, "config_values", None) or {}).get("username") or placeholder)
    if not owner:
        raise KaggleCommandError("cannot tell your Kaggle user name: pass --owner USER "
                                 "(or set KAGGLE_USERNAME)")
    return owner


def kernel_ref(name, owner):
    """owner/slug for a KERNEL argument: "owner/slug", a slug, or a kit notebook ("01")."""
    if "/" in name:
        return check_ref(name, 2, "kernel", "owner/kernel-slug")
    try:
        return f"{owner}/{kernel_slug(resolve_notebook(name))}"
    except KaggleCommandError:
        return f"{owner}/{name}"


def _call(action, func, *args, competition=None, **kwargs):
    """``func(*args, **kwargs)``, with any API failure turned into a `KaggleCommandError` line."""
    try:
        return func(*args, **kwargs)
    except KaggleCommandError:
        raise
    except Exception as err:  # noqa: BLE001 - every API failure becomes one line
        raise KaggleCommandError(explain_api_error(err, action, competition)) from None


def _response_error(response):
    """The error text of an API response object, or None."""
    if response is None:
        return "no answer (an upload failed: see the lines above)"
    error = getattr(response, "error", None)
    status = str(getattr(response, "status", "") or "").lower()
    if error:
        return str(error)
    if status and status not in ("ok", "ready"):
        return f"status {status}"
    return None


def cmd_download(args, get_api):
    """Download and unpack a competition into --out, then check its layout."""
    out = args.out or os.path.join("data", "cassava" if args.competition == COMPETITION else args.competition)
    require_free(out)
    api = get_api()
    staged = _temp_beside(out, "download")
    try:
        print(f"downloading {args.competition} into {out} ...")
        _call(f"download {args.competition}", api.competition_download_files, args.competition, path=staged,
              quiet=False, competition=args.competition)
        unpacked = os.path.join(staged, "unpacked")
        os.makedirs(unpacked)
        for name in sorted(os.listdir(staged)):
            path = os.path.join(staged, name)
            if name.endswith(".zip"):
                try:
                    with zipfile.ZipFile(path) as archive:
                        archive.extractall(unpacked)
                except zipfile.BadZipFile:
                    raise KaggleCommandError(f"the download {name} is not a valid zip: rerun the command") from None
                os.remove(path)
            elif name != "unpacked":
                os.replace(path, os.path.join(unpacked, name))
        if not os.listdir(unpacked):
            raise KaggleCommandError(f"Kaggle sent no files for {args.competition}: check the competition slug")
        layout = check_layout(unpacked)
        move_into_place(unpacked, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    layout.root = out
    print("\n".join(describe_layout(layout)))
    if layout.complete:
        print(f"use it with --data {out} (e.g. python -m kitlib finetune --data {out} ...)")
    return 0 if layout.complete else 1


def cmd_publish_kit(args, get_api):
    """Upload kitlib/ as the kit's Kaggle dataset: a new dataset, or a new version of it."""
    api = get_api()
    ref = check_ref(args.dataset or f"{_owner(args, api)}/{KIT_DATASET_SLUG}", 2, "--dataset", "USER/kitlib")
    slug = ref.split("/")[1]
    if not 6 <= len(slug) <= 50:
        raise KaggleCommandError(f"dataset slug {slug!r} must have 6 to 50 characters (Kaggle's rule)")
    staging = tempfile.mkdtemp(prefix="kitlib-publish-")
    try:
        staged = stage_kit(repo_root(), staging)
        with open(os.path.join(staging, DATASET_METADATA), "w", encoding="utf-8") as f:
            json.dump(dataset_metadata(ref, args.license), f, indent=2)
        try:
            api.dataset_status(ref)
            exists = True
        except Exception as err:  # noqa: BLE001
            if _http_status(err) not in (403, 404):
                raise KaggleCommandError(explain_api_error(err, f"look up the dataset {ref}")) from None
            exists = False
        notes = args.notes or f"kitlib {__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
        if exists:
            response = _call(f"add a version to {ref}", api.dataset_create_version, staging, notes, quiet=False,
                             dir_mode="zip")
        else:
            response = _call(f"create the dataset {ref}", api.dataset_create_new, staging, public=args.public,
                             quiet=False, dir_mode="zip")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    error = _response_error(response)
    if error:
        raise KaggleCommandError(f"Kaggle did not take the dataset {ref}: {error}")
    url = getattr(response, "url", None) or f"{KAGGLE_URL}/datasets/{ref}"
    print(f"{'new version of' if exists else 'created'} {url} ({', '.join(staged)}; folders upload as .zip, "
          "which Kaggle unpacks)")
    print(f"attached to a notebook it is {KAGGLE_INPUT}/{slug}/kitlib"
          + ("" if slug == KIT_DATASET_SLUG else
             f"; the notebooks look in {KAGGLE_INPUT}/{KIT_DATASET_SLUG}: name it {KIT_DATASET_SLUG} instead"))
    return 0


def cmd_push(args, get_api):
    """Write the kernel folder of a kit notebook and (unless --dry-run) push it."""
    notebook = resolve_notebook(args.notebook)
    defaults = defaults_for(notebook)
    accelerator = args.accelerator or defaults.accelerator
    machine_shape(accelerator)  # an unknown accelerator fails before anything else
    internet = parse_switch(args.internet) if args.internet is not None else defaults.internet
    if args.dry_run and not args.out:
        raise KaggleCommandError("--dry-run writes the kernel folder only: pass --out DIR")
    api = None if args.dry_run else get_api()
    owner = _owner(args, api, placeholder=OWNER_PLACEHOLDER if args.dry_run else None)
    kernels = [f"{owner}/{kernel_slug(resolve_notebook(n))}" for n in defaults.kernels] + list(args.kernel_source)
    competition = COMPETITION if args.competition is None else args.competition
    meta = kernel_metadata(notebook, owner, accelerator, internet, competition, args.kit_dataset,
                           args.dataset, list(defaults.models) + list(args.model), kernels, not args.public)
    folder = args.out or tempfile.mkdtemp(prefix="kitlib-kernel-")
    try:
        write_kernel_folder(notebook, meta, folder)
        sources = ", ".join(meta["competition_sources"] + meta["dataset_sources"] + meta["model_sources"]
                            + meta["kernel_sources"])
        print(f"{meta['id']}: {meta['code_file']} on {meta.get('machine_shape', 'CPU')}, internet "
              f"{'on' if internet else 'off'}, sources: {sources or 'none'}")
        if args.dry_run:
            print(f"wrote {folder}/{KERNEL_METADATA} and {meta['code_file']} (dry run: nothing pushed)")
            if owner == OWNER_PLACEHOLDER:
                print("the kernel id's owner is a placeholder: pass --owner USER or set credentials")
            return 0
        response = _call(f"push {meta['id']}", api.kernels_push, folder)
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    if getattr(response, "error", None):
        raise KaggleCommandError(f"Kaggle did not take {meta['id']}: {response.error}")
    for kind in ("dataset", "competition", "kernel", "model"):
        invalid = getattr(response, f"invalid_{kind}_sources", None)
        if invalid:
            print(f"warning: Kaggle did not attach these {kind} sources: {', '.join(map(str, invalid))}",
                  file=sys.stderr)
    url = getattr(response, "url", None) or f"{KAGGLE_URL}/code/{meta['id']}"
    version = getattr(response, "version_number", None)
    print(f"pushed{f' version {version}' if version else ''}: {url}")
    print(f"follow it with: python -m kitlib kaggle status {meta['id']} --wait")
    return 0


def cmd_status(args, get_api):
    """Print a kernel run's state; with --wait, poll until it ends."""
    api = get_api()
    kernel = kernel_ref(args.kernel, _owner(args, api))

    def poll():
        return _call(f"read the status of {kernel}", api.kernels_status, kernel)

    def report(response):
        message = getattr(response, "failure_message", None)
        print(f"{time.strftime('%H:%M:%S')} {kernel}: {status_name(response)}" + (f" ({message})" if message else ""),
              flush=True)

    response, finished = wait_for(poll, lambda r: not args.wait or status_name(r) in TERMINAL_STATES,
                                  args.interval, args.timeout, report=report)
    state = status_name(response)
    if args.wait and not finished:
        raise KaggleCommandError(f"{kernel} still {state} after {args.timeout:g} s: rerun status --wait later")
    if state == "complete":
        print(f"fetch its outputs: python -m kitlib kaggle output {kernel} --out runs/{kernel.split('/')[1]}")
    return 1 if state in ("error", "cancel_requested", "cancel_acknowledged") else 0


def cmd_output(args, get_api):
    """Fetch a kernel run's output files into --out (all or nothing)."""
    require_free(args.out)
    api = get_api()
    kernel = kernel_ref(args.kernel, _owner(args, api))
    staged = _temp_beside(args.out, "output")
    try:
        _call(f"fetch the output of {kernel}", api.kernels_output, kernel, path=staged, file_pattern=args.pattern,
              force=True, quiet=True)
        files = sorted(os.path.relpath(os.path.join(d, n), staged) for d, _, names in os.walk(staged) for n in names)
        if not files:
            raise KaggleCommandError(f"{kernel} has no output yet: check `python -m kitlib kaggle status {kernel}`")
        move_into_place(staged, args.out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    for name in files:
        print(f"  {os.path.join(args.out, name)}  {os.path.getsize(os.path.join(args.out, name)):,} bytes")
    for name in files:
        path = os.path.join(args.out, name)
        if os.path.basename(name) == "backbone.keras":
            print(f"fine-tune it: python -m kitlib finetune --data DIR --backbone {path} --out runs/bit")
        if os.path.basename(name) == "classifier.json":
            print(f"predict with it: python -m kitlib predict --data DIR --model {os.path.dirname(path)} "
                  "--out submission.csv")
    print(f"or attach it to another kernel: push ... --kernel-source {kernel}")
    return 0


COMMANDS = {"download": cmd_download, "publish-kit": cmd_publish_kit, "push": cmd_push, "status": cmd_status,
            "output": cmd_output}


def add_arguments(parser):
    """The ``kaggle`` sub-commands."""
    sub = parser.add_subparsers(dest="kaggle_command", metavar="ACTION", required=True)
    p = sub.add_parser("download", help="download + unpack the competition, then check its layout")
    p.add_argument("--competition", default=COMPETITION, help=f"competition slug (default {COMPETITION})")
    p.add_argument("--out", default=None, help="folder to create (default data/cassava); must be new or empty")

    p = sub.add_parser("publish-kit", help=f"upload kitlib/ as the dataset USER/{KIT_DATASET_SLUG} (new or a version)")
    p.add_argument("--dataset", default=None, help=f"USER/SLUG (default: you/{KIT_DATASET_SLUG}, mounted at "
                                                   f"{KAGGLE_INPUT}/{KIT_DATASET_SLUG})")
    p.add_argument("--notes", default=None, help="version notes")
    p.add_argument("--license", default="unknown", help="Kaggle license name for a new dataset")
    p.add_argument("--public", action="store_true", help="make a new dataset public (default private)")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")

    p = sub.add_parser("push", help="write a notebook's kernel folder and push it to Kaggle")
    p.add_argument("notebook", metavar="NOTEBOOK", help="a notebook of notebooks/: 01, 02_finetune_bit, ...")
    p.add_argument("--accelerator", default=None,
                   help="tpu (TpuV5E8), gpu (NvidiaTeslaT4), cpu, or a Kaggle id (default: per notebook)")
    p.add_argument("--internet", default=None, help="on | off (default: per notebook; 04 off)")
    p.add_argument("--dataset", action="append", default=[], help="another dataset source OWNER/SLUG (repeat)")
    p.add_argument("--model", action="append", default=[],
                   help="a model source owner/model/framework/variation/version (repeat)")
    p.add_argument("--kernel-source", action="append", default=[], help="a kernel whose output to attach (repeat)")
    p.add_argument("--competition", default=None, help=f"competition source (default {COMPETITION}; '' none)")
    p.add_argument("--kit-dataset", default=None, help=f"the kit's dataset (default you/{KIT_DATASET_SLUG})")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")
    p.add_argument("--public", action="store_true", help="a public kernel (default private)")
    p.add_argument("--dry-run", action="store_true", help="only write the folder (needs --out; no credentials)")
    p.add_argument("--out", default=None, help="where to write the kernel folder (default: a temporary one)")

    p = sub.add_parser("status", help="a kernel run's state (--wait: until it ends)")
    p.add_argument("kernel", metavar="KERNEL", help="owner/slug, a slug, or a kit notebook number (01)")
    p.add_argument("--wait", action="store_true", help="poll until the run completes or fails")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")

    p = sub.add_parser("output", help="fetch a kernel run's output files")
    p.add_argument("kernel", metavar="KERNEL", help="owner/slug, a slug, or a kit notebook number (01)")
    p.add_argument("--out", required=True, help="folder to create; must be new or empty")
    p.add_argument("--pattern", default=None, help="only files whose name matches this regex")
    p.add_argument("--owner", default=None, help="your Kaggle user name (default: from the credentials)")


def run(args, get_api=authenticated_api):
    """Run one sub-command; a `KaggleCommandError` becomes one line on stderr and exit code 2."""
    try:
        return COMMANDS[args.kaggle_command](args, get_api)
    except KaggleCommandError as err:
        print(redact(f"kitlib kaggle {args.kaggle_command}: error: {err}"), file=sys.stderr)
        return 2


def main(argv=None, get_api=authenticated_api):
    """``python -m kitlib kaggle`` without the top-level CLI (for tests and scripts)."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m kitlib kaggle")
    add_arguments(parser)
    return run(parser.parse_args(argv), get_api)
