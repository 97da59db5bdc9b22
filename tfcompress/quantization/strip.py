"""Removing tfcompress's training machinery from a quantization-aware model."""

import copy

from absl import logging
from tfcompress._tfmot import (
    tfmot,
    cluster_preserve_quantize_registry,
    cluster_wrapper,
    pruning_wrapper,
    quantize_aware_activation,
    quantize_layer,
)

from tfcompress._keras import weight_name
from tfcompress._layers import clone_with_weights, copy_weights_by_name, fresh_copy
from tfcompress.quantization.gates import GatedQuantizer
from tfcompress.quantization.wrappers import (
    WrappedLayerQuantizeConfig,
    QuantizeInput,
    QuantizeWrapper,
    find_quantization_layers,
    rebuilt_copy,
    unwrapped,
)


def _apply_clusters(wrapper, layer):
    """Gives `layer`'s kernels the shared values `wrapper` computes from its float kernels (zeros kept)."""
    if not int(wrapper.clustering_on.numpy()):
        return
    # By name: a quantization wrapper has replaced the inner kernel attribute by a tensor.
    variables = {weight_name(v): v for v in layer.weights}
    for name, values in wrapper.shared_values().items():
        variables[name].assign(values)


# Variables of tfmot's cluster-preserving quantizer, which builds them from the kernel it wraps.
_CLUSTER_PRESERVE_VARIABLES = (
    cluster_preserve_quantize_registry.CLUSTER_CENTROIDS,
    cluster_preserve_quantize_registry.PULLING_INDICES,
    cluster_preserve_quantize_registry.ORIGINAL_WEIGHTS,
)


class _WeightsWithout:
    """A layer's name and weights without the named ones, for `copy_weights_by_name`."""

    def __init__(self, layer, names):
        self.name = layer.name
        self.weights = [v for v in layer.weights if weight_name(v) not in names]


def _copy_weights(old, new):
    """By name, but a cluster-preserving quantizer keeps the centroids it built from the trained kernel.

    A cluster that lost all its weights during QAT is gone from the kernel,
    so the rebuilt quantizer has fewer centroids than the trained one; in
    inference it reads only the kernel and its range.
    """
    copy_weights_by_name(_WeightsWithout(old, _CLUSTER_PRESERVE_VARIABLES), new, fresh=_CLUSTER_PRESERVE_VARIABLES)


def strip_quantization(model):
    """Returns the model with tfmot's standard quantization layers only.

    Phase variables go, pruning wrappers inside quantization wrappers go
    (their masks already applied), and the learned ranges stay: the TFLite
    converter turns the result into full int8 without representative data.
    It loads back inside `tfmot.quantization.keras.quantize_scope()`.
    """
    layers = find_quantization_layers(model)
    if any(int(layer.qat_on.numpy()) == 0 for layer in layers if layer.built):
        logging.warning(
            "Quantization-aware training never started in this model (its `start` is after "
            "the last trained step): the int8 ranges come from float training only."
        )
    clustered = []  # (clustering wrapper, plain layer): shared values go in after the weight copy

    def plain(layer):
        if isinstance(layer, QuantizeWrapper):
            inner, config = layer.layer, layer.quantize_config
            if isinstance(config, WrappedLayerQuantizeConfig):
                plain_inner = rebuilt_copy(unwrapped(inner), layer)
                if not config.quantize_activation:
                    # How tfmot marks a convolution feeding a BatchNorm: no fake quant in between.
                    plain_inner.activation = quantize_aware_activation.NoOpActivation()
                config = config.inner
            else:
                plain_inner = rebuilt_copy(inner, layer)
            # Each layer's own policy (float32 for QAT), not the global one: tfmot's fake quant is float32-only.
            new = tfmot.quantization.keras.QuantizeWrapperV2(
                plain_inner, copy.deepcopy(config), dtype=layer.dtype_policy
            )
            if isinstance(inner, cluster_wrapper.ClusterWeights):
                clustered.append((inner, new))
        elif isinstance(layer, QuantizeInput):
            quantizer = layer.quantizer.inner if isinstance(layer.quantizer, GatedQuantizer) else layer.quantizer
            new = quantize_layer.QuantizeLayer(copy.deepcopy(quantizer), name=layer.name, dtype=layer.dtype_policy)
        elif isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            new = fresh_copy(layer.layer)
        elif isinstance(layer, cluster_wrapper.ClusterWeights):
            new = rebuilt_copy(unwrapped(layer), layer)
            clustered.append((layer, new))
        else:
            new = fresh_copy(layer)
        return new

    with tfmot.quantization.keras.quantize_scope():
        stripped = clone_with_weights(model, plain, copy=_copy_weights)
    for wrapper, layer in clustered:
        _apply_clusters(wrapper, layer)
    return stripped
