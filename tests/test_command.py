"""kitlib.command: flags generated from a config's fields, the plan's record and description, seeds."""

import argparse
import dataclasses
import json
import os
import random

import numpy as np
import pytest

from kitlib import command
from kitlib.command import setting


@dataclasses.dataclass(frozen=True)
class _Config:
    data_dir: str = setting(None, "where the data is", flag="--data", required=True)
    batch_size: int = setting(None, "images per step (the plan's when not given)")
    rate: float = setting(0.5, "a rate")
    resolution: tuple[int, int] = setting(None, "(resize, crop)", nargs=2, metavar=("RESIZE", "CROP"))
    kind: str = setting("auto", "one of three", choices=("auto", "a", "b"))
    allow_cpu: bool = setting(False, "a switch that is off")
    restore_best: bool = setting(True, "a switch that is on")
    hidden: int = setting(3, "no flag", cli=False)
    seed: int = setting(None, "the seed")

    @classmethod
    def smoke(cls, **overrides):
        return cls(**dict(dict(batch_size=4, rate=0.1), **overrides))


def _parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser, _Config)
    return command.config_from_args(_Config, parser.parse_args(argv)), parser


def test_flags_follow_the_fields_and_only_given_flags_override_the_defaults():
    config, parser = _parse(["--data", "d", "--batch-size", "8", "--resolution", "40", "32", "--kind", "a",
                             "--allow-cpu", "--no-restore-best"])
    assert config == _Config(data_dir="d", batch_size=8, resolution=(40, 32), kind="a", allow_cpu=True,
                             restore_best=False)
    assert _parse(["--data", "d"])[0] == _Config(data_dir="d")  # nothing else given: every default
    text = parser.format_help()
    assert "--data" in text and "--hidden" not in text and "images per step (the plan's when not given)" in text
    assert "(default: 0.5)" in text and "RESIZE CROP" in text
    with pytest.raises(SystemExit):
        _parse(["--data", "d", "--kind", "c"])  # not a choice
    with pytest.raises(SystemExit):
        _parse(["--batch-size", "8"])  # --data is required


def test_smoke_is_the_preset_under_the_flags_given():
    smoke, _ = _parse(["--data", "d", "--smoke", "--rate", "0.9"])
    assert (smoke.batch_size, smoke.rate, smoke.data_dir) == (4, 0.9, "d")


def test_the_record_has_one_schema_and_the_description_gives_each_reason(tmp_path):
    settings = _Config(data_dir="d", batch_size=16, seed=7)
    plan = command.Plan("probe", settings, {"batch_size": "the plan's own"}, {"images": np.int64(100)})
    record = plan.record()
    assert set(record) == {"command", "kitlib", "settings", "chosen", "facts"} and record["command"] == "probe"
    assert record["settings"]["resolution"] is None and record["facts"] == {"images": 100}
    lines = plan.describe().splitlines()
    assert lines[0] == "kitlib probe: images=100" and '    batch_size = 16: the plan\'s own' in lines
    path = plan.save(str(tmp_path / "out"))
    assert json.loads(open(path).read()) == json.loads(json.dumps(record))
    assert os.listdir(tmp_path / "out") == ["config.json"]  # no temporary file left behind
    assert command.read_record(str(tmp_path / "out")) == json.loads(json.dumps(record))
    assert command.read_record(str(tmp_path)) is None
    with pytest.raises(ValueError, match="--data"):
        command.require(_Config(), "data_dir")


def test_a_seed_is_drawn_when_none_is_given_and_a_seeded_run_gives_the_callers_state_back():
    assert command.resolve_seed(5) == (5, None)
    drawn, reason = command.resolve_seed(None)
    assert isinstance(drawn, int) and 0 <= drawn < 2**31 and "--seed" in reason
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), np.random.random())
    random.seed(1)
    np.random.seed(1)
    plan = command.Plan("probe", _Config(data_dir="d", seed=3), {}, {})
    with command.seeded_run(plan):
        inside = (random.random(), np.random.random())
    with command.seeded_run(plan):
        assert (random.random(), np.random.random()) == inside  # repeatable
    assert (random.random(), np.random.random()) == expected  # the caller's generators went on as if untouched
