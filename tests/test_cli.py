"""kitlib.cli: every command in a clean shell, one-line user errors with exit code 2, a library's own error keeps its traceback."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kitlib import cli
from tests.conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _clean_env(**extra):
    """A user's shell: none of the kit's variables (conftest already dropped KERAS_BACKEND; checked here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env

def _kitlib(*argv, cwd=REPO, **extra):
    return subprocess.run([sys.executable, "-m", "kitlib", *argv], capture_output=True, text=True, cwd=cwd,
                          env=_clean_env(**extra), timeout=300)

def _error_line(stderr):
    """The one line a user error prints (TensorFlow's C++ start-up lines aside)."""
    lines = [line for line in stderr.splitlines() if line.strip() and "external/local_xla" not in line
             and "tensorflow/core" not in line and "cpu_feature_guard" not in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]

def test_the_suite_itself_runs_without_keras_backend():
    assert "KERAS_BACKEND" not in os.environ  # conftest dropped it: subprocesses start as a clean shell

def test_make_sample_works_in_a_clean_shell(tmp_path):
    done = _kitlib("make-sample", "--out", str(tmp_path / "s"), "--per-class", "2", "--test", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(os.listdir(tmp_path / "s" / "train_images")) == 10 and "Traceback" not in done.stderr

@pytest.mark.slow
def test_every_help_works_in_a_clean_shell():
    every = [["--help"]] + [[name, "--help"] for name in cli.COMMANDS] + [["kaggle", "push", "--help"]]
    # `python -m kitlib` once per command in one clean interpreter (a fresh one each took 45 s): the first
    # `python -m kitlib --help` is the one that starts from nothing imported
    done = _kitlib("--help")
    assert done.returncode == 0 and "usage:" in done.stdout and "Traceback" not in done.stderr, done.stderr
    code = textwrap.dedent(f"""
        import runpy, sys
        for argv in {every[1:]!r}:
            sys.argv = ["kitlib", *argv]
            print("=== " + " ".join(argv), flush=True)
            try:
                runpy.run_module("kitlib", run_name="__main__", alter_sys=True)
            except SystemExit as end:
                print("exit", end.code, flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=_clean_env(),
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    sections = done.stdout.split("=== ")[1:]
    assert [s.splitlines()[0] for s in sections] == [" ".join(argv) for argv in every[1:]]
    for section in sections:
        assert "usage: python -m kitlib" in section and section.rstrip().endswith("exit 0"), section[-500:]

@pytest.mark.parametrize("argv, expected", [
    (["pretrain", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "no train shards match '{tmp}/nowhere/"),
    (["pretrain", "--data", "{sample}", "--out", "{tmp}/o", "--crops", "2x64,bad", "--verbose", "0"],
     "malformed multi-crop spec '2x64,bad'"),
    (["finetune", "--data", "{tmp}/nowhere", "--backbone", "{tmp}/no-model", "--out", "{tmp}/o"], "no-model"),
    (["predict", "--data", "{sample}", "--model", "{tmp}", "--out", "{tmp}/s.csv"], "neither a classifier folder"),
    (["make-sample", "--out", "/proc/no/such/dir"], "No such file or directory: '/proc/no"),
    (["demo", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "no train shards match"),
])
def test_a_user_error_is_one_line_and_exit_code_2(argv, expected, tmp_path, sample_dir, capsys):
    def fill(text):
        return text.format(tmp=tmp_path, sample=sample_dir)

    assert cli.main([fill(a) for a in argv]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"kitlib {argv[0]}: error: ") and fill(expected) in line

@pytest.mark.slow
@pytest.mark.matrix
def test_a_batch_that_does_not_split_over_eight_devices_is_one_line(tmp_path, sample_dir):
    done = _kitlib("pretrain", "--data", sample_dir, "--out", str(tmp_path / "o"), "--batch-size", "12",
                   XLA_FLAGS=xla_flags(8))
    assert done.returncode == 2
    assert _error_line(done.stderr) == ("kitlib pretrain: error: --batch-size 12 does not split evenly over 8 "
                                        "device(s): use a multiple of 8 (e.g. --batch-size 16).")

def test_an_error_from_inside_a_library_keeps_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "kit_probe_cmd.py").write_text(textwrap.dedent("""
        import numpy as np
        from kitlib import runtime
        def add_arguments(parser):
            parser.add_argument("--where")
        def run_args(args):
            if args.where == "kitlib":
                runtime.check_global_batch(12, 8)   # the kit checked it: a user error
            np.zeros(-1)                            # numpy's own ValueError: a bug to report
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "probe", ("kit_probe_cmd", "a probe"))
    assert cli.main(["probe", "--where", "kitlib"]) == 2
    with pytest.raises(ValueError, match="negative dimensions"):
        cli.main(["probe", "--where", "numpy"])


def test_cli_lists_commands_and_rejects_unknown_ones():
    help_out = subprocess.run([sys.executable, "-m", "kitlib", "--help"], capture_output=True, text=True, cwd=REPO)
    assert help_out.returncode == 0 and "make-sample" in help_out.stdout
    bad = subprocess.run([sys.executable, "-m", "kitlib", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def _steps_in_own_processes(steps, tmp_path):
    """Run each step (a list of argv) in its own clean interpreter, as a notebook or a command per step does;
    returns, per step, the exit codes and the stderr of each argv."""
    results = []
    for argvs in steps:
        code = textwrap.dedent(f"""
            import contextlib, io, json
            from kitlib import cli
            for argv in {argvs!r}:
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    code = cli.main(argv)
                print(json.dumps([code, err.getvalue()[-2000:]]), flush=True)
            """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env=_clean_env(), timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append([json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")])
    return results


@pytest.mark.slow
def test_every_backbones_artefacts_load_in_a_new_process_at_each_step(tmp_path, sample_dir):
    """pretrain -> finetune -> cv -> predict, each step in a fresh process, for every kit backbone and BiT: a
    classifier holding a kit layer (PyramidPool, GridPool, BiT's GroupNorm) loads where it was not built."""
    from kitlib.models import backbones, bit_weights, resnetv2  # noqa: PLC0415

    bit = bit_weights.save_npz(resnetv2.build(name_or_arch=(None, 0.25), num_units=(1, 1, 1, 1), groups=4),
                               str(tmp_path / "BiT-M-R50x1.npz"))  # a tiny BiT in the official naming
    small = ["--smoke", "--steps", "2", "--batch-size", "8", "--resolution", "40", "32", "--verbose", "0"]
    pretrain = [["pretrain", "--data", sample_dir, "--out", f"pre_{name}", "--backbone", name, "--epochs", "0",
                 "--verbose", "0", "--batch-size", "8"] for name in backbones.KIT_NAMES]
    sources = [f"pre_{name}" for name in backbones.KIT_NAMES] + [bit]
    finetune = [["finetune", "--data", sample_dir, "--backbone", src, "--out", f"ft_{i}", *small]
                for i, src in enumerate(sources)]
    cv = [["cv", "--data", sample_dir, "--backbone", "pre_small_cnn_pyramid", "--out", "cv", "--folds", "2",
           "--labels-per-class", "3", *small]]  # the few-label regime inside each fold
    members = [f"ft_{i}" for i in range(len(sources))] + ["cv"]
    predict = [["predict", "--data", sample_dir, "--model", m, "--out", f"sub_{m}.csv", "--smoke", "--verbose", "0"]
               for m in members]
    for step, outcomes in zip(("pretrain", "finetune", "cv", "predict"),
                              _steps_in_own_processes([pretrain, finetune, cv, predict], tmp_path)):
        for code, err in outcomes:
            assert code == 0, f"{step}: {err}"
    for m in members:
        with open(tmp_path / f"sub_{m}.csv") as f:
            assert f.readline().strip() == "image_id,label" and len(f.readlines()) >= 1
