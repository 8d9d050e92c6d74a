"""One pattern for every command: a frozen config of what was asked -> ``plan(config)`` -> a `Plan` -> ``run(plan)``.

    config  a frozen dataclass whose fields are `setting`s: a default (None where the plan chooses the value)
            and one line of help, which is both the flag's help and the field's documentation.
    plan    ``plan(config, rt=None) -> Plan``: reads the data and the devices, resolves every value, gives the
            reason for each value it chose, and builds what the run needs (a data source, a rule). Nothing is
            written (pretrain's time budget trains a throwaway copy of the model for a few timed steps).
    run     ``run(plan)``: does the work with what the plan holds (it rebuilds nothing the plan has) and saves
            ``plan.record()`` as ``config.json``, the same schema for every command.

A command module defines ``CONFIG`` (its config class), ``plan`` and ``run``; `add_arguments` generates its
flags from the fields (every command has ``--smoke``, ``--verbose`` and ``--seed``) and `execute` is what
``python -m kitlib <command>`` runs: flags -> config -> plan (printed once) -> run.

Seeds, the same for every command (`seeded_run`): a seeded run is repeatable and gives the caller's random
state back; a config without a seed gets one drawn at random, recorded in ``config.json`` so the run can be
repeated with ``--seed``.
"""

import argparse
import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import secrets
import typing

from kitlib import checks

SEED_REASON = "none given: drawn at random (recorded here; pass --seed to repeat the run)"
_SMOKE_HELP = "the CI smoke preset ({name}.smoke: a short run a CPU finishes in seconds); other flags override it"


def setting(default=None, help="", *, valid=None, flag=None, choices=None, metavar=None, nargs=None, type=None,
            cli=True, required=False):
    """A config field: its default, its one-line help (the flag's help and the field's reason) and its valid values.

    Args:
        default: the value when none is given; None where the plan chooses it (None is never a falsy value's
            stand-in: 0 is a value, checked like any other).
        help: one line saying what the field is.
        valid: a `kitlib.checks.Valid` (``checks.integer(1)``, ``checks.fraction()``, ...): the values the flag
            and the field accept; both refuse any other at once, in one line. choices: shorthand for
            ``checks.one_of(choices)``.
        flag: the command-line flag (default ``--field-name``). metavar, nargs, type: as argparse's (type
            default: from the field's annotation). cli: False for fields with no flag.
        required: the flag must be given on the command line (the plan refuses a config without it).
    """
    if valid is None and choices is not None:
        valid = checks.one_of(choices)
    meta = dict(help=help, valid=valid, flag=flag, choices=choices, metavar=metavar, nargs=nargs, type=type,
                cli=cli, required=required)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """The base of every command's config: constructing one checks every field against its `setting`'s kind
    and valid values (`kitlib.checks.SettingError`, one line naming the field, or the flag under the command
    line). Paths are stored as strings and lists as tuples. A subclass with a ``__post_init__`` of its own
    calls ``super().__post_init__()``."""

    def __post_init__(self):
        check_fields(self)


def check_fields(config):
    """Normalise (os.PathLike -> str, list -> tuple) and check every field of `config` (see `Config`)."""
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), _type_of(field, hints)
        value = tuple(map(_plain, value)) if isinstance(value, (list, tuple)) else _plain(value)
        object.__setattr__(config, field.name, value)  # frozen: the normalised value in place
        why = checks.problem(value, kind, field.metadata.get("valid"))
        if why:
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            where = (f"{spell(config, field.name)} {shown}" if _ON_COMMAND_LINE.get()
                     else f"{type(config).__name__}({field.name}={value!r})")
            about = f" ({field.metadata['help']})" if field.metadata.get("help") else ""
            raise checks.SettingError(f"{where}: {why}{about}")


def _plain(value):
    """A path as its string; anything else as it is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@functools.cache
def _hints(config_cls):
    return typing.get_type_hints(config_cls)


# ============ names in the user's words ============

_ON_COMMAND_LINE = contextvars.ContextVar("kitlib_on_command_line", default=False)


def spell(config, name):
    """How the user wrote field `name` of `config` (a config or its class): its flag (``--batch-size``) while
    ``python -m kitlib`` runs, else the field's name (``global_batch_size``). Messages of checks that span
    fields (warmup against epochs, a batch against the devices) use it, so each user reads their own words."""
    if not _ON_COMMAND_LINE.get():
        return name
    cls = config if isinstance(config, type) else type(config)
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    return _flag(field) if field is not None and field.metadata.get("cli", True) else name


_ARGV = contextvars.ContextVar("kitlib_argv", default=None)


def rerun_hint(name):
    """How to run command `name` again (it resumes): the command line as the user typed it, or the Python calls."""
    argv = _ARGV.get()
    if argv:
        import shlex  # noqa: PLC0415

        return "python -m kitlib " + shlex.join(argv)
    return f"the same {name.replace('-', '_')}.run({name.replace('-', '_')}.plan(config)) with the same out_dir"


def on_command_line():
    """True while ``python -m kitlib`` runs a command (messages then name flags, not fields)."""
    return _ON_COMMAND_LINE.get()


@contextlib.contextmanager
def command_line(argv=None):
    """Inside the block, `spell` and the field checks name flags: the messages a command-line user reads;
    `argv` (``python -m kitlib ARGV``) is what `rerun_hint` repeats."""
    tokens = _ON_COMMAND_LINE.set(True), _ARGV.set(list(argv) if argv else None)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(tokens[0])
        _ARGV.reset(tokens[1])


def require(config, *names):
    """Refuse a config that leaves any of `names` unset, naming the flags to pass."""
    missing = [n for n in names if getattr(config, n) in (None, "")]
    if missing:
        flags = ", ".join(_flag(f) for f in dataclasses.fields(config) if f.name in missing)
        raise ValueError(f"{type(config).__name__} needs {', '.join(missing)} (on the command line: {flags})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiProcess(Config):
    """The fields of a command that can run as several processes (`kitlib.hosts`): one process per TPU
    host of a pod slice or per GPU node. None: as the environment says (one process on a single host).
    Keyword-only: a subclass's own fields come first, so ``FinetuneConfig(data, backbone, out)`` means them."""
    coordinator: str = setting(None, "HOST:PORT of process 0 for a multi-process run (with --num-processes "
                               "and --process-id; a Cloud TPU pod slice needs none of the three)", metavar="HOST:PORT",
                               valid=checks.host_port())
    num_processes: int = setting(None, "processes of a multi-process run (one per host)", valid=checks.integer(1))
    process_id: int = setting(None, "this process's index, 0..num_processes-1 (process 0 writes and prints)",
                              valid=checks.integer(0))

    def __post_init__(self):
        super().__post_init__()
        if None not in (self.num_processes, self.process_id) and self.process_id >= self.num_processes:
            raise checks.SettingError(f"{spell(self, 'process_id')} {self.process_id} must be below "
                                      f"{spell(self, 'num_processes')} {self.num_processes}")


_PROCESS_FIELDS = tuple(f.name for f in dataclasses.fields(MultiProcess))


# ============ the plan ============


@dataclasses.dataclass(frozen=True)
class Plan:
    """A command's run with every value resolved, each chosen one with its reason.

    Attributes:
        command: the command's name ("pretrain", "finetune", "predict", ...).
        settings: the config with every value resolved (the config's own type).
        reasons: {field: why} for each value the plan chose rather than the caller.
        facts: what the plan found and the run depends on (data size, image size, devices, backend, policy).
        parts: objects built while planning that the run uses (a data source, a rule); not recorded.
        rt: the `kitlib.runtime.Runtime` the plan was made for.
    """
    command: str
    settings: typing.Any
    reasons: dict
    facts: dict
    parts: dict = dataclasses.field(default_factory=dict, repr=False)
    rt: typing.Any = dataclasses.field(default=None, repr=False)

    def record(self):
        """The run as ``config.json`` records it: {"command", "kitlib", "settings", "chosen", "facts"}."""
        from kitlib import __version__  # noqa: PLC0415

        return {"command": self.command, "kitlib": __version__, "settings": json_ready(as_dict(self.settings)),
                "chosen": dict(self.reasons), "facts": json_ready(self.facts)}

    def describe(self):
        """The plan for printing: one line of facts, then each chosen value with its reason."""
        facts = ", ".join(f"{k}={_short(v)}" for k, v in self.facts.items())
        lines = [f"kitlib {self.command}: {facts}"]
        if self.reasons:
            lines.append("  chosen by the plan (a flag or config field overrides any line):")
            lines += [f"    {k} = {_short(getattr(self.settings, k))}: {why}" for k, why in self.reasons.items()]
        given = [f"{k}={_short(v)}" for k, v in as_dict(self.settings).items()
                 if k not in self.reasons and not (k in _PROCESS_FIELDS and v is None)]  # one process: unsaid
        lines.append("  given or default: " + ", ".join(given))
        return "\n".join(lines)

    def save(self, out_dir, name="config.json"):
        """Write `record` to ``out_dir/name`` atomically; returns the path."""
        return write_json(os.path.join(out_dir, name), self.record())


def as_dict(config):
    """A config's fields as a dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _short(value):
    text = json.dumps(json_ready(value))
    return text if len(text) <= 60 else text[:57] + "..."


def json_ready(value):
    """`value` with numpy scalars and arrays as Python numbers and lists, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


def write_json(path, record):
    """``record`` as JSON at ``path``, atomically (a reader never sees half a file); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(json_ready(record), f, indent=1)
    os.replace(tmp, path)
    return path


def read_record(out_dir, name="config.json"):
    """The record a previous run saved in ``out_dir`` (None when there is none)."""
    path = os.path.join(out_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ============ the runtime ============


def runtime_for(config):
    """The `kitlib.runtime.Runtime` a config plans for: with ``config.preflight`` set, that TPU as libtpu's
    compile-only client sees it (`kitlib.preflight.target_runtime`); else this machine's devices,
    ``runtime.setup(allow_cpu, mixed_precision, verbose)``."""
    from kitlib import preflight, runtime  # noqa: PLC0415

    target = getattr(config, "preflight", None)
    if target:
        preflight.prepare_compile_only()
        return preflight.target_runtime(target)
    rt = runtime.setup(allow_cpu=getattr(config, "allow_cpu", False),
                       policy=getattr(config, "mixed_precision", "auto"), verbose=bool(getattr(config, "verbose", 1)),
                       coordinator=getattr(config, "coordinator", None),
                       num_processes=getattr(config, "num_processes", None),
                       process_id=getattr(config, "process_id", None))
    if rt.process_count > 1 and not isinstance(config, MultiProcess):
        raise ValueError(
            f"kitlib: {type(config).__name__} runs in one process, but this is process {rt.process_index} of "
            f"{rt.process_count} (a multi-host launch). Run it on one host: e.g. copy the pretrained backbone.keras "
            "to a single-host TPU VM, a Kaggle v5e-8 or a GPU machine and run it there.")
    return rt


def runtime_facts(rt):
    """What a plan records of its runtime: Keras backend, devices (over all processes), processes, device
    kind, dtype policy."""
    from kitlib.compat import keras  # noqa: PLC0415

    return dict(backend=keras.backend.backend(), devices=rt.num_devices,
                processes=getattr(rt, "process_count", 1), device_kind=rt.kind, policy=rt.policy)


def agree(plan):
    """Refuse a multi-process run whose processes planned differently (`kitlib.hosts.agree` on the record,
    less the process's own index); a no-op on one process."""
    from kitlib import hosts  # noqa: PLC0415

    record = plan.record()
    record["settings"].pop("process_id", None)
    hosts.agree(record, f"the {plan.command} plan")


# ============ seeds ============


def resolve_seed(seed):
    """(seed, reason): the given seed and None, or one drawn at random and `SEED_REASON`."""
    if seed is None:
        from kitlib import hosts  # noqa: PLC0415

        return hosts.shared_seed(secrets.randbelow(2**31)), SEED_REASON  # process 0's on every process
    return int(seed), None


@contextlib.contextmanager
def seeded_run(plan):
    """Inside the block every unseeded draw follows ``plan.settings.seed`` (`kitlib.runtime.seeded`); after it
    the caller's random state is back."""
    from kitlib import runtime  # noqa: PLC0415

    with runtime.seeded(plan.settings.seed):
        yield


# ============ flags ============


def _flag(field):
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _type_of(field, hints):
    hint = hints.get(field.name, str)
    hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # Optional[int] -> int
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return next(iter(typing.get_args(hint)), str)
    return hint if hint in (int, float, str, bool) else str


def add_arguments(parser, config_cls):
    """One flag per field of `config_cls` (help from the field, default and valid values shown), plus ``--smoke``
    when the config has a smoke preset. Each flag's value is converted and checked as it is parsed (a bad one is
    the parser's one-line error, before anything runs). Only flags given on the command line reach the
    namespace (see `config_from_args`)."""
    hints = _hints(config_cls)
    for field in dataclasses.fields(config_cls):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        kind = meta.get("type") or _type_of(field, hints)
        shown = "chosen by the plan" if field.default is None else json.dumps(json_ready(field.default))
        valid = meta.get("valid")
        accepts = f"; valid: {valid.describe}" if valid is not None else ""
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS,
                      help=f"{meta.get('help', '')} (default: {shown}{accepts})".replace("%", "%%"))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if field.default else "store_true"
        else:
            choices = meta.get("choices")
            metavar = meta.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
            kwargs.update(type=checks.parse_as(kind, valid, meta.get("help", "")), metavar=metavar,
                          nargs=meta.get("nargs"))
            kwargs["required"] = meta.get("required", False)
        parser.add_argument(_flag(field), **{k: v for k, v in kwargs.items() if v is not None})
    if hasattr(config_cls, "smoke"):
        parser.add_argument("--smoke", action="store_true", help=_SMOKE_HELP.format(name=config_cls.__name__))


def config_from_args(config_cls, args):
    """The config the flags ask for: the fields given on the command line over the defaults (over the smoke
    preset with ``--smoke``)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    if getattr(args, "smoke", False):
        return config_cls.smoke(**given)
    return config_cls(**given)


def execute(module, args, print_fn=print, argv=None):
    """``python -m kitlib <command>``: flags -> config -> plan (printed once) -> run; returns the exit code
    (0 done; `kitlib.preflight.EXIT_DOES_NOT_FIT` for a preflight that does not fit). Messages name flags,
    not fields (`command_line`)."""
    with command_line(argv):
        config = config_from_args(module.CONFIG, args)
        plan = module.plan(config)
        return _execute_plan(module, plan, print_fn)


def _execute_plan(module, plan, print_fn):
    agree(plan)
    quiet = getattr(plan.rt, "process_index", 0) > 0  # several processes: process 0 prints for all
    if getattr(plan.settings, "verbose", 1) and not quiet:
        print_fn(plan.describe())
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull) if quiet else contextlib.nullcontext():
        result = module.run(plan)
    if getattr(result, "fits", True) is False:
        from kitlib import preflight  # noqa: PLC0415

        return preflight.EXIT_DOES_NOT_FIT
    return 0
