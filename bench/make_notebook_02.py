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
`kitlib/losses.py`, `kitlib/backbones.py`) and is tested there; the same run is one command:
`python -m kitlib finetune --data DIR --backbone SOURCE --out DIR`.

The compute runs on **Keras 3 with the JAX backend** on every device (TPU v5e-8, GPU, CPU); TensorFlow only
reads and augments the images (`tf.data`). On several devices the batch is split over them
(`keras.distribution.DataParallel`) and the model sees the **global** batch."""),
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

**Where the weights come from.** A TF-Hub SavedModel cannot run on JAX, so the kit has BiT's ResNet-v2
(GroupNorm + weight standardisation) as a Keras 3 model of its own (`kitlib.resnetv2`) and fills it with
the published weights: an official `.npz` (`BiT-M-R50x1.npz`), or the variables of the TF2 SavedModel
behind a handle. TF Hub handles such as `https://tfhub.dev/google/bit/m-r50x1/1` resolve to Kaggle Models
(`google/bit/tensorFlow2/m-r50x1`). The competition runs with the **internet off**, so on Kaggle attach the
model (*Add Input → Models → BiT → TensorFlow 2 → m-r50x1*) and it appears under
`/kaggle/input/bit/tensorflow2/m-r50x1/1`; `kitlib.backbones.load` finds it from the handle. A handle it
cannot reach fails at once with that advice instead of retrying for minutes. The SwAV backbone of
notebook 01 (`backbone.keras`) loads the same way and fine-tunes with the same rule."""),
    ("md", """\
## Setup

One cell of settings. With `SMOKE=1` (CI, a CPU) the backbone is a **tiny random conv net** that
`kitlib.bit.make_tiny_backbone` saves as a Keras 3 `.keras` file, the way notebook 01 exports the SwAV
backbone; the run is shortened to a few dozen steps at 64 px (the settings of `FinetuneConfig.smoke`), and
the data is the bundled synthetic sample: every step below runs, in seconds, but the numbers say nothing
about BiT.

`runtime.setup()` comes first: it finds the devices, puts data parallelism and the precision policy
(bfloat16 on TPU) in force, and refuses to run on the CPU of a machine whose accelerator JAX cannot see."""),
    ("code", """\
import tempfile

import numpy as np
from IPython.display import Markdown, display

from kitlib import backbones, bit, export, finetune, losses, runtime, viz
from kitlib.compat import keras

RT = runtime.setup()  # devices, DataParallel over them, bfloat16 on TPU; build Keras models after this"""),
    ("code", """\
SMOKE = os.environ.get("SMOKE") == "1"  # CI smoke run: tiny stand-in backbone, few steps, data/sample
ON_KAGGLE = runtime.on_kaggle()
DATA_DIR = runtime.find_data_dir()  # the competition on Kaggle, else data/sample (synthetic, same layout)
BIT_HANDLE = "google/bit/tensorFlow2/m-r50x1"  # BiT-M R50x1; attach it as a Kaggle input (internet is off)
WORK_DIR = tempfile.mkdtemp(prefix="kit02_") if SMOKE else (
    "/kaggle/working" if ON_KAGGLE else os.path.join(runtime.repo_root(), "runs", "02_finetune_bit"))
OUT_DIR = os.path.join(WORK_DIR, "bit_classifier")  # classifier.keras + classifier.json, read by notebook 04
VAL_FRACTION = 0.2  # held out at shard level; the rule then sees the 80 % training split
# GLOBAL batch over all devices, a multiple of their count: BiT uses 512 (64 per core of a TPU v5e-8, in
# bfloat16); a 16 GB GPU needs ~16 with R50x1 at 480 px. Whatever B is, the rule rescales steps, warmup,
# decays (x 512/B) and the learning rate (x B/512).
BATCH_SIZE = 16 if SMOKE else {"TPU": 512, "GPU": 16, "CPU": 16}[RT.kind]
STEPS = 40 if SMOKE else None  # None: the rule's own length
RESOLUTION = (80, 64) if SMOKE else None  # None: the rule's (resize, crop) from the image size
BASE_LR = 1.0 if SMOKE else bit.BASE_LR  # lr at batch 512; the smoke value suits a random small CNN in 40 steps
LOSS = "bitempered"  # Cassava's labels are noisy: bounded, heavy-tailed loss; "ce" is plain BiT
LABEL_SMOOTHING = 0.1  # both the winners' ingredients against label noise; 0.0 with "ce" is plain BiT
T1, T2 = losses.T1_CASSAVA, losses.T2_CASSAVA  # bi-tempered temperatures (0.8, 1.4)
EVALUATIONS = 4 if SMOKE else 10  # validation rounds (Keras epochs) during the run
MIXUP_SHOW_ALPHA = 1.0  # only for the picture below (lambda uniform in [0, 1]); training uses the rule's alpha
SEED = 0

print(dict(SMOKE=SMOKE, ON_KAGGLE=ON_KAGGLE, DEVICES=f"{RT.num_devices} x {RT.kind}", POLICY=RT.policy,
           DATA_DIR=DATA_DIR, OUT_DIR=OUT_DIR, BATCH_SIZE=BATCH_SIZE, STEPS=STEPS, RESOLUTION=RESOLUTION,
           BASE_LR=BASE_LR, LOSS=LOSS, LABEL_SMOOTHING=LABEL_SMOOTHING, T1=T1, T2=T2))"""),
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
rule = bit.HyperRule(source.image_hw, source.train_size, BATCH_SIZE, BASE_LR, total_steps=STEPS, resolution=RESOLUTION)
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
with values in [0, 1] as the kit's backbones expect; validation images are resized straight to the crop
size. Every random choice (shuffle, crop, flip, λ) follows from the seed and the example's position, so a
run gives the same batches on 1 device and on 8.
MixUp (Zhang et al. 2018) as BiT applies it, in the `tf.data` pipeline: one λ ~ Beta(α, α) per batch, every image blended with the
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

On Kaggle `BIT_HANDLE` resolves to the attached model; `backbones.load` also takes an official `.npz`
(`BiT-M-R50x1.npz`) or the SwAV `backbone.keras` of notebook 01. In `SMOKE` mode we save the tiny stand-in
first. `bit.build_classifier` puts a `Dense` head with all-zero weights on top (float32 logits, whatever the
precision policy): before any training every class has probability exactly 1/C, whatever the image."""),
    ("code", """\
BACKBONE = bit.make_tiny_backbone(os.path.join(WORK_DIR, "tiny_backbone.keras")) if SMOKE else BIT_HANDLE
preview = bit.build_classifier(backbones.load(BACKBONE), num_classes, rule.crop)
preview.summary()
print("head weights all zero:", not np.any(preview.get_layer("head").kernel.numpy()))
print("probabilities before training:\\n", np.asarray(keras.ops.softmax(preview(images[:3].numpy()))).round(3))
del preview  # finetune builds its own"""),
    ("md", """\
## Fine-tune

`finetune.finetune` is the whole run, the same function behind `python -m kitlib finetune`: one
`FinetuneConfig` (printed once, saved as `config.json`); it reads the data, builds the rule, loads backbone
+ zero head and the SGD optimizer under the runtime's distribution and policy, and runs `fit()` for exactly
`rule.total_steps` steps, validating `EVALUATIONS` times (Keras "epochs" are evaluation rounds here) with
`ModelCheckpoint` on the best validation accuracy (`checkpoints/best.weights.h5`), `CSVLogger`
(`history.csv`) and TensorBoard logs in `OUT_DIR`. At the end it restores the best checkpoint, evaluates
and saves.

What could go wrong: out of memory → lower `BATCH_SIZE` (the rule adapts); validation accuracy stuck at
the majority class (CMD, 61.5 % of Cassava) → check that the learning rate reached its peak (schedule
plot) and that the backbone is trainable (`Trainable params` above)."""),
    ("code", """\
CONFIG = finetune.FinetuneConfig(
    DATA_DIR, BACKBONE, OUT_DIR, global_batch_size=BATCH_SIZE, steps=STEPS, loss=LOSS, label_smoothing=LABEL_SMOOTHING,
    t1=T1, t2=T2, val_fraction=VAL_FRACTION, base_lr=BASE_LR, resolution=RESOLUTION, evaluations=EVALUATIONS, seed=SEED)
result = finetune.finetune(CONFIG, RT)
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

`finetune` saved the classifier with `export.save_classifier`: `classifier.keras` (the Keras 3 model, in
float32 whatever it trained in; images in [0, 1] → logits) plus `classifier.json` (class names, image
size). Loading it needs Keras 3 and kitlib only (no network, no TF Hub), which is what the offline
submission notebook (04) needs: on Kaggle, save a version of this notebook and attach its output as a
dataset. The check below reloads it and compares with the model in memory (after bfloat16 training on a
TPU the saved float32 model differs from the bfloat16 one in memory by ~1e-2; elsewhere by ~1e-7)."""),
    ("code", """\
classifier = export.load_classifier(OUT_DIR)
check_images = next(iter(val_batches))[0].numpy()
in_memory = np.asarray(keras.ops.softmax(result.model.predict_on_batch(check_images)), np.float32)
difference = np.abs(classifier.predict_proba(check_images) - in_memory).max()
print(f"{OUT_DIR}: {sorted(os.listdir(OUT_DIR))}")
print(f"{classifier.class_names}, {classifier.image_size}px; max difference to the model in memory {difference:.2e}")"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
