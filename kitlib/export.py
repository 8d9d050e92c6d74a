"""Models on disk: the fine-tuned classifier (``finetune`` writes it, ``predict`` reads it offline).

Layout of ``out_dir``:
    classifier.keras  the Keras 3 classifier, float32 weights and compute: images float32
                      [N, S, S, 3] in [0, 1] -> logits [N, C] (or probabilities, see ``outputs``)
    classifier.json   {"class_names": [...], "image_size": S, "outputs": "logits", "model": "classifier.keras"}

Loading reads two local files: no network, no TF Hub, no TensorFlow, so a Kaggle submission notebook
with the internet off reads it from an attached dataset. The kit's BiT layers (``kitlib.resnetv2``) are
registered Keras objects; importing kitlib is all the loading side needs.

``with_dtype_policy`` rebuilds a model with another Keras dtype policy and the same weights: a
backbone saved in float32 runs in bfloat16 on a TPU, and a classifier trained in bfloat16 is saved in
float32 so a CPU/GPU reads it back without bfloat16 arithmetic.
"""

import importlib.util
import json
import os

import numpy as np

from kitlib.compat import keras

META_FILE = "classifier.json"
MODEL_FILE = "classifier.keras"
OUTPUTS = ("logits", "probabilities")


def _register_kit_layers():
    """Import the modules whose custom layers a saved kit model may hold (BiT's GroupNorm / WS conv)."""
    if importlib.util.find_spec("kitlib.resnetv2") is not None:
        import kitlib.resnetv2  # noqa: F401,PLC0415


def _is_policy(value):
    return isinstance(value, dict) and str(value.get("class_name", "")).endswith("DTypePolicy")


def _replace_policies(config, policy):
    """A copy of a serialized model ``config`` in which every layer's dtype policy is ``policy``
    (a serialized DTypePolicy); Input layers (whose "dtype" is the data type) are left alone."""
    if isinstance(config, list):
        return [_replace_policies(item, policy) for item in config]
    if not isinstance(config, dict) or config.get("class_name") == "InputLayer":
        return config
    return {key: policy if key == "dtype" and _is_policy(value) else _replace_policies(value, policy)
            for key, value in config.items()}


def _layers(model):
    """Every layer of ``model``, nested models' layers included (Input layers left out)."""
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.layers.InputLayer):
            yield layer
            yield from _layers(layer)


def dtype_policies(model):
    """The names of the dtype policies ``model``'s layers compute in, e.g. {"float32"}."""
    return {layer.dtype_policy.name for layer in _layers(model)}


def with_dtype_policy(model, policy=None):
    """``model`` rebuilt with every layer on the Keras dtype ``policy``, carrying the same weights.

    Args:
        model: a Keras model (functional, Sequential or a registered subclass).
        policy: a policy name ("float32", "mixed_bfloat16", "mixed_float16") or None for the global
            policy in force (``keras.config.dtype_policy()``, what ``runtime.setup`` set).
    Returns:
        A new, uncompiled model (variables stay float32 under mixed policies, as Keras keeps them), or
        ``model`` itself when every layer already computes in that policy's dtype.
    """
    policy = keras.dtype_policies.get(policy or keras.config.dtype_policy().name)
    if dtype_policies(model) == {policy.name}:
        return model
    return _rebuild(model, lambda config: _replace_policies(config, keras.dtype_policies.serialize(policy)))


def _rebuild(model, edit=lambda config: config):
    """A new uncompiled model from ``model``'s serialized graph (``edit``-ed), with its weights."""
    _register_kit_layers()
    # get_config: the graph alone, no compile config (a loss or optimizer need not be serialisable)
    rebuilt = model.__class__.from_config(edit(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


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
    portable = with_dtype_policy(model, "float32")
    if portable is model:  # already float32: an uncompiled copy, so neither optimizer nor loss is saved
        portable = _rebuild(model)
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


def device_count():
    """Devices of the Keras distribution in force (``runtime.setup``'s DataParallel), 1 without one:
    every batch a model sees must split evenly over them."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    return int(np.prod(mesh.shape)) if mesh is not None else 1


def shard_batch(batch):
    """A numpy batch [B, ...] laid out over the distribution's devices along B (as ``fit`` does with
    its batches), so ``predict_on_batch`` runs data-parallel; unchanged without a distribution."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return batch
    return keras.distribution.distribute_tensor(batch, distribution.get_data_layout(batch.shape))


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
        _register_kit_layers()
        self.model = keras.saving.load_model(model_path, compile=False)

    def predict_proba(self, images, batch_size=64):
        """Class probabilities for float images [N, S, S, 3] in [0, 1]; returns float32 numpy [N, C].

        Every forward pass sees exactly ``batch_size`` images (rounded up to a multiple of the device
        count; the last chunk is zero-padded and the padding dropped): one compiled shape.
        """
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images [N, {self.image_size}, {self.image_size}, 3], got {list(images.shape)}")
        multiple = device_count()
        chunk = -(-max(1, int(batch_size)) // multiple) * multiple
        parts = []
        for start in range(0, len(images), chunk):
            part = images[start:start + chunk]
            padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], np.float32)])
            out = np.asarray(self.model.predict_on_batch(shard_batch(padded)), np.float32)[:len(part)]
            parts.append(_softmax(out) if self.outputs == "logits" else out)
        return np.concatenate(parts) if parts else np.zeros([0, len(self.class_names)], np.float32)


def load_classifier(out_dir):
    """Load what ``save_classifier`` wrote (a local folder; nothing is downloaded)."""
    return Classifier(os.fspath(out_dir))
