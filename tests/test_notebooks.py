"""The notebooks beyond nbmake's single-device run. They are edited in one place, the ``.ipynb`` files
(what Kaggle and Colab users open and edit too), and committed clean: these tests check that, that all
four start with the same bootstrap cell, and run notebook 01 (SwAV) on 8 simulated devices, the layout of
Kaggle's TPU v5e-8, with the same cells."""

import os
import subprocess
import sys

import nbformat
import pytest

from tests.conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_EXECUTE = """
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, sys.argv[3])
"""


def _outputs(nb):
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") if out.get("output_type") == "stream" else
                        str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


@pytest.mark.slow
@pytest.mark.matrix
def test_notebook_01_smoke_run_trains_on_eight_simulated_devices(tmp_path):
    env = dict(os.environ, SMOKE="1", TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=xla_flags(8))
    source = os.path.join(REPO, "notebooks", "01_pretrain_swav_tpu.ipynb")
    done = subprocess.run([sys.executable, "-c", _EXECUTE, source, os.path.join(REPO, "notebooks"),
                           str(tmp_path / "ran.ipynb")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    text = _outputs(nbformat.read(str(tmp_path / "ran.ipynb"), as_version=4))
    assert "running on 8 x CPU" in text and "DataParallel" in text
    assert "devices=8" in text  # the resolved config the run printed and saved
    assert "final loss" in text


NOTEBOOKS = sorted(os.path.join(REPO, "notebooks", name) for name in os.listdir(os.path.join(REPO, "notebooks"))
                   if name.endswith(".ipynb"))


def _first_code_cell(nb):
    return next(cell.source for cell in nb.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebooks_are_committed_clean_for_the_python3_kernel(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "kaggle" not in nb.metadata  # no stale accelerator or docker image from a Kaggle download
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path}: {cell.get('id')} has outputs"
        assert "KAGGLE_KEY" not in cell.source and "kaggle.json" not in cell.source


def test_every_notebook_starts_with_the_same_bootstrap_cell():
    first = {os.path.basename(p): _first_code_cell(nbformat.read(p, as_version=4)) for p in NOTEBOOKS}
    assert len(first) == 5 and len(set(first.values())) == 1, "the first code cells differ"
    bootstrap = next(iter(first.values()))
    # the backend is chosen before anything imports Keras, and the environment is checked first
    assert bootstrap.index('os.environ.setdefault("KERAS_BACKEND", "jax")') < bootstrap.index("from kitlib")
    assert "runtime.check_environment()" in bootstrap
