"""Layers of a model: walking them, choosing them, and cloning a model with its weights.

Every compression walks, selects and clones layers the same way, so these
live here once: `walk` (the one traversal), `layer_selector` /
`per_layer_value` (the user's `layers=` arguments) and `clone_with_weights`
(clone a model layer by layer and carry each layer's trained weights over).
"""

import contextlib

from tfcompress._keras import is_keras3_functional, is_keras3_object, is_layer_class, is_model, keras, weight_name


def walk(model, kind=None, include_self=False, into_wrappers=True):
    """The layers inside `model`, in order, nested models included.

    Arguments:
        model: a tf_keras model (or layer).
        kind: keep only instances of this class (or tuple of classes).
        include_self: list `model` itself first.
        into_wrappers: also list the layers inside wrappers (a pruned
            layer's inner layer, ...). False lists what the user built: the
            layers of the model and of the models nested in it.

    Returns:
        A list of layers.
    """
    if into_wrappers:
        layers = list(model._flatten_layers(include_self=include_self, recursive=True))
    else:
        layers = [model] if include_self else []
        for layer in model.layers:
            layers.append(layer)
            if is_model(layer):
                layers.extend(walk(layer, into_wrappers=False))
    return [layer for layer in layers if kind is None or isinstance(layer, kind)]


def all_layers(model):
    """Every layer the user built in `model`, nested models' layers included, in order."""
    return walk(model, into_wrappers=False)


def fresh_copy(layer):
    """A new, unbuilt layer with `layer`'s configuration."""
    return layer.__class__.from_config(layer.get_config())


def copy_weights_by_position(old, new):
    """Copies `old`'s weights into `new` in order (layers of the same class and config)."""
    new.set_weights(old.get_weights())


def copy_weights_by_name(old, new, fresh=()):
    """Copies `old`'s weights into `new` by weight name.

    Wrappers of different classes order their variables differently (and
    tfmot's cluster-preserving quantizers vary it between builds), so names,
    not positions, pair them up.

    Arguments:
        old: the layer holding the values.
        new: the layer to fill.
        fresh: names of `new`'s weights that `old` may lack; they keep their values.
    """
    values = {}
    for variable in old.weights:
        values.setdefault(weight_name(variable), variable.numpy())
    targets = [v for v in new.weights if weight_name(v) in values]
    missing = [weight_name(v) for v in new.weights if weight_name(v) not in values and weight_name(v) not in fresh]
    if missing:
        raise RuntimeError(f"No value for {missing} of layer {new.name!r} in layer {old.name!r}.")
    keras.backend.batch_set_value([(v, values[weight_name(v)]) for v in targets])


@contextlib.contextmanager
def _autograph_disabled():
    from tensorflow.python.autograph.core import ag_ctx

    with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
        yield


def call_converted(layer, inputs, **kwargs):
    """`layer.call(inputs, **kwargs)` with autograph, as tf_keras's `Layer.__call__` converts a `call`.

    tfcompress's wrapper layers run as written when a step is traced (see
    `_tfmot.py`), and a wrapper calls its layer's `call` directly; the user's
    layer in it may branch on a tensor in Python, which needs autograph.
    """
    from tensorflow.python.autograph.core import ag_ctx
    from tensorflow.python.autograph.impl import api as autograph

    return autograph.tf_convert(layer.call, ag_ctx.control_status_ctx())(inputs, **kwargs)


def rebuild(build):
    """`build()` (which clones a tf_keras model), without autograph where the layers allow it.

    Calling a subclassed layer on symbolic tensors makes tf_keras convert its
    `call` with autograph first, once per call; the wrappers tfmot and tfcompress
    clone need no converted control flow (they branch with `smart_cond`), and the
    conversions were a third of `tfc.quantize` on MobileNetV3Small (20 CPU s, 11
    without). Training still traces with autograph. A user's layer whose `call`
    branches on a tensor in Python needs autograph: then `build` runs again with it.
    """
    import tensorflow as tf

    try:
        with _autograph_disabled():
            return build()
    except tf.errors.OperatorNotAllowedInGraphError:
        return build()


def clone_with_weights(model, clone_function=fresh_copy, copy=copy_weights_by_position):
    """Clones a Sequential/functional model layer by layer, carrying trained weights over.

    Arguments:
        model: the model to clone.
        clone_function: `layer -> new_layer`, or `layer -> (new_layer, target)`
            when the weights belong to a layer inside the new one (the layer a
            new wrapper wraps), or `(new_layer, None)` when the function set the
            weights itself. Nested functional models are cloned layer by layer
            with the same function.
        copy: `(old, new) -> None`, copying one layer's weights; called for
            every pair once the clone is built.

    Returns:
        The cloned model, uncompiled.

    A Keras 3 Sequential/functional model is cloned by Keras 3's own
    `clone_model` (nested models layer by layer too) with a plain
    `layer -> new_layer` function, and takes the model's weights in order.
    """
    if is_keras3_object(model):
        return _clone_keras3_with_weights(model, clone_function)
    pairs = []

    def clone_layer(layer):
        if isinstance(layer, keras.Model) and (
            isinstance(layer, keras.Sequential) or getattr(layer, "_is_graph_network", False)
        ):
            return keras.models.clone_model(layer, clone_function=clone_layer)
        new = clone_function(layer)
        new, target = new if isinstance(new, tuple) else (new, new)
        if target is not None:
            pairs.append((layer, target))
        return new

    def build():
        pairs.clear()
        return keras.models.clone_model(model, clone_function=clone_layer)

    clone = rebuild(build)
    for old, new in pairs:
        copy(old, new)
    return clone


def _clone_keras3_with_weights(model, clone_function):
    import keras as keras3

    if not is_keras3_functional(model):
        raise ValueError("a subclassed Keras 3 model cannot be cloned")
    clone = keras3.models.clone_model(model, clone_function=clone_function, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _key_matches(layer, key):
    if isinstance(key, str):
        return layer.name == key
    return isinstance(layer, key)


def _check_keys(model, keys, argument):
    names = {layer.name for layer in all_layers(model)}
    for key in keys:
        if isinstance(key, str):
            if key not in names:
                raise ValueError(
                    f"`{argument}` names a layer {key!r} that is not in the model. "
                    f"Layer names are: {sorted(names)}."
                )
        elif not is_layer_class(key):
            raise TypeError(
                f"`{argument}` takes layer names (str) or Keras layer classes; got {key!r}."
            )


def _as_keys(layers):
    if isinstance(layers, (str, type)):
        return [layers]
    return list(layers)


def named_layers(layers):
    """The layer names a `layers=` argument lists explicitly (none for a predicate)."""
    if layers is None or (callable(layers) and not isinstance(layers, type)):
        return set()
    return {key for key in _as_keys(layers) if isinstance(key, str)}


def layer_selector(model, layers, argument="layers"):
    """Returns `predicate(layer) -> bool` for a user's `layers=` argument, or None.

    Arguments:
        model: the model the names must belong to.
        layers: None (the compression's default), a callable taking a layer, or
            an iterable of layer names and/or tf_keras layer classes.
        argument: the argument's name, for error messages.
    """
    if layers is None:
        return None
    if callable(layers) and not isinstance(layers, type):
        return layers
    keys = _as_keys(layers)
    _check_keys(model, keys, argument)
    return lambda layer: any(_key_matches(layer, key) for key in keys)


def per_layer_value(model, values, default, argument):
    """Returns `value_for(layer)` from a `{name or class: value}` mapping.

    Names win over classes; layers that match nothing get `default`.
    """
    values = dict(values or {})
    _check_keys(model, values, argument)
    by_name = {k: v for k, v in values.items() if isinstance(k, str)}
    by_type = [(k, v) for k, v in values.items() if not isinstance(k, str)]

    def value_for(layer):
        if layer.name in by_name:
            return by_name[layer.name]
        for key, value in by_type:
            if isinstance(layer, key):
                return value
        return default

    return value_for


HALF_DTYPES = ("float16", "bfloat16")


def computes_in_half(model):
    """True when a layer of `model` computes in float16 or bfloat16 (a mixed-precision policy)."""
    return any(getattr(layer, "compute_dtype", None) in HALF_DTYPES for layer in walk(model) if not isinstance(layer, keras.Model))


def _float32_config(config):
    config = dict(config)
    if "dtype" in config:
        config["dtype"] = "float32"
    for key in ("layer", "backward_layer"):  # a wrapper's layer; Bidirectional's backward one
        inner = config.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            config[key] = {**inner, "config": _float32_config(inner["config"])}
    return config


def float32_copy(model):
    """The same model computing in float32, with the same weights.

    A model built under a mixed policy (`mixed_float16`, `mixed_bfloat16`)
    keeps float32 variables and computes in half precision; the TFLite
    converter and tfmot's fake quantization take float32 graphs only. The
    copy rebuilds every layer (wrappers and the layers inside them too) with
    `dtype="float32"` and copies the weights, so it predicts what the model
    predicts up to half-precision rounding.

    Arguments:
        model: a Sequential or functional model (tf_keras, or Keras 3: its
            tfcompress constraints and quantization-aware layers are rebuilt
            from their configs, their variables copied).

    Returns:
        A new, uncompiled model whose layers compute in float32.
    """
    return clone_with_weights(
        model, lambda layer: layer.__class__.from_config(_float32_config(layer.get_config())), copy=_copy_same_layer
    )


def _copy_same_layer(old, new):
    """Copies `old`'s weights into its float32 copy `new`.

    By name when the names are unique (a clustering wrapper reorders its
    weights once called), else by position (a Bidirectional layer has two `kernel`s).
    """
    names = [weight_name(v) for v in old.weights]
    if len(set(names)) == len(names):
        copy_weights_by_name(old, new)
    else:
        copy_weights_by_position(old, new)
