"""Several processes, one run: joining JAX's multi-controller runtime, who writes, barriers, agreement.

A TPU pod slice (v5e-16, -32, ...) or several GPU nodes run one process per host, each with its local
devices; ``jax.distributed.initialize`` joins them, and then ``jax.devices()`` lists the *global* devices,
over which `kitlib.runtime.setup` puts Keras's ``DataParallel``. Every process runs the same program:

    join        `join` (called by ``runtime.setup``) before JAX starts: from the command's
                ``--coordinator HOST:PORT --num-processes N --process-id I``, or from the environment of a
                cluster JAX detects itself (a Cloud TPU pod slice, SLURM, Open MPI), or JAX's own variables
                (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).
    agree       `agree`: the processes compare a digest of their plans (settings and data) and refuse a run
                they would each do differently, naming the processes; a drawn seed is process 0's (`shared_seed`).
    input       each process reads its own share of the TFRecord shards (`share_of`) and feeds its rows of
                the global batch; Keras assembles the global batch, process 0's rows first.
    one writer  config.json, history.csv, checkpoints, exports and submission files are written by process 0
                only (`is_writer`), and the others wait at a `barrier` before they read any of them.
    failure     a process that dies stops sending heartbeats; after `HEARTBEAT_S` seconds JAX's coordination
                service ends every other process with a non-zero exit (no hang). Checkpoints are written
                atomically, so the last one stays whole and a rerun resumes from it.

The output folder must be one folder that every process sees (a shared disk or a bucket mounted on every
host), so that all resume from the same checkpoint. On one process every function here is a no-op.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

HEARTBEAT_S = 20          # seconds without a heartbeat after which JAX ends the run on every host
_ENV_TRIPLE = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
SAME_RUN_FIX = ("launch the identical command on every host (same flags, the same --data visible to all, the "
                "same kitlib version)")
SHARED_OUT_FIX = ("give every process the same --out on storage all hosts see (a shared disk, or a bucket "
                  "mounted on each host), so that all resume from one checkpoint")


class ProcessMismatch(RuntimeError):
    """The processes of one run would do different things (other settings, other data, other code)."""


def cluster_from_env(environ=None):
    """How the environment asks for a multi-process run, read without starting JAX.

    Returns:
        None (one process), or the keyword arguments for ``jax.distributed.initialize``: {} where JAX
        detects the cluster itself (a Cloud TPU pod slice: ``TPU_WORKER_HOSTNAMES`` lists several hosts;
        SLURM or Open MPI with several tasks), or the coordinator, count and id from JAX's variables.
    """
    environ = os.environ if environ is None else environ
    if all(environ.get(name) for name in _ENV_TRIPLE):
        return dict(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(environ["JAX_NUM_PROCESSES"]), process_id=int(environ["JAX_PROCESS_ID"]))
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    tasks = max(int(environ.get("SLURM_NTASKS") or 1), int(environ.get("OMPI_COMM_WORLD_SIZE") or 1))
    if len(hosts) > 1 or tasks > 1:
        return {}
    return None


def cluster_from_flags(coordinator=None, num_processes=None, process_id=None):
    """The ``jax.distributed.initialize`` arguments for the command's flags (None: no flag given).

    Raises:
        ValueError (one line, the flags to pass) for an incomplete or inconsistent set.
    """
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given):
        return None
    if any(v is None for v in given):
        raise ValueError("a multi-process run needs all three of --coordinator HOST:PORT, --num-processes N "
                         f"and --process-id I (got {coordinator!r}, {num_processes!r}, {process_id!r})")
    if ":" not in str(coordinator):
        raise ValueError(f"--coordinator {coordinator!r}: give HOST:PORT of process 0 (e.g. 10.0.0.2:8476)")
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"--process-id {process_id} must lie in 0..{int(num_processes) - 1} "
                         f"for --num-processes {num_processes}")
    return dict(coordinator_address=str(coordinator), num_processes=int(num_processes), process_id=int(process_id))


def join(coordinator=None, num_processes=None, process_id=None, environ=None):
    """Join the multi-process run the flags or the environment ask for (before JAX's first computation).

    Returns:
        True when this process is one of several (after ``jax.distributed.initialize``), False for one process.
        Calling it again once joined changes nothing.
    """
    import jax  # noqa: PLC0415 - started here, not at import

    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    kwargs = cluster_from_flags(coordinator, num_processes, process_id)
    kwargs = cluster_from_env(environ) if kwargs is None else kwargs
    if kwargs is None or kwargs.get("num_processes") == 1:
        return False
    # CPU collectives across processes (tests on one machine, CPU clusters) need gloo; TPU/GPU bring theirs
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_S, **kwargs)
    return jax.process_count() > 1


def _joined():
    import jax  # noqa: PLC0415

    return jax.distributed.is_initialized()


def process_index():
    """This process's index (0 on one process; JAX's backends are not started to say so)."""
    import jax  # noqa: PLC0415

    return jax.process_index() if _joined() else 0


def process_count():
    """How many processes the run has (1 on one process; JAX's backends are not started to say so)."""
    import jax  # noqa: PLC0415

    return jax.process_count() if _joined() else 1


def is_writer():
    """True on the one process that writes files and prints: process 0."""
    return process_index() == 0


def barrier(name):
    """Wait until every process reaches the barrier `name` (no-op on one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def writer_folder(out_dir):
    """Yields `out_dir` on process 0, a fresh temporary folder (deleted after) on any other.

    Every process runs the same saving code into the folder it is given: reading weights that live on
    all processes' devices (a checkpoint, an export) is a collective every process must join, so a
    save that only process 0 runs waits for the others for ever; this way one copy lands in `out_dir`.
    """
    if is_writer():
        yield out_dir
        return
    own = tempfile.mkdtemp(prefix=f"kitlib-process{process_index()}-")
    try:
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)


def digest(record):
    """A short, order-independent digest of a JSON-ready record (what `agree` compares)."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def agree(record, what, fix=SAME_RUN_FIX):
    """Refuse a run whose processes hold different `record`s (their plans: settings and data).

    Args:
        record: JSON-ready, the same on every process of a well-launched run.
        what: what it is, for the message ("the pretrain plan"). fix: what to do about it.
    Raises:
        ProcessMismatch naming the processes that differ from process 0, and the fix.
    """
    if process_count() == 1:
        return
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    mine = np.frombuffer(bytes.fromhex(digest(record)), dtype=np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 8]
    differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if differ:
        raise ProcessMismatch(
            f"kitlib: {what} of process(es) {', '.join(map(str, differ))} differs from process 0's. Fix: {fix}.")


def shared_seed(seed):
    """Process 0's `seed` on every process (a seed drawn at random on each would differ)."""
    if process_count() == 1:
        return seed
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return int(multihost_utils.broadcast_one_to_all(np.int64(seed)))


def share_of(files, index, count):
    """The shards one input share reads: every `count`-th shard from `index` (disjoint, covering).

    Args:
        files: the sorted TFRecord shards of the whole run. index, count: this share and how many there are.
    Raises:
        ValueError naming the folder when there are fewer shards than shares.
    """
    files = list(files)
    if len(files) < count:
        folder = os.path.dirname(files[0]) if files else "the data folder"
        raise ValueError(f"{folder}: {len(files)} TFRecord shard(s) for {count} input shares (one per process): "
                         f"each process reads whole shards. Write the data as at least {count} shards "
                         "(kitlib.data.writing.write_tfrecords with a smaller shard_size) or run fewer processes.")
    return files[index::count]
