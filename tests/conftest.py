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


def kitlib_modules():
    """Every module of the kit, dotted ("kitlib.swav.model"), packages included, ``__main__`` left out."""
    import pkgutil  # noqa: PLC0415

    import kitlib  # noqa: PLC0415

    names = [m.name for m in pkgutil.walk_packages(kitlib.__path__, "kitlib.") if not m.name.endswith("__main__")]
    return sorted(names)


def xla_flags(devices):
    """XLA_FLAGS for `devices` simulated CPU devices, keeping flags the shell set (CI's other-CPU leg caps
    XLA's instruction set with --xla_cpu_max_isa)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def run_on_devices(code, devices=8, timeout=600, env=None):
    """Run `code` in a fresh Python whose JAX sees `devices` CPU devices; returns its last stdout line
    parsed as JSON (the code prints ``json.dumps(result)`` last). Fails the test with its stderr."""
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
                   XLA_FLAGS=xla_flags(devices), **(env or {}))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, cwd=REPO, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"subprocess on {devices} device(s) failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (for a test's jax.distributed coordinator)."""
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_processes(args, processes=2, devices=4, extra=None, env=None):
    """Start ``python -m kitlib ARGS`` as `processes` local processes of one run (``--coordinator`` on a free
    127.0.0.1 port, gloo collectives), each seeing `devices` simulated CPU devices, in a clean shell as a user
    starts them. extra: {process_id: [flags]} added to that process's command; env: variables added to all
    (e.g. TMPDIR). Returns the Popen objects."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=xla_flags(devices), **(env or {}))
    started = []
    for i in range(processes):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        started.append(subprocess.Popen([sys.executable, "-m", "kitlib", *args, *flags, *(extra or {}).get(i, [])],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
                                        cwd=REPO))
    return started


def finish_processes(started, timeout=300):
    """Wait for `start_processes`'s processes; returns [(returncode, stdout, stderr)] in process order."""
    results = []
    for proc in started:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in started:
                other.kill()
            pytest.fail(f"a process of the multi-process run hung past {timeout} s")
        results.append((proc.returncode, out, err))
    return results


def load_bench(name):
    """The script bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The notebooks every stack of .ci/stacks runs (a TPU user's first cells: pretraining, the submission).
MATRIX_NOTEBOOKS = ("01_pretrain_swav_tpu.ipynb", "04_submit.ipynb")


def pytest_collection_modifyitems(config, items):
    """Notebooks (nbmake items) belong to the full run, not the inner loop: they count as slow; 01 and 04
    also run on every stack of the matrix."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
            if os.path.basename(str(item.fspath)) in MATRIX_NOTEBOOKS:
                item.add_marker(pytest.mark.matrix)
