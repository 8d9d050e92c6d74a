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

The runtime is detected, not configured: a Kaggle/Colab **TPU** gives a `TPUStrategy` (8 replicas, bfloat16),
several GPUs a `MirroredStrategy`, otherwise one device. The code below is the same in all three cases.
With a TPU or GPU attached, `get_strategy` (the first TensorFlow call here) also runs each CPU op on one
thread: the host's CPUs then only feed the accelerator, and `tf.data`'s parallel map calls use them better
than ops split over a thread pool (more images per second from the same cores; README, Performance).

With `SMOKE=1` (CI, a 2-core CPU) the run shrinks to the bundled synthetic sample, a small CNN,
small crops **without colour augmentation** and a few hundred steps: every step below runs in well under a
minute. (On 100 images and a few hundred steps the full SwAV colour jitter leaves nothing learnable and
the loss sits at ln K; on the real data and a real schedule it is what makes the features good.)"""),
    ("code", """\
import tempfile

import numpy as np

from kitlib import augment, data, evaluate, pretrain, runtime, swav, viz

STRATEGY = runtime.get_strategy()  # TPU, several GPUs, or the default strategy (1 GPU / CPU)
print("device kind:", runtime.device_kind(STRATEGY), "- mixed precision:",
      runtime.mixed_precision_policy(runtime.device_kind(STRATEGY)))"""),
    ("code", """\
SMOKE = os.environ.get("SMOKE") == "1"  # CI smoke run: sample data, small CNN, a few hundred CPU steps
DATA_DIR = runtime.find_data_dir()      # the competition on Kaggle, else data/sample (synthetic, same layout)
OUT_DIR = tempfile.mkdtemp(prefix="kit01_") if SMOKE else (
    "/kaggle/working/swav" if runtime.on_kaggle() else os.path.join(runtime.repo_root(), "runs", "01_swav"))
BACKBONE = "small_cnn" if SMOKE else "resnet50"  # the paper's ResNet-50 (random init), or a CPU-sized CNN
CROPS = "2x64@0.3-1,2x32@0.1-0.3" if SMOKE else "2x224@0.14-1,6x96@0.05-0.14"  # SwAV's 2x224 + 6x96
AUGMENTATION = "none" if SMOKE else "host"  # SwAV colour jitter/grayscale/blur in tf.data ("device": on the TPU)
PROTOTYPES = swav.suggest_num_prototypes(len(data.CLASS_NAMES))  # K = 10 x 5 classes (paper: 3000 on ImageNet)
EPOCHS = 30 if SMOKE else 100
BATCH_SIZE = 32 if SMOKE else 64  # per replica: 64 x 8 TPU cores = 512 images (x 8 crops) per step
BASE_LR = 10.0 if SMOKE else None  # None: 0.6 at batch 256, 4.8 at 4096 (LARS); a short run needs more
WARMUP_EPOCHS = 0 if SMOKE else 10  # linear warmup, then cosine to BASE_LR / 1000
EPSILON = 0.05          # Sinkhorn entropy; lower it (0.03) if the loss sits at ln K
TEMPERATURE = 0.1       # softmax temperature of the predictions
QUEUE_LENGTH = 0        # the batch (512) is already 10 x K: no queue needed (paper: 3840 at batch 256)
STEPS_PER_EXECUTION = 1 if SMOKE else 32  # steps per compiled call: keeps a TPU busy
KNN_IMAGES = 2000       # labelled images for the frozen-feature evaluation
SEED = 0"""),
    ("md", """\
## Multi-crop: every crop of a row must come from one image

Each training example is a tuple of crops: big ones first (they give the codes), small ones after (they only
predict). The crops of one example **must be cut from the same image**: the seed notebook built one shuffled
dataset per crop and zipped them, so its crops came from five different images, the swapped prediction had
nothing to learn, and its loss ended exactly at ln K (2.713 with 15 prototypes; ln 15 = 2.708).
`kitlib.augment.multicrop` cuts all crops of an example from one decoded image. Check each row below."""),
    ("code", """\
train_files = data.list_tfrecords(DATA_DIR)
preview = next(iter(pretrain.training_batches(train_files, CROPS, 8, AUGMENTATION, seed=SEED)))
fig = viz.plot_swav_crops(preview, examples=4)"""),
    ("md", """\
## Why Sinkhorn

If each code were just the softmax of the prototype scores, the trivial solution would win: put every image
in the same cluster and predict it perfectly. SwAV forbids it with an **equal-partition** constraint: within
a batch, every prototype must receive the same total share of images. Sinkhorn-Knopp finds such codes by
alternately rescaling the rows (prototypes, to 1/K each) and the columns (images, to 1/B each) of
exp(scores / ε); three iterations suffice. Below, all four images prefer prototype 0, yet the codes spread
them over both prototypes. `kitlib.swav.sinkhorn` works in the log domain (exact down to ε = 0.01, where a
plain `exp(score / ε)` overflows) and, on several replicas, sums over the global batch."""),
    ("code", """\
scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.1], [0.6, 0.4]], np.float32)  # 4 images x 2 prototypes
print("argmax assignment:", scores.argmax(axis=1))
print("Sinkhorn codes (each row sums to 1, each column to B/K = 2):")
print(np.round(swav.sinkhorn(scores, epsilon=EPSILON, n_iters=50).numpy(), 3))"""),
    ("md", """\
## Pretrain

`pretrain.pretrain` builds the model inside the strategy's scope (`SwAVModel`: backbone → projection head
2048 → 128 → L2-normalised → K prototypes), with LARS (trust 0.001, weight decay 1e-6 except on BatchNorm
and biases), warmup + cosine learning rate, prototypes frozen for the first epoch, and calls `fit`: a
progress bar, the loss with **ln K beside it**, and the **prototype-usage entropy** (ln K when all are used).
Each epoch is checkpointed to `OUT_DIR/checkpoints` and logged to `OUT_DIR/history.csv`; if the session dies,
run the cell again: it resumes from the last saved epoch (step count, optimiser momentum, queue included).

What could go wrong: the loss stays at ln K (the run prints a warning naming the usual causes), or becomes
NaN (the run stops and keeps the last good checkpoint)."""),
    ("code", """\
result = pretrain.pretrain(DATA_DIR, OUT_DIR, epochs=EPOCHS, batch_size=BATCH_SIZE, backbone=BACKBONE,
                           prototypes=PROTOTYPES, crops=CROPS, augmentation=AUGMENTATION, base_lr=BASE_LR,
                           warmup_epochs=WARMUP_EPOCHS, epsilon=EPSILON, temperature=TEMPERATURE,
                           queue_length=QUEUE_LENGTH, steps_per_execution=STEPS_PER_EXECUTION,
                           strategy=STRATEGY, seed=SEED, verbose=2)"""),
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
usage_batches = pretrain.training_batches(train_files, CROPS, BATCH_SIZE * STRATEGY.num_replicas_in_sync,
                                          AUGMENTATION, seed=SEED)
usage = swav.prototype_usage(result.model, usage_batches, steps=4)
fig = viz.plot_prototype_usage(usage)"""),
    ("md", """\
## Are the features any good?

Labels are used only here, to judge the frozen features: a weighted kNN classifier (k = 20, cosine) with
leave-one-out on the labelled images, and a logistic-regression probe, for the pretrained backbone and for
**the same backbone at its random initialisation** (same seed). Pretraining must beat the latter."""),
    ("code", """\
labelled = data.load_dataset(train_files, ordered=True)
image_size = augment.parse_multicrop_spec(CROPS).size_crops[0]  # the big crops
backbones = {"random init": pretrain.random_init_backbone(BACKBONE, SEED), "SwAV": result.backbone}
quality = evaluate.compare_backbones(backbones, labelled, image_size=image_size, max_images=KNN_IMAGES)
print(quality)
fig = viz.plot_feature_quality(quality)"""),
    ("md", """\
## Export

`OUT_DIR/backbone` is a TF2 SavedModel in the reusable format: `hub.KerasLayer(path, trainable=True)` loads it
with its variables trainable, input float32 images [N, H, W, 3] in [0, 1] of any size, output features. It is
saved in float32 even after bfloat16 training. Notebook 02 fine-tunes it exactly like a BiT handle
(`python -m kitlib finetune --backbone OUT_DIR/backbone ...`); on Kaggle, save this notebook's version and
attach its output."""),
    ("code", """\
loaded = pretrain.load_backbone(result.backbone_dir, trainable=True)
check = preview[0][:4]
difference = np.abs(loaded(check).numpy() - result.backbone(check, training=False).numpy()).max()
print(f"{result.backbone_dir}: {len(loaded.trainable_weights)} trainable variables; "
      f"max difference to the model in memory {difference:.1e}")"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
