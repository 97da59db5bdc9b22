"""What `tfc.quantize` can quantize: tfmot's 8-bit registry plus the layers it lacks.

tfmot's default registry stops at Conv2D-era vision layers. The configs here
reuse its own config classes and quantizers for what real architectures add:
1-D convolutions (keyword spotting), Multiply and other two-tensor merges (SE
blocks), input Rescaling / Normalization, more activations, pooling and
reshapes, Embedding, and `TFOpLambda` arithmetic (`x + 3.0`, `x * y`, as
MobileNetV3's hard-swish is written). Anything else is left to tfmot's
registry, so its configs (and a collaborative scheme's) stay in charge of the
layers it knows.
"""

import functools

import tensorflow as tf
from tfcompress._tfmot import (
    default_8bit_quantize_configs,
    default_8bit_quantize_registry,
    default_8bit_quantizers,
    quantize_aware_activation,
    tfmot,
)

from tfcompress._keras import keras

NoOpQuantizeConfig = default_8bit_quantize_configs.NoOpQuantizeConfig
OutputQuantizeConfig = default_8bit_quantize_configs.Default8BitOutputQuantizeConfig
LayerQuantizeConfig = default_8bit_quantize_registry.Default8BitQuantizeConfig
ConvQuantizeConfig = default_8bit_quantize_registry.Default8BitConvQuantizeConfig

# The registry whose layer list decides what tfmot covers (a collaborative scheme's registry
# answers `supports` for its own question: whether it can preserve the layer's weights).
_DEFAULT = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

# Convolutions a following BatchNormalization folds into (per-channel kernels); no fake quant may sit between.
FOLDING_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)

# Activations tfmot's QuantizeAwareActivation knows (inside Dense, Conv, ...).
_ACTIVATIONS = (
    quantize_aware_activation.QuantizeAwareActivation._PRE_QUANT_ACTIVATIONS
    | quantize_aware_activation.QuantizeAwareActivation._POST_QUANT_ACTIVATIONS
)
# Activation layers: a range after the activation, or none where TFLite fixes the output scale.
_ACTIVATION_LAYER_OUTPUT = {"relu", "relu6", "swish", "gelu", "elu"}
_ACTIVATION_LAYER_FIXED = {"linear", "sigmoid", "tanh", "softmax"}

# TFOpLambda functions (their `function` config): a new range after the op...
_OP_OUTPUT = {
    "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv",
    "math.negative", "math.maximum", "math.minimum",
    "nn.relu", "nn.relu6", "nn.leaky_relu", "nn.silu", "nn.swish", "nn.gelu", "nn.elu",
    "math.reduce_mean", "math.reduce_sum", "concat",
}
# ... or none, because TFLite's op keeps its input's scale (or fixes its own).
_OP_SAME_SCALE = {
    "reshape", "expand_dims", "squeeze", "compat.v1.squeeze", "transpose", "identity",
    "__operators__.getitem", "math.reduce_max", "math.reduce_min",
    "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "nn.softmax", "math.softmax",
}


class Conv1DKernelQuantizer(default_8bit_quantizers.Default8BitConvWeightsQuantizer):
    """tfmot's per-output-channel kernel quantizer, giving a Conv1D kernel as the 4-D one Conv2D runs.

    tfmot's handles 2-D and 4-D kernels only, and the TFLite converter keeps
    per-channel ranges (which a folded BatchNorm needs) only when the fake
    quant feeds the CONV_2D directly: a reshape between loses their axis.
    """

    def __call__(self, inputs, training, weights, **kwargs):
        return super().__call__(tf.expand_dims(inputs, 0), training, weights, **kwargs)


def _conv1d_as_conv2d(layer, inputs, kernel):
    """What Conv1D's convolution does (channels last), with the 4-D kernel given directly."""
    padding = "VALID" if layer.padding == "causal" else layer.padding.upper()
    outputs = tf.nn.conv2d(
        tf.expand_dims(inputs, 1), kernel, strides=(1,) + tuple(layer.strides), padding=padding,
        dilations=(1,) + tuple(layer.dilation_rate),
    )
    return tf.squeeze(outputs, 1)


@keras.utils.register_keras_serializable(package="tfcompress")
class Conv1DQuantizeConfig(ConvQuantizeConfig):
    """tfmot's Conv2D config for a channels-last Conv1D: per-channel kernel, activation.

    The layer convolves with the fake-quantized 4-D kernel through Conv2D, so
    the converter keeps per-channel int8 weights and folds a following
    BatchNorm into them.
    """

    def __init__(self, weight_attrs=("kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = Conv1DKernelQuantizer()

    def set_quantize_weights(self, layer, quantize_weights):
        (layer.kernel,) = quantize_weights
        layer.convolution_op = functools.partial(_conv1d_as_conv2d, layer)


# tfcompress's config classes by name, for loading files that name them.
CONFIGS = {"Conv1DQuantizeConfig": Conv1DQuantizeConfig}


def _conv1d_config(layer):
    if layer.data_format == "channels_last":
        return Conv1DQuantizeConfig()
    return LayerQuantizeConfig(["kernel"], ["activation"], False)


def _separable_config(layer):
    # Per-tensor kernels: the converter loses a per-channel axis at the reshape SeparableConv1D runs through.
    return LayerQuantizeConfig(["depthwise_kernel", "pointwise_kernel"], ["activation"], False)


def _output(layer):
    return OutputQuantizeConfig()


def _same_scale(layer):
    return NoOpQuantizeConfig()


# Layers tfmot's registry lacks, and those in `_REPLACED`, by class: `layer -> config`.
_LAYER_CONFIGS = {
    keras.layers.Conv1D: _conv1d_config,
    # Per-tensor: TFLite's per-channel axis of a depthwise kernel is not the Keras kernel's last one.
    keras.layers.DepthwiseConv1D: lambda layer: LayerQuantizeConfig(["depthwise_kernel"], ["activation"], False),
    # The tensor between depthwise and pointwise convolution has no fake quant (one call computes
    # both); the converter calibrates it from representative data. An unwrapped SeparableConv2D is
    # split into DepthwiseConv2D + Conv2D by tfmot's layout transform before this applies.
    keras.layers.SeparableConv1D: _separable_config,
    keras.layers.SeparableConv2D: _separable_config,
    keras.layers.Embedding: lambda layer: LayerQuantizeConfig(["embeddings"], [], False),
    keras.layers.Multiply: _output,
    keras.layers.Subtract: _output,
    keras.layers.Maximum: _output,
    keras.layers.Minimum: _output,
    keras.layers.Rescaling: _output,
    keras.layers.Normalization: _output,
    # A BatchNormalization after a convolution is folded (see scheme.py); elsewhere it is an affine op.
    keras.layers.BatchNormalization: _output,
    keras.layers.ELU: _output,
    keras.layers.MaxPooling1D: _same_scale,
    keras.layers.MaxPooling3D: _same_scale,
    keras.layers.UpSampling1D: _same_scale,
    keras.layers.RepeatVector: _same_scale,
    # TFLite's int8 AVERAGE_POOL_2D keeps its input's scale (an average stays in its inputs' range).
    # tfmot learns a range of its own after it, which the converter meets with a requantize; where
    # the pooled tensor also feeds a Concatenate and another layer (DenseNet's transition into its
    # dense block), it cannot, and conversion fails with "violate the same scale constraint".
    keras.layers.AveragePooling1D: _same_scale,
    keras.layers.AveragePooling2D: _same_scale,
}
# Layers tfmot's registry covers whose config here replaces tfmot's (see above).
_REPLACED = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)


def is_op_layer(layer):
    """True for the layers tf_keras creates for TF functions called on symbolic tensors (`x + 3.0`)."""
    return type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda")


def op_name(layer):
    """`tf.<function>` of a `TFOpLambda` layer, as the user wrote it."""
    return "tf." + layer.get_config().get("function", "?")


def activation_name(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def unsupported_reason(layer):
    """Why `layer` cannot be quantized (a short phrase), or None when it can.

    Arguments:
        layer: a layer the user built (the inner layer of a pruning or clustering wrapper).
    """
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if is_op_layer(layer):
        function = layer.get_config().get("function")
        return None if function in _OP_OUTPUT | _OP_SAME_SCALE else f"{op_name(layer)} has no 8-bit config"
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer.activation)
        if name in _ACTIVATION_LAYER_OUTPUT | _ACTIVATION_LAYER_FIXED:
            return None
        return f"activation {name!r}"
    if not (_DEFAULT.supports(layer) or type(layer) in _LAYER_CONFIGS):
        return "no 8-bit config"
    activation = getattr(layer, "activation", None)
    if activation is not None and not isinstance(layer, keras.layers.Activation):
        name = activation_name(activation)
        if name not in _ACTIVATIONS and name != "NoOpActivation":
            return f"activation {name!r} inside the layer"
    return None


class QuantizeRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """tfmot's registry (`base`), falling back to tfcompress's configs for the layers it lacks.

    Arguments:
        base: the registry of a tfmot scheme: default 8-bit, or a collaborative
            one, which preserves zeros or clusters in the layers it knows
            (Dense, Conv2D); tfcompress's own configs do not preserve them.
    """

    def __init__(self, base):
        self.base = base

    def supports(self, layer):
        # Op layers are covered by a QuantizeLayer after them, never by a wrapper (see scheme.py).
        if is_op_layer(layer) or isinstance(layer, keras.layers.InputLayer):
            return False
        return unsupported_reason(layer) is None

    def get_quantize_config(self, layer):
        if _DEFAULT.supports(layer) and type(layer) not in _REPLACED and not isinstance(layer, keras.layers.Activation):
            return (self.base if self.base.supports(layer) else _DEFAULT).get_quantize_config(layer)
        config = own_config(layer)
        if config is None:
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no 8-bit quantization config.")
        return config


def op_needs_range(layer, quantized):
    """Whether a supported `TFOpLambda` layer computes a new range (a fake quant must follow it).

    Not when its only consumer is a quantized ReLU, which the converter fuses
    into the op (as tfmot does for Add + ReLU): the ReLU's range is the op's.

    Arguments:
        layer: the op layer.
        quantized: names of the layers being quantized.
    """
    if layer.get_config().get("function") not in _OP_OUTPUT:
        return False
    consumers = [node.outbound_layer for node in layer._outbound_nodes]
    if len(consumers) == 1 and consumers[0].name in quantized:
        consumer = consumers[0]
        if isinstance(consumer, keras.layers.ReLU) or (
            isinstance(consumer, keras.layers.Activation) and activation_name(consumer.activation) in ("relu", "relu6")
        ):
            return False
    return True


def own_config(layer):
    """tfcompress's config for `layer`, or None when it has none."""
    if isinstance(layer, keras.layers.Activation):
        name = activation_name(layer.activation)
        if name in _ACTIVATION_LAYER_OUTPUT:
            return OutputQuantizeConfig()
        return NoOpQuantizeConfig() if name in _ACTIVATION_LAYER_FIXED else None
    factory = _LAYER_CONFIGS.get(type(layer))
    return factory(layer) if factory else None
