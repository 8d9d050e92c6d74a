"""kitlib.kaggle.kernels: kernel folders and metadata per notebook, stale notebook metadata stripped, CONFIG cells read."""

import json
import os
import tempfile

import nbformat
import pytest

from kitlib.kaggle import api as kaggle_api
from kitlib.kaggle import cli as kaggle_cli
from kitlib.kaggle import kernels as kaggle_kernels
from tests.conftest import REPO  # noqa: E402

USER = "kit-tester"

SECRET = "kitfake0c0ffee5ecret9d1e2f3a4b5c6d"  # the fake KAGGLE_KEY: must never show up anywhere

COMPETITION = "cassava-leaf-disease-classification"

NOTEBOOKS = {"01": "01_pretrain_swav_tpu.ipynb", "02": "02_finetune_bit.ipynb", "03": "03_visualize_crops.ipynb",
             "04": "04_submit.ipynb"}

# What push should write, stated independently of the module's table.
SLUGS = {"01": "kitlib-01-pretrain-swav-tpu", "02": "kitlib-02-finetune-bit", "03": "kitlib-03-visualize-crops",
         "04": "kitlib-04-submit"}

DEFAULT_ACCELERATOR = {"01": "tpu", "02": "gpu", "03": "cpu", "04": "gpu"}

DEFAULT_INTERNET = {"01": True, "02": False, "03": False, "04": False}

DEFAULT_MODELS = {"01": [], "02": ["google/bit/tensorFlow2/m-r50x1/1"], "03": [], "04": []}

DEFAULT_KERNELS = {"01": [], "02": [], "03": [], "04": [f"{USER}/kitlib-02-finetune-bit"]}

SHAPES = {"tpu": "TpuV5E8", "gpu": "NvidiaTeslaT4", "cpu": None}

def _no_api():
    raise AssertionError("this command must not need the Kaggle API")

@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """Fake credentials in the environment, a private HOME / config dir / TMPDIR, no proxies."""
    home = tmp_path / "home"
    (home / "cfg").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "cfg"))
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_API_ENVIRONMENT", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the package's upload records go here
    return tmp_path

def run_kaggle(capsys, *argv, get_api=_no_api):
    """(exit code, stdout, stderr) of ``python -m kitlib kaggle ARGV`` run in this process."""
    code = kaggle_cli.main([str(a) for a in argv], get_api=get_api)
    out, err = capsys.readouterr()
    return code, out, err

def read_folder(folder):
    """(kernel-metadata.json as a dict, the notebook as a dict, the folder's file names)."""
    names = sorted(os.listdir(folder))
    with open(os.path.join(folder, "kernel-metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(folder, meta["code_file"]), encoding="utf-8") as f:
        nb = json.load(f)
    return meta, nb, names

def expected_metadata(number, accelerator, internet=None, owner=USER):
    """kernel-metadata.json of a kit notebook with the defaults, field by field."""
    meta = {"id": f"{owner}/{SLUGS[number]}", "title": SLUGS[number].replace("-", " "),
            "code_file": NOTEBOOKS[number], "language": "python", "kernel_type": "notebook", "is_private": True,
            "enable_gpu": accelerator == "gpu", "enable_tpu": accelerator == "tpu",
            "enable_internet": DEFAULT_INTERNET[number] if internet is None else internet}
    if SHAPES[accelerator]:
        meta["machine_shape"] = SHAPES[accelerator]
    meta.update(competition_sources=[COMPETITION], dataset_sources=[f"{owner}/kitlib"],
                model_sources=DEFAULT_MODELS[number],
                kernel_sources=[k.replace(USER, owner) for k in DEFAULT_KERNELS[number]])
    return meta

def test_push_defaults_per_notebook_and_options(fake_env, capsys):
    for number in NOTEBOOKS:  # no --accelerator / --internet: the table's defaults
        out = fake_env / f"k{number}"
        assert run_kaggle(capsys, "push", NOTEBOOKS[number], "--dry-run", "--out", out)[0] == 0
        assert read_folder(out)[0] == expected_metadata(number, DEFAULT_ACCELERATOR[number])
    meta = read_folder(fake_env / "k01")[0]
    assert meta["machine_shape"] == "TpuV5E8" and meta["enable_tpu"] and meta["enable_internet"]
    assert read_folder(fake_env / "k04")[0]["enable_internet"] is False
    out = fake_env / "custom"
    code, _, _ = run_kaggle(capsys, "push", "04", "--accelerator", "NvidiaL4", "--internet", "on", "--owner", "someone",
                            "--dataset", "someone/my-models", "--model", "google/bit/tensorFlow2/m-r101x1/1",
                            "--kernel-source", "someone/kitlib-01-pretrain-swav-tpu", "--competition", "",
                            "--kit-dataset", "someone/kitlib-dev", "--public", "--dry-run", "--out", out)
    assert code == 0
    assert read_folder(out)[0] == {
        "id": "someone/kitlib-04-submit", "title": "kitlib 04 submit", "code_file": "04_submit.ipynb",
        "language": "python", "kernel_type": "notebook", "is_private": False, "enable_gpu": True,
        "enable_tpu": False, "enable_internet": True, "machine_shape": "NvidiaL4", "competition_sources": [],
        "dataset_sources": ["someone/kitlib-dev", "someone/my-models"],
        "model_sources": ["google/bit/tensorFlow2/m-r101x1/1"],
        "kernel_sources": ["someone/kitlib-02-finetune-bit", "someone/kitlib-01-pretrain-swav-tpu"]}

def test_push_strips_stale_notebook_metadata_and_outputs(tmp_path):
    with open(os.path.join(REPO, "notebooks", NOTEBOOKS["01"]), encoding="utf-8") as f:
        nb = json.load(f)
    # What `kaggle kernels pull -m` of a GPU notebook leaves behind, plus a run's outputs.
    nb["metadata"]["kaggle"] = {"accelerator": "gpu", "dockerImageVersionId": 31041, "isInternetEnabled": True,
                                "isGpuEnabled": True, "language": "python", "sourceType": "notebook"}
    nb["metadata"]["kernelspec"] = {"name": "conda-env-py", "display_name": "Python [conda]", "language": "python"}
    code_cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code_cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["old run\n"]}]
    code_cell["execution_count"] = 7
    code_cell["metadata"] = {"execution": {"iopub.execute_input": "2025-01-01"}, "papermill": {"duration": 3},
                             "tags": ["keep"]}
    before = json.dumps(nb)
    clean = kaggle_kernels.clean_notebook(nb)
    assert json.dumps(nb) == before  # the input is not modified
    assert "kaggle" not in clean["metadata"]
    assert clean["metadata"]["kernelspec"]["name"] == "python3"
    assert clean["cells"][1]["outputs"] == [] and clean["cells"][1]["execution_count"] is None
    assert clean["cells"][1]["metadata"] == {"tags": ["keep"]}
    dirty = tmp_path / "01_pretrain_swav_tpu.ipynb"
    dirty.write_text(before, encoding="utf-8")
    meta = kaggle_kernels.kernel_metadata(str(dirty), USER, "tpu", True)
    out = tmp_path / "kernel"
    kaggle_kernels.write_kernel_folder(str(dirty), meta, str(out))
    written = read_folder(out)[1]
    assert written == clean
    nbformat.validate(nbformat.from_dict(written))
    # Writing again replaces the folder; an unrelated non-empty folder is refused and left alone.
    kaggle_kernels.write_kernel_folder(str(dirty), dict(meta, title="kitlib 01 again"), str(out))
    assert read_folder(out)[0]["title"] == "kitlib 01 again"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(kaggle_api.KaggleCommandError, match="not empty"):
        kaggle_kernels.write_kernel_folder(str(dirty), meta, str(other))
    assert os.listdir(other) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["01_pretrain_swav_tpu.ipynb", "kernel", "other"]  # no temp leftovers


def test_notebook_01s_config_cell_is_read_as_the_settings_it_gives():
    from kitlib.kaggle import kernels

    assert kernels.notebook_config_fields(kernels.resolve_notebook("01")) == {
        "steps_per_execution": 32, "seed": 0}
    assert kernels.notebook_config_fields(kernels.resolve_notebook("04")) is None
