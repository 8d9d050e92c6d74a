"""Every ``kitlib.`` dotted name and every ``kitlib/...py`` path that the kit's source, the READMEs, the bench
scripts and the notebooks mention exists: a module moved or a symbol renamed leaves no stale reference behind.

A name resolves when its longest module prefix imports and the rest are attributes (a class's methods
included: ``kitlib.swav.pretrain.PretrainConfig``). File names (``kitlib.zip``, ``kitlib.egg-info``) are no names.
In code (Python files, notebook cells, the READMEs' ```python blocks) ``from kitlib.x import a`` counts as
``kitlib.x.a``, and ``a.b`` after it as ``kitlib.x.a.b`` where ``a`` is a module: the notebooks' code is
checked here in seconds, not only when nbmake runs it.
"""

import ast
import glob
import importlib
import importlib.util
import json
import os
import re

import pytest

from tests.conftest import REPO

NAME = re.compile(r"(?<![\w./-])kitlib(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?![\w-])")
FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PATH = re.compile(r"(?<![\w./-])kitlib/(?:[A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py\b")
FILE_SUFFIXES = {"py", "pyc", "zip", "json", "csv", "md", "txt", "toml", "ipynb", "npz", "keras", "h5", "tar",
                 "gz", "whl", "egg", "log", "png"}


def sources():
    """(path relative to the repo, [(where, text)]): whole files, and a notebook's cells one by one."""
    files = sorted(glob.glob(os.path.join(REPO, "kitlib", "**", "*.py"), recursive=True))
    files += [os.path.join(REPO, "README.md"), os.path.join(REPO, "bench", "README.md")]
    files += sorted(glob.glob(os.path.join(REPO, "bench", "*.py")))
    files += sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(path, REPO)
        if path.endswith(".ipynb"):
            cells = json.loads(text)["cells"]
            yield rel, [(f"cell {i}" if cell["cell_type"] == "code" else f"cell {i} ({cell['cell_type']})",
                         "".join(cell["source"])) for i, cell in enumerate(cells)]
        else:
            yield rel, [("line", text)]


def mentions(pattern):
    """{match: ["path:line" or "path cell N", ...]} for every match of `pattern` in `sources()`."""
    found = {}
    for rel, parts in sources():
        for where, text in parts:
            for match in pattern.finditer(text):
                at = (f"{rel}:{text.count(chr(10), 0, match.start()) + 1}" if where == "line"
                      else f"{rel} {where}")
                found.setdefault(match.group(0), []).append(at)
    return found


def _is_kit_module(dotted):
    try:
        return importlib.util.find_spec(dotted) is not None
    except ImportError:  # a parent that is no package (``kitlib.compat.keras``), or none at all
        return False


def code_blocks():
    """(where, first line or None, code): each Python file, each notebook code cell (shell and magic lines
    blanked; None: ``where`` names the cell), each ```python block of a README."""
    for rel, parts in sources():
        for where, text in parts:
            if rel.endswith(".py"):
                yield rel, 1, text
            elif rel.endswith(".ipynb"):
                if where.endswith(")"):  # a markdown or raw cell
                    continue
                lines = ("" if line.lstrip().startswith(("!", "%")) else line for line in text.splitlines())
                yield f"{rel} {where}", None, "\n".join(lines)
            else:
                for block in FENCED_PYTHON.finditer(text):
                    yield rel, text.count("\n", 0, block.start(1)) + 1, block.group(1)


def code_names():
    """{"kitlib.x.a": [where, ...]} for every ``from kitlib.x import a`` in `code_blocks`, and, where that binds
    a kit module (``from kitlib import data``), every ``data.attr`` of the same file or notebook."""
    found, trees = {}, {}
    for rel, first, code in code_blocks():
        try:
            tree = ast.parse(code)
        except SyntaxError:  # a README's sketch, or broken code (nbmake and the imports say so)
            continue
        trees.setdefault(rel.split(" cell ")[0], []).append((rel, first, tree))

    def at(rel, first, node):
        return rel if first is None else f"{rel}:{first + node.lineno - 1}"

    for blocks in trees.values():
        bound = {}
        for rel, first, tree in blocks:
            for node in ast.walk(tree):
                if (isinstance(node, ast.ImportFrom) and not node.level
                        and (node.module or "").split(".")[0] == "kitlib"):
                    for alias in node.names:
                        found.setdefault(f"{node.module}.{alias.name}", []).append(at(rel, first, node))
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        modules = {name: dotted for name, dotted in bound.items() if _is_kit_module(dotted)}
        for rel, first, tree in blocks:
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                    found.setdefault(f"{modules[node.value.id]}.{node.attr}", []).append(at(rel, first, node))
    return found


def resolve(name):
    """The object `name` names: the longest module prefix imported, then attributes. Raises if there is none."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i in range(1, len(parts)):
        dotted = ".".join(parts[:i + 1])
        if hasattr(obj, "__path__") and importlib.util.find_spec(dotted) is not None:  # a submodule
            obj = importlib.import_module(dotted)
        else:
            obj = getattr(obj, parts[i])
    return obj


def test_every_dotted_kitlib_name_in_the_source_docs_and_notebooks_resolves():
    names = {n: at for n, at in mentions(NAME).items() if n.rsplit(".", 1)[-1] not in FILE_SUFFIXES}
    for name, at in code_names().items():
        names[name] = sorted(set(names.get(name, [])) | set(at))
    assert len(names) > 50  # the pattern still finds what it should
    unresolved = []
    for name, at in sorted(names.items()):
        try:
            resolve(name)
        except Exception as e:  # noqa: BLE001 - any failure to import or look up is a stale name
            unresolved.append(f"{name} ({type(e).__name__}: {e}) in {', '.join(at)}")
    if unresolved:
        pytest.fail("names that do not resolve:\n" + "\n".join(unresolved), pytrace=False)


def test_every_kitlib_file_path_in_the_source_docs_and_notebooks_exists():
    paths = mentions(PATH)
    assert paths  # the pattern still finds what it should
    missing = [f"{path} in {', '.join(at)}" for path, at in sorted(paths.items())
               if not os.path.isfile(os.path.join(REPO, path))]
    if missing:
        pytest.fail("paths that do not exist:\n" + "\n".join(missing), pytrace=False)
