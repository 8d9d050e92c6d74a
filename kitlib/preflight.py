"""Preflight: compile a run's real training step for a TPU that is not here; report memory and speed.

libtpu's compile-only client (``jax.experimental.topologies``) hands out the devices of a TPU slice on any
machine, TPU or not. The kit's Keras 3 step on JAX is a pure function ``train_step(state, data)``, so the
step a run would execute can be lowered for those devices from `jax.ShapeDtypeStruct` descriptions of its
state (replicated) and of one global batch (split along "batch", as ``keras.distribution.DataParallel``
splits it), and compiled by the TPU compiler: nothing is allocated and nothing trains. MaxText's
``train_compile.py`` does the same for language models.

The report per chip: argument, output, temporary and aliased bytes (``Compiled.memory_analysis``), their
peak against the chip's HBM, and the FLOPs of one step (``Compiled.cost_analysis``), whose time at the chip's
peak rate is a lower bound on the step time (real steps also wait for memory, the host and collectives).
"""

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
import time

GIB = 1024 ** 3
HEADROOM = 0.9  # the batch search aims at 90 % of a chip's HBM
EXIT_DOES_NOT_FIT = 4  # the CLI's exit code for a run that does not fit the target (2: user error, 3: hardware)


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice to compile for.

    name: the kit's name for it. topology, chips_per_host_bounds: what `get_topology_desc` takes (the
    Cloud TPU topology names: v5e ``2x4`` is a v5litepod-8, ``1x1`` one chip). hbm_bytes, peak_flops: per
    chip (Cloud TPU's system-architecture pages: v5e 16 GiB HBM2 and 197 TFLOP/s bf16; v6e 32 GiB and 918
    TFLOP/s bf16). where: who offers it.
    """
    name: str
    topology: str
    chips_per_host_bounds: tuple
    hbm_bytes: int
    peak_flops: float
    where: str


TARGETS = {
    "tpu-v5e-8": Target("tpu-v5e-8", "v5e:2x4", (2, 4, 1), 16 * GIB, 197e12, "Kaggle (TpuV5E8): one host, 8 chips"),
    "tpu-v5e-1": Target("tpu-v5e-1", "v5e:1x1", (1, 1, 1), 16 * GIB, 197e12, "Colab's TPU v5e-1: one chip"),
    "tpu-v6e-1": Target("tpu-v6e-1", "v6e:1x1", (1, 1, 1), 32 * GIB, 918e12, "Colab's TPU v6e-1: one chip"),
}


def get_target(name):
    """The `Target` called `name`; ValueError listing the known ones otherwise."""
    if name not in TARGETS:
        raise ValueError(f"unknown preflight target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name]


def libtpu_install_hint():
    """The pip line that brings the libtpu the installed JAX was released with (its ``[tpu]`` extra's pin)."""
    pin = "libtpu"
    for requirement in importlib.metadata.requires("jax") or []:
        match = re.match(r"\s*libtpu\s*([=<>!~][^;]*)?;.*extra\s*==\s*['\"]tpu['\"]", requirement)
        if match:
            pin = "libtpu" + (match.group(1) or "").strip()
            break
    return f"pip install '{pin}'"


def libtpu_installed():
    """Is libtpu (the TPU compiler and runtime) importable here? Looked up without loading it."""
    return importlib.util.find_spec("libtpu") is not None


def prepare_compile_only():
    """Ready this process for compile-only work. With libtpu installed, JAX would try the TPU first at
    start-up and libtpu would take its one-process lock (/tmp/libtpu_lockfile), so a second process (a
    preflight beside a notebook) could not load it; compiling needs neither the chip nor the lock, so a
    preflight asks JAX for the CPU and libtpu for no lock. Nothing changes once JAX's backends have
    started, or where the shell chose the platforms itself."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # read by libtpu when it loads
    import jax  # noqa: PLC0415

    if os.environ.get("JAX_PLATFORMS"):
        return
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # noqa: BLE001 - backends already initialised: nothing to change
        pass


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 goes to /dev/null inside the block (C++ logging writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def target_devices(target):
    """The compile-only devices of `target` (a `Target` or its name): [num_chips] TPU devices.

    Raises ValueError with the pip line when libtpu is missing or cannot give the topology.
    """
    target = get_target(target) if isinstance(target, str) else target
    if not libtpu_installed():
        raise ValueError(f"--preflight compiles for a TPU with libtpu's compile-only client, which is not installed "
                         f"(a CPU/GPU run never needs it): {libtpu_install_hint()}")
    from jax.experimental import topologies  # noqa: PLC0415

    try:
        with _native_stderr_silenced():  # libtpu starting without a TPU logs warnings about the missing chip
            topology = topologies.get_topology_desc(
                platform="tpu", topology_name=target.topology, chip_config_name="default",
                chips_per_host_bounds=target.chips_per_host_bounds, num_slices=1, wrap=(False, False, False))
    except Exception as err:  # noqa: BLE001 - libtpu's errors are long C++ traces: keep the first line
        raise ValueError(f"libtpu could not describe a {target.name} ({target.topology}): "
                         f"{str(err).strip().splitlines()[0]}; install the libtpu of this JAX: "
                         f"{libtpu_install_hint()}") from None
    return list(topology.devices)


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One compile of one step at one global batch, per chip (bytes; FLOPs of one step)."""
    global_batch_size: int
    compiled: bool
    argument_bytes: int = 0
    output_bytes: int = 0
    temp_bytes: int = 0
    alias_bytes: int = 0
    flops: float = 0.0
    error: str = ""
    compile_seconds: float = 0.0

    @property
    def peak_bytes(self):
        """Bytes live at once on a chip: arguments + temporaries + outputs not written over donated inputs."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes


def _out_of_memory(message):
    return any(key in message for key in ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory"))


_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def required_bytes(message):
    """The bytes an out-of-memory refusal says the program needs, e.g. "... the total memory required for
    HLO temporaries (71.64G) exceeds available HBM (15.75G)" -> 71.64 GiB; 0 when it names none."""
    match = re.search(r"required for [^(]*\((\d+(?:\.\d+)?)([KMGT]?)\)", message)
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0


def compile_step(build, global_batch, devices, step="train"):
    """Compile the train (or predict) step `build(global_batch)` describes for `devices`; never raises for
    the compiler.

    Args:
        build: global_batch -> (model, data): a compiled Keras model (its optimizer built) and one batch as
            the step receives it, a tree of `jax.ShapeDtypeStruct` without shardings (global shapes).
        global_batch: images per step over all chips (a multiple of len(devices)).
        devices: the target's devices (`target_devices`).
        step: "train" (``model.train_step``, the state donated as ``fit`` does) or "predict"
            (``model.predict_step`` of a built model, as ``predict_on_batch`` runs it).
    Returns:
        `StepCost`; ``compiled`` False with the compiler's first line in ``error`` when it refused (an
        out-of-memory refusal counts as "does not fit").
    """
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from jax.sharding import (Mesh, NamedSharding,  # noqa: PLC0415
                              PartitionSpec)

    mesh = Mesh(np.array(devices), ("batch",))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))
    model, data = build(global_batch)
    if step == "train":
        # as fit() does before its first step: every layer, loss and metric variable from the shapes alone
        model._symbolic_build(data_batch=data)  # noqa: SLF001 - Keras's own pre-fit build (3.13-3.15 alike)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    def spec(variable, sharding):
        return jax.ShapeDtypeStruct(tuple(variable.shape), variable.dtype, sharding=sharding)

    groups = ((model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
               model.metrics_variables) if step == "train" else (model.trainable_variables,
                                                                  model.non_trainable_variables))
    state = tuple([spec(v, replicated) for v in group] for group in groups)
    batch = jax.tree_util.tree_map(lambda s: spec(s, split), data)
    function = model.train_step if step == "train" else model.predict_step
    start = time.perf_counter()
    try:  # as Keras's make_train_function jits it: the state is donated
        compiled = jax.jit(function, donate_argnums=0 if step == "train" else ()).lower(state, batch).compile()
    except Exception as err:  # noqa: BLE001 - the compiler's refusal is the answer, not a crash
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return StepCost(global_batch, False, temp_bytes=required_bytes(first), error=first[:500],
                        compile_seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of one dict on older JAX
    return StepCost(global_batch, True, int(memory.argument_size_in_bytes), int(memory.output_size_in_bytes),
                    int(memory.temp_size_in_bytes), int(memory.alias_size_in_bytes),
                    float((cost or {}).get("flops", 0.0)), compile_seconds=seconds)


def fits(cost, target):
    """True when the step compiled and its peak bytes per chip fit the chip's HBM."""
    return cost.compiled and cost.peak_bytes <= target.hbm_bytes


def largest_fitting_batch(build, global_batch, devices, target, max_compiles=6, tried=(), step="train"):
    """The largest global batch below `global_batch` (a multiple of the chip count) whose step fits.

    A step's bytes grow about linearly with the batch (activations) on top of a fixed part (weights and
    optimizer slots), so once two compiles gave numbers the next guess is that line's crossing of 90 % of
    the HBM (a compile near the limit is slow: the compiler then searches what to recompute), kept strictly
    between the largest batch known to fit and the smallest known not to; before that, and
    after a compiler refusal without numbers, the batch halves. At most `max_compiles` compiles in all.

    Returns:
        (the batch, or None when none was found to fit, [StepCost] of every compile).
    """
    n = len(devices)
    costs = list(tried)
    good, bad = 0, global_batch // n                         # in images per chip: good fits, bad does not
    aim = HEADROOM * target.hbm_bytes
    while len(costs) < max_compiles and bad - good > max(1, good // 8):  # within ~12 % is close enough
        if any(fits(c, target) and c.peak_bytes >= aim for c in costs):
            break                                            # a fitting batch at the aim already: enough
        measured = sorted({(c.global_batch_size // n, c.peak_bytes) for c in costs if c.peak_bytes})
        guess = bad // 2 if good == 0 else (good + bad) // 2  # halve, or bisect
        if len(measured) >= 2:
            (b1, p1), (b2, p2) = measured[0], measured[-1]
            per_image = (p2 - p1) / (b2 - b1) if b2 != b1 else 0
            if per_image > 0:
                line = int((aim - (p1 - per_image * b1)) / per_image)
                guess = line if good < line < bad else guess
        cost = compile_step(build, guess * n, devices, step)
        costs.append(cost)
        good, bad = (guess, bad) if fits(cost, target) else (good, guess)
    return (good * n if good else None), costs


@dataclasses.dataclass
class Report:
    """What a preflight found (also `OUT/preflight.json`)."""
    command: str
    target: str
    topology: str
    devices: int
    global_batch_size: int
    fits: bool
    compiled: bool
    bytes_per_device: dict
    hbm_bytes_per_device: int
    flops_per_step: float                    # per chip
    step_seconds_lower_bound: float
    steps_per_epoch: int
    epoch_seconds_lower_bound: float
    compile_seconds: float
    error: str = ""
    period: str = "epoch"                    # what steps_per_epoch counts: "epoch", or "run" (fine-tuning)
    max_global_batch_size: int = None
    at_max_global_batch_size: dict = None   # peak bytes, FLOPs and the step bound at that batch
    tried: list = dataclasses.field(default_factory=list)

    def as_dict(self):
        return dataclasses.asdict(self)


def run_preflight(command, build, global_batch, target, steps_per_epoch, max_compiles=6, period="epoch",
                  step="train"):
    """Compile the step at `global_batch` for `target` and, when it does not fit, search a batch that does.

    Args:
        command: "pretrain" | "finetune" (for the report). build: see `compile_step`.
        global_batch: the run's global batch. target: `Target` or name.
        steps_per_epoch: the steps of one `period` ("epoch", or "run" for a run counted in steps).
        step: "train" or "predict" (see `compile_step`).
    Returns:
        `Report`.
    """
    target = get_target(target) if isinstance(target, str) else target
    devices = target_devices(target)
    cost = compile_step(build, global_batch, devices, step)
    ok = fits(cost, target)
    largest, tried = None, [cost]
    if not ok and (cost.compiled or _out_of_memory(cost.error)):  # too big: look for a batch that fits
        largest, tried = largest_fitting_batch(build, global_batch, devices, target, max_compiles, tried=[cost],
                                               step=step)
    step_seconds = cost.flops / target.peak_flops
    return Report(
        command=command, target=target.name, topology=target.topology, devices=len(devices),
        global_batch_size=global_batch, fits=ok, compiled=cost.compiled,
        bytes_per_device={"arguments": cost.argument_bytes, "outputs": cost.output_bytes,
                          "temporaries": cost.temp_bytes, "aliased": cost.alias_bytes, "peak": cost.peak_bytes},
        hbm_bytes_per_device=target.hbm_bytes, flops_per_step=cost.flops, step_seconds_lower_bound=step_seconds,
        steps_per_epoch=steps_per_epoch, epoch_seconds_lower_bound=step_seconds * steps_per_epoch,
        compile_seconds=round(cost.compile_seconds, 2), error=cost.error, period=period,
        max_global_batch_size=None if ok else largest,
        at_max_global_batch_size=None if ok or largest is None else _at(tried, largest, target, steps_per_epoch,
                                                                           global_batch),
        tried=[{"global_batch_size": c.global_batch_size, "fits": fits(c, target), "peak_bytes": c.peak_bytes,
                "compile_seconds": round(c.compile_seconds, 2), "error": c.error} for c in tried])


def _at(costs, batch, target, steps_per_epoch, asked_batch):
    """The figures of the compile at `batch` (an epoch holds asked_batch / batch times more steps)."""
    cost = next(c for c in costs if c.global_batch_size == batch and c.compiled)
    steps = int(math.ceil(steps_per_epoch * asked_batch / batch))
    step = cost.flops / target.peak_flops
    return {"peak_bytes": cost.peak_bytes, "flops_per_step": cost.flops, "step_seconds_lower_bound": step,
            "steps_per_epoch": steps, "epoch_seconds_lower_bound": step * steps}


def _gib(n):
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.1f} MiB"


def _flop(n):
    return f"{n / 1e12:.3g} TFLOP" if n >= 1e11 else f"{n / 1e9:.3g} GFLOP"


def _duration(seconds):
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _speed(flops, step_seconds, steps, epoch_seconds, peak_flops, period):
    return (f"{_flop(flops)} per chip per step: at the chip's peak ({peak_flops / 1e12:.0f} TFLOP/s bf16) a step "
            f"takes at least {_duration(step_seconds)}, {'an epoch' if period == 'epoch' else 'the run'} of "
            f"{steps} steps at least "
            f"{_duration(epoch_seconds)} (lower bounds: input, memory traffic and collectives add to them)")


def describe(report):
    """The report for people: a few lines."""
    target = TARGETS[report.target]
    b = report.bytes_per_device
    lines = [f"kitlib {report.command} --preflight {report.target} ({target.where}; topology {report.topology}, "
             f"{report.devices} chips), global batch {report.global_batch_size}:"]
    if report.compiled:
        lines += [f"  {'FITS' if report.fits else 'DOES NOT FIT'}: {_gib(b['peak'])} per chip of "
                  f"{_gib(report.hbm_bytes_per_device)} HBM (arguments {_gib(b['arguments'])}, temporaries "
                  f"{_gib(b['temporaries'])}, outputs {_gib(b['outputs'])}, of them {_gib(b['aliased'])} written "
                  "over donated inputs)",
                  "  " + _speed(report.flops_per_step, report.step_seconds_lower_bound, report.steps_per_epoch,
                                report.epoch_seconds_lower_bound, target.peak_flops, report.period)]
    elif _out_of_memory(report.error):
        lines.append(f"  DOES NOT FIT: the TPU compiler refused it: {report.error}")
    else:
        lines.append(f"  does not compile for the TPU: {report.error}")
    if report.max_global_batch_size:
        at = report.at_max_global_batch_size
        lines += [f"  the largest global batch found to fit: {report.max_global_batch_size} ({_gib(at['peak_bytes'])} "
                  f"per chip; pass --batch-size {report.max_global_batch_size})",
                  "  at it, " + _speed(at["flops_per_step"], at["step_seconds_lower_bound"], at["steps_per_epoch"],
                                       at["epoch_seconds_lower_bound"], target.peak_flops, report.period)]
    elif not report.fits and (report.compiled or _out_of_memory(report.error)):
        lines.append("  no global batch was found to fit (down to one image per chip, or the compiles ran out): "
                     "use a smaller backbone or smaller crops")
    seconds = sum(t["compile_seconds"] for t in report.tried)
    lines.append(f"  {len(report.tried)} compile(s), {seconds:.0f} s on this machine; nothing was run")
    return "\n".join(lines)


def write_report(report, out_dir):
    """``OUT/preflight.json``; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "preflight.json")
    with open(path, "w") as f:
        json.dump(report.as_dict(), f, indent=2)
    return path


def target_runtime(target):
    """A `kitlib.runtime.Runtime` describing `target` (its chips, bfloat16, data parallel), for planning a run
    exactly as it would be planned there; nothing is put in force."""
    from kitlib import runtime  # noqa: PLC0415

    target = get_target(target) if isinstance(target, str) else target
    devices = tuple(target_devices(target))
    return runtime.Runtime("TPU", devices, None, runtime.mixed_precision_policy("TPU"))

