"""`quantize`: quantization-aware training wrappers whose phases follow the fit."""

import copy
import re

from tfcompress._tfmot import (
    tfmot,
    cluster_wrapper,
    default_8bit_quantize_configs,
    default_8bit_quantize_registry,
    pruning_wrapper,
    quantize_layer,
)

from tfcompress._keras import check_model, keras
from tfcompress._layers import all_layers, clone_with_weights, copy_weights_by_name, fresh_copy, layer_selector
from tfcompress._metrics import report_metric
from tfcompress.clustering.wrapper import find_cluster_wrappers
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization.wrappers import (
    WrappedLayerQuantizeConfig,
    QuantizeInput,
    QuantizeWrapper,
    find_quantization_layers,
    rebuilt_copy,
)
from tfcompress.scheduling import is_fraction, validate_point

SCHEMES = {
    None: tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme,
    "sparsity": tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme,
    "clusters": lambda: tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
    "clusters+sparsity": lambda: tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
        preserve_sparsity=True
    ),
}

_UNSUPPORTED = re.compile(r"Layer (\S+?):<class '([^']+)'> is not supported")


def attach_phase_report(model):
    """Makes `model` report its quantization phase as the `qat_phase` metric.

    0: float, 1: fake-quant, 2: fake-quant with frozen ranges. Does nothing
    when already attached or when the model has no quantization wrapper.
    """
    wrappers = [layer for layer in find_quantization_layers(model) if isinstance(layer, QuantizeWrapper)]
    if not wrappers or any(getattr(w, "_tfc_phase_report", None) for w in wrappers):
        return
    # Plain attribute: tracking would add the metric's variable to the layer's weights.
    object.__setattr__(wrappers[-1], "_tfc_phase_report", report_metric(wrappers[-1], "qat_phase"))


def _consumers(layer):
    return [node.outbound_layer for node in layer._outbound_nodes]


_COMPRESSION_WRAPPERS = (pruning_wrapper.PruneLowMagnitude, cluster_wrapper.ClusterWeights)


def _wrapped_conv_batchnorm(model):
    """Configs for BatchNorms fed by a pruned or clustered convolution, as tfmot gives unwrapped ones.

    tfmot's layout transforms match Conv2D + BatchNorm (+ ReLU) by class name
    and so miss a wrapped convolution; without this, BatchNorm would have no
    config and a fake quant would sit between convolution and BatchNorm.
    """
    convs, norms = set(), {}
    for layer in all_layers(model):
        if not isinstance(layer, _COMPRESSION_WRAPPERS):
            continue
        inner, consumers = layer.layer, _consumers(layer)
        if (
            isinstance(inner, keras.layers.Conv2D)
            and keras.activations.serialize(inner.activation) == "linear"
            and len(consumers) == 1
            and isinstance(consumers[0], keras.layers.BatchNormalization)
        ):
            norm = consumers[0]
            after = _consumers(norm)
            into_relu = len(after) == 1 and (
                isinstance(after[0], keras.layers.ReLU)
                or (isinstance(after[0], keras.layers.Activation) and after[0].get_config()["activation"] == "relu")
            )
            convs.add(layer.name)
            norms[norm.name] = (
                default_8bit_quantize_configs.NoOpQuantizeConfig()
                if into_relu
                else default_8bit_quantize_configs.Default8BitOutputQuantizeConfig()
            )
    return convs, norms


def _annotate(model, chosen):
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    convs_into_norm, norm_configs = _wrapped_conv_batchnorm(model)

    def annotate(layer):
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"tfmot cannot quantize the nested model {layer.name!r}. Build the model "
                "flat (its layers directly in the outer functional model) before tfc.quantize."
            )
        if chosen is not None and not chosen(layer):
            return layer
        if isinstance(layer, _COMPRESSION_WRAPPERS):
            if not registry.supports(layer.layer):
                return layer
            config = WrappedLayerQuantizeConfig(
                registry.get_quantize_config(layer.layer), quantize_activation=layer.name not in convs_into_norm
            )
            return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)
        if layer.name in norm_configs:
            return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=norm_configs[layer.name])
        return tfmot.quantization.keras.quantize_annotate_layer(layer)

    return keras.models.clone_model(model, clone_function=annotate)


def _with_phases(qat_model, model, start, freeze):
    """Swaps tfmot's wrappers for the phased ones, keeping every weight.

    Pruning and clustering wrappers inside take their weights from `model`,
    the one the user passed: tfmot's cloning copies weights by position, and
    a clustering wrapper's weight order changes once it has been called.
    """
    originals = {layer.name: layer for layer in all_layers(model) if isinstance(layer, _COMPRESSION_WRAPPERS)}

    def swap(layer):
        config = layer.get_config()
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2):
            new = QuantizeWrapper(
                rebuilt_copy(layer.layer, originals.get(layer.layer.name, layer)), copy.deepcopy(layer.quantize_config),
                start=start, freeze=freeze, name=layer.name,
            )
        elif isinstance(layer, quantize_layer.QuantizeLayer):
            new = QuantizeInput.from_config({**config, "start": start, "freeze": freeze})
        else:
            new = fresh_copy(layer)
        return new

    def copy_weights(old, new):
        copy_weights_by_name(old, new, fresh=QuantizeWrapper.PHASE_WEIGHTS)
        if isinstance(new, QuantizeWrapper) and new.layer.name in originals:
            copy_weights_by_name(originals[new.layer.name], new.layer)

    with tfmot.quantization.keras.quantize_scope():
        return clone_with_weights(qat_model, swap, copy=copy_weights)


def quantize(model, *, start=0.0, freeze=None, layers=None, preserve=None):
    """Returns a copy of `model` with quantization-aware training (int8) wrappers.

    tfmot's default 8-bit scheme does the work (its quantizers, configs and
    layout transforms, Conv + BatchNorm handling included); tfcompress adds
    phases inside one fit, driven by `tfc.CompressionCallback`:

    * before `start` the model computes exactly what the float model computes,
      while the activation ranges are already being learned;
    * from `start` weights and activations are fake-quantized;
    * from `freeze` (optional) activation ranges and BatchNorm statistics stop
      moving (TF1's `quant_delay` / `freeze_bn_delay`).

    The current phase is logged as the `qat_phase` metric (0 float, 1
    fake-quant, 2 frozen). A model from `tfc.prune` or `tfc.cluster` may be
    quantized: masks and shared values are applied before the kernel is
    fake-quantized, so the int8 weights keep the zeros and clusters. `tfc.strip` then gives a model the TFLite
    converter turns into full int8 with the learned ranges.

    Arguments:
        model: a built Sequential or functional tf_keras model, possibly
            returned by `tfc.prune`.
        start: when fake quantization starts: a fraction of the fit (float in
            [0, 1]) or an optimizer step (int).
        freeze: when ranges and BatchNorm statistics freeze, or None.
        layers: which layers to quantize: names, layer classes or a predicate;
            None quantizes every layer. Layers left out stay float.
        preserve: for a model already stripped after pruning or clustering,
            tfmot's collaborative schemes keep that structure through QAT:
            "sparsity" (zeros), "clusters" (shared values) or
            "clusters+sparsity". A model still wrapped by `tfc.prune` keeps
            its zeros without it.

    Returns:
        A new tf_keras model with quantization wrappers (compile it before fit).

    Example:

    ```python
    qat = tfc.quantize(tfc.prune(model, 0.8, end=0.5), start=0.6, freeze=0.9)
    qat.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=10, callbacks=[tfc.CompressionCallback()])
    int8_ready = tfc.strip(qat)
    ```
    """
    check_model(model, "tfc.quantize")
    start = validate_point(start, "start")
    if freeze is not None:
        freeze = validate_point(freeze, "freeze")
        if is_fraction(start) == is_fraction(freeze) and freeze < start:
            raise ValueError(f"`freeze` ({freeze}) must not come before `start` ({start}).")
    if find_quantization_layers(model) or any(
        isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) for layer in model.layers
    ):
        raise ValueError("This model is already quantized; call tfc.quantize once, on the float model.")
    if preserve not in SCHEMES:
        raise ValueError(f"`preserve` must be one of {sorted(k for k in SCHEMES if k)} or None; got {preserve!r}.")
    if preserve and (find_pruning_wrappers(model) or find_cluster_wrappers(model)):
        raise ValueError(
            "`preserve` is for stripped models; a model wrapped by tfc.prune or tfc.cluster keeps "
            "its zeros and shared values through QAT already. Drop `preserve=`."
        )
    chosen = layer_selector(model, layers)
    annotated = _annotate(model, chosen)
    try:
        with tfmot.quantization.keras.quantize_scope():
            qat_model = tfmot.quantization.keras.quantize_apply(annotated, SCHEMES[preserve]())
    except RuntimeError as error:
        match = _UNSUPPORTED.search(str(error))
        if not match:
            raise
        name, cls = match.group(1), match.group(2).rsplit(".", 1)[-1]
        raise ValueError(
            f"Layer {name!r} ({cls}) cannot be quantized by tfmot's default 8-bit scheme. "
            f"Keep it float with `layers=lambda layer: layer.name != {name!r}`, or give it a "
            "`tfmot.quantization.keras.QuantizeConfig` through "
            "`tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=...)`."
        ) from None
    phased = _with_phases(qat_model, model, start, freeze)
    attach_phase_report(phased)
    return phased
