"""`python -m kitlib kaggle ...` (kitlib/kaggle/cli.py) without a network and without a Kaggle account.

How the `kaggle` package (2.0.2) itself is made to check what the kit writes:
- Its own reading/validation: `KaggleApi.kernels_push(folder)` reads kernel-metadata.json and the notebook and
  validates them (title, code_file, id, language, kernel_type, every source string) before its only network
  call, ``build_kaggle_client().kernels.kernels_api_client.save_kernel(request)``. The tests call the real
  method on a real, authenticated `KaggleApi` (fake KAGGLE_USERNAME/KAGGLE_KEY) with `build_kaggle_client`
  replaced on that one object, and read the `ApiSaveKernelRequest` the package built.
- A stand-in server: the package has no free endpoint setting (no KAGGLE_API_ENDPOINT). KaggleApi always
  builds its client for api.kaggle.com unless its ``args`` hold ``--local`` (set at import from
  KAGGLE_API_ENVIRONMENT=LOCALHOST), which means ``http://localhost`` on port 80; kagglesdk's
  KAGGLE_API_ENVIRONMENT=TEST (localhost:7777) is ignored by KaggleApi, which passes its environment
  explicitly. So the tests set ``api.args = ["--local"]`` and point kagglesdk's LOCAL entry
  (``kagglesdk.kaggle_env._env_to_endpoint``) at a stand-in HTTP server on 127.0.0.1: push, publish-kit and
  a 403 download then run through the package's real HTTP client and JSON serialisation.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nbformat
import pytest
import requests

from kitlib import cli
from kitlib.data import layout
from kitlib.kaggle import api as kaggle_api
from kitlib.kaggle import cli as kaggle_cli
from kitlib.kaggle import kernels as kaggle_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No token anywhere: empty HOME and config dir, no KAGGLE_* credentials."""
    (tmp_path / "home" / "cfg").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / "cfg"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
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


def all_text(root):
    """Every file under ``root`` as text (bytes decoded leniently), with its path."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                yield path, f.read().decode("utf-8", "replace")


# ============ push --dry-run: the folder, field by field ============


@pytest.mark.parametrize("accelerator", ["tpu", "gpu", "cpu"])
@pytest.mark.parametrize("number", sorted(NOTEBOOKS))
def test_push_dry_run_writes_the_kernel_folder(fake_env, capsys, number, accelerator):
    out = fake_env / "kernel"
    code, stdout, _ = run_kaggle(capsys, "push", number, "--accelerator", accelerator, "--dry-run", "--out", out)
    assert code == 0
    meta, nb, names = read_folder(out)
    assert names == sorted(["kernel-metadata.json", NOTEBOOKS[number]])
    assert meta == expected_metadata(number, accelerator)  # every field, nothing else (no docker_image)
    assert "docker_image" not in meta and "docker_image_pinning_type" not in meta
    assert list(meta)[:5] == ["id", "title", "code_file", "language", "kernel_type"]
    with open(os.path.join(REPO, "notebooks", NOTEBOOKS[number]), encoding="utf-8") as f:
        original = json.load(f)
    assert [c["source"] for c in nb["cells"]] == [c["source"] for c in original["cells"]]
    assert nb["metadata"]["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}
    assert "kaggle" not in nb["metadata"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")
    nbformat.validate(nbformat.from_dict(nb))
    assert "dry run: nothing pushed" in stdout and f"{USER}/{SLUGS[number]}" in stdout


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


# ============ the kaggle package's own reading and validation ============


@pytest.fixture
def real_api(fake_env):
    """The `kaggle` package's KaggleApi, authenticated with the fake credentials (no network)."""
    return kaggle_api.authenticated_api()


class _Recorder:
    """Stands in for the kagglesdk client that KaggleApi.kernels_push opens; records the request."""

    def __init__(self):
        self.requests = []
        self.kernels = types.SimpleNamespace(kernels_api_client=types.SimpleNamespace(save_kernel=self.save_kernel))

    def save_kernel(self, request):
        self.requests.append(request)
        return types.SimpleNamespace(error=None, url=f"https://www.kaggle.com/code/{request.slug}", version_number=1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("accelerator", ["tpu", "gpu", "cpu"])
@pytest.mark.parametrize("number", sorted(NOTEBOOKS))
def test_the_kaggle_package_reads_and_validates_the_folder(real_api, capsys, number, accelerator):
    out = os.path.join(tempfile.gettempdir(), f"kernel-{number}-{accelerator}")
    assert run_kaggle(capsys, "push", number, "--accelerator", accelerator, "--dry-run", "--out", out)[0] == 0
    recorder = _Recorder()
    real_api.build_kaggle_client = lambda: recorder  # only the network call is replaced
    real_api.kernels_push(out)  # raises ValueError on anything it does not accept
    printed = capsys.readouterr().out
    assert "does not resolve to the specified id" not in printed  # the title gives back the slug
    (request,) = recorder.requests
    assert request.slug == f"{USER}/{SLUGS[number]}" and request.new_title == SLUGS[number].replace("-", " ")
    assert request.language == "python" and request.kernel_type == "notebook" and request.is_private is True
    assert (request.machine_shape or None) == SHAPES[accelerator]  # the request reads an unset field as ""
    assert request.enable_tpu == (accelerator == "tpu") and request.enable_gpu == (accelerator == "gpu")
    assert request.enable_internet == DEFAULT_INTERNET[number]
    assert not request.docker_image and "dockerImage" not in type(request).to_dict(request)  # nothing pinned
    assert request.competition_data_sources == [COMPETITION]
    assert request.dataset_data_sources == [f"{USER}/kitlib"]
    assert request.model_data_sources == DEFAULT_MODELS[number]
    assert request.kernel_data_sources == DEFAULT_KERNELS[number]
    sent = json.loads(request.text)
    assert "kaggle" not in sent["metadata"] and sent["metadata"]["kernelspec"]["name"] == "python3"


# ============ the real HTTP client against a stand-in server on 127.0.0.1 ============


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the API: JSON in, JSON out
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.calls.append((self.path.rsplit("/", 1)[-1], body, self.headers.get("Authorization", "")))
        status, payload = self.server.answer(self.path.rsplit("/", 1)[-1], body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):  # noqa: N802 - blob uploads
        self.server.uploads[self.path.rsplit("/", 1)[-1]] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in(real_api, monkeypatch):
    """(server, api): the authenticated KaggleApi sending every call to a stand-in server on 127.0.0.1."""
    from kagglesdk import kaggle_env  # noqa: PLC0415

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.calls, server.uploads = [], {}
    base = f"http://127.0.0.1:{server.server_address[1]}"
    server.answer = lambda name, body: (404, {"code": 404, "message": f"no stand-in for {name}"})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, base)
    real_api.args = ["--local"]
    server.base = base
    yield server, real_api
    server.shutdown()
    server.server_close()


def test_push_through_the_kaggle_client_to_a_stand_in_server(stand_in, capsys, fake_env):
    server, api = stand_in
    url = f"https://www.kaggle.com/code/{USER}/{SLUGS['01']}"
    server.answer = lambda name, body: ((200, {"ref": f"/code/{USER}/{SLUGS['01']}", "url": url, "versionNumber": 3})
                                        if name == "SaveKernel" else (404, {"code": 404, "message": name}))
    code, out, err = run_kaggle(capsys, "push", "01", "--accelerator", "tpu", get_api=lambda: api)
    assert code == 0, err
    assert f"pushed version 3: {url}" in out
    ((name, body, auth),) = server.calls
    assert name == "SaveKernel" and auth.startswith("Basic ")  # the fake key went only into the header
    assert body["slug"] == f"{USER}/{SLUGS['01']}" and body["newTitle"] == "kitlib 01 pretrain swav tpu"
    assert body["machineShape"] == "TpuV5E8" and body["enableTpu"] is True and not body.get("enableGpu")
    assert body["enableInternet"] is True and body["isPrivate"] is True
    assert not body.get("dockerImage")
    assert body["competitionDataSources"] == [COMPETITION] and body["datasetDataSources"] == [f"{USER}/kitlib"]
    sent = json.loads(body["text"])
    assert "kaggle" not in sent["metadata"]
    assert all(not c.get("outputs") for c in sent["cells"])
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("kitlib-kernel-")]  # temp folder gone


def test_download_403_through_the_kaggle_client_names_the_rules_page(stand_in, capsys, fake_env):
    server, api = stand_in
    server.answer = lambda name, body: (403, {"code": 403, "message": "You must accept this competition's rules "
                                                                      "before you'll be able to download files."})
    out = fake_env / "data" / "cassava"
    code, stdout, err = run_kaggle(capsys, "download", "--out", out, get_api=lambda: api)
    assert code == 2
    assert err.strip() == (f"kitlib kaggle download: error: Kaggle refused to download {COMPETITION} (403 Forbidden): "
                           f"accept the rules at https://www.kaggle.com/competitions/{COMPETITION}/rules with the "
                           "account of your API token, then rerun")
    assert server.calls[0][0] == "DownloadDataFiles" and server.calls[0][1] == {"competitionName": COMPETITION}
    assert os.listdir(fake_env / "data") == []  # nothing half-written


@pytest.mark.parametrize("exists", [False, True])
def test_publish_kit_through_the_kaggle_client_to_a_stand_in_server(stand_in, capsys, fake_env, exists):
    server, api = stand_in

    def answer(name, body):
        if name == "GetDatasetStatus":
            return (200, {"status": "READY"}) if exists else (404, {"code": 404, "message": "not found"})
        if name == "StartBlobUpload":
            return 200, {"token": f"token-{body['name']}", "createUrl": f"{server.base}/upload/{body['name']}"}
        if name in ("CreateDataset", "CreateDatasetVersion"):
            return 200, {"ref": f"{USER}/kitlib", "url": f"https://www.kaggle.com/datasets/{USER}/kitlib",
                         "status": "ok"}
        return 404, {"code": 404, "message": name}

    server.answer = answer
    code, out, err = run_kaggle(capsys, "publish-kit", "--notes", "test version", get_api=lambda: api)
    assert code == 0, err
    assert ("new version of" if exists else "created") in out and "/kaggle/input/kitlib/kitlib" in out
    assert set(server.uploads) == {"kitlib.zip", "pyproject.toml", "README.md", "requirements.txt"}
    with zipfile.ZipFile(__import__("io").BytesIO(server.uploads["kitlib.zip"])) as archive:
        names = set(archive.namelist())
    assert {"__init__.py", "cli.py", "data/tfrecords.py", "kaggle/cli.py", "swav/model.py", "runtime.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        assert server.uploads["pyproject.toml"] == f.read()
    calls = {name: body for name, body, _ in server.calls}
    assert calls["GetDatasetStatus"] == {"ownerSlug": USER, "datasetSlug": "kitlib"}
    if exists:
        request = calls["CreateDatasetVersion"]
        assert request["ownerSlug"] == USER and request["datasetSlug"] == "kitlib"
        assert request["body"]["versionNotes"] == "test version" and len(request["body"]["files"]) == 4
    else:
        request = calls["CreateDataset"]
        assert (request["ownerSlug"], request["slug"], request["title"]) == (USER, "kitlib", "kitlib")
        assert request["licenseName"] == "unknown" and request["isPrivate"] is True
        assert sorted(f["token"] for f in request["files"]) == sorted(f"token-{n}" for n in server.uploads)
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("kitlib-publish-")]  # staging gone


# ============ download / status / output with a stand-in API object ============


class FakeApi:
    """A stand-in for the authenticated KaggleApi: the calls the commands make, recorded."""

    def __init__(self, statuses=(), error=None):
        self.calls, self.statuses, self.error = [], list(statuses), error

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("download", competition))
        if self.error:
            raise self.error
        sample = os.path.join(REPO, "data", "sample")
        with zipfile.ZipFile(os.path.join(path, f"{competition}.zip"), "w") as archive:
            for folder, _, names in os.walk(sample):
                for name in names:
                    archive.write(os.path.join(folder, name), os.path.relpath(os.path.join(folder, name), sample))

    def kernels_status(self, kernel):
        from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus  # noqa: PLC0415 - not `kaggle`

        self.calls.append(("status", kernel))
        name, message = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return types.SimpleNamespace(status=KernelWorkerStatus[name], failure_message=message)

    def kernels_output(self, kernel, path, file_pattern=None, force=False, quiet=True):
        self.calls.append(("output", kernel))
        os.makedirs(os.path.join(path, "bit_classifier"))
        for name in ("backbone.keras", "bit_classifier/classifier.json", "bit_classifier/classifier.keras"):
            with open(os.path.join(path, name), "w") as f:
                f.write("{}")
        return [], None


def _http_error(status):
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


def test_download_unpacks_and_checks_the_layout(fake_env, capsys):
    api = FakeApi()
    out = fake_env / "data" / "cassava"
    code, stdout, err = run_kaggle(capsys, "download", "--out", out, get_api=lambda: api)
    assert code == 0, err
    assert api.calls == [("download", COMPETITION)]
    assert sorted(os.listdir(out)) == sorted(os.listdir(os.path.join(REPO, "data", "sample")))
    assert os.listdir(fake_env / "data") == ["cassava"]  # the zip and the staging folder are gone
    assert "train_tfrecords/   4 shards, 100 records" in stdout and "test_images/       15 images" in stdout
    assert "layout complete" in stdout and f"--data {out}" in stdout
    code, _, err = run_kaggle(capsys, "download", "--out", out, get_api=lambda: api)  # never over existing data
    assert code == 2 and "is not empty" in err and len(api.calls) == 1


def test_download_403_from_a_stub_api(fake_env, capsys):
    out = fake_env / "cassava"
    code, stdout, err = run_kaggle(capsys, "download", "--out", out, get_api=lambda: FakeApi(error=_http_error(403)))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"accept the rules at https://www.kaggle.com/competitions/{COMPETITION}/rules" in err
    assert not out.exists() and sorted(os.listdir(fake_env)) == ["home", "tmp"]
    code, _, err = run_kaggle(capsys, "download", "--competition", "titanic", "--out", out,
                              get_api=lambda: FakeApi(error=_http_error(403)))
    assert "https://www.kaggle.com/competitions/titanic/rules" in err


def test_status_waits_until_the_run_ends(fake_env, capsys):
    api = FakeApi([("QUEUED", ""), ("RUNNING", ""), ("COMPLETE", "")])
    code, out, _ = run_kaggle(capsys, "status", "01", "--wait", "--interval", "0", get_api=lambda: api)
    assert code == 0
    assert [c for c in api.calls] == [("status", f"{USER}/{SLUGS['01']}")] * 3
    assert [line.split(" ", 1)[1] for line in out.splitlines()[:3]] == [
        f"{USER}/{SLUGS['01']}: queued", f"{USER}/{SLUGS['01']}: running", f"{USER}/{SLUGS['01']}: complete"]
    assert f"kitlib kaggle output {USER}/{SLUGS['01']} --out" in out
    code, out, _ = run_kaggle(capsys, "status", "someone/other-kernel", get_api=lambda: FakeApi([("ERROR", "OOM")]))
    assert code == 1 and "someone/other-kernel: error (OOM)" in out
    code, _, err = run_kaggle(capsys, "status", "02", "--wait", "--interval", "0", "--timeout", "0",
                              get_api=lambda: FakeApi([("RUNNING", "")]))
    assert code == 2 and "still running" in err


def test_output_fetches_into_a_new_folder(fake_env, capsys):
    api = FakeApi()
    out = fake_env / "runs" / "k02"
    code, stdout, err = run_kaggle(capsys, "output", "02", "--out", out, get_api=lambda: api)
    assert code == 0, err
    assert api.calls == [("output", f"{USER}/{SLUGS['02']}")]
    assert sorted(os.listdir(out)) == ["backbone.keras", "bit_classifier"]
    assert os.listdir(fake_env / "runs") == ["k02"]
    assert f"--backbone {out / 'backbone.keras'}" in stdout and f"--model {out / 'bit_classifier'}" in stdout
    code, _, err = run_kaggle(capsys, "output", "02", "--out", out, get_api=lambda: api)
    assert code == 2 and "is not empty" in err and len(api.calls) == 1


# ============ the layout check on data/sample ============


def test_check_layout_on_the_sample(sample_dir):
    from kitlib.data import tfrecords  # noqa: PLC0415

    found = layout.check_layout(sample_dir)
    assert found.shards == {"train": 4, "test": 1} and found.records == {"train": 100, "test": 15}
    assert found.images == {"train": 100, "test": 15} and found.csv_rows == 100
    assert found.classes == tfrecords.CLASS_NAMES
    assert found.missing == [] and found.problems == [] and found.complete
    text = "\n".join(layout.describe_layout(found))
    assert "4 shards, 100 records" in text and "5 classes" in text and "layout complete" in text


def test_check_layout_says_what_is_missing(sample_dir, tmp_path):
    shutil.copytree(os.path.join(sample_dir, "train_tfrecords"), tmp_path / "train_tfrecords")
    shutil.copy(os.path.join(sample_dir, "train.csv"), tmp_path / "train.csv")
    (tmp_path / "train_tfrecords" / "extra.tfrec").write_bytes(b"")  # a shard name without a count
    found = layout.check_layout(tmp_path)
    assert found.missing == ["train_images/", "test_tfrecords/", "test_images/", "label_num_to_disease_map.json",
                             "sample_submission.csv"]
    assert len(found.problems) == 1 and "extra.tfrec" in found.problems[0] and not found.complete
    assert found.shards == {"train": 5} and "train" not in found.records
    text = "\n".join(layout.describe_layout(found))
    assert "5 shards, ? (uncounted) records" in text and "missing: test_images/" in text and "layout incomplete" in text
    assert sorted(os.listdir(tmp_path)) == ["train.csv", "train_tfrecords"]  # reads only


# ============ errors: one line with the fix, nothing written ============


@pytest.mark.parametrize("argv, expected", [
    (["push", "01", "--accelerator", "tpu-v4", "--dry-run"], "unknown accelerator 'tpu-v4': use --accelerator tpu"),
    (["push", "01", "--accelerator", "NvidiaTeslaP100", "--dry-run"], "'NvidiaTeslaP100' is retired"),
    (["push", "OUTSIDE", "--dry-run"], "is not a notebook of"),
    (["push", "05", "--dry-run"], "is not a notebook of"),
    (["push", "02", "--model", "google/bit/tensorFlow2/m-r50x1", "--dry-run"], "must look like"),
    (["push", "02", "--internet", "maybe", "--dry-run"], "--internet takes on or off"),
])
def test_push_errors_are_one_line(fake_env, capsys, argv, expected):
    outside = fake_env / "elsewhere" / "01_pretrain_swav_tpu.ipynb"
    outside.parent.mkdir()
    shutil.copy(os.path.join(REPO, "notebooks", NOTEBOOKS["01"]), outside)
    argv = [str(outside) if a == "OUTSIDE" else a for a in argv] + ["--out", str(fake_env / "kernel")]
    code, out, err = run_kaggle(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("kitlib kaggle push: error: ") and expected in err
    assert not (fake_env / "kernel").exists()


@pytest.mark.parametrize("argv", [["download", "--out", "OUT"], ["publish-kit"], ["push", "01"],
                                  ["push", "01", "--out", "OUT"], ["status", "01"], ["output", "01", "--out", "OUT"]])
def test_missing_credentials_is_one_line_with_the_fix(no_credentials, capsys, argv):
    out = no_credentials / "out"
    code, stdout, err = run_kaggle(capsys, *[str(out) if a == "OUT" else a for a in argv],
                                   get_api=kaggle_api.authenticated_api)
    assert code == 2 and stdout == ""
    (line,) = err.strip().splitlines()
    assert "no Kaggle credentials found" in line and "~/.kaggle/kaggle.json" in line
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in line
    assert not out.exists()


def test_push_dry_run_needs_no_credentials(no_credentials, capsys):
    out = no_credentials / "kernel"
    code, stdout, _ = run_kaggle(capsys, "push", "01", "--dry-run", "--out", out, get_api=kaggle_api.authenticated_api)
    assert code == 0
    assert read_folder(out)[0] == expected_metadata("01", "tpu", owner=kaggle_cli.OWNER_PLACEHOLDER)
    assert "placeholder" in stdout


def test_a_403_on_push_and_a_401_are_explained():
    assert "403 Forbidden" in kaggle_api.explain_api_error(_http_error(403), "push u/kitlib-01")
    line = kaggle_api.explain_api_error(_http_error(401), "download x", competition="x")
    assert "401 Unauthorized" in line and "https://www.kaggle.com/settings" in line
    denied = ValueError("Cannot access kernel 'u/k' (Permission 'kernels.get' was denied). The most likely cause ...")
    line = kaggle_api.explain_api_error(denied, "read the status of u/k")
    assert "(Cannot access kernel 'u/k' (Permission 'kernels.get' was denied))" in line and "OWNER/SLUG" in line
    assert "most likely" not in line
    assert "check the internet" in kaggle_api.explain_api_error(requests.ConnectionError("no route"), "push x")


# ============ credentials ============


def test_find_credentials_never_holds_the_key(tmp_path):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    assert kaggle_api.find_credentials({}, str(home)) is None
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ann"}))
    assert kaggle_api.find_credentials({}, str(home)) is None  # no key: incomplete
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ann", "key": SECRET}))
    found = kaggle_api.find_credentials({}, str(home))
    assert found.username == "ann" and SECRET not in repr(found)
    env = {"KAGGLE_USERNAME": "bob", "KAGGLE_KEY": SECRET}
    assert kaggle_api.find_credentials(env, str(home)) == kaggle_api.Credentials("KAGGLE_USERNAME/KAGGLE_KEY", "bob")
    assert kaggle_api.kaggle_config_dir({"KAGGLE_CONFIG_DIR": "/x"}, str(home)) == "/x"
    assert kaggle_api.kaggle_config_dir({}, str(tmp_path / "fresh"), "linux") == str(tmp_path / "fresh/.config/kaggle")
    assert kaggle_api.redact(f"error {SECRET}", {"KAGGLE_KEY": SECRET}) == "error ***"


def test_credentials_never_appear_in_any_output_or_file(stand_in, capsys, fake_env):
    server, api = stand_in
    server.answer = lambda name, body: {
        "SaveKernel": (200, {"url": "https://www.kaggle.com/code/x/y", "versionNumber": 1}),
        "GetDatasetStatus": (404, {"code": 404, "message": "not found"}),
        "StartBlobUpload": (200, {"token": "t", "createUrl": f"{server.base}/upload/{body.get('name')}"}),
        "CreateDataset": (200, {"url": "https://www.kaggle.com/datasets/x/kitlib", "status": "ok"}),
    }[name]
    printed = []
    for argv, get_api in [(["push", "01", "--dry-run", "--out", fake_env / "dry"], _no_api),
                          (["push", "04", "--out", fake_env / "pushed"], lambda: api),
                          (["publish-kit"], lambda: api),
                          (["status", "01"], lambda: FakeApi([("COMPLETE", "")])),
                          (["output", "01", "--out", fake_env / "fetched"], FakeApi),
                          (["download", "--out", fake_env / "denied"], lambda: FakeApi(error=_http_error(403))),
                          (["download", "--out", fake_env / "data"], FakeApi)]:
        printed.append(run_kaggle(capsys, *argv, get_api=get_api))
    assert [p[0] for p in printed] == [0, 0, 0, 0, 0, 2, 0]
    basic = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    for code, out, err in printed:
        assert SECRET not in out + err and basic not in out + err
    files = list(all_text(fake_env))
    assert len(files) > 100  # the kernel folders, the outputs, the downloaded sample
    leaks = [path for path, text in files if SECRET in text or basic in text]
    assert leaks == []
    assert server.calls[0][2] == f"Basic {basic}"  # it was sent, to the (stand-in) server only


@pytest.mark.slow
def test_importing_the_module_does_not_import_kaggle(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", "import sys, kitlib.kaggle.cli; print('kaggle' in sys.modules)"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"  # no authentication, no notice, no exit at import


def test_the_command_is_registered(fake_env, capsys):
    assert cli.COMMANDS["kaggle"][0] == "kitlib.kaggle.cli"
    out = fake_env / "k03"
    assert cli.main(["kaggle", "push", "03", "--dry-run", "--out", str(out)]) == 0
    assert read_folder(out)[0] == expected_metadata("03", "cpu")
