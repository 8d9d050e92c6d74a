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
SMALL_MAX_CROP = 64         # small-data crops: at most 64 px, and smaller where the budget needs it
SMALL_MIN_CROP = 32         # ... but not below 32 px (a digit or a leaf spot is still legible)
SMALL_IMAGES_SEEN = 150_000  # small-data runs: the crop is lowered until the budget affords this many images
SMALL_EPOCH_RANGE = (20, 400)  # the image-count estimate's bounds; a budget above 400 epochs stops at 400
SMALL_BUDGET_MINUTES = 10.0  # small-data runs are sized to this much of the machine they run on
SMALL_LR = 3e-3             # Adam (bench/README.md, Learning: higher collapsed, lower was slower)
LARGE_AREA_MAX_SIDE = 48    # images this small get crops of large areas (the paper's small windows are a few px)
SMALL_MIN_COLOUR_IMAGES = 1_000  # below this many images: crops only, no colour distortion


@dataclasses.dataclass(frozen=True)
class Choice:
    """One value the rule chose, and why (one line, no figures: those are in bench/README.md)."""
    value: object
    reason: str


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The settings `rule` chooses. Every field but ``regime`` is a `Choice` for the
    `kitlib.swav.pretrain.PretrainConfig` field of the same name (a test checks the names and types match),
    so a recipe cannot leave one out or name one that does not exist.

    Attributes:
        regime: "paper" (ImageNet-like data) or "small".
    """
    regime: str
    backbone: Choice
    crops: Choice
    prototypes: Choice
    hidden_dim: Choice
    optimizer: Choice
    base_lr: Choice
    final_lr: Choice
    warmup_epochs: Choice
    epochs: Choice
    color_strength: Choice
    gray_p: Choice
    blur_p: Choice
    epsilon: Choice
    queue_length: Choice
    queue_start_epoch: Choice
    budget_minutes: Choice

    def choices(self):
        """{field: `Choice`} for every setting of the recipe."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "regime"}

    @property
    def settings(self):
        """{field: value}."""
        return {k: c.value for k, c in self.choices().items()}

    @property
    def reasons(self):
        """{field: why}."""
        return {k: c.reason for k, c in self.choices().items()}


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
    from kitlib.swav.optim import swav_learning_rate  # noqa: PLC0415 - keeps this module free of Keras

    base_lr, final_lr = swav_learning_rate(global_batch)
    queue = global_batch < 1024  # the paper's queue: at batch 256 (not at 4096), 3840 features
    queue_length = _round_to(3840, global_batch) if queue else 0
    return Recipe(
        "paper",
        backbone=Choice("resnet50", "ImageNet-like data: the paper's ResNet-50"),
        crops=Choice(PAPER_CROPS, "the paper's multi-crop: 2 x 224 (14-100 % of the area) + 6 x 96 (5-14 %)"),
        prototypes=Choice(PAPER_PROTOTYPES, "the paper's K = 3000 (robust within an order of magnitude of the classes)"),
        hidden_dim=Choice(2048, "the paper's projection head 2048 -> 128"),
        optimizer=Choice("lars", "LARS, as the paper at large batch"),
        base_lr=Choice(base_lr, f"the paper's lr at batch {global_batch}"),
        final_lr=Choice(final_lr, "base lr / 1000"),
        warmup_epochs=Choice(10, "the paper's 10 warmup epochs"),
        epochs=Choice(100, "100 epochs: the paper's shortest schedule"),
        color_strength=Choice(1.0, "full colour distortion"),
        gray_p=Choice(0.2, "the paper's"),
        blur_p=Choice(0.5, "the paper's"),
        epsilon=Choice(0.05, "the paper's"),
        queue_length=Choice(queue_length, f"a queue of {queue_length} features (the paper's 3840 at batch 256): a "
                            f"batch of {global_batch} is small against K = 3000" if queue
                            else "no queue: the batch alone spreads over the prototypes"),
        queue_start_epoch=Choice(15, "the paper's epoch 15"),
        budget_minutes=Choice(0.0, "0: the paper's epochs, not a time (give --budget-minutes to size them to one)"))


def crop_sides(side):
    """The big-crop sides the small recipe may use for images of `side` px, largest first: the image size
    (rounded to 16, at most SMALL_MAX_CROP) down to SMALL_MIN_CROP in steps of 16 (`kitlib.swav.budget`
    takes the largest the budget affords)."""
    top = min(SMALL_MAX_CROP, _round_to(side, 16))
    return list(range(top, min(top, SMALL_MIN_CROP) - 1, -16))


def small_crops(crop, side):
    """The small recipe's multi-crop at big-crop side `crop` for images of `side` px, as a `Choice`: 2 big
    crops and 4 half-size ones, over larger areas on tiny images."""
    top = crop_sides(side)[0]
    where = ("the images" if crop >= side else f"lowered from {top} px: the budget affords more images seen so"
             if crop < top else "detail beyond is slow on a CPU")
    large = side <= LARGE_AREA_MAX_SIDE
    spec = f"2x{crop}@0.5-1,4x{crop // 2}@0.2-0.5" if large else f"2x{crop}@0.3-1,4x{crop // 2}@0.1-0.3"
    return Choice(spec, f"{crop} px big crops ({where}), half-size small crops; " + (
        "large areas (50-100 %, 20-50 %): the paper's 5-14 % windows of a small image are a few pixels" if large
        else "areas 30-100 % and 10-30 %, wider than the paper's small crops"))


def _small(num_images, side, global_batch, num_classes):
    crop = crop_sides(side)[0]
    epochs = int(min(max(SMALL_IMAGES_SEEN / num_images, SMALL_EPOCH_RANGE[0]), SMALL_EPOCH_RANGE[1]))
    if num_classes:
        prototypes = suggest_num_prototypes(num_classes)
        k_reason = f"{PROTOTYPES_PER_CLASS} x the {num_classes} classes of the label map"
    else:
        prototypes = min(PAPER_PROTOTYPES, max(10, num_images // 50))
        k_reason = "no label map: about 50 images per prototype"
    colour = num_images >= SMALL_MIN_COLOUR_IMAGES
    return Recipe(
        "small",
        backbone=Choice("small_cnn_pyramid", "a 3-block CNN whose features keep the global average of the last map "
                        "and its 2 x 2 quadrants: texture and colour, and where a stroke sits, whichever the class "
                        "lives in"),
        crops=small_crops(crop, side),
        prototypes=Choice(prototypes, f"K = {prototypes}: {k_reason} (community guidance; the paper finds K robust "
                          "within an order of magnitude)"),
        hidden_dim=Choice(512, "a 512-wide head for a small backbone"),
        optimizer=Choice("adam", "Adam: LARS's trust ratio (tuned for batch 4096) barely moves a small net at batch 64"),
        base_lr=Choice(SMALL_LR, f"Adam {SMALL_LR:g}: higher collapsed to ln K, lower learned several times slower"),
        final_lr=Choice(SMALL_LR * 1e-3, "base lr / 1000"),
        warmup_epochs=Choice(1, "one epoch"),
        epochs=Choice(epochs, f"~{SMALL_IMAGES_SEEN:,} images seen, estimated from the image count (the budget, "
                      "when it is timed, sets them instead)"),
        color_strength=Choice(0.5, "half-strength jitter: small crops of small images keep little colour evidence")
        if colour else Choice(0.0, f"crops only below {SMALL_MIN_COLOUR_IMAGES:,} images: on a few hundred images "
                              "colour jitter kept the loss at ln K"),
        gray_p=Choice(0.2, "the paper's") if colour else Choice(0.0, "crops only (see color_strength)"),
        blur_p=Choice(0.0, "no blur: at 32-64 px a blur erases the strokes and veins the features need"),
        epsilon=Choice(0.05, "the paper's"),
        queue_length=Choice(0, "no queue: a short run on small data (the paper starts its queue at epoch 15)"),
        queue_start_epoch=Choice(0, "unused without a queue"),
        budget_minutes=Choice(SMALL_BUDGET_MINUTES, f"about {SMALL_BUDGET_MINUTES:g} minutes of this machine: the "
                              "plan times a few steps, then fixes the crop size and the epochs"))


def rule(num_images, image_hw, global_batch, num_classes=None):
    """SwAV's settings for a dataset: the paper's at ImageNet-like scale, the small-data recipe below it.

    Args:
        num_images: training images (unlabelled use). image_hw: (height, width) of a typical image.
        global_batch: images per step over all devices.
        num_classes: classes of the label map, when there is one (small data: K = 10 x classes).
    Returns:
        `Recipe`: its choices fill the `PretrainConfig` fields left None, each with its reason.
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
