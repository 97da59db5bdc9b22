"""`quantize`: quantization-aware training wrappers whose phases follow the fit."""

import copy

import tensorflow as tf
from absl import logging
from tfcompress._tfmot import (
    tfmot,
    cluster_preserve_quantize_registry,
    default_8bit_quantize_configs,
    quantize_config,
    quantize_layer,
)

from tfcompress._keras import KERAS3, check_model, float32_global_policy, generation, keras
from tfcompress._layers import (
    all_layers,
    computes_in_half,
    float32_copy,
    layer_selector,
    rebuild,
    walk,
)
from tfcompress._metrics import report_metric
from tfcompress.clustering.wrapper import find_cluster_wrappers
from tfcompress.pruning.channels import is_channel_pruned, shrink_for_quantization
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization.coverage import COMPRESSION_WRAPPERS, uncovered_error, uncovered_layers
from tfcompress.quantization.registry import FOLDING_CONVS, is_op_layer, op_needs_range, unsupported_reason
from tfcompress.quantization.scheme import QuantizeScheme
from tfcompress.quantization.wrappers import (
    WrappedLayerQuantizeConfig,
    QuantizeInput,
    QuantizeWrapper,
    find_quantization_layers,
    check_clustering_before_freeze,
    rebuilt_copy,
    unwrapped,
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

UNSUPPORTED = ("error", "float")

# tfmot's config for an unannotated layer feeding an annotated one (`quantize_apply` wraps it so).
OutputOnlyConfig = quantize_config.OutputOnlyConfig


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


def centroid_trained_kernels(model):
    """Names of the kernels that cluster-preserving QAT (`preserve="clusters"`) trains through their centroids.

    tfmot's quantizer rebuilds such a kernel from its trainable centroids on
    every step and writes it back, so the kernel variable itself gets no
    gradient, by design.
    """
    preserving = cluster_preserve_quantize_registry.ClusterPreserveDefaultWeightsQuantizer
    return {
        weight.name
        for wrapper in find_quantization_layers(model) if isinstance(wrapper, QuantizeWrapper)
        for weight, quantizer, _ in getattr(wrapper, "_weight_vars", [])
        # tfcompress gates tfmot's quantizer by phase (`GatedQuantizer.inner`).
        if isinstance(getattr(quantizer, "inner", quantizer), preserving)
    }


def _consumers(layer):
    return [node.outbound_layer for node in layer._outbound_nodes]


def _wrapped_conv_batchnorm(model):
    """Configs for BatchNorms fed by a pruned or clustered convolution, as the layout gives unwrapped ones.

    The layout transforms match Conv + BatchNorm (+ ReLU) by class name and
    so miss a wrapped convolution; without this, a fake quant would sit
    between convolution and BatchNorm and the converter could not fold them.
    """
    convs, norms = set(), {}
    for layer in all_layers(model):
        if not isinstance(layer, COMPRESSION_WRAPPERS):
            continue
        inner, consumers = unwrapped(layer), _consumers(layer)
        if (
            isinstance(inner, FOLDING_CONVS)
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


def _selector(model, layers):
    """`layer -> bool` for `layers=`; a predicate or class sees the layer inside a pruning/clustering wrapper."""
    if layers is None:
        return lambda layer: True
    if callable(layers) and not isinstance(layers, type):
        return lambda layer: bool(layers(unwrapped(layer)))
    chosen = layer_selector(model, layers)
    return lambda layer: chosen(layer) or chosen(unwrapped(layer))


def _layout(model, quantized, scheme):
    """tfmot's layout transform of `model`, with what `quantize_apply` learns from annotations.

    tfmot's `quantize_annotate` + `quantize_apply` clone the model three times
    before their layout transform only to read which layers are annotated
    (and with which config); `model` itself says it, so the transform reads
    `model` directly and the wrapping in `_wrap` is the one clone. `TFOpLambda`
    layers stay unannotated (the scheme's layout adds them by name).

    Returns:
        (the transformed model, tfmot's layer -> quantize config map, the
        names of unannotated layers feeding an annotated one, whose output
        tfmot quantizes)
    """
    convs_into_norm, norm_configs = _wrapped_conv_batchnorm(model)
    registry = scheme.get_quantize_registry()
    annotated = {layer.name: layer for layer in model.layers if layer.name in quantized and not is_op_layer(layer)}
    layer_quantize_map = {}
    for name, layer in annotated.items():
        config = norm_configs.get(name)
        if isinstance(layer, COMPRESSION_WRAPPERS):
            config = WrappedLayerQuantizeConfig(
                registry.get_quantize_config(unwrapped(layer)), quantize_activation=name not in convs_into_norm
            )
        layer_quantize_map[name] = {"quantize_config": config}
    # The model's own calls of each layer (the user may have called its layers elsewhere too).
    calls = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            calls.setdefault(node.layer.name, []).append(tf.nest.flatten(node.inbound_layers))
    output_only = set()
    for name in annotated:
        for inbound in calls[name]:
            layer_quantize_map.update((i.name, {}) for i in inbound if i in model._input_layers)
        if len(calls[name]) == 1 and len(calls[name][0]) == 1 and calls[name][0][0].name not in annotated:
            output_only.add(calls[name][0][0].name)
    try:
        transformed, layer_quantize_map = scheme.get_layout_transformer().apply(model, layer_quantize_map)
    finally:
        vars(model).pop("use_legacy_config", None)  # the transform sets it on the model it reads: the user's
    return transformed, layer_quantize_map, output_only


def _wrap(transformed, layer_quantize_map, output_only, registry, model, start, freeze):
    """Wraps the layers of the transformed model in the phased wrappers, as `quantize_apply` wraps in its own.

    Pruning and clustering wrappers inside take their weights from `model`,
    the one the user passed: the transform copies weights by position, and
    a clustering wrapper's weight order changes once it has been called.
    """
    originals = {layer.name: layer for layer in all_layers(model) if isinstance(layer, COMPRESSION_WRAPPERS)}

    def wrap(layer):
        if isinstance(layer, quantize_layer.QuantizeLayer):
            config = layer.get_config()
            if len(layer._outbound_nodes) <= 1:  # tfmot leaves one feeding several layers as the transform made it
                config.update(layer_quantize_map.get(layer.name, {}))
            return QuantizeInput.from_config({**config, "start": start, "freeze": freeze})
        if layer.name in output_only:
            if not registry.supports(layer):
                return layer
            config = OutputOnlyConfig(registry.get_quantize_config(layer))
        elif layer.name in layer_quantize_map:
            config = layer_quantize_map[layer.name].get("quantize_config") or registry.get_quantize_config(layer)
        else:
            return layer
        name = f"quant_{layer.name}"
        inner = rebuilt_copy(layer, originals[layer.name]) if layer.name in originals else rebuilt_copy(layer, layer, name)
        return QuantizeWrapper(inner, copy.deepcopy(config), start=start, freeze=freeze, name=name)

    return keras.models.clone_model(transformed, clone_function=wrap)


def quantize(model, *, start=0.0, freeze=None, layers=None, preserve=None, unsupported="error"):
    """Returns a copy of `model` with quantization-aware training (int8) wrappers.

    tfmot's default 8-bit scheme does the work (its quantizers, configs and
    layout transforms, Conv + BatchNorm handling included), widened with
    configs of tfcompress's own built from tfmot's: Conv1D, DepthwiseConv1D
    and SeparableConv1D (a Conv1D's BatchNorm folds as Conv2D's does), Add,
    Multiply and the other two-tensor merges, `TFOpLambda` arithmetic
    (`x + 3.0`, `x * y`: MobileNetV3's hard-swish), Rescaling, Normalization,
    standalone BatchNormalization, swish / sigmoid / GELU / ReLU6 / ELU
    activations, pooling, reshapes and Embedding. Integer (token) inputs go
    into the model unquantized. Some layers run two ops with no fake quant
    between them: SeparableConv1D, Rescaling, Normalization, a
    BatchNormalization not after a convolution, a SeparableConv2D inside a
    pruning wrapper, and a layer with `activation="swish"` inside (tfmot
    quantizes after the swish only). The int8 export calibrates that middle
    tensor from `representative_data`; without it, those ops stay float.
    tfcompress adds phases inside one fit, driven by `tfc.CompressionCallback`:

    * before `start` the model computes exactly what the float model computes,
      while the activation ranges are already being learned;
    * from `start` weights and activations are fake-quantized;
    * from `freeze` (optional) activation ranges and BatchNorm statistics stop
      moving (TF1's `quant_delay` / `freeze_bn_delay`).

    The current phase is logged as the `qat_phase` metric (0 float, 1
    fake-quant, 2 frozen). A model from `tfc.prune` or `tfc.cluster`, or from
    both (`tfc.cluster(tfc.prune(m))`, Deep Compression in one fit), may be
    quantized: masks and shared values are applied before the kernel is
    fake-quantized, so the int8 weights keep the zeros and clusters.
    Clustering must begin before `freeze` (an error says so). `tfc.strip` then gives a model the TFLite
    converter turns into full int8 with the learned ranges.

    Arguments:
        model: a built Sequential or functional tf_keras model, possibly
            returned by `tfc.prune`.
        start: when fake quantization starts: a fraction of the fit (float in
            [0, 1]) or an optimizer step (int).
        freeze: when ranges and BatchNorm statistics freeze, or None.
        layers: which layers to quantize: names, layer classes or a predicate;
            None quantizes every layer. Layers left out stay float. Classes
            and predicates see a pruned or clustered layer as the layer
            inside its wrapper.
        preserve: for a model already stripped after pruning or clustering,
            tfmot's collaborative schemes keep that structure through QAT:
            "sparsity" (zeros), "clusters" (shared values) or
            "clusters+sparsity". A model still wrapped by `tfc.prune` keeps
            its zeros without it.
        unsupported: what to do with chosen layers QAT cannot cover (an LSTM,
            a LayerNormalization, a custom layer). "error" (default) raises
            one ValueError listing all of them by class, with a `layers=`
            filter that leaves them out. "float" keeps them float and trains
            the rest with QAT; the int8 export must then calibrate their
            ranges, so `tflite_export.export(..., precision="int8")` needs
            `representative_data` for such a model.

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
    if generation(model, "tfc.quantize") == KERAS3:
        from tfcompress.quantization.keras3 import quantize_keras3

        if is_channel_pruned(model):
            model = shrink_for_quantization(model)  # as for tf_keras: QAT trains the smaller model

        return quantize_keras3(
            model, start=start, freeze=freeze, layers=layers, preserve=preserve, unsupported=unsupported
        )
    if is_channel_pruned(model):
        model = shrink_for_quantization(model)  # QAT needs the smaller plain model: a second fit
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
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"`unsupported` must be one of {UNSUPPORTED}; got {unsupported!r}.")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"tfmot cannot quantize the nested model {layer.name!r}. Build the model "
                "flat (its layers directly in the outer functional model) before tfc.quantize."
            )
    # tfmot's fake-quant ops take float32 only: under a mixed policy, QAT computes in float32.
    with float32_global_policy():
        if computes_in_half(model):
            model = float32_copy(model)
        return _quantize(model, layers, preserve, unsupported, start, freeze)


def _check_clustering_before_freeze(model, freeze):
    """Refuses clustering that would begin once activation ranges and BatchNorm statistics are frozen."""
    begins = ((unwrapped(wrapper).name, getattr(wrapper, "begin", 0.0)) for wrapper in find_cluster_wrappers(model))
    check_clustering_before_freeze(begins, freeze)


def _uncovered(model, chosen):
    """`uncovered_layers`, looking through both wrappers of a clustered pruned layer."""
    nested = {layer.name for layer in model.layers if isinstance(getattr(layer, "layer", None), COMPRESSION_WRAPPERS)}
    uncovered = uncovered_layers(model, lambda layer: chosen(layer) and layer.name not in nested)
    for layer in model.layers:
        reason = unsupported_reason(unwrapped(layer)) if layer.name in nested and chosen(layer) else None
        if reason is not None:
            raise ValueError(
                f"tfc.quantize cannot quantize the pruned and clustered layer {unwrapped(layer).name!r} "
                f"({reason}). Leave it float: layers=lambda l: l.name != {unwrapped(layer).name!r}."
            )
    return uncovered


def _quantize(model, layers, preserve, unsupported, start, freeze):
    chosen = _selector(model, layers)
    _check_clustering_before_freeze(model, freeze)
    uncovered = _uncovered(model, chosen)
    if uncovered and unsupported == "error":
        raise uncovered_error(model, chosen, uncovered)
    if uncovered:
        logging.warning(
            "tfc.quantize keeps %d layer(s) float (unsupported='float'): %s. The int8 export "
            "calibrates them: pass representative_data to tflite_export.export.",
            len(uncovered), ", ".join(inner.name for _, inner, _ in uncovered),
        )
    float_names = {layer.name for layer, _, _ in uncovered}
    quantized = {
        layer.name for layer in model.layers
        if chosen(layer) and layer.name not in float_names and not isinstance(layer, keras.layers.InputLayer)
    }
    op_layers = {
        layer.name: op_needs_range(layer, quantized)
        for layer in model.layers
        if layer.name in quantized and is_op_layer(layer)
    }
    scheme = QuantizeScheme(SCHEMES[preserve](), op_layers=op_layers)
    # tfmot's layout transform rebuilds the model from its config: the user's own layer classes must resolve.
    classes = {type(layer).__name__: type(layer) for layer in walk(model)}

    def build():
        with tfmot.quantization.keras.quantize_scope(classes):
            transformed, layer_quantize_map, output_only = _layout(model, quantized, scheme)
            return _wrap(transformed, layer_quantize_map, output_only, scheme.get_quantize_registry(), model, start, freeze)

    phased = rebuild(build)
    attach_phase_report(phased)
    return phased
