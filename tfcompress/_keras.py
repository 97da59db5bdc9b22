"""The one place that decides which Keras tfcompress uses.

tfmot 0.8 wraps only Keras 2 (`tf_keras`) models, while `import keras` and
`tf.keras` are Keras 3 in TensorFlow >= 2.16. Every other module imports
`keras` from here, so moving to a Keras 3 bridge later is a one-file change.
"""

import tf_keras as keras

KERAS_PACKAGE = "tf_keras"

_BUILD_HINT = (
    "tfcompress builds on tfmot, which works on tf_keras (Keras 2) models. "
    "Build the model with `import tf_keras as keras` (pip install tf_keras) "
    "instead of `import keras` / `tf.keras`, then pass it again."
)


def weight_name(variable):
    """A weight's own name without scopes or output index: `kernel` for `quant_dense/dense/kernel:0`.

    Wrappers of different classes nest and order their weights differently;
    this is the name that pairs a weight with its twin in another wrapper.
    """
    return variable.name.split("/")[-1].split(":")[0]


def is_keras3_object(obj):
    """Returns True when `obj` is a layer or model of Keras 3 (`import keras`), subclasses included."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def check_model(model, caller, allow_subclassed=False):
    """Raises a clear error unless `model` is a built Sequential/functional tf_keras model.

    Arguments:
        model: the object the user passed.
        caller: the public entry point, named in the error (e.g. `"tfc.prune"`).
        allow_subclassed: accept subclassed models too (for entry points that
            only read weights and never clone the model).

    Returns:
        The model, unchanged.
    """
    if is_keras3_object(model):
        raise TypeError(
            f"{caller} got a Keras 3 model ({type(model).__module__}."
            f"{type(model).__name__}). {_BUILD_HINT}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{caller} expects a tf_keras.Model, got {type(model).__name__}. "
            f"{_BUILD_HINT}"
        )
    subclassed = not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False))
    if subclassed and not allow_subclassed:
        raise TypeError(
            f"{caller} got a subclassed model ({type(model).__name__}); tfmot can only "
            "clone Sequential and functional models. Wrap the layers inside your "
            "subclass individually (e.g. build them as a functional model inside it), "
            "or rebuild it as a functional model."
        )
    if not model.built:
        raise ValueError(
            f"{caller} got a model that is not built yet: its weights do not exist. "
            + (
                "Call it once on a batch of inputs (model(x[:1])) first."
                if subclassed
                else "Give the first layer an `input_shape=` (or start with keras.Input), or call "
                "`model.build(input_shape)` first."
            )
        )
    return model
