"""SwAV settings chosen from the data, in the spirit of BiT's HyperRule: `rule(num_images, image_hw, global_batch)`.

The paper's recipe (Caron et al. 2020: ResNet-50, 2 x 224 + 6 x 96 crops, K = 3000, LARS at 4.8 for
batch 4096, a queue at batch 256, full colour distortion, hundreds of epochs) is tuned for 1.28 M
ImageNet images. On a few thousand small images it hardly learns in the time a teacher or a Kaggle
session has: frozen features end up worse than the raw pixels (bench/README.md, "Learning"). The rule
keeps the paper's settings where the data is ImageNet-like (Cassava's 21 k leaf photographs included)
and otherwise picks the small-data recipe measured by ``bench/learning.py``. Every choice carries its
reason, printed by ``python -m kitlib pretrain`` and notebook 01.
"""

import dataclasses

PAPER_CROPS = "2x224@0.14-1,6x96@0.05-0.14"
PAPER_PROTOTYPES = 3000     # K on ImageNet (1000 classes, 1.28 M images)
PROTOTYPES_PER_CLASS = 10   # community guidance for small data: K ≈ 10 x the number of classes
LARGE_MIN_IMAGES = 10_000   # from here on (with large images) the paper's recipe
LARGE_MIN_SIDE = 128        # images smaller than this get the small-image backbone whatever their number
SMALL_MAX_CROP = 64         # small-data crops: at most 64 px (a few thousand images, minutes on a CPU)
SMALL_IMAGES_SEEN = 150_000  # small-data epochs: about this many images in all (~7 min on 2 CPU cores at 32 px)
SMALL_EPOCH_RANGE = (20, 400)
SMALL_LR = 3e-3             # Adam; 1e-2 collapsed to ln K on digits, 1e-3 learned 3x slower
GRID_MAX_SIDE = 48          # images this small keep a 2 x 2 grid of features (`backbones.GridPool`)
SMALL_MIN_COLOUR_IMAGES = 1_000  # below this many images: crops only, no colour distortion


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The settings `rule` picks: the `kitlib.swav.pretrain.PretrainConfig` fields it fills, with reasons.

    Attributes:
        regime: "paper" (ImageNet-like data) or "small".
        settings: {PretrainConfig field: value}.
        reasons: {PretrainConfig field: one line saying why}.
    """
    regime: str
    settings: dict
    reasons: dict


def suggest_num_prototypes(num_classes=None):
    """Number of prototypes K: the paper's 3000, or 10 x the classes when they are few.

    SwAV is robust to K within an order of magnitude of the class count (paper, Table 9), but on a
    small dataset thousands of prototypes leave each one a handful of images.

    Args:
        num_classes: int or None, classes expected in the data (Cassava: 5 -> 50).
    Returns:
        int K.
    """
    if num_classes is None:
        return PAPER_PROTOTYPES
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return min(PAPER_PROTOTYPES, PROTOTYPES_PER_CLASS * num_classes)


def _round_to(x, step):
    return max(step, int(round(x / step)) * step)


def paper(global_batch):
    """The paper's recipe at `global_batch` (what `rule` returns for ImageNet-like data)."""
    from kitlib.swav.optim import \
        swav_learning_rate  # noqa: PLC0415 - keeps this module free of Keras

    base_lr, final_lr = swav_learning_rate(global_batch)
    queue = global_batch < 1024  # the paper's queue: at batch 256 (not at 4096), 3840 features
    settings = dict(
        backbone="resnet50", crops=PAPER_CROPS, prototypes=PAPER_PROTOTYPES, hidden_dim=2048,
        optimizer="lars", base_lr=base_lr, final_lr=final_lr, warmup_epochs=10, epochs=100,
        color_strength=1.0, gray_p=0.2, blur_p=0.5, epsilon=0.05, freeze_prototypes_niters=None,
        queue_length=_round_to(3840, global_batch) if queue else 0, queue_start_epoch=15)
    reasons = dict(
        backbone="ImageNet-like data: the paper's ResNet-50",
        crops="the paper's multi-crop: 2 x 224 (14-100 % of the area) + 6 x 96 (5-14 %)",
        prototypes="the paper's K = 3000 (robust within an order of magnitude of the classes)",
        hidden_dim="the paper's projection head 2048 -> 128",
        optimizer="LARS, as the paper at large batch", base_lr=f"the paper's lr at batch {global_batch}",
        final_lr="base lr / 1000", warmup_epochs="the paper's 10 warmup epochs",
        epochs="100 epochs: the paper's shortest schedule (72 % top-1 linear at 800)",
        color_strength="full colour distortion", gray_p="the paper's", blur_p="the paper's",
        epsilon="the paper's", freeze_prototypes_niters="one epoch, about the paper's 313 steps at 4096",
        queue_length=(f"a queue of {_round_to(3840, global_batch)} features (the paper's 3840 at batch 256): "
                      f"a batch of {global_batch} is small against K = 3000") if queue
        else "no queue: the batch alone spreads over the prototypes",
        queue_start_epoch="the paper's epoch 15")
    return Recipe("paper", settings, reasons)


def _small(num_images, side, global_batch, num_classes):
    crop = min(SMALL_MAX_CROP, _round_to(side, 16))
    epochs = int(min(max(SMALL_IMAGES_SEEN / num_images, SMALL_EPOCH_RANGE[0]), SMALL_EPOCH_RANGE[1]))
    if num_classes:
        prototypes = suggest_num_prototypes(num_classes)
        k_reason = f"{PROTOTYPES_PER_CLASS} x the {num_classes} classes of the label map"
    else:
        prototypes = min(PAPER_PROTOTYPES, max(10, num_images // 50))
        k_reason = "no label map: about 50 images per prototype"
    grid = side <= GRID_MAX_SIDE
    colour = num_images >= SMALL_MIN_COLOUR_IMAGES
    settings = dict(
        backbone="small_cnn_grid" if grid else "small_cnn",
        crops=f"2x{crop}@0.5-1,4x{crop // 2}@0.2-0.5" if grid else f"2x{crop}@0.3-1,4x{crop // 2}@0.1-0.3",
        prototypes=prototypes, hidden_dim=512, optimizer="adam", base_lr=SMALL_LR, final_lr=SMALL_LR * 1e-3,
        warmup_epochs=1, epochs=epochs, color_strength=0.5 if colour else 0.0, gray_p=0.2 if colour else 0.0,
        blur_p=0.0, epsilon=0.05, freeze_prototypes_niters=None, queue_length=0, queue_start_epoch=0)
    reasons = dict(
        backbone=("a 3-block CNN whose features average each quadrant of the last map: on images of "
                  f"<= {GRID_MAX_SIDE} px where a stroke sits is much of the content (global pooling: digits "
                  "collapsed to ln K, kNN 0.78; quadrants 0.98)") if grid else
                 ("a 3-block CNN with global average pooling: on larger images texture and colour carry the "
                  "class (the Cassava sample: kNN 0.73 pooled globally, 0.54 by quadrants)"),
        crops=(f"{crop} px big crops ({'the images' if crop >= side else 'detail beyond is slow on a CPU'}), "
               "half-size small crops; " + (
                   "large areas (50-100 %, 20-50 %): the paper's 5-14 % windows of a 32 px image are a few "
                   "pixels (digits kNN 0.978 with 30-100 % / 10-30 %, 0.984 with these)" if grid else
                   "areas 30-100 % and 10-30 % (the Cassava sample: kNN 0.68 -> 0.77 with these, 0.45 with "
                   "50-100 % / 20-50 %)")),
        prototypes=f"K = {prototypes}: {k_reason} (community guidance; the paper finds K robust within an order "
                   "of magnitude)",
        hidden_dim="a 512-wide head for a small backbone",
        optimizer="Adam: LARS's trust ratio (tuned for batch 4096) barely moves a small net at batch 64",
        base_lr=f"Adam {SMALL_LR:g} (1e-2 collapsed to ln K on digits, 1e-3 learned ~3x slower)",
        final_lr="base lr / 1000", warmup_epochs="one epoch",
        epochs=f"~{SMALL_IMAGES_SEEN:,} images seen in all (minutes on a CPU at 32 px)",
        color_strength=("half-strength jitter: small crops of small images keep little colour evidence" if colour
                        else f"crops only below {SMALL_MIN_COLOUR_IMAGES:,} images: on the 100-image sample any "
                        "colour jitter left the loss at ln K"),
        gray_p="the paper's" if colour else "crops only (see color_strength)",
        blur_p="no blur: at 32-64 px a blur erases the strokes and veins the features need",
        epsilon="the paper's", freeze_prototypes_niters="one epoch",
        queue_length="no queue: a short run on small data (the paper starts its queue at epoch 15)",
        queue_start_epoch="unused")
    return Recipe("small", settings, reasons)


def rule(num_images, image_hw, global_batch, num_classes=None):
    """SwAV's settings for a dataset: the paper's at ImageNet-like scale, the small-data recipe below it.

    Args:
        num_images: training images (unlabelled use). image_hw: (height, width) of a typical image.
        global_batch: images per step over all devices.
        num_classes: classes of the label map, when there is one (small data: K = 10 x classes).
    Returns:
        `Recipe`: ``settings`` fill the `PretrainConfig` fields left None; ``reasons`` say why.
    """
    if num_images < 1 or global_batch < 1 or min(image_hw) < 1:
        raise ValueError(f"rule needs positive sizes; got num_images={num_images}, image_hw={image_hw}, "
                         f"global_batch={global_batch}")
    side = min(image_hw)
    if num_images >= LARGE_MIN_IMAGES and side >= LARGE_MIN_SIDE:
        return paper(global_batch)
    return _small(num_images, side, global_batch, num_classes)


BATCH_REASON = "64 below 10,000 images (enough steps per epoch), the paper's 256 above"


def default_global_batch(num_images, num_devices=1):
    """The global batch when none is given: 64 on small data, the paper's 256 above; a multiple of the devices."""
    batch = 64 if num_images < LARGE_MIN_IMAGES else 256
    return max(num_devices, batch // num_devices * num_devices)


def default_learning_rate(optimizer, global_batch):
    """Peak lr of an optimizer chosen by hand: LARS/SGD the paper's at this batch, Adam the small-data one."""
    if optimizer == "adam":
        return SMALL_LR
    from kitlib.swav.optim import swav_learning_rate  # noqa: PLC0415

    return swav_learning_rate(global_batch)[0]
