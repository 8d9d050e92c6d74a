"""Write notebooks/01_pretrain_swav_tpu.ipynb (no outputs) from the cells below: `python bench/make_notebook_01.py`."""

import os

from notebook_writer import BOOTSTRAP, write_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "notebooks", "01_pretrain_swav_tpu.ipynb")

CELLS = [
    ("md", """\
# 01 · SwAV self-supervised pretraining on Cassava leaves (TPU, GPU or CPU)

SwAV (Caron et al. 2020, [arXiv 2006.09882](https://arxiv.org/abs/2006.09882)) learns image features
**without labels**. Each image is cut into several random crops. A network embeds every crop as a unit
vector *z* and compares it with *K* learned **prototypes** (cluster centres). From the two big crops it
computes a soft cluster assignment, the **code** *q*, and then asks every *other* crop of the same image to
predict that code: the **swapped prediction**. The only way to do that is to map all views of one leaf
to the same clusters, that is, to learn what a leaf looks like whatever the crop, scale or colour.

This notebook: multi-crop batches → Sinkhorn codes → pretraining with `fit` (progress bar, checkpoints,
resume) → loss against its collapse floor ln K → prototype usage → kNN accuracy of the frozen features
against the same backbone at random initialisation → export of the backbone for fine-tuning (notebook 02).
Everything with a loop in it lives in `kitlib` (`swav.py`, `optim.py`, `pretrain.py`, `evaluate.py`);
the same run is one command: `python -m kitlib pretrain --data DIR --out DIR`."""),
    ("code", BOOTSTRAP),
    ("md", """\
## Setup

The kit computes with **Keras 3 on JAX** on every device and reads data with `tf.data` on the host.
`runtime.setup()` finds what JAX computes on: a Kaggle **TPU v5e-8** gives 8 devices, bfloat16 and a
`keras.distribution.DataParallel` over them (each step then sees the *global* batch, so Sinkhorn, the loss and
the projection head's BatchNorm are global with no extra code); a GPU or the CPU gives one device in float32.
It **refuses to run** on a machine that has a TPU or GPU which JAX cannot see, instead of training for hours
on the host CPU, and says what to install. The code below is the same everywhere."""),
    ("code", """\
import tempfile

import numpy as np

from kitlib import augment, backbones, data, evaluate, pretrain, runtime, swav, viz

RT = runtime.setup()  # devices, DataParallel when there are several, precision policy"""),
    ("md", """\
One config object holds the whole run (`pretrain.PretrainConfig`; the command line has the same fields as
flags). These are the real settings: the paper's ResNet-50, 2 x 224 + 6 x 96 crops, LARS with warmup and
cosine, K = 10 x the 5 classes. `augmentation="auto"` runs the colour jitter, grayscale and blur inside the
compiled step on a TPU/GPU (the host then only decodes and crops) and in `tf.data` on a CPU. `global_batch_size`
is the batch over all devices: 512 is 64 per TPU v5e core."""),
    ("code", """\
DATA_DIR = runtime.find_data_dir()  # the competition on Kaggle, else data/sample (synthetic, same layout)
OUT_DIR = "/kaggle/working/swav" if runtime.on_kaggle() else os.path.join(runtime.repo_root(), "runs", "01_swav")
CONFIG = pretrain.PretrainConfig(
    data_dir=DATA_DIR, out_dir=OUT_DIR,
    backbone="resnet50",                       # the paper's, from random initialisation
    crops="2x224@0.14-1,6x96@0.05-0.14",       # SwAV's 2 x 224 + 6 x 96 (scale = share of the image's area)
    augmentation="auto",                       # colour on the accelerator (TPU/GPU), in tf.data on a CPU
    prototypes=swav.suggest_num_prototypes(len(data.CLASS_NAMES)),  # K = 10 x 5 classes (paper: 3000)
    epochs=100,
    global_batch_size=512,                     # over all devices: 64 per TPU v5e core
    warmup_epochs=10,                          # then cosine to base_lr / 1000 (base_lr from the batch: LARS)
    epsilon=0.05,                              # Sinkhorn entropy; lower it (0.03) if the loss sits at ln K
    queue_length=0,                            # the batch is already 10 x K: no queue needed
    steps_per_execution=32,                    # steps per compiled call: keeps a TPU busy
    knn_every=0,
    seed=0,
)
KNN_IMAGES = 2000  # labelled images for the frozen-feature evaluation"""),
    ("md", """\
### CI smoke run

With `SMOKE=1` (CI, a 2-core CPU) the run becomes the kit's one smoke preset, `PretrainConfig.smoke()`, the
same the demo and the tests use: the bundled sample, a small CNN, small crops **without colour
augmentation** and a few hundred steps. (On 100 images and a few hundred steps the full SwAV colour jitter
leaves nothing learnable and the loss sits at ln K; on the real data and schedule it is what makes the
features good.)"""),
    ("code", """\
SMOKE = os.environ.get("SMOKE") == "1"
if SMOKE:
    CONFIG = pretrain.PretrainConfig.smoke(data_dir=DATA_DIR, out_dir=tempfile.mkdtemp(prefix="kit01_"))
print(CONFIG)"""),
    ("md", """\
## Multi-crop: every crop of a row must come from one image

Each training example is a tuple of crops: big ones first (they give the codes), small ones after (they only
predict). The crops of one example **must be cut from the same image**: the seed notebook built one shuffled
dataset per crop and zipped them, so its crops came from five different images, the swapped prediction had
nothing to learn, and its loss ended exactly at ln K (2.713 with 15 prototypes; ln 15 = 2.708).
`kitlib.augment.multicrop` cuts all crops of an example from one decoded image. Check each row below."""),
    ("code", """\
train_files = data.list_tfrecords(CONFIG.data_dir)
preview_mode = "none" if CONFIG.augmentation == "none" else "host"  # "device" colours only inside the step
(preview,) = next(iter(pretrain.training_batches(train_files, CONFIG.crops, 8, preview_mode, seed=CONFIG.seed)))
fig = viz.plot_swav_crops(preview, examples=4)"""),
    ("md", """\
## Why Sinkhorn

If each code were just the softmax of the prototype scores, the trivial solution would win: put every image
in the same cluster and predict it perfectly. SwAV forbids it with an **equal-partition** constraint: within
a batch, every prototype must receive the same total share of images. Sinkhorn-Knopp finds such codes by
alternately rescaling the rows (prototypes, to 1/K each) and the columns (images, to 1/B each) of
exp(scores / ε); three iterations suffice. Below, all four images prefer prototype 0, yet the codes spread
them over both prototypes. `kitlib.swav.sinkhorn` works in the log domain (exact down to ε = 0.01, where a
plain `exp(score / ε)` overflows) and, under data parallelism, sums over the global batch."""),
    ("code", """\
scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.1], [0.6, 0.4]], np.float32)  # 4 images x 2 prototypes
print("argmax assignment:", scores.argmax(axis=1))
print("Sinkhorn codes (each row sums to 1, each column to B/K = 2):")
print(np.round(np.asarray(swav.sinkhorn(scores, epsilon=CONFIG.epsilon, n_iters=50)), 3))"""),
    ("md", """\
## Pretrain

`pretrain.pretrain` builds the model (`SwAVModel`: backbone → projection head 2048 → 128 → L2-normalised →
K prototypes, unit-norm after every update), with LARS (trust 0.001, weight decay 1e-6 except on BatchNorm
and biases), warmup + cosine learning rate, prototypes frozen for the first epoch, and calls Keras's `fit`:
a progress bar, the loss, and the **prototype-usage entropy** (ln K when all are used); `history.csv` keeps
**ln K beside the loss**. Each epoch is checkpointed to `OUT_DIR/checkpoints/state.npz` and logged to
`OUT_DIR/history.csv`; if the session dies, run the cell again: it resumes from the last saved epoch (step
count, optimiser momentum, queue included).

What could go wrong: the loss stays at ln K (the run prints a warning naming the usual causes), or becomes
NaN (the run stops and keeps the last good checkpoint)."""),
    ("code", """\
result = pretrain.pretrain(CONFIG, RT)"""),
    ("md", """\
## Loss against ln K

With uniform codes and predictions the loss is exactly ln K: the collapse floor. A run that learns goes
clearly below it; a run that sits on the dashed line has collapsed."""),
    ("code", """\
final = result.history[-1]["loss"]
print(f"final loss {final:.3f} vs ln K {result.ln_k:.3f} ({final / result.ln_k:.0%} of the floor)")
fig = viz.plot_swav_history(result.history, result.ln_k)"""),
    ("md", """\
## Prototype usage

Which prototype does each big crop match best? A healthy run uses many prototypes; a few tall bars and a long
empty tail mean the clusters are collapsing onto a handful of prototypes."""),
    ("code", """\
usage_batches = pretrain.training_batches(train_files, CONFIG.crops, CONFIG.global_batch_size, preview_mode,
                                          seed=CONFIG.seed)
usage = swav.prototype_usage(result.model, usage_batches, steps=4)
fig = viz.plot_prototype_usage(usage)"""),
    ("md", """\
## Are the features any good?

Labels are used only here, to judge the frozen features: a weighted kNN classifier (k = 20, cosine) with
leave-one-out on the labelled images, and a logistic-regression probe, for the pretrained backbone and for
**the same backbone at its random initialisation** (same seed). Pretraining must beat the latter."""),
    ("code", """\
labelled = data.load_dataset(train_files, ordered=True)
image_size = augment.parse_multicrop_spec(CONFIG.crops).size_crops[0]  # the big crops
compared = {"random init": pretrain.random_init_backbone(CONFIG.backbone, CONFIG.seed), "SwAV": result.backbone}
quality = evaluate.compare_backbones(compared, labelled, image_size=image_size, max_images=KNN_IMAGES)
print(quality)
fig = viz.plot_feature_quality(quality)"""),
    ("md", """\
## Export

`OUT_DIR/backbone.keras` is the trained backbone as a Keras 3 file, saved in float32 even after bfloat16
training: `kitlib.backbones.load(path)` gives a model mapping float images [N, H, W, 3] in [0, 1] of any size
to features [N, F], every weight trainable. Notebook 02 fine-tunes it exactly like a BiT model
(`python -m kitlib finetune --backbone OUT_DIR/backbone.keras ...`); on Kaggle, save this notebook's version
and attach its output."""),
    ("code", """\
loaded = backbones.load(result.backbone_path)
check = np.asarray(preview[0][:4])
difference = np.abs(np.asarray(loaded(check)) - np.asarray(result.backbone(check, training=False))).max()
print(f"{result.backbone_path}: {len(loaded.trainable_weights)} trainable variables; "
      f"max difference to the model in memory {difference:.1e}")"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
