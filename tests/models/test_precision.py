"""kitlib.models.precision: a model rebuilt under another dtype policy with the same weights."""


import numpy as np

from kitlib.compat import keras
from kitlib.models import precision as models_precision


def _tiny_classifier(size=16, classes=3):
    inputs = keras.Input([size, size, 3])
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, dtype="float32")(x))

def test_with_dtype_policy_rebuilds_every_layer_and_returns_a_model_already_in_it_unchanged():
    model = _tiny_classifier()
    assert models_precision.with_dtype_policy(model, "float32") is model
    mixed = models_precision.with_dtype_policy(model, "mixed_bfloat16")
    assert mixed is not model and all(layer.compute_dtype == "bfloat16" for layer in mixed.layers[1:])
    assert all(w.dtype == "float32" for w in mixed.weights)
    for a, b in zip(mixed.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert mixed.layers[0].dtype == "float32"  # the input stays float32 images


def test_every_module_with_a_saved_kit_layer_is_registered_before_a_load():
    """A classifier holding PyramidPool, saved by one process, loads in another only if the module defining it
    was imported: every registered Keras layer of the kit (a subclass of a ``keras.layers`` class, or of such a
    kit layer) is in a module `LAYER_MODULES` names. (Registered schedules and optimizers are not saved with a
    model.)"""
    import ast  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    root = pathlib.Path(models_precision.__file__).parents[1]
    registered = {}  # class name -> (module, its bases as written)
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("register_keras_serializable" in ast.unparse(d)
                                                      for d in node.decorator_list):
                registered[node.name] = (module, [ast.unparse(b) for b in node.bases])
    layers = {n for n, (_, bases) in registered.items() if any(b.startswith("keras.layers.") for b in bases)}
    layers |= {n for n, (_, bases) in registered.items() if set(bases) & layers}
    defining = {registered[n][0] for n in layers}
    assert {"PyramidPool", "GridPool"} <= layers and defining <= set(models_precision.LAYER_MODULES), defining
