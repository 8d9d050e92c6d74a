"""Shared fixtures. The suite runs as users do: no ``KERAS_BACKEND`` is exported, kitlib picks JAX itself.
This process imports kitlib first (the test modules import TensorFlow, which imports Keras), then drops the
variable kitlib set, so every subprocess a test starts (the CLI, the notebooks, `run_on_devices`) begins in
a clean shell. Tests in this process see one CPU device; code that runs distributed is tested on 8
simulated devices in a subprocess (`run_on_devices`), since XLA's device count is fixed once JAX starts."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("KERAS_BACKEND", None)
import kitlib.compat  # noqa: E402,F401 - Keras on JAX in this process, before a test module imports TensorFlow

os.environ.pop("KERAS_BACKEND", None)  # Keras has read it; subprocesses start without it, as a user's shell

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def sample_dir():
    """The bundled sample in the competition's layout."""
    return os.path.join(REPO, "data", "sample")


def run_on_devices(code, devices=8, timeout=600, env=None):
    """Run `code` in a fresh Python whose JAX sees `devices` CPU devices; returns its last stdout line
    parsed as JSON (the code prints ``json.dumps(result)`` last). Fails the test with its stderr."""
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, cwd=REPO, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"subprocess on {devices} device(s) failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_bench(name):
    """The script bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Notebooks (nbmake items) belong to the full run, not the inner loop: they count as slow."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
