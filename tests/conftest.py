"""Shared fixtures. The CPU is split into 2 logical devices before TensorFlow initialises, so
cross-replica code is tested under a real MirroredStrategy (REFERENCE.md: the way to test it here)."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
try:
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
except RuntimeError:  # already initialised (e.g. a test imported TF ops first): keep what exists
    pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def sample_dir():
    """The bundled sample in the competition's layout."""
    return os.path.join(REPO, "data", "sample")


@pytest.fixture(scope="session")
def mirrored_strategy():
    """MirroredStrategy over two logical CPU devices."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest could not split the CPU into 2 logical devices"
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def load_bench(name):
    """The script bench/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
