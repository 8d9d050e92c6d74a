"""Models on disk: the fine-tuned classifier (``finetune`` writes it, ``predict`` reads it offline).

Layout of ``out_dir``:
    classifier.keras  the Keras 3 classifier, float32 weights and compute: images float32
                      [N, S, S, 3] in [0, 1] -> logits [N, C] (or probabilities, see ``outputs``)
    classifier.json   {"class_names": [...], "image_size": S, "outputs": "logits", "model": "classifier.keras"}

Loading reads two local files: no network, no TF Hub, no TensorFlow, so a Kaggle submission notebook
with the internet off reads it from an attached dataset. The kit's BiT layers (``kitlib.models.resnetv2``) are
registered Keras objects; importing kitlib is all the loading side needs.

``find_classifier`` finds the folder to load (given, attached under ``/kaggle/input``, or an untrained
stand-in for smoke runs).

``save_classifier`` saves float32 whatever the policy it trained under
(``kitlib.models.precision.with_dtype_policy``), so a CPU/GPU reads a classifier trained in bfloat16 back
without bfloat16 arithmetic.
"""

import glob
import json
import os

import numpy as np

from kitlib import hosts, runtime
from kitlib.compat import keras
from kitlib.locations import KAGGLE_INPUT
from kitlib.models.precision import (rebuild, register_kit_layers,
                                     with_dtype_policy)
from kitlib.sharding import predict_padded, rows_per_pass, undistributed

META_FILE = "classifier.json"
MODEL_FILE = "classifier.keras"
OUTPUTS = ("logits", "probabilities")
_STAND_IN_SIZE = 64  # side of the untrained stand-in classifier (CPU smoke runs)


def save_classifier(model, out_dir, class_names, image_size, from_logits=True):
    """Write a Keras classifier for offline prediction: ``classifier.keras`` (float32) + ``classifier.json``.

    Args:
        model: Keras model on float32 [N, S, S, 3] in [0, 1] returning logits (or probabilities with
            ``from_logits=False``) [N, C]. A compiled model is saved without its optimizer state.
        out_dir: folder to write (created).
        class_names: C names, index = label.
        image_size: S, the side the model expects (the BiT crop size).
    Returns:
        out_dir.
    """
    class_names = [str(c) for c in class_names]
    probe = model(np.zeros([1, image_size, image_size, 3], np.float32), training=False)
    if probe.shape[-1] != len(class_names):
        raise ValueError(f"the model outputs {probe.shape[-1]} classes but {len(class_names)} class names were given")
    with undistributed():  # a host copy: nothing to agree across processes before its weights arrive
        portable = with_dtype_policy(model, "float32")
        if portable is model:  # already float32: an uncompiled copy, so neither optimizer nor loss is saved
            portable = rebuild(model)
    os.makedirs(out_dir, exist_ok=True)
    portable.save(os.path.join(out_dir, MODEL_FILE))
    meta = {"class_names": class_names, "image_size": int(image_size),
            "outputs": "logits" if from_logits else "probabilities", "model": MODEL_FILE}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def _softmax(logits):
    """Row softmax of float [N, C] in float64, returned as float32."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


class Classifier:
    """A loaded classifier: ``predict_proba(images)`` plus its ``class_names``, ``image_size`` and ``model``."""

    def __init__(self, out_dir):
        meta_path = os.path.join(out_dir, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"{out_dir}: not a kitlib classifier (no {META_FILE}); pass the folder that "
                "`python -m kitlib finetune --out DIR` wrote (on Kaggle: attach it as a dataset)")
        with open(meta_path) as f:
            meta = json.load(f)
        self.class_names = tuple(meta["class_names"])
        self.image_size = int(meta["image_size"])
        self.outputs = meta.get("outputs", "logits")
        model_path = os.path.join(out_dir, meta.get("model", MODEL_FILE))
        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"{out_dir}: {META_FILE} is there but {os.path.basename(model_path)} is not (a classifier "
                "exported by an older kit holds saved_model/ instead); fine-tune again with this kit")
        register_kit_layers()
        # several processes: a variable's initial value must agree on all before the saved weights replace
        # it, so every process draws the same (then the caller's random state is back)
        with runtime.seeded(0 if hosts.process_count() > 1 else None):
            self.model = keras.saving.load_model(model_path, compile=False)

    def predict_proba(self, images, batch_size=64):
        """Class probabilities for float images [N, S, S, 3] in [0, 1]; returns float32 numpy [N, C].

        Every forward pass sees exactly ``batch_size`` images (rounded up to a multiple of the device
        count; the last chunk is zero-padded and the padding dropped): one compiled shape.
        """
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images [N, {self.image_size}, {self.image_size}, 3], got {list(images.shape)}")
        chunk = rows_per_pass(batch_size)
        parts = []
        for start in range(0, len(images), chunk):
            out = predict_padded(self.model, images[start:start + chunk], chunk)
            parts.append(_softmax(out) if self.outputs == "logits" else out)
        return np.concatenate(parts) if parts else np.zeros([0, len(self.class_names)], np.float32)


def load_classifier(out_dir):
    """Load what ``save_classifier`` wrote (a local folder; nothing is downloaded)."""
    return Classifier(os.fspath(out_dir))


# ============ finding the model: a local folder, an attached dataset, or a stand-in ============


def make_stand_in_classifier(out_dir, class_names=None, image_size=_STAND_IN_SIZE, seed=0):
    """Save an UNTRAINED tiny Keras 3 conv net as a classifier (CPU smoke runs of the submission path only).

    Its predictions are meaningless; it exists so that notebooks and tests run without a fine-tuned
    model. Weights come from seeded initialisers (no global seed is touched); it is saved exactly as
    ``finetune`` saves a real one (``save_classifier``).
    Args:
        class_names: C names (None: Cassava's five, ``kitlib.data.tfrecords.CLASS_NAMES``).
    Returns:
        out_dir, loadable with ``load_classifier``.
    """
    if class_names is None:
        from kitlib.data.tfrecords import CLASS_NAMES as \
            class_names  # noqa: PLC0415 (tfrecords imports TensorFlow)

    init = keras.initializers
    inputs = keras.Input([image_size, image_size, 3])
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=init.HeNormal(seed))(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=init.HeNormal(seed + 1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(len(class_names), kernel_initializer=init.GlorotNormal(seed + 2))(x)
    return save_classifier(keras.Model(inputs, logits), out_dir, class_names, image_size)


def find_classifier(model_dir=None, input_root=KAGGLE_INPUT, stand_in_dir=None):
    """The classifier folder to use.

    Args:
        model_dir: a folder holding ``classifier.json`` (used as is when given).
        input_root: searched (up to 4 levels: datasets and Kaggle Models) when ``model_dir`` is None;
            exactly one folder there may hold ``classifier.json``.
        stand_in_dir: when nothing is found, write an untrained stand-in here
            (``make_stand_in_classifier``) instead of failing: for SMOKE runs away from Kaggle.
    Returns:
        the folder's path.
    """
    if model_dir is not None:
        if not os.path.isfile(os.path.join(model_dir, META_FILE)):
            raise FileNotFoundError(f"{model_dir}: no {META_FILE}; pass the folder that "
                                    "`python -m kitlib finetune --out DIR` wrote")
        return os.fspath(model_dir)
    found = sorted(os.path.dirname(p) for depth in range(1, 5)
                   for p in glob.glob(os.path.join(input_root, *["*"] * depth, META_FILE)))
    if len(found) > 1:
        raise ValueError(f"several classifiers under {input_root}: {', '.join(found)}; set the model folder")
    if found:
        return found[0]
    if stand_in_dir is None:
        raise FileNotFoundError(f"no {META_FILE} under {input_root}: attach the dataset holding the "
                                "fine-tuned model (the folder `python -m kitlib finetune --out DIR` wrote)")
    print(f"kitlib: no fine-tuned classifier found; writing an UNTRAINED stand-in to {stand_in_dir} "
          "(its predictions are meaningless)")
    return make_stand_in_classifier(stand_in_dir)
