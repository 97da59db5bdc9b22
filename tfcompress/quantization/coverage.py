"""Which layers quantization-aware training covers, and one error naming all the others."""

from tfcompress._keras import keras
from tfcompress._tfmot import cluster_wrapper, pruning_wrapper
from tfcompress.quantization.registry import is_op_layer, op_name, unsupported_reason
from tfcompress.quantization.wrappers import unwrapped

COMPRESSION_WRAPPERS = (pruning_wrapper.PruneLowMagnitude, cluster_wrapper.ClusterWeights)


def uncovered_layers(model, chosen):
    """The chosen layers of `model` that QAT cannot cover, with why.

    Arguments:
        model: a flat Sequential or functional model (wrappers allowed).
        chosen: `layer -> bool`, the layers the user asked to quantize.

    Returns:
        A list of `(layer, the layer inside its wrappers, reason)`, in model order.
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or not chosen(layer):
            continue
        inner = unwrapped(layer)
        reason = unsupported_reason(inner)
        if reason is not None:
            found.append((layer, inner, reason))
    return found


def _class_reference(cls):
    """How the user names `cls` in code: `keras.layers.LSTM` for built-in layers."""
    if getattr(keras.layers, cls.__name__, None) is cls:
        return f"keras.layers.{cls.__name__}"
    return cls.__qualname__


def _describe(inner, reason):
    if is_op_layer(inner):
        return inner.name if inner.name.startswith(op_name(inner)) else f"{inner.name}: {op_name(inner)}"
    return inner.name if reason == "no 8-bit config" else f"{inner.name}: {reason}"


def uncovered_error(model, chosen, uncovered):
    """One `ValueError` listing every uncovered layer, grouped by class, with one filter that skips them all.

    The filter names a class when every chosen layer of that class is
    uncovered and the class can be named; otherwise it names the layers.
    """
    groups = {}
    for _, inner, reason in uncovered:
        groups.setdefault(type(inner), []).append((inner, reason))
    chosen_by_class = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and chosen(layer):
            chosen_by_class.setdefault(type(unwrapped(layer)), []).append(layer)
    classes, names = [], []
    for cls, members in groups.items():
        if not is_op_layer(members[0][0]) and len(members) == len(chosen_by_class[cls]):
            classes.append(_class_reference(cls))
        else:
            names.extend(inner.name for inner, _ in members)
    tests = []
    if classes:
        tests.append(f"isinstance(l, {classes[0]})" if len(classes) == 1 else f"isinstance(l, ({', '.join(classes)}))")
    if names:
        tests.append(f"l.name in {{{', '.join(repr(name) for name in names)}}}")
    condition = tests[0] if len(tests) == 1 else "(" + " or ".join(tests) + ")"
    listed = "; ".join(
        f"{cls.__name__} ({', '.join(_describe(inner, reason) for inner, reason in members)})"
        for cls, members in groups.items()
    )
    count = f"{len(groups)} layer class{'es' if len(groups) > 1 else ''}"
    return ValueError(
        f"tfc.quantize cannot quantize {count} with 8-bit quantization-aware training: {listed}. "
        f"Keep them float with one filter, layers=lambda l: not {condition}, or pass "
        "unsupported='float' (then the int8 export calibrates them from representative_data); "
        "or give a layer your own tfmot.quantization.keras.QuantizeConfig through "
        "tfmot.quantization.keras.quantize_annotate_layer."
    )
