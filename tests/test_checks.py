"""kitlib.checks: every flag and field checked where it is declared.

The enumeration finds the fields itself (every command of `kitlib.cli.COMMANDS`, every numeric or checked field
of its config, and every checked flag of the ``kaggle`` sub-commands), so a field added later is covered without
editing this file. Each value is tried through the command line (``kitlib.cli.main`` in this process, with the
command's run replaced: nothing past the parser and the config may run for a refused value) and through the
config in Python; both must agree, and a refusal is one line naming the flag or field, the value and the range.
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import typing

import pytest

from kitlib import checks, cli, command
from tests.conftest import REPO

# the values every numeric field is tried with: 0, -1, NaN, infinities, a huge value, a wrong type
TRIED = ("0", "-1", "nan", "inf", "-inf", "1e300", "1000000000000", "abc")
ALWAYS_REFUSED = ("nan", "inf", "-inf", "abc")  # for any number; "1000000000000" for any integer too


def test_the_valid_values_known_cases():
    assert checks.integer(1).explain(1) is None and checks.integer(1).explain(0) == "must be an integer >= 1"
    assert checks.integer(0, 5).describe == "an integer in [0, 5]" and checks.integer(0, 5).explain(6)
    assert checks.integer(0).explain(True) and checks.integer(0).explain(2.0)  # a bool or a float is no integer
    assert checks.integer(0).explain(checks.MAX_INT + 1)
    fraction = checks.fraction()
    assert fraction.describe == "a number in [0, 1)"
    assert [fraction.explain(v) is None for v in (0, 0.5, 1, -0.1, math.nan, math.inf)] == [
        True, True, False, False, False, False]
    positive_lr = checks.number(0, 10, lo_open=True)
    assert positive_lr.describe == "a number in (0, 10]" and positive_lr.explain(0) and positive_lr.explain(10) is None
    assert checks.number(0).explain(1e300) is None and checks.number(0).explain(math.inf)
    assert checks.one_of(("a", "b")).explain("c") == "must be one of: a, b" and checks.one_of((0, 1)).explain("1")
    assert checks.host_port().explain("10.0.0.1:1234") is None
    assert [bool(checks.host_port().explain(t)) for t in ("nowhere", ":80", "h:0", "h:99999", "h:x")] == [True] * 5


def test_a_predicate_says_why_in_its_own_words():
    def even(v):
        if v % 2:
            raise ValueError(f"{v} is odd")
        return True

    valid = checks.satisfies(even, "an even number")
    assert valid.explain(4) is None and valid.explain(3) == "3 is odd"


def test_the_parser_converts_then_checks_and_says_the_range():
    parse = checks.parse_as(int, checks.integer(1), "images per step")
    assert parse("8") == 8
    for text, said in (("0", "0: must be an integer >= 1 (images per step)"),
                       ("abc", "'abc' is not an integer (must be an integer >= 1; images per step)"),
                       ("1.5", "is not an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=said.replace("(", r"\(").replace(")", r"\)")):
            parse(text)
    assert math.isnan(checks.convert("nan", float)) and checks.convert("7", str) == "7"


def test_a_config_refuses_a_bad_field_naming_it_and_normalises_paths_and_lists(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Toy(command.Config):
        out: str = command.setting(None, "where")
        batch: int = command.setting(None, "images per step", valid=checks.positive())
        sizes: tuple[int, ...] = command.setting(None, "sizes", valid=checks.integer(1))

    toy = Toy(out=tmp_path, sizes=[3, 4])
    assert toy.out == str(tmp_path) and toy.sizes == (3, 4) and Toy().batch is None  # None: not given
    with pytest.raises(checks.SettingError, match=r"^Toy\(batch=0\): must be an integer >= 1 \(images per step\)$"):
        Toy(batch=0)
    with pytest.raises(checks.SettingError, match=r"Toy\(sizes=\(3, 0\)\): must be an integer >= 1"):
        Toy(sizes=(3, 0))
    with pytest.raises(checks.SettingError, match="must be an integer, got str"):
        Toy(batch="8")
    with command.command_line(), pytest.raises(checks.SettingError, match=r"^--batch 0: must be an integer >= 1"):
        Toy(batch=0)


# ============ every field of every command ============


def _commands():
    """{name: config class} of every command with a config (kaggle's sub-commands are walked separately)."""
    import importlib  # noqa: PLC0415

    found = {}
    for name, (module, _) in cli.COMMANDS.items():
        config = getattr(importlib.import_module(module), "CONFIG", None)
        if config is not None:
            found[name] = config
    return found


def _flag(field):
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _kind(config, field):
    return command._type_of(field, typing.get_type_hints(config))


def _tried_fields(config):
    """The fields of `config` with a flag whose values are checked: numbers, and any field with valid values."""
    for field in dataclasses.fields(config):
        if field.metadata.get("cli", True) and (_kind(config, field) in (int, float) or field.metadata.get("valid")):
            yield field


def _required(config, tmp_path):
    """(argv, kwargs) giving every required field a placeholder (nothing is read: the run is replaced)."""
    argv, kwargs = [], {}
    for field in dataclasses.fields(config):
        if field.metadata.get("required"):
            value = str(tmp_path / f"placeholder-{field.name}")
            argv += [_flag(field), value]
            kwargs[field.name] = (value,) if field.metadata.get("nargs") == "+" else value
    return argv, kwargs


def test_every_numeric_field_declares_its_valid_values_and_its_help_says_them():
    for name, config in _commands().items():
        for field in dataclasses.fields(config):
            if field.metadata.get("cli", True) and _kind(config, field) in (int, float):
                assert field.metadata.get("valid") is not None, f"{name} {_flag(field)} declares no valid values"
        parser = checks.Parser(prog=f"python -m kitlib {name}")
        command.add_arguments(parser, config)
        text = " ".join(parser.format_help().split())
        for field in _tried_fields(config):
            assert f"valid: {field.metadata['valid'].describe}" in text, (name, field.name)


def _run_cli(argv, monkeypatch, capsys):
    """(exit code, stderr, the config the command would have run) of ``python -m kitlib ARGV`` in this process,
    with the command's plan and run replaced by a recorder."""
    seen = []

    def recorder(module, args, print_fn=print, argv=None):
        seen.append(command.config_from_args(module.CONFIG, args))
        return 0

    monkeypatch.setattr(command, "execute", recorder)
    code = cli.main(argv)
    return code, capsys.readouterr().err, (seen[0] if seen else None)


def _verdict_in_python(config, kwargs, field, value):
    try:
        config(**dict(kwargs, **{field.name: value}))
    except checks.SettingError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{config.__name__}({field.name}="), str(err)
        return "refused"
    return "accepted"


def test_every_field_of_every_command_takes_or_refuses_each_value_in_one_line(tmp_path, monkeypatch, capsys):
    cases = 0
    for name, config in _commands().items():
        required_argv, required_kwargs = _required(config, tmp_path)
        for field in _tried_fields(config):
            kind, flag = _kind(config, field), _flag(field)
            for text in TRIED if kind in (int, float) else TRIED + ("", "not-a-choice"):
                given = [text] * (2 if field.metadata.get("nargs") == 2 else 1)
                asked = [flag, *given] if len(given) == 2 else [f"{flag}={text}"]  # "=": "-1" is no option
                code, err, seen = _run_cli([name, *required_argv, *asked], monkeypatch, capsys)
                cases += 1
                where = f"kitlib {name} {flag} {text!r}"
                assert code in (0, 2), where
                if code == 2:
                    lines = [line for line in err.splitlines() if line.strip()]
                    assert len(lines) == 1 and lines[0].startswith(f"kitlib {name}: error: argument {flag}"), (where, err)
                    assert seen is None and not any(p.name.startswith("out") for p in tmp_path.iterdir()), where
                else:
                    assert seen is not None and err == "", (where, err)
                if kind in (int, float) and (text in ALWAYS_REFUSED or (kind is int and text == "1000000000000")):
                    assert code == 2, f"{where} was accepted"
                try:  # the same value built in Python: the same verdict
                    value = checks.convert(text, kind)
                except ValueError:
                    value = text
                value = (value, value) if len(given) == 2 else (value,) if field.metadata.get("nargs") == "+" else value
                in_python = _verdict_in_python(config, required_kwargs, field, value)
                assert in_python == ("accepted" if code == 0 else "refused"), (where, in_python)
    assert cases > 600, cases  # every command's fields were found (the count grows with them)


def _kaggle_parser():
    from kitlib.kaggle import cli as kaggle_cli  # noqa: PLC0415

    parser = checks.Parser(prog="python -m kitlib kaggle")
    kaggle_cli.add_arguments(parser)
    return parser


def _kaggle_actions():
    """{sub-command: (its argparse actions)} of ``python -m kitlib kaggle``."""
    subs = next(a for a in _kaggle_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p._actions for name, p in subs.choices.items()}


def test_every_numeric_kaggle_flag_is_checked_and_refuses_bad_values_in_one_line(monkeypatch, capsys):
    from kitlib.kaggle import cli as kaggle_cli  # noqa: PLC0415

    monkeypatch.setattr(kaggle_cli, "run_args", lambda args, get_api=None: 0)
    tried = 0
    for name, actions in _kaggle_actions().items():
        base = ["kaggle", name] + ["01" for a in actions if not a.option_strings and a.dest != "help"]
        base += [x for a in actions if a.required and a.option_strings for x in (a.option_strings[0], "placeholder")]
        for action in actions:
            assert action.type not in (int, float), f"kaggle {name} {action.option_strings}: an unchecked number"
            valid = getattr(action.type, "valid", None)
            if valid is None or not action.option_strings:
                continue
            for text in TRIED:
                code = cli.main([*base, f"{action.option_strings[0]}={text}"])
                err = capsys.readouterr().err
                tried += 1
                ok = checks.problem(checks.convert(text, action.type.kind), action.type.kind, valid) is None \
                    if text != "abc" or action.type.kind is str else False
                assert code == (0 if ok else 2), (name, action.option_strings, text, err)
                if code == 2:
                    assert len(err.strip().splitlines()) == 1 and err.startswith(f"kitlib kaggle {name}: error: ")
    assert tried >= 3 * len(TRIED)  # --interval, --timeout, --pattern at least


# ============ as users run it ============

# The issue's examples on the sample, each refused in one line naming the flag and its range, before any work
_EXAMPLES = [
    (["pretrain", "--batch-size", "0"], "--batch-size: 0: must be an integer >= 1"),
    (["pretrain", "--budget-minutes", "-3"], "--budget-minutes: -3: must be a number in [0, 10080]"),
    (["pretrain", "--base-lr", "-1"], "--base-lr: -1: must be a number in (0, 10000]"),
    (["pretrain", "--epochs", "-1"], "--epochs: -1: must be an integer >= 0"),
    (["pretrain", "--batch-size", "-8"], "--batch-size: -8: must be an integer >= 1"),
    (["pretrain", "--prototypes", "-5"], "--prototypes: -5: must be an integer >= 1"),
    (["pretrain", "--epsilon", "0"], "--epsilon: 0: must be a number in [0.001, 10]"),
    (["pretrain", "--epochs", "five"], "--epochs: 'five' is not an integer"),
    (["pretrain", "--epochs", "4", "--warmup-epochs", "4"], "--warmup-epochs 4 must be below --epochs 4"),
    (["finetune", "--val-fraction", "1.5"], "--val-fraction: 1.5: must be a number in [0, 1)"),
    (["finetune", "--steps", "1"], "--steps: 1: must be an integer >= 2"),
    (["finetune", "--resolution", "64", "80"], "--resolution (64, 80): give (resize, crop) with crop <= resize"),
]


def test_the_issues_examples_in_a_clean_shell_are_one_line_before_any_work(tmp_path, sample_dir):
    out = tmp_path / "out"
    cases = [argv[:1] + ["--data", sample_dir, "--out", str(out)]
             + (["--backbone", str(tmp_path / "none.keras")] if argv[0] == "finetune" else []) + argv[1:]
             for argv, _ in _EXAMPLES]
    code = textwrap.dedent(f"""
        import contextlib, io, json
        from kitlib import cli
        for argv in {cases!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = cli.main(argv)
            print(json.dumps([code, err.getvalue()]), flush=True)
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(_EXAMPLES)
    for (argv, said), (code, err) in zip(_EXAMPLES, results):
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith(f"kitlib {argv[0]}: error: ") and said in err, (argv, err)
    assert not out.exists()  # nothing written
