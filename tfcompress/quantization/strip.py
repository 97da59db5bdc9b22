"""Removing tfcompress's training machinery from a quantization-aware model."""

import copy

from absl import logging
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation, quantize_layer
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfcompress._keras import keras
from tfcompress.quantization.gates import GatedQuantizer
from tfcompress.quantization.wrappers import (
    PrunedLayerQuantizeConfig,
    QuantizeInput,
    QuantizeWrapper,
    copy_weights_by_name,
    find_quantization_layers,
    rebuilt_copy,
)


def _fresh(layer):
    return layer.__class__.from_config(layer.get_config())


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
    pairs = []

    def plain(layer):
        if isinstance(layer, QuantizeWrapper):
            inner, config = layer.layer, layer.quantize_config
            plain_inner = rebuilt_copy(inner.layer if isinstance(config, PrunedLayerQuantizeConfig) else inner, layer)
            if isinstance(config, PrunedLayerQuantizeConfig):
                if not config.quantize_activation:
                    # How tfmot marks a convolution feeding a BatchNorm: no fake quant in between.
                    plain_inner.activation = quantize_aware_activation.NoOpActivation()
                config = config.inner
            new = tfmot.quantization.keras.QuantizeWrapperV2(plain_inner, copy.deepcopy(config))
        elif isinstance(layer, QuantizeInput):
            quantizer = layer.quantizer.inner if isinstance(layer.quantizer, GatedQuantizer) else layer.quantizer
            new = quantize_layer.QuantizeLayer(copy.deepcopy(quantizer), name=layer.name)
        elif isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            new = _fresh(layer.layer)
        else:
            new = _fresh(layer)
        pairs.append((layer, new))
        return new

    with tfmot.quantization.keras.quantize_scope():
        stripped = keras.models.clone_model(model, clone_function=plain)
    for old, new in pairs:
        copy_weights_by_name(old, new)
    return stripped
