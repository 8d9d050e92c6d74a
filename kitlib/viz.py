"""Plots for the notebooks: one function per picture, each returning the matplotlib Figure.

Nothing here changes global matplotlib state (no rcParams, no style.use): figures are created with
``plt.subplots`` and configured through their own axes.
"""

import numpy as np


def _plt():
    import matplotlib.pyplot as plt  # imported lazily so `import kitlib.viz` stays cheap

    return plt


# ============ BiT fine-tuning (kitlib.bit / kitlib.finetune) ============


def _short_class_name(name):
    """"Cassava Mosaic Disease (CMD)" -> "CMD"; names without an abbreviation stay as they are."""
    return name.rsplit(" (", 1)[-1].rstrip(")") if name.endswith(")") and " (" in name else name


def plot_bit_schedules(rules, labels=None):
    """Learning rate of ``kitlib.bit.HyperRule`` s: per step, and relative to the peak per fraction of the run.

    Args:
        rules: HyperRule objects (e.g. the same data at batch 64, 128 and 512).
        labels: legend entries (default "B=<batch>").
    Returns:
        Figure with two axes: lr vs step (linear), lr / peak vs step / total_steps (log y), where
        warmup and decays of every batch size should coincide.
    """
    plt = _plt()
    labels = labels or [f"B={rule.batch_size}" for rule in rules]
    fig, (ax_steps, ax_frac) = plt.subplots(1, 2, figsize=(11, 3.6))
    for rule, label in zip(rules, labels):
        steps = np.arange(rule.total_steps)
        lr = np.asarray(rule.lr_schedule(steps))
        ax_steps.plot(steps, lr, label=f"{label} (peak {rule.base_lr:.2g})")
        ax_frac.plot(steps[1:] / rule.total_steps, lr[1:] / rule.base_lr, label=label)
    ax_steps.set(xlabel="step", ylabel="learning rate", title="BiT-HyperRule schedule")
    ax_frac.set(xlabel="fraction of the run", ylabel="lr / peak lr", yscale="log",
                title="phases at the same fraction for every batch")
    for ax in (ax_steps, ax_frac):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_mixup_grid(images, labels, class_names, max_images=8, columns=4):
    """Images of a (MixUp) batch, titled with their soft labels' two largest classes.

    Args:
        images: [B, H, W, 3] float in [0, 1].
        labels: [B, C] one-hot or mixed labels.
        class_names: C names (shown by their abbreviation, e.g. "CMD").
    Returns:
        Figure.
    """
    plt = _plt()
    images, labels = np.asarray(images)[:max_images], np.asarray(labels)[:max_images]
    short = [_short_class_name(name) for name in class_names]
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label in zip(axes.ravel(), images, labels):
        ax.imshow(np.clip(image, 0, 1))
        top = np.argsort(label)[::-1][:2]
        parts = [f"{label[c]:.2f} {short[c]}" for c in top if label[c] > 0.005]
        ax.set_title("\n".join(parts), fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix, class_names, normalize=True, title="confusion matrix"):
    """Confusion matrix (rows = true class, columns = predicted), counts written in the cells.

    Args:
        matrix: int [C, C] from sklearn ``confusion_matrix``.
        class_names: C names.
        normalize: colour by the share of each true class (row); cells still show counts.
    Returns:
        Figure.
    """
    plt = _plt()
    matrix = np.asarray(matrix)
    shade = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    short = [_short_class_name(name) for name in class_names]
    size = 1.0 + 0.8 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class" if normalize else "count")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if shade[i, j] > 0.6 * shade.max() else "black")
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=short, yticklabels=short, xlabel="predicted", ylabel="true",
           title=title)
    fig.tight_layout()
    return fig


def plot_training_history(history, metrics=("loss", "accuracy")):
    """Training and validation curves per epoch from a Keras ``History.history`` dict.

    Returns:
        Figure with one axis per metric (train, and ``val_<metric>`` when present).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--o")):
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set(xlabel="evaluation round (epoch)", ylabel=metric)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ============ submission (kitlib.submission) ============


def plot_predictions(images, image_ids, probs, class_names, max_images=12, columns=4):
    """Test images titled with the predicted disease, its probability and the image id.

    Args:
        images: uint8 [H, W, 3] arrays (sizes may differ), e.g. from ``submission.load_images``.
        image_ids: one id per image.
        probs: [N, C] class probabilities in the same order (N >= number of images shown).
        class_names: C names; the part before " (" is shown ("Cassava Mosaic Disease").
    Returns:
        Figure.
    """
    plt = _plt()
    shown = min(len(images), max_images)
    probs = np.asarray(probs)[:shown]
    rows = max(1, int(np.ceil(shown / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, image_id, p in zip(axes.ravel(), images[:shown], image_ids[:shown], probs):
        label = int(np.argmax(p))
        ax.imshow(np.asarray(image))
        ax.set_title(f"{class_names[label].split(' (')[0]} {p[label]:.2f}\n{image_id}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_tta_views(views, names, columns=4):
    """The test-time-augmentation views of one image, as the model sees them.

    Args:
        views: [V, S, S, 3] float in [0, 1] (``submission.tta_views``).
        names: V view names.
    Returns:
        Figure.
    """
    plt = _plt()
    views = np.asarray(views)
    rows = max(1, int(np.ceil(len(views) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, view, name in zip(axes.ravel(), views, names):
        ax.imshow(np.clip(view, 0, 1))
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


# ---- end of viz (keep this line last) ----
