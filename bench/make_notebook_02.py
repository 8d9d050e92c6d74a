"""Write notebooks/02_finetune_bit.ipynb (no outputs) from the cells below: `python bench/make_notebook_02.py`."""

import os

from notebook_writer import BOOTSTRAP, write_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "notebooks", "02_finetune_bit.ipynb")

CELLS = [
    ("md", """\
# 02 · Fine-tuning BiT on Cassava with the BiT-HyperRule

Big Transfer (BiT; Kolesnikov et al. 2019, [arXiv 1912.11370](https://arxiv.org/abs/1912.11370)) is a
recipe more than a model: pre-train a large ResNet once on a lot of data, then fine-tune **all** of it on
the new task with one fixed heuristic, the *BiT-HyperRule*, instead of a hyperparameter search.

This notebook: read the data → compute the rule for it → look at the learning-rate schedule and at
MixUp → fine-tune backbone + zero-initialised head → accuracy, per-class report, confusion matrix →
save the classifier that notebook 04 (submission) loads.

Everything with a loop or a rule in it lives in `kitlib` (`kitlib/bit.py`, `kitlib/finetune.py`,
`kitlib/losses.py`) and is tested there; the same run is one command:
`python -m kitlib finetune --data DIR --backbone HANDLE_OR_DIR --out DIR`."""),
    ("code", BOOTSTRAP),
    ("md", """\
## BiT in one page

**Upstream data — S, M, L.** The same architectures were pre-trained on three datasets:
BiT-**S** on ImageNet-1k (1.3 M images), BiT-**M** on ImageNet-21k (14 M images, 21k classes) and BiT-**L**
on JFT-300M (Google-internal, not released). More upstream data helps most when the downstream task is
small, which is why the kit defaults to BiT-M.

**Architectures — R50x1 … R152x4.** ResNet-v2 where `R<depth>x<width>` is the depth (50, 101, 152
layers) and a width multiplier on every layer's channels (x1, x3, x4): R50x1 is a standard ResNet-50
(≈ 25 M parameters), R152x4 is 152 layers four times as wide (≈ 0.9 B). Batch norm is replaced by
*Group Normalization + Weight Standardization*, so nothing depends on the batch size: fine-tuning works at
any batch, on any number of devices.

**Transfer.** Drop the upstream head, add a `Dense` head **initialised to zeros** (training starts at the
uniform prediction and the pretrained features are not disturbed by a random head), and fine-tune every
layer with SGD, momentum 0.9. The models take images in **[0, 1]** and return a feature vector
(2048 × width for the R50/R101/R152 families).

**Where the weights come from.** TF Hub handles such as `https://tfhub.dev/google/bit/m-r50x1/1` now
resolve to Kaggle Models (`google/bit/tensorFlow2/m-r50x1`). The competition runs with the **internet off**,
so on Kaggle attach the model (*Add Input → Models → BiT → TensorFlow 2 → m-r50x1*) and it appears under
`/kaggle/input/bit/tensorflow2/m-r50x1/1`; `kitlib.bit.load_backbone` finds it from the handle. A handle it
cannot reach fails at once with that advice instead of retrying for minutes."""),
    ("md", """\
## Setup

One cell of settings. With `SMOKE=1` (CI, a CPU) the backbone is a **tiny random conv net** that
`kitlib.bit.make_tiny_backbone` exports in the same hub format as BiT, the run is shortened to a few
dozen steps at 128 px, and the data is the bundled synthetic sample: every step below runs, in seconds,
but the numbers say nothing about BiT."""),
    ("code", """\
import tempfile

import numpy as np
import tensorflow as tf
from IPython.display import Markdown, display

from kitlib import bit, export, finetune, losses, runtime, viz

STRATEGY = runtime.get_strategy()  # TPU, several GPUs, or the default strategy (1 GPU / CPU)"""),
    ("code", """\
SMOKE = os.environ.get("SMOKE") == "1"  # CI smoke run: tiny stand-in backbone, few steps, data/sample
ON_KAGGLE = runtime.on_kaggle()
DATA_DIR = runtime.find_data_dir()  # the competition on Kaggle, else data/sample (synthetic, same layout)
BIT_HANDLE = "google/bit/tensorFlow2/m-r50x1"  # BiT-M R50x1; attach it as a Kaggle input (internet is off)
WORK_DIR = tempfile.mkdtemp(prefix="kit02_") if SMOKE else (
    "/kaggle/working" if ON_KAGGLE else os.path.join(runtime.repo_root(), "runs", "02_finetune_bit"))
OUT_DIR = os.path.join(WORK_DIR, "bit_classifier")  # saved_model/ + classifier.json, read by notebook 04
VAL_FRACTION = 0.2  # held out at shard level; the rule then sees the 80 % training split
# global batch: BiT uses 512 (a TPU v3-8 holds it at 480 px); a 16 GB GPU needs ~16 with R50x1 at 480 px.
# Whatever B is, the rule rescales steps, warmup, decays (x 512/B) and the learning rate (x B/512).
BATCH_SIZE = 16 if SMOKE else {"TPU": 512, "GPU": 16, "CPU": 16}[runtime.device_kind(STRATEGY)]
STEPS = 40 if SMOKE else None  # None: the rule's own length
RESOLUTION = (160, 128) if SMOKE else None  # None: the rule's (resize, crop) from the image size
LOSS = "bitempered"  # Cassava's labels are noisy: bounded, heavy-tailed loss; "ce" is plain BiT
LABEL_SMOOTHING = 0.1  # both the winners' ingredients against label noise; 0.0 with "ce" is plain BiT
T1, T2 = losses.T1_CASSAVA, losses.T2_CASSAVA  # bi-tempered temperatures (0.8, 1.4)
EVALUATIONS = 4 if SMOKE else 10  # validation rounds (Keras epochs) during the run
MIXUP_SHOW_ALPHA = 1.0  # only for the picture below (lambda uniform in [0, 1]); training uses the rule's alpha
SEED = 0

print(dict(SMOKE=SMOKE, ON_KAGGLE=ON_KAGGLE, DATA_DIR=DATA_DIR, OUT_DIR=OUT_DIR, BATCH_SIZE=BATCH_SIZE,
           STEPS=STEPS, RESOLUTION=RESOLUTION, LOSS=LOSS, LABEL_SMOOTHING=LABEL_SMOOTHING, T1=T1, T2=T2))"""),
    ("md", """\
## The BiT-HyperRule

Three decisions, each from one number about the data (`kitlib.bit`, identical to google-research/big_transfer
`bit_hyperrule.py`, checked value by value in `tests/test_bit.py`):

| decision | rule |
|---|---|
| resolution | image **area** below 96 × 96 → resize to 160, random-crop 128; otherwise resize 512, crop 480 |
| MixUp | off below 20,000 training examples, else α = 0.1 |
| schedule (batch 512, lr 0.003) | < 20k examples: 500 steps; < 500k: 10,000; else 20,000 — linear warmup over the first support, then ÷10 at each of the next three |

The table below is **computed by `kitlib`**, not typed: rules typed by hand drift (the official colab drops
the ÷100 step; the seed notebook tested an edge instead of the area). Note the first two rows: all 21,397
Cassava images land in the 10k-step tier with MixUp, but the 80 % training split we actually train on
(~17,100) falls below 20,000 — the 500-step tier without MixUp. The dataset size that matters is the
number of images the model trains on."""),
    ("code", """\
display(Markdown(bit.rule_table([
    ("Cassava, all images", (600, 800), 21_397, 512),
    ("Cassava, 80 % split", (600, 800), int(21_397 * 0.8), 512),
    ("Cassava, 80 % split, B=64", (600, 800), int(21_397 * 0.8), 64),
    ("95×97 images (area < 96²)", (95, 97), 50_000, 512),
    ("ImageNet-1k", (375, 500), 1_281_167, 512),
])))"""),
    ("md", """\
## Our data and our rule

`finetune.load_source` reads Cassava TFRecords (split by shard, so no image is in both halves), a JPEG
folder with `train.csv`, a folder per class, or `tfds:NAME`. The rule is then built from the **training**
size and the first image's size."""),
    ("code", """\
source = finetune.load_source(DATA_DIR, VAL_FRACTION, SEED)
rule = bit.HyperRule(source.image_hw, source.train_size, BATCH_SIZE, total_steps=STEPS, resolution=RESOLUTION)
print(f"{source.kind}: {source.train_size} train / {source.val_size} validation images, "
      f"first image {source.image_hw}, classes {source.class_names}")
print(rule)"""),
    ("md", """\
### The schedule, and why the boundaries must scale with the batch

A smaller batch needs more steps to see the same images, and a proportionally smaller learning rate.
The official colab (and the keras-io port) scales the *length* by 512/B but keeps the decay steps at
200/300/400: at B = 64 the run is 4,000 steps long and everything after step 400 — about 90 % of it —
is at 1/1000 of the learning rate. `HyperRule` scales warmup and decays with the length, so on the right
every batch size follows the same curve over the fraction of the run."""),
    ("code", """\
rule_b64 = bit.HyperRule((600, 800), 17_117, batch_size=64)
rule_b512 = bit.HyperRule((600, 800), 17_117, batch_size=512)
fig = viz.plot_bit_schedules([rule_b64, rule_b512, rule], labels=["Cassava 80 %, B=64", "Cassava 80 %, B=512", "this run"])"""),
    ("md", """\
## Input pipeline and MixUp

Training images are resized to `rule.resize`², randomly cropped to `rule.crop`² and randomly flipped,
with values in [0, 1] as the hub models expect; validation images are resized straight to the crop size.
MixUp (Zhang et al. 2018) as BiT applies it: one λ ~ Beta(α, α) per batch, every image blended with the
batch **reversed** and the one-hot labels blended alike, so label rows still sum to 1. With α = 0.1 most λ
are close to 0 or 1 (mild mixing); below we use α = 1 (λ uniform) so the blend is visible. Top: a batch as
the pipeline yields it; bottom: the same batch mixed (titles: the two largest label weights)."""),
    ("code", """\
num_classes = len(source.class_names)
train_batches = bit.train_dataset(source.train, rule, num_classes, seed=SEED)
val_batches = bit.eval_dataset(source.val, rule.crop, BATCH_SIZE, num_classes)
images, labels = next(iter(train_batches))
fig = viz.plot_mixup_grid(images, labels, source.class_names)
fig = viz.plot_mixup_grid(*bit.mixup(images, labels, MIXUP_SHOW_ALPHA, seed=SEED), source.class_names)"""),
    ("md", """\
## Backbone + zero head

On Kaggle `BIT_HANDLE` resolves to the attached model. In `SMOKE` mode we export the tiny stand-in
first; its features are calibrated on a batch of training images (a data-dependent init) so that even
forty steps learn something. `bit.build_classifier` puts a `Dense` head with all-zero weights on top: before
any training every class has probability exactly 1/C, whatever the image."""),
    ("code", """\
calibration_images = next(iter(bit.eval_dataset(source.train, rule.crop, 64, num_classes)))[0]
BACKBONE = bit.make_tiny_backbone(os.path.join(WORK_DIR, "tiny_backbone"), calibration_images=calibration_images) \\
    if SMOKE else BIT_HANDLE
preview = bit.build_classifier(bit.load_backbone(BACKBONE), num_classes, rule.crop)
preview.summary()
print("head weights all zero:", not np.any(preview.get_layer("head").kernel.numpy()))
print("probabilities before training:\\n", tf.nn.softmax(preview(calibration_images[:3])).numpy().round(3))"""),
    ("md", """\
## Fine-tune

`finetune.finetune` is the whole run, the same function behind `python -m kitlib finetune`: it reads the
data, builds the rule, creates backbone + head and the SGD optimizer inside `STRATEGY.scope()`, and runs
`fit()` for exactly `rule.total_steps` steps, validating `EVALUATIONS` times (Keras "epochs" are evaluation
rounds here) with `ModelCheckpoint` on the best validation accuracy, `CSVLogger` (`history.csv`) and
TensorBoard logs in `OUT_DIR`. At the end it restores the best checkpoint, evaluates and saves.

What could go wrong: out of memory → lower `BATCH_SIZE` (the rule adapts); validation accuracy stuck at
the majority class (CMD, 61.5 % of Cassava) → check that the learning rate reached its peak (schedule
plot) and that the backbone is trainable (`Trainable params` above)."""),
    ("code", """\
result = finetune.finetune(DATA_DIR, BACKBONE, OUT_DIR, batch_size=BATCH_SIZE, steps=STEPS, loss=LOSS,
                           label_smoothing=LABEL_SMOOTHING, t1=T1, t2=T2, val_fraction=VAL_FRACTION,
                           resolution=RESOLUTION, evaluations=EVALUATIONS, seed=SEED, strategy=STRATEGY)
fig = viz.plot_training_history(result.history.history)"""),
    ("md", """\
## Evaluate

Accuracy alone hides what Cassava is like: one class (CMD) is 61.5 % of the images, so always answering
CMD scores 61.5 %. The per-class report (printed by the run above) and the confusion matrix (rows: true
class) show which diseases are confused; CBB, CBSD and CGM are the small classes."""),
    ("code", """\
print(f"validation accuracy {result.evaluation['accuracy']:.3f} (best checkpoint)")
fig = viz.plot_confusion_matrix(result.evaluation["confusion_matrix"], source.class_names)"""),
    ("md", """\
## Save

`finetune` saved the classifier with `export.save_classifier`: a SavedModel with a `serve` signature
(images in [0, 1] → probabilities) plus `classifier.json` (class names, image size). Loading it needs
neither TF Hub nor this notebook's code, which is what the offline submission notebook (04) needs: on
Kaggle, save a version of this notebook and attach its output as a dataset. The check below reloads it and
compares with the model in memory."""),
    ("code", """\
classifier = export.load_classifier(OUT_DIR)
check_images = next(iter(val_batches))[0]
difference = np.abs(classifier.predict_proba(check_images) - tf.nn.softmax(result.model(check_images)).numpy()).max()
print(f"{OUT_DIR}: {sorted(os.listdir(OUT_DIR))}")
print(f"{classifier.class_names}, {classifier.image_size}px; max difference to the model in memory {difference:.2e}")"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
