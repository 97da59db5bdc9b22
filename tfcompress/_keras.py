"""The one place that decides which Keras a model belongs to.

tfmot 0.8 wraps only Keras 2 (`tf_keras`) models, while `import keras` and
`tf.keras` are Keras 3 in TensorFlow >= 2.16. tfcompress takes both: tf_keras
models get tfmot's wrapper layers, Keras 3 models get serializable weight
constraints (`tfcompress/*/constraints.py`). `generation(model)` says which
path a model takes; every other module imports tf_keras as `keras` and Keras 3
as `keras3` from here.
"""

import contextlib

import keras as keras3
import tf_keras as keras
from tf_keras.src.mixed_precision.autocast_variable import enable_auto_cast_variables
from keras.src.models.functional import Functional

KERAS_PACKAGE = "tf_keras"
TF_KERAS = "tf_keras"
KERAS3 = "keras3"
# Keras 3 backends whose compiled train step applies variable constraints and that tfcompress drives.
KERAS3_BACKENDS = ("tensorflow", "jax")

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


def float32_variables():
    """A context in which mixed-precision variables read as float32, not as their float16 view.

    Inside a layer's call under `mixed_float16` / `mixed_bfloat16`, tf_keras
    reads every float32 variable as the compute dtype; code that computes new
    variable values from variables (pruning masks, cluster centroids) runs in
    here so they keep float32 precision, as tf_keras computes regularizers.
    """
    return enable_auto_cast_variables(None)


@contextlib.contextmanager
def float32_global_policy():
    """A context in which the global dtype policy is float32; the user's policy is back afterwards."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


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


def _own_generation(obj):
    """`TF_KERAS` or `KERAS3` for a layer/model/callback of that package, else None."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "keras" or module.startswith("keras."):
            return KERAS3
        if module == "tf_keras" or module.startswith("tf_keras."):
            return TF_KERAS
    return None


def _attached_layers(layer):
    """Layers held in `layer`'s attributes (directly or in a list/tuple/dict), tracked or not."""
    found = []
    for value in vars(layer).values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, (keras.layers.Layer, keras3.layers.Layer)):
                found.append(item)
    return found


def _layer_tree(model):
    """`model` and every layer inside it, found through attributes too (a foreign layer is never tracked)."""
    seen, order, stack = set(), [], [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        order.append(layer)
        if hasattr(layer, "_flatten_layers"):
            stack.extend(layer._flatten_layers(include_self=False, recursive=False))
        stack.extend(_attached_layers(layer))
    return order


def generation(model, caller="tfcompress"):
    """Which Keras `model` belongs to: `"tf_keras"` (Keras 2) or `"keras3"` (`import keras`).

    The whole model is checked: a layer of the other Keras inside it (which
    the model would silently not train, or fail on) raises an error naming
    the fix.

    Arguments:
        model: a layer or model.
        caller: the public entry point, named in errors (e.g. `"tfc.prune"`).

    Returns:
        `TF_KERAS` or `KERAS3`.
    """
    kind = _own_generation(model)
    if kind is None:
        raise TypeError(
            f"{caller} expects a Keras model (`import keras` for Keras 3, or `import tf_keras as keras`), "
            f"got {type(model).__module__}.{type(model).__name__}."
        )
    for layer in _layer_tree(model):
        other = _own_generation(layer)
        if other is not None and other != kind:
            raise TypeError(
                f"{caller} got a {_NAMES[kind]} model ({type(model).__name__}) that holds a "
                f"{_NAMES[other]} layer {layer.name!r} ({type(layer).__module__}.{type(layer).__name__}). "
                "The two Keras generations do not mix: build every layer from one package, "
                f"{_FIX[kind]}."
            )
    return kind


_NAMES = {TF_KERAS: "tf_keras (Keras 2)", KERAS3: "Keras 3"}
_FIX = {
    TF_KERAS: "here `import tf_keras as keras` (also for the layers you add)",
    KERAS3: "here `import keras` (also for the layers you add; `tf_keras.layers` are Keras 2)",
}


def check_keras3_backend(caller):
    """Raises a clear error unless Keras 3 runs on a backend tfcompress drives (TensorFlow, JAX)."""
    backend = keras3.backend.backend()
    if backend not in KERAS3_BACKENDS:
        raise RuntimeError(
            f"{caller} supports Keras 3 on the TensorFlow and JAX backends; this process runs "
            f"Keras 3 on {backend!r}. Set KERAS_BACKEND=tensorflow (or jax) before importing keras."
        )


def is_keras3_functional(model):
    """True for a Keras 3 Sequential or functional model (Keras can clone those layer by layer)."""
    return isinstance(model, (keras3.Sequential, Functional))


def check_keras3_model(model, caller):
    """Raises a clear error unless `model` is a built Keras 3 model on a supported backend.

    Returns:
        The model, unchanged.
    """
    check_keras3_backend(caller)
    if not isinstance(model, keras3.Model):
        raise TypeError(f"{caller} expects a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"{caller} got a model that is not built yet: its weights do not exist. "
            + (
                "Start it with keras.Input(shape), or call it once on a batch (model(x[:1]))."
                if is_keras3_functional(model)
                else "Call it once on a batch of inputs (model(x[:1])) first."
            )
        )
    return model


def is_model(layer):
    """True for a model of either Keras (a model nested in a model, for instance)."""
    return isinstance(layer, (keras.Model, keras3.Model))


def is_layer_class(value):
    """True for a layer class of either Keras (for `layers=` arguments)."""
    return isinstance(value, type) and issubclass(value, (keras.layers.Layer, keras3.layers.Layer))


def sync_keras3_state(model):
    """Puts a Keras 3 model's live training state back into its variables (JAX keeps it apart mid-epoch).

    On JAX the fit loop holds the weights outside the variables between
    epochs; reading or assigning a variable from a callback needs this first,
    and the next step then reads the variables again. Other backends: no-op.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None and keras3.backend.backend() == "jax":
        sync()
