"""Plots for the notebooks: one function per picture, each returning the matplotlib Figure.

Nothing here changes global matplotlib state (no rcParams, no style.use): figures are created with
``plt.subplots`` and configured through their own axes.
"""

import numpy as np


def _plt():
    import matplotlib.pyplot as plt  # imported lazily so `import kitlib.viz` stays cheap

    return plt


# ---- end of viz (keep this line last) ----
