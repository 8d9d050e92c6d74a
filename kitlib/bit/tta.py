"""Test-time augmentation (TTA): the views of an image the classifier averages over.

Preprocessing (S = the classifier's ``image_size``, e.g. BiT's 480 crop):
    identity                     the whole image resized to S x S: exactly what ``kitlib.bit.inputs.preprocess_eval``
                                 gives the validation set in ``finetune`` (official BiT evaluates
                                 this way), so TTA "none" reproduces the validation accuracy;
    hflip, vflip                 that view mirrored left-right / upside-down (a leaf has no canonical
                                 orientation);
    centre, top_left, top_right, the image resized to R x R, R = round(S * 512 / 480), then an S x S
    bottom_left, bottom_right    crop: the scale BiT trains at (resize 512, random crop 480).
Every image is decoded once and resized once per side (S for the flips, R for the crops); each view is cut
from a batch of those just before its forward pass (``kitlib.bit.submission.predict``).
"""

from kitlib.bit import inputs
from kitlib.compat import tf

RESIZE_PER_CROP = 512 / 480  # BiT-HyperRule: train crops of 480 from images resized to 512
_CROP_VIEWS = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")
_FULL_VIEWS = ("identity", "hflip", "vflip")  # cut from the image resized to S x S
VIEWS = _FULL_VIEWS + _CROP_VIEWS
TTA_PRESETS = {
    "none": ("identity",),
    "flip": ("identity", "hflip", "vflip"),
    "crops": _CROP_VIEWS,
    "flip+crops": VIEWS,
}
DEFAULT_TTA = "flip"
def parse_tta(tta):
    """View names from a preset ("none", "flip", "crops", "flip+crops"), "a,b,c", or a list of names."""
    if isinstance(tta, str):
        names = TTA_PRESETS.get(tta.strip()) or tuple(v.strip() for v in tta.split(",") if v.strip())
    else:
        names = tuple(tta)
    unknown = [v for v in names if v not in VIEWS]
    if not names or unknown:
        raise ValueError(f"tta={tta!r}: unknown view(s) {unknown}; use a preset ({', '.join(TTA_PRESETS)}) "
                         f"or a list of views from {', '.join(VIEWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tta={tta!r} names a view twice; each view counts once in the average")
    return names


def zoomed_size(image_size, resize_per_crop=RESIZE_PER_CROP):
    """R, the side the crop views are cut from: round(S * 512 / 480) by default."""
    return max(int(image_size), int(round(image_size * resize_per_crop)))


def resize_for_views(image, views, image_size, resize_per_crop):
    """uint8 [H, W, 3] -> (image at S x S, image at R x R), float32 in [0, 1]; an unused one is empty."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    empty = tf.zeros([0, 0, 3])  # a resize no view needs is skipped

    def resized(side):  # the fine-tuning evaluation resize, so "identity" is exactly what validation saw
        return inputs.preprocess_eval(image, side)

    full = resized(image_size) if any(v in _FULL_VIEWS for v in views) else empty
    zoomed = resized(zoomed_size(image_size, resize_per_crop)) if any(v in _CROP_VIEWS for v in views) else empty
    return full, zoomed


def cut_view(full, zoomed, view, image_size):
    """One view of a batch: from [B, S, S, 3] (flips) or [B, R, R, 3] (crops) -> [B, S, S, 3]."""
    if view == "identity":
        return full
    if view in ("hflip", "vflip"):
        return tf.reverse(full, axis=[2 if view == "hflip" else 1])
    margin = int(zoomed.shape[1]) - image_size
    top, left = {"centre": (margin // 2, margin // 2), "top_left": (0, 0), "top_right": (0, margin),
                 "bottom_left": (margin, 0), "bottom_right": (margin, margin)}[view]
    return zoomed[:, top:top + image_size, left:left + image_size, :]


def tta_views(image, image_size, tta=DEFAULT_TTA, resize_per_crop=RESIZE_PER_CROP):
    """The TTA views of one image (what the model sees).

    Args:
        image: uint8 [H, W, 3] (or float in [0, 1]).
        image_size: S.
        tta: preset, comma list or list of view names (``parse_tta``).
        resize_per_crop: R / S for the crop views (BiT: 512 / 480).
    Returns:
        float32 [V, S, S, 3] in [0, 1], in the order of the views.
    """
    names = parse_tta(tta)
    full, zoomed = resize_for_views(image, names, image_size, resize_per_crop)
    return tf.concat([cut_view(full[None], zoomed[None], view, image_size) for view in names], axis=0)
