"""kitlib.runtime and the package itself: strategy detection on CPU, policies, data lookup, no import side effects."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from kitlib import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_get_strategy_on_cpu_is_the_default_strategy(capsys):
    strategy = runtime.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert runtime.device_kind(strategy) == "CPU"
    assert "CPU (default strategy), 1 replica" in capsys.readouterr().out


def test_accelerator_attached_reads_the_marks_of_a_tpu():
    no_path = lambda path: False  # noqa: E731
    assert runtime.accelerator_attached({"TPU_NAME": "grpc://10.0.0.2:8470"}, no_path)  # Kaggle/Colab remote TPU
    assert runtime.accelerator_attached({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, no_path)
    assert runtime.accelerator_attached({}, lambda path: path == "/dev/accel0")        # TPU VM
    assert not runtime.accelerator_attached({"TPU_NAME": ""}, no_path)                  # this box: no GPU either


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_usable_cores_follows_the_affinity_mask():
    mask = os.sched_getaffinity(0)
    assert runtime.usable_cores() == len(mask) <= os.cpu_count()
    os.sched_setaffinity(0, {min(mask)})            # as `taskset -c N` would (this thread only)
    try:
        assert runtime.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_configure_host_threads_before_and_after_tensorflow_starts():
    probe = r'''
import tensorflow as tf
from kitlib import runtime
assert runtime.configure_host_threads(None) == 0          # CPU only: TensorFlow's pool stays
assert runtime.configure_host_threads(1) == 1
assert tf.config.threading.get_intra_op_parallelism_threads() == 1
print(float(tf.constant(2.0) * 3))                          # the runtime starts here
assert runtime.configure_host_threads(0) == 1               # too late now: unchanged, and said so
'''
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 thread(s) per CPU op" in done.stdout
    assert "6.0" in done.stdout
    assert "already started; threads per CPU op stay at 1" in done.stdout


def test_get_strategy_says_when_threads_per_op_can_no_longer_change(capsys):
    runtime.get_strategy(host_threads=1)  # this test process has long started TensorFlow
    out = capsys.readouterr().out
    assert "CPU (default strategy), 1 replica(s), default thread(s) per CPU op (1 wanted" in out
    assert tf.config.threading.get_intra_op_parallelism_threads() == 0


def test_device_kind_of_a_mirrored_cpu_strategy(mirrored_strategy):
    assert mirrored_strategy.num_replicas_in_sync == 2
    assert runtime.device_kind(mirrored_strategy) == "CPU"


@pytest.mark.parametrize("kind, float16, expected", [
    ("TPU", False, "mixed_bfloat16"), ("TPU", True, "mixed_bfloat16"),
    ("GPU", False, "float32"), ("GPU", True, "mixed_float16"),
    ("CPU", False, "float32"), ("CPU", True, "float32"),
])
def test_mixed_precision_policy_per_device(kind, float16, expected):
    assert runtime.mixed_precision_policy(kind, gpu_float16=float16) == expected


def test_set_mixed_precision_on_cpu_sets_float32():
    from kitlib.compat import keras

    assert runtime.set_mixed_precision(tf.distribute.get_strategy(), gpu_float16=True) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_find_data_dir_falls_back_to_the_bundled_sample(sample_dir):
    assert os.path.samefile(runtime.find_data_dir(), sample_dir)
    assert runtime.find_data_dir(local=sample_dir) == sample_dir


def test_find_data_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-sample --out"):
        runtime.find_data_dir(local=str(tmp_path / "nowhere"))


def test_importing_kitlib_changes_no_global_state():
    probe = r'''
import json, logging, random, warnings
import numpy as np, matplotlib
import tensorflow as tf
import tf_keras
def state():
    return {
        "rcparams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
        "root_handlers": len(logging.getLogger().handlers), "root_level": logging.getLogger().level,
        "tf_log_level": tf.get_logger().level,
        "policy": tf_keras.mixed_precision.global_policy().name,
        "np_random": repr(np.random.get_state()[1][:4]), "py_random": random.getstate()[1][:4],
        "warnings": len(warnings.filters),
    }
before = state()
import kitlib, kitlib.compat, kitlib.runtime, kitlib.data, kitlib.sample, kitlib.export, kitlib.viz, kitlib.cli
import importlib, pkgutil
for mod in pkgutil.iter_modules(kitlib.__path__):
    if mod.name != "__main__":
        importlib.import_module("kitlib." + mod.name)
after = state()
print(json.dumps({k: (before[k] == after[k]) for k in before}))
'''
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    unchanged = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(unchanged.values()), f"state changed by import: {[k for k, v in unchanged.items() if not v]}"


def test_cli_lists_commands_and_rejects_unknown_ones():
    help_out = subprocess.run([sys.executable, "-m", "kitlib", "--help"], capture_output=True, text=True, cwd=REPO)
    assert help_out.returncode == 0 and "make-sample" in help_out.stdout
    bad = subprocess.run([sys.executable, "-m", "kitlib", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
