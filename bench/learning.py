"""Does SwAV learn features worth having? Frozen-feature kNN and linear probe on real image sets.

For each set (`bench/image_sets.py`: digits, faces, photo tiles, the Cassava sample) it pretrains the
same backbone twice at the same budget, with the kit's small-data rule (`kitlib.swav.recipe.rule`) and with the
paper's recipe (`PretrainConfig` defaults), and scores frozen features against the untrained backbone
and raw pixels:
    knn     weighted kNN (k 20, cosine), leave-one-out over every labelled image
    linear  logistic-regression probe, 5-fold cross-validated
It prints one table per set, writes ``results.json`` and a kNN-over-epochs plot per set.

    python bench/learning.py [--sets digits,faces,photos,sample] [--out runs/learning]

Needs scikit-image for the faces and photo tiles (``pip install -r bench/requirements.txt``).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kitlib  # noqa: E402,F401 - Keras on JAX before image_sets imports TensorFlow
import image_sets  # noqa: E402
from kitlib import runtime  # noqa: E402
from kitlib.compat import keras  # noqa: E402
from kitlib.data import tfrecords
from kitlib.swav import evaluate, geometry, pretrain, recipe


def labelled(data_dir):
    """The labelled training records of a set, in file order."""
    files = tfrecords.list_tfrecords(data_dir)
    return tfrecords.load_dataset(files, labeled=True, ordered=True, num_classes=len(tfrecords.class_names_of(data_dir)))


def score(backbone, data_dir, image_size):
    """{"knn", "linear"} accuracy of a frozen backbone's features of every image at `image_size`
    (leave-one-out kNN, cross-validated probe: `kitlib.swav.evaluate.evaluate_backbone`)."""
    return evaluate.evaluate_backbone(backbone, labelled(data_dir), image_size)


def pixel_score(data_dir, image_size):
    """`score` of the raw pixels themselves: [N, S, S, 3] -> [N, 3 S^2]."""
    inputs = keras.Input((image_size, image_size, 3))
    return score(keras.Model(inputs, keras.layers.Flatten()(inputs)), data_dir, image_size)


def train(config, rt):
    """`pretrain.run` of the config's plan, quietly; returns (result, seconds)."""
    start = time.perf_counter()
    result = pretrain.run(pretrain.plan(config, rt), print_fn=lambda *a: None)
    return result, time.perf_counter() - start


def paper_config(rule_config, image_side):
    """The paper's recipe at the rule run's budget: same data, batch, epochs, K and seed; the paper's
    crops (scaled from 224 px to `image_side`, the rule's big crop), LARS and its lr, warmup, full colour
    distortion and blur, the 2048-wide head, global average pooling (`recipe.paper`'s settings otherwise)."""
    small = max(8, round(image_side * 96 / 224))
    paper = recipe.paper(rule_config.global_batch_size).settings
    paper.update(backbone="small_cnn", crops=f"2x{image_side}@0.14-1,6x{small}@0.05-0.14", epochs=rule_config.epochs,
                 prototypes=rule_config.prototypes, queue_length=0,
                 warmup_epochs=min(paper["warmup_epochs"], rule_config.epochs // 10),
                 freeze_prototypes_niters=None, final_lr=None, max_steps_per_epoch=None)  # resolved per run
    return dataclasses.replace(rule_config, **paper)


def run_set(name, out_root, rt, seed=0, epochs=None, sample_dir=None, print_fn=print):
    """Pretrain with the rule and with the paper's recipe on one set; score all four feature kinds."""
    data_dir = image_sets.prepare(name, os.path.join(out_root, "data"), sample_dir)
    files = tfrecords.list_tfrecords(data_dir)
    rule = pretrain.plan(pretrain.PretrainConfig(data_dir=data_dir, out_dir=os.path.join(out_root, name, "rule"),
                                                 seed=seed, epochs=epochs, verbose=0), rt).settings
    rule = dataclasses.replace(rule, knn_every=max(1, rule.epochs // 10))
    side = geometry.parse_multicrop_spec(rule.crops).size_crops[0]  # the big crops' side
    rows = {"raw pixels": dict(pixel_score(data_dir, side), seconds=0.0),
            "untrained": dict(score(pretrain.random_init_backbone(rule.backbone, seed), data_dir, side), seconds=0.0)}
    curves = {}
    for label, config in (("paper recipe", paper_config(rule, side)), ("rule", rule)):
        config = dataclasses.replace(config, out_dir=os.path.join(out_root, name, label.split()[0]))
        result, seconds = train(config, rt)
        rows[label] = dict(score(result.backbone, data_dir, side), seconds=round(seconds),
                           loss=result.history[-1]["loss"], ln_k=result.ln_k)
        curves[label] = [(h["epoch"], h["knn_acc"]) for h in result.history if "knn_acc" in h]
    summary = dict(set=name, images=tfrecords.count_data_items(files), side=side, epochs=rule.epochs,
                   batch=rule.global_batch_size, prototypes=rule.prototypes, rows=rows, curves=curves)
    print_fn(table(summary))
    return summary


def table(summary):
    s = summary
    lines = [f"\n{s['set']}: {s['images']} images at {s['side']} px, {s['epochs']} epochs at batch {s['batch']}, "
             f"K = {s['prototypes']}",
             "| features | kNN | linear probe | final loss (ln K) | seconds |", "| --- | --- | --- | --- | --- |"]
    for label, row in s["rows"].items():
        loss = f"{row['loss']:.2f} ({row['ln_k']:.2f})" if "loss" in row else "-"
        lines.append(f"| {label} | {row['knn']:.3f} | {row['linear']:.3f} | {loss} | {row['seconds'] or '-'} |")
    return "\n".join(lines)


def plot_curves(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, points in summary["curves"].items():
        if points:
            ax.plot(*zip(*points), marker="o", label=f"SwAV, {label}")
    for label in ("raw pixels", "untrained"):
        ax.axhline(summary["rows"][label]["knn"], ls="--", lw=1, color="gray" if label == "untrained" else "k",
                   label=label)
    ax.set(xlabel="epoch", ylabel="kNN accuracy (leave-one-out)", title=f"{summary['set']}: frozen features")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(image_sets.SETS))
    parser.add_argument("--out", default="runs/learning")
    parser.add_argument("--epochs", type=int, default=None, help="override the rule's epochs (a quick look)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rt = runtime.setup(allow_cpu=True, verbose=False)
    print(f"kitlib learning bench: {rt.num_devices} x {rt.kind}, Keras {keras.__version__} on "
          f"{keras.backend.backend()}, {os.cpu_count()} CPUs")
    results = []
    for name in args.sets.split(","):
        summary = run_set(name, args.out, rt, args.seed, args.epochs)
        summary["plot"] = plot_curves(summary, os.path.join(args.out, f"knn_{name}.png"))
        results.append(summary)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
