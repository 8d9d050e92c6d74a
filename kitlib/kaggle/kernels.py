"""What ``python -m kitlib kaggle`` uploads, prepared without the network: a kit notebook as a Kaggle kernel
folder (a clean ``kernel-metadata.json`` and the notebook without outputs) and ``kitlib/`` staged as the kit's
dataset; every folder built in a temporary place and moved into place only when complete.
"""

import ast
import dataclasses
import json
import os
import re
import shutil
import tempfile

from kitlib.kaggle.api import KaggleCommandError
from kitlib.locations import COMPETITION, KAGGLE_INPUT, repo_root

KIT_DATASET_SLUG = "kitlib"  # attached, it mounts at /kaggle/input/kitlib: the notebooks' first cell looks there
KIT_FILES = ("pyproject.toml", "README.md", "requirements.txt")  # uploaded next to kitlib/ (when present)
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"

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
    "05": NotebookDefaults("gpu", internet=False, models=("google/bit/tensorFlow2/m-r50x1/1",)),
}
FALLBACK_DEFAULTS = NotebookDefaults("cpu", internet=False)


# ============ notebooks and kernel metadata (pure) ============


def notebooks_dir():
    """The kit's ``notebooks/`` folder."""
    return os.path.join(repo_root(), "notebooks")


def notebook_config_fields(path, config_class="PretrainConfig"):
    """The literal settings a notebook's ``CONFIG = ....PretrainConfig(...)`` cell gives (data, output and resume
    folders left out: they are the platform's), e.g. ``{"steps_per_execution": 32, "seed": 0}`` for 01.

    Returns None when no code cell builds `config_class` (the ``.smoke(...)`` preset does not count).
    Raises `KaggleCommandError` for a setting that is not a literal (it cannot be read without running).
    """
    with open(path) as f:
        cells = [c for c in json.load(f)["cells"] if c.get("cell_type") == "code"]
    for cell in cells:
        try:
            tree = ast.parse("".join(cell.get("source", [])))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            called = getattr(node, "func", None) if isinstance(node, ast.Call) else None
            name = getattr(called, "attr", None) or getattr(called, "id", None)
            if name != config_class:
                continue
            fields = {}
            for keyword in node.keywords:
                if keyword.arg in ("data_dir", "out_dir", "resume_from"):  # the platform's folders
                    continue
                try:
                    fields[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    raise KaggleCommandError(
                        f"{os.path.basename(path)}: {config_class}({keyword.arg}=...) is not a literal, so the "
                        "preflight cannot read it; write the value itself") from None
            return fields
    return None


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


# ============ the kit as a dataset ============


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


# ============ folders written all or nothing ============


def temp_beside(path, prefix):
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
        old = temp_beside(out, "old")
        os.rmdir(old)
        os.replace(out, old)
    os.replace(staged, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return out


RESUME_KNOB = "RESUME = False"  # the line of a notebook's config cell that `set_knob` turns on


def set_knob(nb, line=RESUME_KNOB, value="True"):
    """A copy of notebook `nb` whose config line `line` (``NAME = VALUE``, first code cell holding it) takes
    `value`; a `KaggleCommandError` when no cell has it."""
    nb = json.loads(json.dumps(nb))
    name = line.split("=")[0].strip()
    for cell in nb.get("cells", []):
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "code" and line in source:
            cell["source"] = source.replace(line, f"{name} = {value}", 1).splitlines(keepends=True)
            return nb
    raise KaggleCommandError(f"the notebook has no line {line!r} to set")


def write_kernel_folder(notebook, metadata, out, knobs=()):
    """Write ``out/kernel-metadata.json`` and the cleaned notebook (`clean_notebook`), all or nothing; `knobs`:
    (line, value) pairs of its config cell to set (`set_knob`).

    ``out`` may be absent, empty, or a kernel folder written before (replaced). Returns ``out``.
    """
    require_free(out, replaceable=_is_kernel_folder)
    with open(notebook, encoding="utf-8") as f:
        nb = clean_notebook(json.load(f))
    for line, value in knobs:
        nb = set_knob(nb, line, value)
    staged = temp_beside(out, "kernel")
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
