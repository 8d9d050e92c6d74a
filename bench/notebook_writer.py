"""Shared by the ``bench/make_notebook_NN.py`` scripts: write a notebook from its cells, with no outputs.

Each script holds its notebook as ``CELLS = [("md" | "code", source), ...]``; the cell ids are stable
(``cell-00``, ``cell-01``, ...), so regenerating an unchanged notebook rewrites the same file.
"""

import os

import nbformat

# The first code cell of every notebook: make kitlib importable before anything imports it.
BOOTSTRAP = """\
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")  # kitlib computes with Keras 3 on JAX: set before Keras is imported
for _root in ("..", "/kaggle/input/kitlib", "/kaggle/working/kit"):  # a clone, or an attached Kaggle dataset
    if os.path.isdir(os.path.join(_root, "kitlib")):
        sys.path.insert(0, os.path.abspath(_root)); break
from kitlib import runtime
runtime.check_environment()  # Keras 3 + JAX present, TensorFlow for input (or the one pip line to run)"""


def build(cells):
    """An nbformat v4 notebook for the python3 kernel from ``(kind, source)`` pairs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    make = {"md": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[kind](source) for kind, source in cells]
    for number, cell in enumerate(nb.cells):
        cell.id = f"cell-{number:02d}"
    nbformat.validate(nb)
    return nb


def write_notebook(cells, out):
    """Validate and write the notebook to ``out``; prints and returns the path."""
    nb = build(cells)
    with open(out, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    print(f"wrote {os.path.normpath(out)} ({len(nb.cells)} cells)")
    return out
