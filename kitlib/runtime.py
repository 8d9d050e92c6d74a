"""Where the code runs and where the data is: strategy, mixed precision, Kaggle paths.

One code path for TPU, GPU and CPU: ``get_strategy()`` picks the best available
``tf.distribute`` strategy, ``set_mixed_precision()`` the matching Keras policy, and
``find_data_dir()`` the competition folder (Kaggle), its GCS copy (remote TPU) or a local folder.
Nothing here runs at import; each function says what it changed.
"""

import os

import tensorflow as tf

from kitlib.compat import keras

KAGGLE_INPUT = "/kaggle/input"
COMPETITION = "cassava-leaf-disease-classification"
DEFAULT_LOCAL_DATA = "data/sample"


def repo_root():
    """The folder that holds the ``kitlib`` package (the clone's root, or an attached dataset)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def usable_cores():
    """CPUs this process may run on: its affinity mask where the OS has one (``taskset``, a
    container's cpuset), else ``os.cpu_count()``. TensorFlow sizes its own thread pools the same way."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def accelerator_attached(environ=None, exists=os.path.exists):
    """True when this process will compute on a GPU or TPU, judged without starting TensorFlow's
    runtime: a GPU among the physical devices, or the marks of a TPU (``TPU_NAME`` /
    ``COLAB_TPU_ADDR`` / ``TPU_ACCELERATOR_TYPE`` / Kaggle's ``ISTPUVM`` in the environment,
    ``/dev/accel0`` on a TPU VM). A TPU it misses only leaves TensorFlow's default threading.

    Args:
        environ, exists: the environment and a path test (default: this process's; for tests).
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "ISTPUVM")):
        return True
    return exists("/dev/accel0") or bool(tf.config.list_physical_devices("GPU"))


def _threads_for(intra_op):
    """intra_op, or for None: 1 when `accelerator_attached()`, else 0 (TensorFlow's default)."""
    if intra_op is None:
        return 1 if accelerator_attached() else 0
    return intra_op


def configure_host_threads(intra_op=None, verbose=True):
    """Threads per CPU op for this process; call before the first TensorFlow op.

    A GPU/TPU host's CPUs only feed the accelerator: ``tf.data`` already runs many map calls in
    parallel, and splitting each op (a blur, a colour product) over TensorFlow's intra-op pool on
    top of that costs more CPU than it saves. On a 2-core box the SwAV host augmentation
    (2x224 + 3x96 crops) took 4.7-5.1 CPU-ms per image with the default pool and 4.0-4.2 with one
    thread per op (363-400 -> 443-444 images/s, processes alternating; one map call at a time:
    6.2 -> 4.6 ms). The ``tf.data`` option ``max_intra_op_parallelism`` does not reach the oneDNN
    kernels (convolutions, matrix products), so the process-wide setting is the one that works.
    Not every pipeline gains: the seed notebook's (five full decodes and a full-image resize per
    example) did not, reliably (16.5-17.4 -> 18-21.5 CPU-ms in that A/B, 20.3 -> 17.3 in another).
    On a CPU-only machine the model itself runs on the CPU and needs the pool: leave the default there.

    Args:
        intra_op: threads per op; 0: TensorFlow's default (one per core); None: 1 when
            `accelerator_attached()`, else 0.
        verbose: print what was set, or why nothing could be.
    Returns:
        The setting in force afterwards (0: the default). Once TensorFlow's runtime has started the
        setting is fixed: then nothing changes, and that is what is returned (and printed).
    """
    intra_op = _threads_for(intra_op)
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if intra_op == current:
        return current
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    except RuntimeError:  # the runtime has started: the pool exists and cannot be resized
        if verbose:
            print(f"kitlib: TensorFlow already started; threads per CPU op stay at {current or 'the default'} "
                  f"(call runtime.configure_host_threads before any other TensorFlow call for {intra_op})")
        return current
    if verbose:
        print(f"kitlib: {intra_op or 'default (one per core)'} thread(s) per CPU op")
    return intra_op


def _connect_tpu(tpu):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(verbose=True, host_threads=None):
    """The best distribution strategy on this machine.

    Order: a TPU VM (``TPUClusterResolver(tpu='local')``), then a legacy remote TPU
    (``TPUClusterResolver()``, which reads ``TPU_NAME`` on Kaggle/Colab), then several GPUs
    (``MirroredStrategy``), else the default strategy (one GPU or the CPU).

    Called before any other TensorFlow work, it first runs `configure_host_threads`: one thread
    per CPU op when a GPU/TPU is attached (the host then only feeds it), TensorFlow's pool otherwise.

    Args:
        verbose: print which strategy was chosen and its number of replicas.
        host_threads: passed to `configure_host_threads` (None: decide from the hardware).
    Returns:
        A ``tf.distribute.Strategy``; build models inside ``strategy.scope()``.
    """
    wanted = _threads_for(host_threads)
    threads = configure_host_threads(wanted, verbose=False)
    strategy, how = None, None
    for tpu, label in (("local", "TPU VM"), (None, "remote TPU")):
        try:
            strategy, how = _connect_tpu(tpu), label
            break
        except (ValueError, RuntimeError, tf.errors.OpError, KeyError):
            continue  # no TPU of this kind here: try the next option
    if strategy is None:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            strategy, how = tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs (Mirrored)"
        else:
            strategy = tf.distribute.get_strategy()
            how = "1 GPU (default strategy)" if gpus else "CPU (default strategy)"
    if verbose:
        per_op = ", one thread per CPU op" if threads == 1 else ""
        if threads != wanted:
            per_op = (f", {threads or 'default'} thread(s) per CPU op ({wanted or 'default'} wanted, but TensorFlow "
                      "had started: call get_strategy first)")
        print(f"kitlib: running on {how}, {strategy.num_replicas_in_sync} replica(s){per_op}")
    return strategy


def device_kind(strategy=None):
    """``"TPU"``, ``"GPU"`` or ``"CPU"``: the kind of device the strategy computes on."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU"
    try:
        devices = tuple(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError):  # the default strategy has no device list
        devices = ()
    if any("GPU" in d.upper() for d in devices) or (
        not devices and tf.config.list_logical_devices("GPU")
    ):
        return "GPU"
    return "CPU"


def mixed_precision_policy(kind, gpu_float16=False):
    """The Keras policy name for a device kind.

    bfloat16 on TPU (native, no loss scaling), float16 on GPU only when asked (needs loss
    scaling, which Keras adds), float32 on CPU (mixed precision is slower there).
    """
    if kind == "TPU":
        return "mixed_bfloat16"
    if kind == "GPU" and gpu_float16:
        return "mixed_float16"
    return "float32"


def set_mixed_precision(strategy=None, gpu_float16=False):
    """Set the global Keras mixed-precision policy for the strategy's device; returns its name."""
    name = mixed_precision_policy(device_kind(strategy), gpu_float16=gpu_float16)
    keras.mixed_precision.set_global_policy(name)
    return name


def on_kaggle():
    """True inside a Kaggle notebook (kernel run)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or os.path.isdir("/kaggle/working")


def find_data_dir(local=None, gcs=False, competition=COMPETITION):
    """The folder holding the competition's files (``train_tfrecords/``, ``train.csv`` ...).

    Args:
        local: fallback folder; default ``data/sample`` in the repo (the bundled sample).
        gcs: a remote (non-VM) TPU cannot read ``/kaggle/input``: return the GCS path from
            ``kaggle_datasets.KaggleDatasets()`` instead (only exists inside Kaggle).
        competition: the competition slug under ``/kaggle/input``.
    Returns:
        A path (local or ``gs://``) as a string.
    """
    attached = os.path.join(KAGGLE_INPUT, competition)
    if os.path.isdir(attached):
        if gcs:
            from kaggle_datasets import KaggleDatasets  # exists only on Kaggle

            return KaggleDatasets().get_gcs_path(competition)
        return attached
    if local is None:
        local = os.path.join(repo_root(), DEFAULT_LOCAL_DATA)
    if not os.path.isdir(local):
        raise FileNotFoundError(
            f"No data found: {attached} is not attached and the local folder {local!r} does not exist. "
            "Attach the competition on Kaggle, download it with `kaggle competitions download -c "
            f"{competition}`, or make the sample with `python -m kitlib make-sample --out {local}`."
        )
    return local
