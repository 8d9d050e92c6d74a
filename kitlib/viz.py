"""Plots for the notebooks: one function per picture, each returning the matplotlib Figure.

Nothing here changes global matplotlib state (no rcParams, no style.use): figures are created with
``plt.subplots`` and configured through their own axes.
"""

import numpy as np


def _plt():
    import matplotlib.pyplot as plt  # imported lazily so `import kitlib.viz` stays cheap

    return plt


# ============ BiT fine-tuning (kitlib.models.hub / kitlib.bit.finetune) ============


def _short_class_name(name):
    """"Cassava Mosaic Disease (CMD)" -> "CMD"; names without an abbreviation stay as they are."""
    return name.rsplit(" (", 1)[-1].rstrip(")") if name.endswith(")") and " (" in name else name


def plot_bit_schedules(rules, labels=None):
    """Learning rate of ``kitlib.bit.hyperrule.HyperRule`` s: per step, and relative to the peak per fraction
    of the run.

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


# ============ submission (kitlib.bit.submission) ============


def plot_predictions(images, image_ids, probs, class_names, max_images=12, columns=4, labels=None):
    """Test images titled with the predicted disease, its probability and the image id (with `labels`, the
    given label first: ``CMD -> CBSD 0.97``, how ``clean-labels``' suspects are shown).

    Args:
        images: uint8 [H, W, 3] arrays (sizes may differ), e.g. from ``kitlib.data.sources.load_test_images``.
        image_ids: one id per image.
        probs: [N, C] class probabilities in the same order (N >= number of images shown).
        class_names: C names; the part before " (" is shown ("Cassava Mosaic Disease").
        labels: the images' given labels, or None.
    Returns:
        Figure.
    """
    plt = _plt()
    shown = min(len(images), max_images)
    given = [None] * shown if labels is None else list(labels)[:shown]
    probs = np.asarray(probs)[:shown]
    rows = max(1, int(np.ceil(shown / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, image_id, p, was in zip(axes.ravel(), images[:shown], image_ids[:shown], probs, given):
        label = int(np.argmax(p))
        ax.imshow(np.asarray(image))
        name = class_names[label].split(" (")[0] if was is None else (
            f"{_short_class_name(class_names[was])} -> {_short_class_name(class_names[label])}")
        ax.set_title(f"{name} {p[label]:.2f}\n{image_id}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_fold_accuracy(summary):
    """Validation accuracy of each fold of a ``cv`` run (its cv.json), with the mean and the OOF accuracy."""
    plt = _plt()
    accuracy = np.asarray(summary["per_fold_accuracy"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(accuracy), 3))
    ax.bar(np.arange(len(accuracy)), accuracy, color="tab:blue")
    ax.axhline(summary["mean_accuracy"], color="black", lw=1, label=f"mean {summary['mean_accuracy']:.3f}")
    ax.axhline(summary["oof_accuracy"], color="tab:orange", ls="--", lw=1, label=f"OOF {summary['oof_accuracy']:.3f}")
    ax.set(xticks=np.arange(len(accuracy)), xlabel="fold", ylabel="validation accuracy", ylim=(0, 1),
           title=f"{len(accuracy)}-fold CV")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_tta_views(views, names, columns=4):
    """The test-time-augmentation views of one image, as the model sees them.

    Args:
        views: [V, S, S, 3] float in [0, 1] (``kitlib.bit.tta.tta_views``).
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


# ============ SwAV pretraining (kitlib.swav.model / kitlib.swav.pretrain / kitlib.swav.evaluate) ============


def _history_columns(history):
    """{metric: list} from a list of per-epoch dicts (history.csv rows) or a Keras History.history dict."""
    if isinstance(history, dict):
        return {k: list(v) for k, v in history.items()}
    keys = {k for row in history for k in row}
    return {k: [row.get(k, np.nan) for row in history] for k in keys}


def plot_swav_history(history, ln_k):
    """SwAV loss per epoch against the collapse floor ln K, and prototype-usage entropy.

    Args:
        history: history.csv rows (``kitlib.checkpoint.read_history``) or ``History.history``.
        ln_k: ln of the number of prototypes (``SwAVModel.ln_k``).
    Returns:
        Figure with two axes: loss vs ln K; usage entropy vs its maximum ln K.
    """
    plt = _plt()
    cols = _history_columns(history)
    loss = cols.get("loss", [])
    epochs = cols.get("epoch", list(range(1, len(loss) + 1)))
    fig, (ax_loss, ax_use) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax_loss.plot(epochs, loss, "-o", ms=3, label="SwAV loss")
    ax_loss.axhline(ln_k, color="crimson", ls="--", label=f"ln K = {ln_k:.2f} (collapse)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss must fall clearly below ln K")
    if "usage_entropy" in cols:
        ax_use.plot(epochs, cols["usage_entropy"], "-o", ms=3, color="seagreen", label="usage entropy")
    ax_use.axhline(ln_k, color="gray", ls=":", label="ln K: every prototype used equally")
    ax_use.set(xlabel="epoch", ylabel="nats", title="prototype-usage entropy")
    for ax in (ax_loss, ax_use):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_prototype_usage(fractions):
    """Share of crops whose best prototype is k, sorted, against the uniform share 1/K.

    Args:
        fractions: [K] non-negative, summing to 1 (``kitlib.swav.model.prototype_usage``).
    Returns:
        Figure: a few tall bars and many empty ones mean a near-collapse onto few prototypes.
    """
    plt = _plt()
    share = np.sort(np.asarray(fractions, float))[::-1]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(np.arange(len(share)), share, width=1.0, color="steelblue")
    ax.axhline(1.0 / len(share), color="crimson", ls="--", label="uniform 1/K")
    used = int(np.sum(share > 0))
    ax.set(xlabel="prototypes, most used first", ylabel="share of crops",
           title=f"prototype usage: {used} of {len(share)} prototypes used")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_quality(results):
    """Bars of kNN (and linear-probe) accuracy per backbone, e.g. random init vs SwAV.

    Args:
        results: {backbone name: {"knn": acc, "linear": acc}} (``kitlib.swav.evaluate.compare_backbones``).
    Returns:
        Figure.
    """
    plt = _plt()
    names = list(results)
    metrics = sorted({m for r in results.values() for m in r})
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(names), 3.2))
    for i, metric in enumerate(metrics):
        values = [results[n].get(metric, np.nan) for n in names]
        bars = ax.bar(np.arange(len(names)) + i * width, values, width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(np.arange(len(names)) + width * (len(metrics) - 1) / 2, names)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title="frozen features on the labelled split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ============ multi-crop augmentation (kitlib.swav.multicrop, kitlib.swav.color) ============


def _as_display(image):
    """uint8 or float [0, 1] image -> float [0, 1] array for imshow."""
    image = np.asarray(image)
    return image / 255.0 if image.dtype == np.uint8 else np.clip(image, 0.0, 1.0)


def show_crops(crops, sources=None, max_rows=6, title=None):
    """One row per example: its source image (when given), then ALL of its crops, so one sees they
    share the image.

    Args:
        crops: tuple of V arrays/tensors [n, S, S, 3] float [0, 1], big crops first (a multi-crop
            batch, or `kitlib.swav.multicrop.multicrop_preview`'s crops).
        sources: None, or the n source images [H, W, 3] (uint8 or float [0, 1]), e.g. from
            `kitlib.swav.multicrop.multicrop_preview`.
        max_rows: rows drawn at most.
    Returns:
        Figure with min(n, max_rows) rows and V columns (1 + V with sources); crop axes are drawn to
        scale (a 96 px crop is drawn smaller than a 224 px one).
    """
    plt = _plt()
    crops = [np.asarray(c) for c in crops]
    rows, sizes, lead = min(len(crops[0]), max_rows), [c.shape[1] for c in crops], int(sources is not None)
    widths = [max(sizes) * 1.4] * lead + sizes
    fig, axes = plt.subplots(rows, lead + len(crops), figsize=(1.6 * lead + 1.25 * len(crops), 1.6 * rows),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for r in range(rows):
        if sources is not None:
            axes[r, 0].imshow(_as_display(sources[r]))
            axes[r, 0].set_ylabel(f"image {r}", fontsize=8)
        for v, crop in enumerate(crops):
            axes[r, lead + v].imshow(_as_display(crop[r]))
            axes[r, lead + v].set_box_aspect(1)
            axes[r, lead + v].set_anchor("N")
            if r == 0:
                axes[0, lead + v].set_title(f"crop {v}\n{sizes[v]} px", fontsize=8)
    if sources is not None:
        axes[0, 0].set_title("source", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_augmentations(gallery, max_columns=6):
    """One row per augmentation, a few independent draws per row.

    Args:
        gallery: dict name -> [draws, S, S, 3] float [0, 1] (`kitlib.swav.color_host.augmentation_gallery`).
    Returns:
        Figure with len(gallery) rows.
    """
    plt = _plt()
    draws = min(max_columns, min(len(v) for v in gallery.values()))
    fig, axes = plt.subplots(len(gallery), draws, figsize=(1.5 * draws + 1.2, 1.5 * len(gallery)),
                             squeeze=False)
    for r, (name, images) in enumerate(gallery.items()):
        for c in range(draws):
            axes[r, c].imshow(_as_display(images[c]))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def plot_crop_distributions(stats, ratio=(3 / 4, 4 / 3), bins=30):
    """Histograms of the crop windows actually drawn: area fraction and aspect ratio, per group.

    Args:
        stats: dict label -> {"area": [n], "aspect": [n], "scale": (lo, hi)} (`kitlib.swav.multicrop.window_stats`).
        ratio: allowed aspect range (dashed lines).
    Returns:
        Figure with two axes: area fraction of the image (dashed: each group's scale range) and
        aspect ratio w/h on a log axis (dashed: ``ratio``).
    """
    plt = _plt()
    fig, (ax_area, ax_aspect) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (label, s) in enumerate(stats.items()):
        color = f"C{i}"
        ax_area.hist(s["area"], bins=bins, alpha=0.6, color=color, label=label)
        for bound in s["scale"]:
            ax_area.axvline(bound, color=color, linestyle="--", linewidth=1)
        ax_aspect.hist(s["aspect"], bins=np.geomspace(ratio[0], ratio[1], bins + 1), alpha=0.6,
                       color=color, label=label)
    for bound in ratio:
        ax_aspect.axvline(bound, color="k", linestyle="--", linewidth=1)
    ax_area.set(xlabel="area of the crop window / area of the image", ylabel="crops",
                title="area: uniform in each group's range")
    ax_aspect.set(xlabel="aspect ratio w / h of the window", xlim=(ratio[0] * 0.9, ratio[1] / 0.9),
                  xticks=[ratio[0], 1.0, ratio[1]], xticklabels=[f"{ratio[0]:.2f}", "1", f"{ratio[1]:.2f}"],
                  title=f"aspect: within [{ratio[0]:.2f}, {ratio[1]:.2f}]")
    for ax in (ax_area, ax_aspect):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- end of viz (keep this line last) ----
