"""Where things are: the Kaggle input folder, the competition's slug, the kit's checkout, the data to use."""

import glob
import os

KAGGLE_INPUT = "/kaggle/input"
COMPETITION = "cassava-leaf-disease-classification"
DEFAULT_LOCAL_DATA = "data/sample"
def repo_root():
    """The folder that holds the ``kitlib`` package (the clone's root, or an attached dataset)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_kaggle():
    """True inside a Kaggle notebook (kernel run)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or os.path.isdir("/kaggle/working")


def find_data_dir(local=None, competition=COMPETITION):
    """The folder holding the competition's files (``train_tfrecords/``, ``train.csv`` ...).

    Args:
        local: fallback folder; default ``data/sample`` in the repo (the bundled sample).
        competition: the competition slug under ``/kaggle/input``.
    Returns:
        A local path. A TPU VM reads ``/kaggle/input`` directly: no GCS copy is needed.
    """
    attached = os.path.join(KAGGLE_INPUT, competition)
    if os.path.isdir(attached):
        return attached
    if local is None:
        local = os.path.join(repo_root(), DEFAULT_LOCAL_DATA)
    if not os.path.isdir(local):
        raise FileNotFoundError(
            f"No data found: {attached} is not attached and the local folder {local!r} does not exist. "
            "Attach the competition on Kaggle, download it with `kaggle competitions download -c "
            f"{competition}`, or make the sample with `python -m kitlib make-sample --out {local}`."
        )
    return local


def previous_output(out_dir, root=KAGGLE_INPUT, missing_ok=False):
    """The earlier run to continue in a new Kaggle session: the folder named like `out_dir` (its last part) in an
    attached notebook output under `root` (``/kaggle/input/<notebook>/<name>``, or one level deeper) that holds a
    run's ``config.json``; when there is none, None with `missing_ok` (a run the last session never began), else a
    ValueError naming what to attach."""
    name = os.path.basename(os.path.normpath(out_dir))
    for pattern in (os.path.join(root, "*", name), os.path.join(root, "*", "*", name)):
        found = sorted(p for p in glob.glob(pattern) if os.path.isfile(os.path.join(p, "config.json")))
        if found:
            return found[0]
    if missing_ok:
        return None
    raise ValueError(f"no earlier run named {name!r} under {root}: attach the previous version's output (python -m "
                     "kitlib kaggle push NOTEBOOK --resume does), or set RESUME = False to start over")
