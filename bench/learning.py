"""Does SwAV learn features worth having? Frozen-feature kNN and linear probe on real image sets.

For each set (`bench/image_sets.py`: digits at 32 and 64 px, faces, photo tiles at 32 and 96 px, the Cassava
sample) it pretrains twice at the same time budget (`kitlib.swav.budget`: the plan times the steps, then
fixes the epochs), with the kit's default (`kitlib.swav.recipe.rule`, what ``python -m kitlib pretrain``
does) and with the paper's recipe, and scores frozen features against the untrained backbone and raw pixels:
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


def train(config, rt, paper=False):
    """Plan (the budget's timing included) and run `config` quietly; returns (result, seconds in all).

    With `paper`, the warmup is the paper's share of the run (10 of its 100 epochs) once the budget has set
    the epochs. The kNN checks (5 over the run) are inside the seconds."""
    start = time.perf_counter()
    plan = pretrain.plan(config, rt)
    s = plan.settings
    s = dataclasses.replace(s, knn_every=max(1, s.epochs // 5),
                            warmup_epochs=min(10, s.epochs // 10) if paper else s.warmup_epochs)
    result = pretrain.run(dataclasses.replace(plan, settings=s), print_fn=lambda *a: None)
    return result, time.perf_counter() - start


def paper_config(rule_config, image_side):
    """The paper's recipe at the rule run's budget: same data, batch, K, seed and time budget (or the same
    epochs, when they were given); the paper's crops (scaled from 224 px to `image_side`, the rule's big
    crop), LARS and its lr, full colour distortion and blur, the 2048-wide head, global average pooling
    (`recipe.paper`'s settings otherwise)."""
    small = max(8, round(image_side * 96 / 224))
    paper = recipe.paper(rule_config.global_batch_size).settings
    timed = bool(rule_config.budget_minutes) and rule_config.epochs is None
    paper.update(backbone="small_cnn", crops=f"2x{image_side}@0.14-1,6x{small}@0.05-0.14",
                 epochs=None if timed else rule_config.epochs, budget_minutes=rule_config.budget_minutes,
                 prototypes=rule_config.prototypes, queue_length=0, warmup_epochs=None,
                 freeze_prototypes_niters=None, final_lr=None, max_steps_per_epoch=None)  # resolved per run
    return dataclasses.replace(rule_config, **paper)


def run_set(name, out_root, rt, seed=0, epochs=None, sample_dir=None, print_fn=print):
    """Pretrain with the rule and with the paper's recipe on one set; score all four feature kinds."""
    data_dir = image_sets.prepare(name, os.path.join(out_root, "data"), sample_dir)
    files = tfrecords.list_tfrecords(data_dir)
    asked = pretrain.PretrainConfig(data_dir=data_dir, out_dir=os.path.join(out_root, name, "rule"), seed=seed,
                                    epochs=epochs, verbose=0)
    rule, seconds = train(asked, rt)
    side = geometry.parse_multicrop_spec(rule.config.crops).size_crops[0]  # the big crops' side
    rows = {"raw pixels": dict(pixel_score(data_dir, side), seconds=0.0),
            "untrained": dict(score(pretrain.random_init_backbone(rule.config.backbone, seed), data_dir, side),
                              seconds=0.0)}
    paper, paper_seconds = train(dataclasses.replace(paper_config(dataclasses.replace(rule.config, epochs=epochs), side),
                                                     out_dir=os.path.join(
        out_root, name, "paper")), rt, paper=True)
    curves = {}
    for label, result, took in (("paper recipe", paper, paper_seconds), ("rule", rule, seconds)):
        rows[label] = dict(score(result.backbone, data_dir, side), seconds=round(took), epochs=result.config.epochs,
                           crops=result.config.crops, loss=result.history[-1]["loss"], ln_k=result.ln_k)
        curves[label] = [(h["epoch"], h["knn_acc"]) for h in result.history if "knn_acc" in h]
    summary = dict(set=name, images=tfrecords.count_data_items(files), side=side, backbone=rule.config.backbone,
                   batch=rule.config.global_batch_size, prototypes=rule.config.prototypes, rows=rows, curves=curves)
    print_fn(table(summary))
    return summary


def table(summary):
    s = summary
    lines = [f"\n{s['set']}: {s['images']} images scored at {s['side']} px, batch {s['batch']}, K = {s['prototypes']}, "
             f"the rule's backbone {s['backbone']}",
             "| features | kNN | linear probe | epochs | crops | final loss (ln K) | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, row in s["rows"].items():
        loss = f"{row['loss']:.2f} ({row['ln_k']:.2f})" if "loss" in row else "-"
        lines.append(f"| {label} | {row['knn']:.3f} | {row['linear']:.3f} | {row.get('epochs', '-')} | "
                     f"{row.get('crops', '-')} | {loss} | {row['seconds'] or '-'} |")
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
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of the budget (a quick look)")
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
