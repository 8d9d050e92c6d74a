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


def _connect_tpu(tpu):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(verbose=True):
    """The best distribution strategy on this machine.

    Order: a TPU VM (``TPUClusterResolver(tpu='local')``), then a legacy remote TPU
    (``TPUClusterResolver()``, which reads ``TPU_NAME`` on Kaggle/Colab), then several GPUs
    (``MirroredStrategy``), else the default strategy (one GPU or the CPU).

    Args:
        verbose: print which strategy was chosen and its number of replicas.
    Returns:
        A ``tf.distribute.Strategy``; build models inside ``strategy.scope()``.
    """
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
        print(f"kitlib: running on {how}, {strategy.num_replicas_in_sync} replica(s)")
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
