"""kitlib.kaggle.cli: download, publish-kit, push, status and output, through stand-in APIs and a stand-in HTTP server."""

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

from kitlib import cli, preflight, runtime
from kitlib.kaggle import api as kaggle_api
from kitlib.kaggle import cli as kaggle_cli
from tests.conftest import REPO  # noqa: E402

USER = "kit-tester"

SECRET = "kitfake0c0ffee5ecret9d1e2f3a4b5c6d"  # the fake KAGGLE_KEY: must never show up anywhere

COMPETITION = "cassava-leaf-disease-classification"

NOTEBOOKS = {"01": "01_pretrain_swav_tpu.ipynb", "02": "02_finetune_bit.ipynb", "03": "03_visualize_crops.ipynb",
             "04": "04_submit.ipynb"}

# What push should write, stated independently of the module's table.
SLUGS = {"01": "kitlib-01-pretrain-swav-tpu", "02": "kitlib-02-finetune-bit", "03": "kitlib-03-visualize-crops",
         "04": "kitlib-04-submit", "05": "kitlib-05-cv-ensemble"}

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
        from kagglesdk.kernels.types.kernels_enums import \
            KernelWorkerStatus  # noqa: PLC0415 - not `kaggle`

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

@pytest.mark.parametrize("argv, expected", [
    (["push", "01", "--accelerator", "tpu-v4", "--dry-run"], "unknown accelerator 'tpu-v4': use --accelerator tpu"),
    (["push", "01", "--accelerator", "NvidiaTeslaP100", "--dry-run"], "'NvidiaTeslaP100' is retired"),
    (["push", "OUTSIDE", "--dry-run"], "is not a notebook of"),
    (["push", "09", "--dry-run"], "is not a notebook of"),
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

def test_push_dry_run_needs_no_credentials(no_credentials, capsys):
    out = no_credentials / "kernel"
    code, stdout, _ = run_kaggle(capsys, "push", "01", "--dry-run", "--out", out, get_api=kaggle_api.authenticated_api)
    assert code == 0
    assert read_folder(out)[0] == expected_metadata("01", "tpu", owner=kaggle_cli.OWNER_PLACEHOLDER)
    assert "placeholder" in stdout

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

def test_the_command_is_registered(fake_env, capsys):
    assert cli.COMMANDS["kaggle"][0] == "kitlib.kaggle.cli"
    out = fake_env / "k03"
    assert cli.main(["kaggle", "push", "03", "--dry-run", "--out", str(out)]) == 0
    assert read_folder(out)[0] == expected_metadata("03", "cpu")


needs_libtpu = pytest.mark.skipif(
    not preflight.libtpu_installed() and not os.environ.get("KITLIB_REQUIRE_LIBTPU"),
    reason="compiling for a TPU needs libtpu: CI's kaggle-tpu leg (bash .ci/setup kaggle-tpu) runs these")


def _cli(*argv):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "kitlib", *argv], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def test_push_preflight_refuses_a_run_that_does_not_fit_and_pushes_nothing(monkeypatch, tmp_path, sample_dir, capsys):
    from kitlib.kaggle import cli as kaggle_cli
    from kitlib.swav import pretrain

    seen = {}

    def too_big(plan, print_fn=print):
        seen.update(config=plan.settings, target=plan.settings.preflight)
        return type("R", (), {"fits": False, "max_global_batch_size": 128, "global_batch_size": 256})()

    monkeypatch.setattr(pretrain, "run_preflight", too_big)
    monkeypatch.setattr(preflight, "prepare_compile_only", lambda: None)  # planned as for 8 chips, without libtpu
    monkeypatch.setattr(preflight, "target_runtime", lambda target: runtime.Runtime("TPU", tuple(range(8)), None,
                                                                                   "mixed_bfloat16"))
    out = tmp_path / "kernel"
    code = kaggle_cli.main(["push", "01", "--accelerator", "tpu", "--preflight", "--data", sample_dir,
                            "--dry-run", "--out", str(out)], get_api=lambda: pytest.fail("no API call"))
    assert code == preflight.EXIT_DOES_NOT_FIT and not out.exists()
    assert seen["target"] == "tpu-v5e-8" and seen["config"].steps_per_execution == 32 and seen["config"].seed == 0
    assert "set global_batch_size=128 in its CONFIG cell" in capsys.readouterr().err
    code = kaggle_cli.main(["push", "01", "--accelerator", "gpu", "--preflight", "--dry-run", "--out", str(out)])
    assert code == 2 and "--accelerator tpu" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.tpu_compile
@needs_libtpu
def test_push_preflight_of_notebook_01_compiles_and_then_writes_the_kernel(tmp_path, sample_dir):
    out = tmp_path / "kernel"
    done = _cli("kaggle", "push", "01", "--accelerator", "tpu", "--preflight", "--data", sample_dir, "--dry-run",
                "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FITS" in done.stdout and (out / "kernel-metadata.json").exists()


@pytest.mark.parametrize("number", ["01", "02", "05"])
def test_push_resume_attaches_the_previous_versions_output_and_turns_resume_on(fake_env, capsys, number):
    out = fake_env / "kernel"
    code, _, err = run_kaggle(capsys, "push", number, "--resume", "--dry-run", "--owner", USER, "--out", out)
    assert code == 0, err
    meta, nb, _ = read_folder(out)
    assert f"{USER}/{SLUGS[number]}" in meta["kernel_sources"]  # itself: the version before this one
    config_cells = ["".join(c["source"]) for c in nb["cells"]
                    if c["cell_type"] == "code" and "RESUME = " in "".join(c["source"])]
    assert len(config_cells) == 1 and "RESUME = True" in config_cells[0] and "RESUME = False" not in config_cells[0]
    code, _, _ = run_kaggle(capsys, "push", number, "--dry-run", "--owner", USER, "--out", fake_env / "plain")
    assert f"{USER}/{SLUGS[number]}" not in read_folder(fake_env / "plain")[0]["kernel_sources"]
    assert "RESUME = False" in "".join("".join(c["source"]) for c in read_folder(fake_env / "plain")[1]["cells"])
