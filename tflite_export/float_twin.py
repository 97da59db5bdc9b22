"""The float model inside a quantization-aware one: the fair FP32 reference for an INT8 file.

Converting a QAT model with `precision="fp32"` keeps its fake-quantization
ops, so its latency is not what the float model would cost. `float_twin`
rebuilds the model with every tfmot `QuantizeWrapper` replaced by the layer it
wraps (same weights) and the input `QuantizeLayer` by a pass-through.
"""

import logging

logger = logging.getLogger("tflite_export")


def float_twin(model):
    """Returns `model` without fake quantization, or None when it cannot be rebuilt.

    Arguments:
        model: a Sequential or functional tf_keras model with tfmot quantization
            wrappers (as `tfmot.quantization.keras.quantize_model` or
            `tfc.strip` of a `tfc.quantize` model gives).

    Returns:
        A new tf_keras model computing the float forward pass with the wrapped
        layers' weights, or None (logged) for a model whose layers cannot be
        cloned (subclassed models, custom layers without `get_config`).
    """
    from tfcompress._tfmot import NoOpActivation, QuantizeAwareActivation, QuantizeLayer, QuantizeWrapper

    from tfcompress._keras import keras
    from tfcompress._layers import clone_with_weights, copy_weights_by_name, fresh_copy

    def fresh(layer):
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Activation("linear", name=layer.name), None
        if not isinstance(layer, QuantizeWrapper):
            return fresh_copy(layer)
        inner = layer.layer
        config = inner.get_config()
        activation = getattr(inner, "activation", None)
        if isinstance(activation, QuantizeAwareActivation):
            # tfmot swaps the activation for a fake-quantizing one around the original (or a no-op).
            original = activation.activation
            linear = isinstance(original, NoOpActivation)
            config["activation"] = "linear" if linear else keras.activations.serialize(original)
        return inner.__class__.from_config(config)

    try:
        # By name: a wrapper lists the weights it fake-quantizes beside its quantizers' ranges.
        twin = clone_with_weights(model, fresh, copy=copy_weights_by_name)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        logger.info("no float twin of the quantization-aware model (%s)", error)
        return None
    return twin
