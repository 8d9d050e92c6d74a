"""kitlib.kaggle.api: credentials found without importing kaggle, never printed; API errors explained."""

import json
import os
import subprocess
import sys

import pytest
import requests

from kitlib.kaggle import api as kaggle_api
from kitlib.kaggle import cli as kaggle_cli
from tests.conftest import REPO  # noqa: E402

SECRET = "kitfake0c0ffee5ecret9d1e2f3a4b5c6d"  # the fake KAGGLE_KEY: must never show up anywhere

def _no_api():
    raise AssertionError("this command must not need the Kaggle API")

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

def _http_error(status):
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)

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

def test_a_403_on_push_and_a_401_are_explained():
    assert "403 Forbidden" in kaggle_api.explain_api_error(_http_error(403), "push u/kitlib-01")
    line = kaggle_api.explain_api_error(_http_error(401), "download x", competition="x")
    assert "401 Unauthorized" in line and "https://www.kaggle.com/settings" in line
    denied = ValueError("Cannot access kernel 'u/k' (Permission 'kernels.get' was denied). The most likely cause ...")
    line = kaggle_api.explain_api_error(denied, "read the status of u/k")
    assert "(Cannot access kernel 'u/k' (Permission 'kernels.get' was denied))" in line and "OWNER/SLUG" in line
    assert "most likely" not in line
    assert "check the internet" in kaggle_api.explain_api_error(requests.ConnectionError("no route"), "push x")

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

@pytest.mark.slow
def test_importing_the_module_does_not_import_kaggle(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", "import sys, kitlib.kaggle.cli; print('kaggle' in sys.modules)"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"  # no authentication, no notice, no exit at import
