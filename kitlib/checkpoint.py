"""A training run's state on disk, for every command that resumes (``pretrain``, ``finetune``): every model and
optimizer variable in one atomic ``state.npz`` (with the rounds done and whatever else the run must carry across
a restart), and ``history.csv`` with one row per finished epoch or round. A kill -9 never leaves half a file:
both are written to a temporary name and renamed."""

import csv
import os
import shutil
import tempfile
import time

import numpy as np

from kitlib.compat import keras


def _state_variables(model):
    return list(model.variables) + list(model.optimizer.variables)


def save_state(model, path, epochs_done, extra=None):
    """Every model and optimizer variable (step, momentum, queue included) to one .npz, atomically, with
    `extra` ({name: array}: e.g. the best validation score and its weights), read back by `saved_extra`."""
    variables = _state_variables(model)
    arrays = {f"v{i:05d}": np.asarray(keras.ops.convert_to_numpy(v.value)) for i, v in enumerate(variables)}
    arrays["paths"] = np.array([v.path for v in variables])
    arrays["epochs_done"] = np.array(epochs_done)
    arrays.update({f"x_{name}": np.asarray(value) for name, value in (extra or {}).items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a kill -9 never leaves half a checkpoint


def restore_state(model, path):
    """Load `save_state`'s file into a model built the same way; returns the epochs it had done.

    Variables are matched in order and checked by shape (layer names carry per-process counters).
    """
    with np.load(path) as saved:
        variables = _state_variables(model)
        paths = [str(p) for p in saved["paths"]]
        shapes = [saved[f"v{i:05d}"].shape for i in range(len(paths))]
        wrong = [f"{v.path} {tuple(v.shape)} vs saved {p} {s}" for v, p, s in zip(variables, paths, shapes)
                 if tuple(v.shape) != tuple(s)]
        if len(paths) != len(variables) or wrong:
            raise ValueError(f"checkpoint {path} does not fit this model ({len(paths)} saved variables, "
                             f"{len(variables)} here; {'; '.join(wrong[:3])}); use a new --out, or delete that "
                             "folder to start over.")
        for i, variable in enumerate(variables):
            variable.assign(saved[f"v{i:05d}"])
        return int(saved["epochs_done"])


def saved_rounds(path):
    """The epochs (rounds) done that `save_state` recorded in `path`."""
    with np.load(path) as saved:
        return int(saved["epochs_done"])


def saved_extra(path):
    """The ``extra`` arrays `save_state` wrote with the state ({} for none)."""
    with np.load(path) as saved:
        return {key[2:]: saved[key] for key in saved.files if key.startswith("x_")}


def read_history(path):
    """history.csv as a list of dicts of floats (epoch as int); [] when absent."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: (int(float(v)) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def append_history(path, row):
    """Append one epoch's row to history.csv (columns grow when a new metric appears)."""
    _write_rows(path, read_history(path) + [row])


def truncate_history(path, epochs_done):
    """Keep the rows of the epochs a resumed checkpoint has done (none: no file); returns them."""
    rows = [r for r in read_history(path) if r["epoch"] <= epochs_done]
    if rows:
        _write_rows(path, rows)
    elif os.path.exists(path):
        os.remove(path)
    return rows


def _write_rows(path, rows):
    columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)  # atomic: a kill never leaves half a file


# ============ stopping cleanly before a limit ============

SKIP_STEPS = 3         # steps not timed: the compile, then the input pipeline filling its buffers
TIMED_STEPS = 10       # steps timed ...
MAX_TIMED_SECONDS = 20.0  # ... or fewer when these seconds are up (a large model on a CPU)


def time_steps(model, batches, steps_per_execution=1, skip=SKIP_STEPS, steps=TIMED_STEPS,
               max_seconds=MAX_TIMED_SECONDS):
    """Fit `model` on `batches` for `skip` + `steps` compiled calls (fewer once `max_seconds` of timed calls
    are up) and time them, then time one epoch's checkpoint of it (`save_state`).

    Args:
        model: a compiled Keras model, thrown away afterwards (its weights move).
        batches: the run's input (a tf.data.Dataset of its batches, endless).
        steps_per_execution: the model's steps per compiled call (a callback sees one call, and the index of
            its last step).
    Returns:
        (compile_seconds: the first call, step_seconds: mean seconds per step after `skip` calls,
         probe_seconds: wall time of it all, epoch_seconds: the checkpoint).
    """
    stamps = []  # (time, steps done) after each call

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None:
                float(loss)  # waits for the step: JAX dispatches asynchronously
            stamps.append((time.perf_counter(), batch + 1))
            if len(stamps) > skip and stamps[-1][0] - stamps[skip - 1][0] >= max_seconds:
                self.model.stop_training = True

    start = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=(skip + steps) * steps_per_execution, callbacks=[Clock()],
              verbose=0, shuffle=False)
    if len(stamps) <= skip:
        raise RuntimeError(f"timing the train step: {len(stamps)} calls ran, {skip + 1} needed")
    (t0, n0), (t1, n1) = stamps[skip - 1], stamps[-1]
    with tempfile.TemporaryDirectory() as tmp:
        saved = time.perf_counter()
        save_state(model, os.path.join(tmp, "state.npz"), 1)
        epoch = time.perf_counter() - saved
    return stamps[0][0] - start, (t1 - t0) / (n1 - n0), time.perf_counter() - start, epoch


def sessions_needed(minutes, limit_minutes, startup_minutes=0.0):
    """Sessions a run of `minutes` takes under a limit of `limit_minutes` each, every session spending
    `startup_minutes` before its first step (1 when it fits, or when there is no limit)."""
    if not limit_minutes or minutes <= limit_minutes:
        return 1
    per_session = max(limit_minutes - startup_minutes, 1e-9)
    return max(1, int(-(-(minutes - startup_minutes) // per_session)))


def estimate(minutes, limit_minutes, startup_minutes=0.0):
    """A run's length said up front, for the plan's facts: {"minutes", "sessions", "limit_minutes"}."""
    return dict(minutes=round(minutes, 1), sessions=sessions_needed(minutes, limit_minutes, startup_minutes),
                limit_minutes=limit_minutes)


def estimate_warning(name, facts):
    """The line command `name` prints before training when its plan's ``facts["estimate"]`` needs more than one
    session, else None."""
    said = facts.get("estimate")
    if not said or said["sessions"] <= 1:
        return None
    return (f"kitlib {name}: this run needs about {said['minutes']:.0f} minutes, {said['sessions']} sessions of "
            f"{said['limit_minutes']:g}: it stops on a checkpoint before each limit and says how to continue "
            "(--resume-from in the next session)")


# Kaggle's session limits: a TPU session ends after 9 hours, a GPU or CPU one after 12. A run stops this margin
# before, at an epoch or round boundary, leaving time to write its checkpoint and the notebook's last cells.
KAGGLE_SESSION_HOURS = {"TPU": 9, "GPU": 12, "CPU": 12}
STOP_MARGIN_MINUTES = 20


def process_age_seconds():
    """Seconds since this process started (Linux: from /proc; elsewhere: since this module was imported). A
    notebook's kernel starts with its Kaggle session, so this is the session's age there."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return max(0.0, float(f.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


def default_stop_minutes(kind, on_kaggle):
    """(minutes, reason) for a run's ``stop_after_minutes`` when none is given: on Kaggle the session's limit for
    a `kind` device less `STOP_MARGIN_MINUTES`; elsewhere (None, None): no limit."""
    if not on_kaggle:
        return None, None
    hours = KAGGLE_SESSION_HOURS.get(kind, 12)
    return (hours * 60 - STOP_MARGIN_MINUTES,
            f"a Kaggle {kind} session ends after {hours} hours: stop {STOP_MARGIN_MINUTES} minutes before, on a "
            "checkpoint, and continue in the next session")


class StopInTime(keras.callbacks.Callback):
    """Ends ``fit()`` at an epoch boundary when the next epoch would end past ``minutes`` after this process
    started (its estimate: the longest epoch so far). ``stopped_after`` is then the epochs done, else None.
    After the first epoch it says when the run will not fit: the time the rest needs and the sessions it takes.

    Args:
        minutes: the limit, counted from the process's start (`process_age_seconds`).
        clock: seconds since the process started (tests pass a fake one). print_fn: where the warning goes.
    """

    def __init__(self, minutes, clock=process_age_seconds, print_fn=print):
        super().__init__()
        self.limit, self.clock, self.print_fn, self.stopped_after = minutes * 60.0, clock, print_fn, None
        self.last = self.longest = self.begun = None
        self.warned = False

    def on_train_begin(self, logs=None):
        self.last = self.begun = self.clock()
        self.longest = 0.0

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        self.longest, self.last = max(self.longest, now - self.last), now
        left = self.params.get("epochs", epoch + 1) - epoch - 1
        first, self.warned = not self.warned, True
        if first and left and now + self.longest * left > self.limit:
            self.print_fn(f"kitlib: the remaining {left} epoch(s) need about {self.longest * left / 60:.0f} more "
                          f"minutes, past the {self.limit / 60:.0f}-minute limit: about "
                          f"{sessions_needed((now + self.longest * left) / 60, self.limit / 60, self.begun / 60)} "
                          "sessions in all; it stops on a checkpoint and says how to go on")
        if left and now + self.longest > self.limit:
            self.model.stop_training = True
            self.stopped_after = epoch + 1


# ============ continuing from a read-only copy ============

# settings a run may change when it is continued: where things are, how it reports, when it stops
CONTINUE_FREE = ("data_dir", "out_dir", "backbone", "tfds_data_dir", "exclude", "extra_data", "resume_from",
                 "stop_after_minutes", "verbose", "allow_cpu", "coordinator", "num_processes", "process_id")


def resume_dir(out_dir, resume_from=None):
    """The folder a run continues from: ``out_dir`` when it holds a checkpoint (its own is the newest), else
    `resume_from` (a read-only copy of an earlier run's output) when given, else None (a new run)."""
    if os.path.isdir(os.path.join(out_dir, "checkpoints")):
        return out_dir
    if resume_from is not None:
        if not os.path.isfile(os.path.join(resume_from, "config.json")):
            raise ValueError(f"{resume_from} holds no run to resume (no config.json): pass the --out folder of an "
                             "earlier run (on Kaggle, its notebook output under /kaggle/input/...)")
        return resume_from
    return None


def differences(ours, theirs, data_keys=(), keys=None):
    """What makes record `theirs` (an earlier run's ``config.json``) another plan than `ours`: its settings (only
    `keys` when given, else all but `CONTINUE_FREE`), and its facts under `data_keys` (the data's size and shape);
    [] when it is the same plan."""
    compared = [k for k in ours["settings"] if (k in keys if keys is not None else k not in CONTINUE_FREE)]
    changed = [f"{k}: {theirs['settings'].get(k)!r} there, {ours['settings'][k]!r} here" for k in compared
               if theirs["settings"].get(k) != ours["settings"][k]]
    return changed + [f"{k}: {theirs.get('facts', {}).get(k)!r} there, {ours['facts'].get(k)!r} here"
                      for k in data_keys if theirs.get("facts", {}).get(k) != ours["facts"].get(k)]


def refuse_other_plan(ours, theirs, where, what, data_keys=(), keys=None):
    """A one-line ValueError when record `theirs`, the run in `where`, is another plan than `ours`
    (`differences`); `what` names the run ("fine-tuning run")."""
    changed = differences(ours, theirs, data_keys, keys)
    if changed:
        raise ValueError(f"{where} holds another {what} ({'; '.join(changed[:3])}): its checkpoint cannot be "
                         "continued; use a new --out (and no --resume-from), or delete that folder to start over")


def copy_run(source, out_dir):
    """Copy an earlier run's files from `source` (read-only, e.g. under /kaggle/input) into `out_dir`, where the run
    continues: plain copies, writable, whatever the source's permissions; nothing when they are the same folder."""
    if os.path.abspath(source) == os.path.abspath(out_dir):
        return
    for folder, _, files in os.walk(source):
        target = os.path.join(out_dir, os.path.relpath(folder, source))
        os.makedirs(target, exist_ok=True)
        for name in files:
            if ".tmp" not in name:  # a half-written file of a killed run is never copied
                shutil.copyfile(os.path.join(folder, name), os.path.join(target, name))
