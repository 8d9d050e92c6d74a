"""kitlib.runtime: devices, the refusal of a hidden accelerator, data parallelism, precision, seeds, the environment check, imports that change nothing."""

import json
import os
import subprocess
import sys

import pytest

from kitlib import runtime
from tests.conftest import run_on_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

class _Device:
    def __init__(self, platform, device_kind="fake"):
        self.platform, self.device_kind = platform, device_kind

def _no_files(pattern):
    return []

def test_accelerator_marks_read_the_environment_and_device_files():
    kaggle_tpu = runtime.accelerator_marks({"ISTPUVM": "1", "TPU_PROCESS_ADDRESSES": "local"}, _no_files)
    assert kaggle_tpu == {"TPU": ["ISTPUVM=1", "TPU_PROCESS_ADDRESSES=local"], "GPU": []}
    files = {"/dev/accel*": ["/dev/accel1", "/dev/accel0"], "/dev/nvidia[0-9]*": ["/dev/nvidia0"]}
    marks = runtime.accelerator_marks({"TPU_NAME": ""}, lambda pattern: files.get(pattern, []))
    assert marks == {"TPU": ["/dev/accel0", "/dev/accel1"], "GPU": ["/dev/nvidia0"]}
    assert runtime.accelerator_marks({}, _no_files) == {"TPU": [], "GPU": []}
    assert runtime.accelerator_marks() == {"TPU": [], "GPU": []}  # this box: neither

@pytest.mark.parametrize("hardware, marks, extra", [
    ("TPU", {"TPU": ["ISTPUVM=1"], "GPU": []}, "tpu"),
    ("GPU", {"TPU": [], "GPU": ["/dev/nvidia0"]}, "cuda12"),
])
def test_a_hidden_accelerator_is_refused_with_the_fix_unless_cpu_is_allowed(hardware, marks, extra):
    import jax

    fix = f"jax[{extra}]=={jax.__version__}"  # the accelerator build of the JAX that is installed
    with pytest.raises(runtime.AcceleratorNotVisible, match=rf"has a {hardware} .* JAX sees only the CPU") as err:
        runtime.check_visible("CPU", marks)
    assert fix in str(err.value) and "allow_cpu=True" in str(err.value)
    assert "WARNING" in runtime.check_visible("CPU", marks, allow_cpu=True)
    assert runtime.check_visible(hardware, marks) is None  # JAX does see it
    assert runtime.check_visible("CPU", {"TPU": [], "GPU": []}) is None  # a plain CPU machine

def test_setup_refuses_before_touching_keras_state_on_a_tpu_vm_without_jax_tpu():
    from kitlib.compat import keras

    with pytest.raises(runtime.AcceleratorNotVisible, match="TPU"):
        runtime.setup(devices=[_Device("cpu")], marks={"TPU": ["/dev/accel0"], "GPU": []}, verbose=False)
    assert keras.mixed_precision.global_policy().name == "float32"

def test_setup_on_this_machine_is_one_cpu_device_in_float32(capsys):
    rt = runtime.setup()
    assert (rt.kind, rt.num_devices, rt.distribution, rt.policy) == ("CPU", 1, None, "float32")
    assert rt.as_dict()["backend"] == "jax"
    assert "running on 1 x CPU" in capsys.readouterr().out

@pytest.mark.slow
@pytest.mark.matrix
def test_setup_on_eight_devices_puts_data_parallelism_in_force():
    result = run_on_devices("""
        import json
        from kitlib import runtime
        from kitlib import locations
        import keras
        rt = runtime.setup(verbose=False)
        dist = keras.distribution.distribution()
        try:
            rt.per_device_batch(12)
            error = None
        except ValueError as err:
            error = str(err)
        print(json.dumps({"n": rt.num_devices, "dp": type(dist).__name__, "mesh": list(dist.device_mesh.shape),
                          "per_device": rt.per_device_batch(64), "error": error}))
    """)
    assert (result["n"], result["dp"], result["mesh"], result["per_device"]) == (8, "DataParallel", [8], 8)
    assert "global batch 12" in result["error"] and "8 device(s)" in result["error"]

def test_device_kind_of_jax_platforms():
    assert [runtime.device_kind(p) for p in ("tpu", "gpu", "cuda", "rocm", "cpu")] == ["TPU", "GPU", "GPU", "GPU", "CPU"]

@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_usable_cores_follows_the_affinity_mask():
    mask = os.sched_getaffinity(0)
    assert runtime.usable_cores() == len(mask) <= os.cpu_count()
    os.sched_setaffinity(0, {min(mask)})            # as `taskset -c N` would (this thread only)
    try:
        assert runtime.usable_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)

@pytest.mark.slow
def test_configure_host_threads_before_and_after_tensorflow_starts():
    probe = r'''
import tensorflow as tf
from kitlib import runtime
from kitlib import locations
assert runtime.configure_host_threads(0) == 0          # TensorFlow's default pool
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

@pytest.mark.parametrize("kind, float16, expected", [
    ("TPU", False, "mixed_bfloat16"), ("TPU", True, "mixed_bfloat16"),
    ("GPU", False, "float32"), ("GPU", True, "mixed_float16"),
    ("CPU", False, "float32"), ("CPU", True, "float32"),
])
def test_mixed_precision_policy_per_device(kind, float16, expected):
    assert runtime.mixed_precision_policy(kind, gpu_float16=float16) == expected

@pytest.mark.slow
def test_check_environment_names_versions_and_the_pip_line_where_tensorflow_is_missing():
    versions = runtime.check_environment(verbose=False)
    assert versions["backend"] == "jax" and versions["keras"].startswith("3.")
    probe = "import sys; sys.modules['tensorflow'] = None\nfrom kitlib import runtime\nruntime.check_environment()"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and "pip install tensorflow-cpu==2.20.0" in done.stderr

def test_every_stack_lies_inside_the_tested_range_and_a_newer_jax_does_not():
    import importlib.metadata
    import platform

    versions = {name: importlib.metadata.version(name) for name in ("jax", "keras", "numpy", "tensorflow")}
    assert runtime.outside_tested_range({"python": platform.python_version(), **versions}) == []
    assert runtime.outside_tested_range({"jax": "0.12.1", "keras": "3.15.1", "numpy": "2.5.5"}) == []
    assert runtime.outside_tested_range({"jax": "0.13.0", "keras": "3.12.4"}) == [
        "jax 0.13.0 (tested: 0.7.2 to 0.12)", "keras 3.12.4 (tested: 3.13 to 3.15)"]

@pytest.mark.slow
def test_importing_kitlib_changes_no_global_state():
    probe = r'''
import json, logging, random, warnings
import numpy as np, matplotlib
import os; os.environ["KERAS_BACKEND"] = "jax"
import keras
import tensorflow as tf
def state():
    return {
        "rcparams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
        "root_handlers": len(logging.getLogger().handlers), "root_level": logging.getLogger().level,
        "tf_log_level": tf.get_logger().level,
        "policy": keras.mixed_precision.global_policy().name,
        "distribution": repr(keras.distribution.distribution()),
        "np_random": repr(np.random.get_state()[1][:4]), "py_random": random.getstate()[1][:4],
        "warnings": len(warnings.filters),
    }
before = state()
import kitlib, kitlib.compat, kitlib.runtime, kitlib.data.tfrecords, kitlib.data.sample, kitlib.bit.export, kitlib.viz, kitlib.cli
import importlib, pkgutil
for mod in pkgutil.walk_packages(kitlib.__path__, "kitlib."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
after = state()
print(json.dumps({k: (before[k] == after[k]) for k in before}))
'''
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    unchanged = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(unchanged.values()), f"state changed by import: {[k for k, v in unchanged.items() if not v]}"

def test_seeded_repeats_draws_inside_and_leaves_the_callers_state_alone():
    import random

    import numpy as np

    from kitlib.compat import keras

    def draws():
        return (random.random(), float(np.random.rand()), np.asarray(keras.initializers.GlorotUniform()((3,))))

    random.seed(11)
    np.random.seed(11)
    before = (random.getstate(), np.random.get_state()[1].copy())
    with runtime.seeded(4):
        first = draws()
    with runtime.seeded(4):
        second = draws()
    assert first[:2] == second[:2]
    np.testing.assert_array_equal(first[2], second[2])
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    with runtime.seeded(None):  # no seed: nothing is touched
        assert random.getstate() == before[0]


@pytest.mark.parametrize("cores, chips, nodes, threads", [
    (2, 0, 1, 4),      # a free Colab / the CI box: 4 threads keep 2 cores busier than 2
    (4, 1, 1, 4),      # a Kaggle T4 host
    (16, 0, 1, 16),    # the largest host measured: one per core
    (96, 0, 2, 16),    # a big CPU-only host: no more than measured
    (224, 8, 2, 80),   # a TPU v5e-8 VM: 10 per chip, within one of its 112-vCPU nodes
    (224, 16, 2, 112),  # more chips than one node feeds: the node's cores
])
def test_input_threads_fit_the_host_not_its_core_count(cores, chips, nodes, threads):
    assert runtime.input_threads(cores, chips, nodes) == threads


def test_numa_nodes_are_counted_from_the_os(tmp_path):
    for name in ("node0", "node1", "possible", "online"):
        (tmp_path / name).mkdir()
    assert runtime.numa_nodes(str(tmp_path)) == 2 and runtime.numa_nodes(str(tmp_path / "none")) == 1
