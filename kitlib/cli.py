"""Command line: ``python -m kitlib <command> [options]``.

Each command lives in its own module, which follows `kitlib.command`'s pattern: ``CONFIG`` (its config
class, whose fields are the flags), ``plan(config)`` and ``run(plan)``. A command with sub-commands of its
own (``kaggle``) defines ``add_arguments(parser)`` and ``run_args(args)`` instead. Modules are imported only when
their command runs, so ``python -m kitlib --help`` is instant and one command's dependencies never slow another.

Exit codes, the same for every command: 0 done; 2 a user error (a bad flag, path, record or setting),
printed as one line ``kitlib <command>: error: <what, where, and the fix>``; 3 a TPU/GPU that JAX cannot
see (the fix to install); 4 a ``--preflight`` run that does not fit the TPU. A traceback means a kit bug.
"""

import importlib
import os
import sys
import traceback

# What kitlib raises for a user's mistake: ValueError (kitlib.data.tfrecords.DataError is one) and OSError (a missing path).
# A ValueError raised inside Keras, JAX or TensorFlow instead is a bug; an OSError naming a file (a path
# that cannot be made, read or written) is the user's wherever it arose.
USER_ERRORS = (ValueError, OSError)
_KITLIB_DIR = os.path.dirname(os.path.abspath(__file__))

# command name -> (module, one-line help). A module missing here is simply not offered.
COMMANDS = {
    "make-sample": ("kitlib.data.sample", "write the small synthetic Cassava-layout sample (data/sample)"),
    "pretrain": ("kitlib.swav.pretrain", "SwAV self-supervised pretraining on train_tfrecords/"),
    "finetune": ("kitlib.bit.finetune", "fine-tune a BiT / SwAV backbone with the BiT-HyperRule"),
    "cv": ("kitlib.bit.cv", "k-fold fine-tuning with out-of-fold predictions (folds.csv, oof.csv, cv.json)"),
    "clean-labels": ("kitlib.bit.clean_labels", "list the images whose OOF prediction confidently contradicts the label"),
    "pseudo-label": ("kitlib.bit.pseudo_label", "confident predictions of unlabelled images as a data folder to train on"),
    "predict": ("kitlib.bit.predict", "predict test images with TTA and write submission.csv"),
    "demo": ("kitlib.demo", "the whole kit on the sample: pretrain -> fine-tune -> submission"),
    "kaggle": ("kitlib.kaggle.cli", "Kaggle round trip: download, publish-kit, push a notebook, status, output"),
}


def _available():
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def build_parser(commands=None):
    """The top-level parser with one sub-parser per available command."""
    from kitlib.checks import Parser  # noqa: PLC0415

    commands = _available() if commands is None else commands
    parser = Parser(prog="python -m kitlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Sub-parsers are filled lazily in main(): importing every module here would pull in TF.
    return parser


def main(argv=None):
    """``python -m kitlib ARGV``; returns the exit code (a flag the parser refuses: 2, its one line printed)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as end:  # argparse's own exit: --help (0) or a refused flag (2, one line already printed)
        return 0 if end.code is None else end.code


def _main(argv):
    commands = _available()
    parser = build_parser(commands)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        parser.print_help()
        return 0 if argv else 2
    module = importlib.import_module(commands[argv[0]][0])
    from kitlib import checks, command  # noqa: PLC0415

    sub = checks.Parser(prog=f"python -m kitlib {argv[0]}", description=commands[argv[0]][1])
    from kitlib.runtime import AcceleratorNotVisible  # noqa: PLC0415

    if hasattr(module, "CONFIG"):
        command.add_arguments(sub, module.CONFIG)
    else:
        module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        try:
            code = command.execute(module, args, argv=argv) if hasattr(module, "CONFIG") else module.run_args(args)
        except AcceleratorNotVisible as err:  # a hardware problem, not a bug: the message, not a traceback
            print(err, file=sys.stderr)
            code = 3
        except USER_ERRORS as err:
            if not (raised_by_kitlib(err) or (isinstance(err, OSError) and err.filename)):
                raise
            print(f"kitlib {argv[0]}: error: {one_line(err)}", file=sys.stderr)
            code = 2
    except BaseException:
        _end_fast(1, with_traceback=True)
        raise
    code = 0 if code is None else int(code)
    if code:
        _end_fast(code)
    return code


def _end_fast(code, with_traceback=False):
    """In a run of several processes, a process that fails exits at once (a normal exit would wait minutes at
    JAX's shutdown barrier for the others): its heartbeats stop and `kitlib.hosts.HEARTBEAT_S` later the
    coordination service ends every other process too. On one process: nothing (the caller returns or raises)."""
    from kitlib import hosts  # noqa: PLC0415

    if hosts.process_count() > 1:
        if with_traceback:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def raised_by_kitlib(err):
    """True when the innermost frame that raised `err` is kitlib's own code: the kit checked the input and
    wrote the message. An error from deep inside a library keeps its traceback (it is a bug to report)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_KITLIB_DIR + os.sep)


def one_line(err):
    """The error's message on one line (a multi-line message is joined with ' | ')."""
    return " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
