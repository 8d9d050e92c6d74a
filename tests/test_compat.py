"""kitlib.compat: Keras 3 on JAX whatever was imported first, TensorFlow only through it, another backend refused with the fix."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import kitlib_modules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _clean_env(**extra):
    """A user's shell: none of the kit's variables (conftest already dropped KERAS_BACKEND; checked here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env

def _python(code, **extra):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          env=_clean_env(**extra), timeout=300)

def test_a_data_first_script_gets_keras_on_jax_in_a_clean_shell():
    done = _python("""
        from kitlib.data import tfrecords
        from kitlib.swav import pretrain
        import keras
        print(keras.backend.backend(), tfrecords.count_data_items(tfrecords.list_tfrecords("data/sample")))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["jax", "100"]

@pytest.mark.slow
def test_importing_tensorflow_first_still_gives_keras_on_jax_and_says_so():
    done = _python("""
        import tensorflow as tf
        from kitlib.swav import model as swav_model
        import keras
        print(keras.backend.backend(), swav_model.SwAVModel.__module__)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "kitlib.swav.model" and done.stdout.split()[-2] == "jax"
    assert "reloaded it on 'jax'" in done.stderr

@pytest.mark.slow
def test_importing_keras_itself_first_is_refused_with_the_fix():
    done = _python("import keras\nfrom kitlib.data import tfrecords")  # reloading would leave `keras` on TensorFlow
    assert done.returncode != 0
    assert "holds it as keras" in done.stderr and "import kitlib (or set os.environ['KERAS_BACKEND'] = 'jax') before keras" in done.stderr

@pytest.mark.slow
def test_a_module_of_every_package_imported_first_gives_keras_on_jax():
    # Python runs kitlib/__init__ (which picks the backend) and the package's __init__ before any module of
    # it, and test_architecture checks that no module but compat imports keras itself: so one module of each
    # package stands for all of them (every module, one fresh interpreter each, took 4 minutes on 2 cores)
    first = {}
    for name in kitlib_modules():
        first.setdefault(name.rpartition(".")[0], name)
    names = sorted({n.removeprefix("kitlib.") for n in first.values()} | {"compat", "cli"})
    assert len(names) >= 7  # kitlib, data, models, swav, bit, kaggle (+ compat, cli)
    # one fresh interpreter per module; each prints the backend it ended with
    code = "import importlib, subprocess, sys\n" + "".join(
        f"subprocess.run([sys.executable, '-c', 'import kitlib.{n}, keras; print(\"{n}\", keras.backend.backend())'],"
        " check=True)\n" for n in names)
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)
    assert seen == {n: "jax" for n in names}


@pytest.mark.slow
def test_kitlib_refuses_another_keras_backend_with_the_fix():
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, "-c", "import kitlib.compat"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert done.returncode != 0 and "KERAS_BACKEND='tensorflow'" in done.stderr and "'jax'" in done.stderr
