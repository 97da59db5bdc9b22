"""Choosing layers by name, type or predicate, shared by every compression."""

from tfcompress._keras import keras


def all_layers(model):
    """Every layer of `model`, nested models' layers included, in order."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


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
        elif not (isinstance(key, type) and issubclass(key, keras.layers.Layer)):
            raise TypeError(
                f"`{argument}` takes layer names (str) or tf_keras layer classes; got {key!r}."
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
