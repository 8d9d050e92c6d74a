"""Dtype-policy surgery: a model rebuilt with another Keras dtype policy and the same weights.

A backbone saved in float32 runs in bfloat16 on a TPU, and a classifier trained in bfloat16 is saved in
float32 so a CPU/GPU reads it back without bfloat16 arithmetic. The layers a model pins to float32 on
purpose (``kitlib.models.resnetv2.FLOAT32_LAYERS``) keep their policy.
"""

import importlib.util

from kitlib.compat import keras


# Every module that defines a layer a saved kit model may hold (``register_keras_serializable(package="kitlib")``):
# BiT's GroupNorm / weight-standardised conv, and the small CNNs' pooling (GridPool, PyramidPool). A model saved
# in one process is loaded in another (a notebook or a command per step): each must be imported before the load.
LAYER_MODULES = ("kitlib.models.resnetv2_layers", "kitlib.models.backbones")


def register_kit_layers():
    """Import the modules whose custom layers a saved kit model may hold (`LAYER_MODULES`)."""
    for name in LAYER_MODULES:
        importlib.import_module(name)


def _is_policy(value):
    return isinstance(value, dict) and str(value.get("class_name", "")).endswith("DTypePolicy")


def _replace_policies(config, policy, keep=()):
    """A copy of a serialized model ``config`` in which every layer's dtype policy is ``policy``
    (a serialized DTypePolicy); Input layers (whose "dtype" is the data type) and the layers named in
    ``keep`` (pinned to float32 on purpose, e.g. BiT's pre-head GroupNorm) are left alone."""
    if isinstance(config, list):
        return [_replace_policies(item, policy, keep) for item in config]
    if not isinstance(config, dict) or config.get("class_name") == "InputLayer":
        return config
    if isinstance(config.get("config"), dict) and config["config"].get("name") in keep:
        return config
    return {key: policy if key == "dtype" and _is_policy(value) else _replace_policies(value, policy, keep)
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
    from kitlib.models.resnetv2 import FLOAT32_LAYERS  # noqa: PLC0415

    keep = FLOAT32_LAYERS if policy.name != "float32" else ()
    return rebuild(model, lambda config: _replace_policies(config, keras.dtype_policies.serialize(policy), keep))


def rebuild(model, edit=lambda config: config):
    """A new uncompiled model from ``model``'s serialized graph (``edit``-ed), with its weights."""
    register_kit_layers()
    # get_config: the graph alone, no compile config (a loss or optimizer need not be serialisable)
    rebuilt = model.__class__.from_config(edit(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt
