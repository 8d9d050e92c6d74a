"""The valid values of a config field, declared with the field (``kitlib.command.setting(..., valid=...)``).

A `Valid` says in words what a field accepts ("an integer >= 1", "a number in [0, 1)", "one of: ce,
bitempered") and tests a value against it. Both ways into a config use the same one: the command line's
parser refuses a bad flag before anything runs (`parse_as`), and the config's own construction refuses a
bad field (`check_fields`: notebooks build configs directly). Either way the message is one line naming the
flag (or the field, in Python), the value, the valid range and the field's help.

Numbers are never NaN or infinite; integers are at most `MAX_INT` (what an int32 seed or step counter holds)
and are never bools. "Not given" is None, which every field accepts: the plan chooses then.
"""

import argparse
import dataclasses
import math
import numbers

MAX_INT = 2**31 - 1
# A learning rate this high is a mistyped exponent, not a recipe: SwAV's LARS peaks at 4.8 for batch 4096 and
# scales linearly (1,229 at the 2**20 images a preflight's batch search may try); the kit's small CNN fine-tunes
# at 1.0 per 512 images.
MAX_LEARNING_RATE = 10_000.0
MAX_MINUTES = 7 * 24 * 60  # a week: a time budget or limit beyond it is a typo (a Kaggle session is 9-12 hours)


class SettingError(ValueError):
    """A value outside its field's valid range (a user's error: ``python -m kitlib`` prints it on one line)."""


@dataclasses.dataclass(frozen=True)
class Valid:
    """What a field accepts: ``describe`` in words, ``test(value) -> bool`` on a value of the field's type."""
    describe: str
    test: object

    def explain(self, value):
        """None when `value` is valid, else why not (one line)."""
        try:
            ok = self.test(value)
        except (TypeError, ValueError) as err:
            return f"{err}" if str(err) else f"must be {self.describe}"
        return None if ok else f"must be {self.describe}"


def _real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(lo=0, hi=MAX_INT):
    """An integer in [lo, hi] (hi at most `MAX_INT`)."""
    hi = min(hi, MAX_INT)
    words = f"an integer >= {lo}" if hi == MAX_INT else f"an integer in [{lo}, {hi}]"
    return Valid(words, lambda v: _integer(v) and lo <= v <= hi)


def number(lo=None, hi=None, *, lo_open=False, hi_open=False):
    """A finite number between lo and hi (None: unbounded on that side; *_open: the bound itself excluded)."""
    if lo is not None and hi is not None:
        words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        words = f"a number {'<' if hi_open else '<='} {hi:g}" if hi is not None else "a finite number"

    def test(v):
        if not _real(v):
            return False
        above = lo is None or (v > lo if lo_open else v >= lo)
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    return Valid(words, test)


def positive():
    """An integer >= 1."""
    return integer(1)


def fraction():
    """A share in [0, 1)."""
    return number(0, 1, hi_open=True)


def probability():
    """A probability in [0, 1]."""
    return number(0, 1)


def one_of(choices):
    """One of `choices` (compared as given: 1 is not "1")."""
    choices = tuple(choices)
    return Valid("one of: " + ", ".join(str(c) for c in choices), lambda v: v in choices)


def host_port():
    """HOST:PORT with a port in 1..65535."""
    def test(text):
        host, sep, port = text.rpartition(":")
        return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)

    return Valid("HOST:PORT with a port in 1..65535", test)


def satisfies(predicate, describe):
    """Whatever `predicate(value)` accepts: it returns False, or raises ValueError whose message says why."""
    return Valid(describe, predicate)


# ============ the two ways in ============


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, ``PROG: error: MESSAGE`` and exit code 2 (no usage block:
    ``--help`` shows it), the same form as the kit's own user errors."""

    def error(self, message):
        name = self.prog.replace("python -m kitlib", "kitlib", 1)
        self.exit(2, f"{name}: error: {' | '.join(line.strip() for line in message.splitlines() if line.strip())}"
                     f" (see {self.prog} --help)\n")


def convert(text, kind):
    """The command line's `text` as a value of `kind` (int, float or str); ValueError naming the type."""
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    return text


def parse_as(kind, valid, help_text=""):
    """An argparse ``type=`` for a flag: the text converted to `kind` and checked against `valid`; a bad value
    is an `argparse.ArgumentTypeError` whose message names the value, the range and the flag's help."""
    def parse(text):
        try:
            value = convert(text, kind)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err}{_about(valid, help_text)}") from None
        why = valid.explain(value) if valid is not None else None
        if why:
            raise argparse.ArgumentTypeError(f"{text}: {why}{_about(None, help_text)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    parse.valid, parse.kind = valid, kind  # what the flag accepts, for tests and tools that walk the parser
    return parse


def _about(valid, help_text):
    parts = ([f"must be {valid.describe}"] if valid is not None else []) + ([help_text] if help_text else [])
    return f" ({'; '.join(parts)})" if parts else ""


def kind_error(value, kind):
    """None when `value` has the field's `kind` (int, float, str, bool; None always has it), else why not."""
    if value is None:
        return None
    if kind is int and not _integer(value):
        return f"must be an integer, got {type(value).__name__}"
    if kind is float and not (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return f"must be a number, got {type(value).__name__}"
    if kind is bool and not isinstance(value, (bool,)) and type(value).__name__ != "bool_":
        return f"must be True or False, got {type(value).__name__}"
    if kind is str and not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    return None


def problem(value, kind, valid):
    """None when `value` (for a tuple, every item) has `kind` and is `valid`, else why not; None (not given) is
    always accepted."""
    for item in value if isinstance(value, (tuple, list)) else (value,):
        why = kind_error(item, kind) or (valid.explain(item) if valid is not None and item is not None else None)
        if why:
            return why
    return None
