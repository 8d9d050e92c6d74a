"""The kit's architecture, checked from the source (``ast``; nothing is imported but in the last test).

- No import cycles between kitlib modules: a cycle makes import order matter and half-initialised modules.
- Layers: a module imports only its own rank or lower, so the base never depends on the pipelines above it.
- Package ``__init__``s import nothing of the kit, so ``import kitlib.swav`` costs nothing and hides no edge.
- SwAV and BiT never import each other: fine-tuning takes any backbone, pretraining knows nothing of transfer.
- TensorFlow and a direct ``import keras`` stay in compat (tf_keras nowhere): the backend is set first.
- No module over 400 lines and no function over 60: each stays readable and reviewable as one piece.
- ``import kitlib`` and its packages load no TensorFlow, Keras, JAX or NumPy: ``--help`` and notebooks start fast.
- Tests mirror the layout: ``kitlib/<pkg>/<mod>.py`` is tested in ``tests/<pkg>/test_<mod>.py``, and every test
  module names a kit module (or is one of the repository's own: architecture, names, notebooks, bench).

Every import counts, those inside functions included.
"""

import ast
import functools
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

KITLIB = pathlib.Path(REPO) / "kitlib"

# Rank of every module (a package's rank covers its submodules); an import may not point to a higher rank.
RANKS = {
    "kitlib.compat": 0,
    "kitlib": 1, "kitlib.runtime": 1, "kitlib.locations": 1, "kitlib.sharding": 1, "kitlib.command": 1,
    "kitlib.preflight": 1, "kitlib.viz": 1, "kitlib.hosts": 1, "kitlib.checks": 1, "kitlib.checkpoint": 1,
    "kitlib.data": 2, "kitlib.models": 2,
    "kitlib.swav": 3, "kitlib.bit": 3,
    "kitlib.kaggle": 4, "kitlib.demo": 4, "kitlib.cli": 4, "kitlib.__main__": 4,
}
# Third-party packages only the named modules may import (compat sets Keras's backend before anything
# loads it, and is the one place that reads TF's and Keras's private seed state). tf_keras: nowhere.
RESTRICTED = {
    "tensorflow": {"kitlib.compat"},
    "tf_keras": set(),
    "keras": {"kitlib.compat"},
    "tensorflow_hub": {"kitlib.models.bit_weights"},  # resolving a TF-Hub handle only
    "tensorflow_datasets": {"kitlib.data.sources"},  # tfds:NAME only
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
PACKAGES = ("kitlib", "kitlib.data", "kitlib.models", "kitlib.swav", "kitlib.bit", "kitlib.kaggle")


@functools.cache
def modules():
    """{dotted name: (path, parsed source)} for every .py file under kitlib/ (``__main__`` included)."""
    found = {}
    for path in sorted(KITLIB.rglob("*.py")):
        parts = path.relative_to(KITLIB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return found


REPOSITORY_TESTS = ("test_architecture", "test_names", "test_notebooks")  # about the repository, not one module


def test_tests_mirror_the_layout():
    tests = pathlib.Path(REPO) / "tests"
    have = {p.relative_to(tests).with_suffix("").as_posix() for p in tests.rglob("test_*.py")}
    wanted = {}
    for name, (path, tree) in modules().items():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
            parts = name.split(".")[1:]
            wanted["/".join(parts[:-1] + [f"test_{parts[-1]}"])] = name
    untested = sorted(f"{module} (tests/{test}.py)" for test, module in wanted.items() if test not in have)
    assert not untested, f"kit modules without their test module: {untested}"
    orphans = sorted(t for t in have - set(wanted)
                     if not t.startswith("test_bench_") and t not in REPOSITORY_TESTS)
    assert not orphans, f"test modules that name no kit module (rename or move them): {orphans}"


def _known(name):
    """`name`, or the longest prefix of it that is a kitlib module."""
    while name not in modules():
        name = name.rpartition(".")[0]
    return name


def imports(name):
    """(kitlib modules, top-level third-party names) that module `name` imports anywhere in its source."""
    path, tree = modules()[name]
    kit, other = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
            kit |= {_known(t) for t in targets if t.split(".")[0] == "kitlib"}
            other |= {t.split(".")[0] for t in targets if t.split(".")[0] != "kitlib"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "kitlib":
                other.add(base.split(".")[0])
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                kit.add(sub if sub in modules() else _known(base))
    kit.discard(name)
    return kit, other


def rank(name):
    """The rank of `name` or of its nearest enclosing subpackage ("kitlib.swav"); None when neither has one."""
    while name not in RANKS and name.count(".") > 1:
        name = name.rpartition(".")[0]
    return RANKS.get(name)


def test_no_import_cycle():
    graph = {name: imports(name)[0] for name in modules()}
    state = {}  # name -> "visiting" | "done"

    def visit(name, trail):
        state[name] = "visiting"
        for target in sorted(graph[name]):
            if state.get(target) == "visiting":
                cycle = trail[trail.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_package_inits_import_nothing_of_the_kit():
    inits = {name for name, (path, _) in modules().items() if path.name == "__init__.py"}
    bad = {name: sorted(imports(name)[0] - {"kitlib"}) for name in inits}
    bad = {name: targets for name, targets in bad.items() if targets}
    assert not bad, f"package __init__s import kitlib modules (keep them to a docstring): {bad}"


def test_every_module_has_a_rank():
    missing = sorted(name for name in modules() if rank(name) is None)
    assert not missing, f"modules without a layer: {missing}; add each to RANKS in {__file__}"


def test_no_module_imports_a_higher_layer():
    upward = [f"{name} (rank {rank(name)}) imports {target} (rank {rank(target)})"
              for name in sorted(modules()) if rank(name) is not None
              for target in sorted(imports(name)[0]) if (rank(target) or 0) > rank(name)]
    assert not upward, "imports up the layers:\n  " + "\n  ".join(upward)


def test_swav_and_bit_are_independent():
    def pipeline(name):  # "kitlib.swav.model" -> "swav"
        return name.split(".")[1] if "." in name else None

    crossing = [f"{name} imports {target}" for name in sorted(modules()) for target in sorted(imports(name)[0])
                if {pipeline(name), pipeline(target)} == {"swav", "bit"}]
    assert not crossing, "kitlib.swav and kitlib.bit import each other:\n  " + "\n  ".join(crossing)


def test_tensorflow_and_keras_only_where_allowed():
    found = {package: {name for name in modules() if package in imports(name)[1]} for package in RESTRICTED}
    extra = {package: sorted(found[package] - allowed) for package, allowed in RESTRICTED.items()}
    extra = {package: names for package, names in extra.items() if names}
    assert not extra, (f"imported outside their allowed modules: {extra}; "
                       "use `from kitlib.compat import keras, tf` instead")
    stale = {package: sorted(allowed - found[package]) for package, allowed in RESTRICTED.items()}
    stale = {package: names for package, names in stale.items() if names}
    assert not stale, f"allowed but no longer imported there (narrow RESTRICTED): {stale}"


def test_module_and_function_sizes():
    long_modules, long_functions = [], []
    for name, (path, tree) in sorted(modules().items()):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} (line {node.lineno}): {length} lines")
    assert not long_modules + long_functions, (
        f"modules over {MAX_MODULE_LINES} lines: {long_modules or 'none'}\n"
        f"functions over {MAX_FUNCTION_LINES} lines: {long_functions or 'none'}\nsplit them")


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_is_cheap(package):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    code = (f"import {package}, sys; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"`import {package}` loads {done.stdout.strip()}"
