"""Models on disk: the fine-tuned classifier (``finetune`` writes it, ``predict`` reads it offline)
and the reusable-SavedModel format of backbones (``save_reusable``: the SwAV export, the tiny test net).

Layout of ``out_dir``:
    saved_model/      a TF2 SavedModel with a ``serve`` signature:
                      float32 images [N, S, S, 3] in [0, 1] -> probabilities [N, C]
    classifier.json   {"class_names": [...], "image_size": S}

Loading needs neither the Keras model code nor TF Hub, so a Kaggle submission notebook with the
internet off reads it from an attached dataset.
"""

import json
import os

import numpy as np
import tensorflow as tf

META_FILE = "classifier.json"
MODEL_DIR = "saved_model"
_LOCAL_IO = "/job:localhost"  # write SavedModels from this host (needed with a remote TPU)


def save_reusable(path, call, owner, variables, trainable_variables):
    """Write a backbone as a reusable TF2 SavedModel that ``hub.KerasLayer(path, trainable=True)`` fine-tunes.

    The root carries ``__call__(images, training)``, ``variables``, ``trainable_variables`` and
    ``regularization_losses``: what TF Hub needs to see the variables as trainable (REFERENCE.md).

    Args:
        path: output directory.
        call: ``tf.function(images, training=False)``: float32 [N, H, W, 3] in [0, 1] -> [N, F];
            traced here for any image size and both values of ``training``.
        owner: the trackable object that holds the variables (a tf.Module or Keras model).
        variables, trainable_variables: lists of the owner's variables.
    Returns:
        path.
    """
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(spec, training)
    root = tf.train.Checkpoint()
    root.model = owner
    root.__call__ = call
    root.variables = list(variables)
    root.trainable_variables = list(trainable_variables)
    root.regularization_losses = []
    tf.saved_model.save(root, os.fspath(path),
                        options=tf.saved_model.SaveOptions(experimental_io_device=_LOCAL_IO))
    return os.fspath(path)


class _Serving(tf.Module):
    def __init__(self, model, image_size, from_logits):
        super().__init__()
        self.model = model
        self.from_logits = from_logits
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])

    def _serve(self, images):
        out = tf.cast(self.model(images, training=False), tf.float32)
        return tf.nn.softmax(out, axis=-1) if self.from_logits else out


def save_classifier(model, out_dir, class_names, image_size, from_logits=True):
    """Export a Keras classifier for offline prediction.

    Args:
        model: callable on float32 [N, S, S, 3] in [0, 1] returning logits (or probabilities
            with ``from_logits=False``) [N, C].
        out_dir: folder to write (created).
        class_names: C names, index = label.
        image_size: S, the side the model expects (the BiT crop size).
    Returns:
        out_dir.
    """
    class_names = [str(c) for c in class_names]
    probe = model(tf.zeros([1, image_size, image_size, 3]), training=False)
    if probe.shape[-1] != len(class_names):
        raise ValueError(f"the model outputs {probe.shape[-1]} classes but {len(class_names)} class names were given")
    os.makedirs(out_dir, exist_ok=True)
    module = _Serving(model, int(image_size), from_logits)
    tf.saved_model.save(module, os.path.join(out_dir, MODEL_DIR), signatures={"serve": module.serve})
    with open(os.path.join(out_dir, META_FILE), "w") as f:
        json.dump({"class_names": class_names, "image_size": int(image_size)}, f, indent=1)
    return out_dir


class Classifier:
    """A loaded classifier: ``predict_proba(images)`` plus its ``class_names`` and ``image_size``."""

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
        self._module = tf.saved_model.load(os.path.join(out_dir, MODEL_DIR))
        self._serve = self._module.signatures["serve"]

    def predict_proba(self, images, batch_size=64):
        """Class probabilities for float32 images [N, S, S, 3] in [0, 1]; returns numpy [N, C]."""
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape.rank != 4 or tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images [N, {self.image_size}, {self.image_size}, 3], got {images.shape}")
        parts = [next(iter(self._serve(images[i:i + batch_size]).values())).numpy()
                 for i in range(0, int(images.shape[0]), batch_size)]
        return np.concatenate(parts) if parts else np.zeros([0, len(self.class_names)], np.float32)


def load_classifier(out_dir):
    """Load what ``save_classifier`` wrote (local path only)."""
    return Classifier(out_dir)
