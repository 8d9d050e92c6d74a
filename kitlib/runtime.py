"""What the run computes on: devices, distribution, precision, seeds, host threads, the versions installed.

The kit computes with Keras 3 on JAX on every device and feeds it from ``tf.data`` on the host.
`setup()` is the one call a notebook or command makes first: it finds JAX's devices (TPU, GPU or
CPU), puts a ``keras.distribution.DataParallel`` in force when there are several (the compiled step
then sees the *global* batch: Sinkhorn, the loss and BatchNorm statistics are global), sets the
precision policy, and **refuses to train on the CPU of a machine that has an accelerator JAX cannot
see** (a TPU VM without ``jax[tpu]``, a GPU without the CUDA plugin), with the fix spelled out.
Nothing here runs at import; each function says what it changed.
"""

import contextlib
import dataclasses
import glob
import importlib.metadata
import os
import random
import re
import sys

from kitlib import compat, hosts
from kitlib.compat import TF_INSTALL_HINT, keras

# What the kit is tested on (.ci/stacks/: Kaggle's GPU and TPU images, Colab): name -> (lowest, highest),
# compared on the leading release numbers, so "0.10" admits every 0.10.x.
TESTED_RANGE = {"python": ("3.12", "3.13"), "jax": ("0.7.2", "0.12"), "keras": ("3.13", "3.15"),
                "numpy": ("2.0", "2.5"), "tensorflow": ("2.20", "2.20")}
# Environment marks of a TPU VM (Kaggle sets ISTPUVM=1 and TPU_PROCESS_ADDRESSES=local) or a remote TPU.
TPU_ENV_MARKS = ("ISTPUVM", "TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_PROCESS_ADDRESSES", "COLAB_TPU_ADDR",
                 "TPU_WORKER_ID")
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")     # TPU chips on a TPU VM (v4/v5e/v6e)
GPU_DEVICE_GLOBS = ("/dev/nvidia[0-9]*",)                  # NVIDIA GPUs (the driver's device files)


def _fix(hardware):
    """The one fix for an accelerator JAX does not see: JAX's build for it, at the installed JAX's version."""
    version = importlib.metadata.version("jax")
    if hardware == "TPU":
        return (f"install JAX's TPU build and restart the kernel: pip install 'jax[tpu]=={version}' "
                "(on Kaggle choose the TPU v5e-8 accelerator, whose image has it); if it is installed, another "
                "process may hold the TPU: restart the session so only one kernel uses it")
    return (f"install JAX's CUDA build and restart the kernel: pip install 'jax[cuda12]=={version}'; check "
            "that `nvidia-smi` lists the GPU")


class AcceleratorNotVisible(RuntimeError):
    """The machine has a TPU or GPU but JAX computes on the CPU: training there would be silently slow."""


def usable_cores():
    """CPUs this process may run on: its affinity mask where the OS has one (``taskset``, a
    container's cpuset), else ``os.cpu_count()``. TensorFlow sizes its own thread pools the same way."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# Host threads for the input pipeline (bench/README.md, "Host threads"): measured up to 16 cores, where a pool
# of one thread per core was best; the device-mode pipeline needs about 10 busy cores per chip at the step's
# peak; past one NUMA node's cores (a TPU v5e-8 VM: 224 vCPUs in 2 nodes) threads only oversubscribe.
MEASURED_THREADS = 16
CORES_PER_CHIP = 10
MIN_POOL_THREADS = 4  # a 2-core machine: 4-6 threads keep ~1.85 of 2 cores busy against ~1.7 (bench/pipeline.py)


def numa_nodes(root="/sys/devices/system/node"):
    """NUMA nodes of this machine (1 where the OS does not say)."""
    try:
        return max(1, sum(1 for name in os.listdir(root) if re.fullmatch(r"node\d+", name)))
    except OSError:
        return 1


def input_threads(cores, chips=0, nodes=1):
    """Threads of the input pipeline's private pool for a host of `cores` usable CPUs in `nodes` NUMA
    nodes feeding `chips` accelerators: one per core up to what is measured (`MEASURED_THREADS`) or what the
    chips need at peak (`CORES_PER_CHIP` each), never more than one node's cores, never fewer than
    `MIN_POOL_THREADS`. A 2-core CPU: 4; 16 cores: 16; a TPU v5e-8 VM (224 vCPUs, 2 nodes, 8 chips): 80."""
    per_node = max(1, cores // max(1, nodes))
    wanted = max(MEASURED_THREADS, CORES_PER_CHIP * chips)
    return max(MIN_POOL_THREADS, min(cores, per_node, wanted))


def local_chips():
    """Accelerator chips this process drives (0 on a CPU-only machine, or before JAX can say)."""
    try:
        import jax  # noqa: PLC0415

        return sum(1 for d in jax.local_devices() if d.platform != "cpu")
    except Exception:  # noqa: BLE001 - no JAX backend yet: size for the CPU
        return 0


def accelerator_marks(environ=None, find=glob.glob):
    """The signs of an accelerator on this machine, read without starting JAX or TensorFlow.

    Args:
        environ: the environment (default ``os.environ``). find: a glob function (for tests).
    Returns:
        {"TPU": [marks...], "GPU": [marks...]}, e.g. {"TPU": ["ISTPUVM=1", "/dev/accel0"], "GPU": []}.
    """
    environ = os.environ if environ is None else environ
    tpu = [f"{name}={environ[name]}" for name in TPU_ENV_MARKS if environ.get(name)]
    tpu += [path for pattern in TPU_DEVICE_GLOBS for path in sorted(find(pattern))]
    gpu = [path for pattern in GPU_DEVICE_GLOBS for path in sorted(find(pattern))]
    return {"TPU": tpu, "GPU": gpu}


def device_kind(platform):
    """"TPU", "GPU" or "CPU" for a JAX platform name ("tpu", "gpu", "cuda", "rocm", "cpu")."""
    platform = platform.lower()
    if platform == "tpu":
        return "TPU"
    if platform in ("gpu", "cuda", "rocm"):
        return "GPU"
    return "CPU"


# what a config's mixed_precision may name: auto (`mixed_precision_policy`) or one of Keras's floating policies
POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def mixed_precision_policy(kind, gpu_float16=False):
    """The Keras policy name for a device kind: bfloat16 on TPU (native, no loss scaling), float16 on
    GPU only when asked (Keras then scales the loss), float32 on CPU (mixed precision is slower there)."""
    if kind == "TPU":
        return "mixed_bfloat16"
    if kind == "GPU" and gpu_float16:
        return "mixed_float16"
    return "float32"


def check_visible(kind, marks, allow_cpu=False):
    """Raise `AcceleratorNotVisible` when JAX computes on the CPU of a machine with an accelerator.

    Args:
        kind: what JAX computes on ("TPU" | "GPU" | "CPU"). marks: `accelerator_marks()`.
        allow_cpu: True: only say so (an explicit opt-in to a CPU run).
    Returns:
        A warning line (str) when allowed through, else None.
    """
    if kind != "CPU":
        return None
    for hardware in ("TPU", "GPU"):
        if marks.get(hardware):
            found = ", ".join(marks[hardware][:4])
            message = (f"this machine has a {hardware} ({found}) but JAX sees only the CPU, so training would "
                       f"run on the host CPU, many times slower. Fix: {_fix(hardware)}.")
            if not allow_cpu:
                raise AcceleratorNotVisible(
                    f"kitlib: refusing to run: {message} To train on the CPU anyway pass allow_cpu=True "
                    "(command line: --allow-cpu).")
            return f"kitlib: WARNING: {message} Running on the CPU because allow_cpu=True."
    return None


def check_global_batch(global_batch, num_devices, name="the global batch"):
    """The per-device batch; ValueError naming both numbers (and the batch by `name`, the user's flag or field)
    when the global batch does not split evenly."""
    if global_batch < 1 or global_batch % num_devices:
        raise ValueError(
            f"{name} {global_batch} does not split evenly over {num_devices} device(s): use a multiple "
            f"of {num_devices} (e.g. {name} {max(1, round(global_batch / num_devices)) * num_devices}).")
    return global_batch // num_devices


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What `setup()` found and set.

    kind: "TPU" | "GPU" | "CPU". devices: JAX's devices, of every process (the global devices).
    distribution: the `keras.distribution.DataParallel` in force (None on one device). policy: the Keras
    dtype policy name set globally. process_index, process_count: this process of how many
    (`kitlib.hosts`); local_devices: the devices this process feeds.
    """
    kind: str
    devices: tuple
    distribution: object
    policy: str
    process_index: int = 0
    process_count: int = 1
    local_devices: tuple = None

    @property
    def num_devices(self):
        return len(self.devices)

    @property
    def num_local_devices(self):
        return len(self.local_devices) if self.local_devices is not None else self.num_devices

    def local_batch(self, global_batch):
        """This process's rows of a global batch (ValueError when it does not split over the devices)."""
        check_global_batch(global_batch, self.num_devices)
        return global_batch // self.process_count

    def per_device_batch(self, global_batch):
        """Images per device for a global batch (ValueError when it does not split evenly)."""
        return check_global_batch(global_batch, self.num_devices)

    def describe(self):
        platform = self.devices[0].device_kind if self.devices else "?"
        spread = "DataParallel" if self.distribution is not None else "no distribution"
        hosts = (f" over {self.process_count} processes (this is process {self.process_index}, "
                 f"{self.num_local_devices} local)" if self.process_count > 1 else "")
        return f"{self.num_devices} x {self.kind} ({platform}){hosts}, {spread}, policy {self.policy}"

    def as_dict(self):
        return {"backend": keras.backend.backend(), "kind": self.kind, "devices": self.num_devices,
                "processes": self.process_count, "policy": self.policy}


def setup(allow_cpu=False, gpu_float16=False, policy="auto", verbose=True, devices=None, marks=None,
          host_threads=None, coordinator=None, num_processes=None, process_id=None):
    """Find the devices, put data parallelism and the precision policy in force; call it first.

    Args:
        allow_cpu: run on the CPU even where an accelerator exists but JAX cannot see it (else refuse).
        gpu_float16: on a GPU, compute in float16 (mixed_float16) instead of float32.
        policy: "auto" (bfloat16 on TPU, float32 elsewhere unless gpu_float16) or a Keras policy name.
        verbose: print one line saying what the run is on.
        devices, marks: JAX devices and `accelerator_marks()` (default: this machine's; for tests).
        host_threads: TensorFlow threads per CPU op for the input pipeline (None: 1 with an
            accelerator, whose host only feeds it; TensorFlow's default otherwise).
        coordinator, num_processes, process_id: join a multi-process run (`kitlib.hosts.join`; None: as the
            environment says, one process on a single host). Only process 0 prints.
    Returns:
        `Runtime`.
    Raises:
        AcceleratorNotVisible: a TPU/GPU is present but JAX runs on the CPU (and allow_cpu is False).
    """
    import jax  # noqa: PLC0415 - started here, not at import

    from kitlib.compat import tf  # noqa: F401,PLC0415 - importing it keeps TensorFlow off the GPU (JAX's)

    if devices is None:
        hosts.join(coordinator, num_processes, process_id)
    devices = tuple(jax.devices() if devices is None else devices)
    kind = device_kind(devices[0].platform)
    warning = check_visible(kind, accelerator_marks() if marks is None else marks, allow_cpu)
    name = mixed_precision_policy(kind, gpu_float16) if policy == "auto" else policy
    keras.mixed_precision.set_global_policy(name)
    # the kit feeds each process its own rows of the global batch (kitlib.hosts): Keras must not re-shard them
    distribution = (keras.distribution.DataParallel(devices=list(devices), auto_shard_dataset=False)
                    if len(devices) > 1 else None)
    keras.distribution.set_distribution(distribution)
    local = tuple(d for d in devices if getattr(d, "process_index", 0) == jax.process_index())
    if kind != "CPU" or host_threads is not None:
        chips = sum(1 for d in local if d.platform != "cpu")
        inter_op = input_threads(usable_cores(), chips, numa_nodes()) if chips else None
        configure_host_threads(1 if host_threads is None else host_threads, verbose=False, inter_op=inter_op)
    result = Runtime(kind, devices, distribution, name, jax.process_index(), jax.process_count(), local)
    if verbose and result.process_index == 0:
        if warning:
            print(warning)
        print(f"kitlib: running on {result.describe()} (Keras {keras.__version__} on JAX {jax.__version__})")
    return result


@contextlib.contextmanager
def policy_scope(name):
    """Inside the block Keras's global dtype policy is `name` (e.g. "mixed_bfloat16"); the caller's after."""
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


@contextlib.contextmanager
def seeded(seed):
    """Inside the block every unseeded draw is reproducible from `seed`, as after
    ``keras.utils.set_random_seed(seed)`` (Keras's initialisers and global SeedGenerator, Python's and
    NumPy's generators, TensorFlow's global seed that tf.data's op seeds combine with); after it the
    caller's random state is back as it was, so a run never reseeds a notebook. None: does nothing.
    """
    if seed is None:
        yield
        return
    import numpy as np  # noqa: PLC0415

    saved = (compat.library_seed_state(), random.getstate(), np.random.get_state())
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        compat.restore_library_seed_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def configure_host_threads(intra_op, verbose=True, inter_op=None):
    """Threads per TensorFlow CPU op for the input pipeline (and, with `inter_op`, TensorFlow's pool of ops run
    side by side: `input_threads` on an accelerator host, not one per core); call before TensorFlow's first op.

    A GPU/TPU host's CPUs only feed the accelerator: ``tf.data`` already runs many map calls in parallel,
    and splitting each op over an intra-op pool on top of that costs more CPU than it saves (measured:
    bench/README.md). On a CPU-only machine leave TensorFlow's default (0).

    Returns:
        The setting in force afterwards (0: TensorFlow's default). Once TensorFlow's runtime has started
        the setting is fixed: then nothing changes, and that is what is returned (and printed).
    """
    from kitlib.compat import tf  # noqa: PLC0415

    current = tf.config.threading.get_intra_op_parallelism_threads()
    if intra_op == current:
        return current
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # the runtime has started: the pool exists and cannot be resized
        if verbose:
            print(f"kitlib: TensorFlow already started; threads per CPU op stay at {current or 'the default'}")
        return current
    if verbose:
        print(f"kitlib: {intra_op or 'default (one per core)'} thread(s) per CPU op")
    return intra_op


def _release(version):
    """The leading release numbers of a version string: "2.20.0rc1" -> (2, 20, 0), "0.10" -> (0, 10)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


def outside_tested_range(versions, tested=None):
    """The packages whose version lies outside the tested range, one line each ([] when all are inside).

    Args:
        versions: {"python": "3.12.1", "jax": "0.10.2", ...}; names without a range are ignored.
        tested: {name: (lowest, highest)} (default `TESTED_RANGE`); a bound "0.10" admits every 0.10.x.
    """
    tested = TESTED_RANGE if tested is None else tested
    lines = []
    for name, (low, high) in tested.items():
        if name not in versions:
            continue
        have = _release(versions[name])
        if have[:len(_release(low))] < _release(low) or have[:len(_release(high))] > _release(high):
            lines.append(f"{name} {versions[name]} (tested: {low} to {high})")
    return lines


def check_environment(verbose=True):
    """The first cell's check: Keras 3 on JAX, TensorFlow for input (else the pip line to run), and the
    versions against the range the kit is tested on (a warning, not an error, outside it).

    Returns:
        dict of versions. Raises ImportError with the fix when something is missing.
    """
    import jax  # noqa: PLC0415
    import numpy  # noqa: PLC0415

    try:
        tf = compat.tf
    except ImportError as err:
        raise ImportError(
            "TensorFlow is missing (Colab's TPU runtime ships none); kitlib reads data with tf.data. "
            f"Run this once, then restart the runtime:\n    !{TF_INSTALL_HINT}") from err
    versions = {"python": sys.version.split()[0], "keras": keras.__version__, "backend": keras.backend.backend(),
                "jax": jax.__version__, "numpy": numpy.__version__, "tensorflow": tf.__version__}
    if verbose:
        print("kitlib environment: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        outside = outside_tested_range(versions)
        if outside:
            print("kitlib: WARNING: outside the versions the kit is tested on: " + "; ".join(outside)
                  + ". It may still work; if something breaks, say which versions in the report.")
    return versions
