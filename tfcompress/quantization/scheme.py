"""The quantization scheme `tfc.quantize` applies: tfmot's 8-bit one, widened.

The layout is tfmot's default 8-bit layout transform with three changes:
only floating-point model inputs get an input quantizer (token ids go into an
Embedding untouched); a Conv1D folds a following BatchNormalization as Conv2D
does (no fake quant between them, so the converter folds them); and
tfmot's SeparableConv1D rewrite, whose Lambda layers tf_keras refuses to
deserialize, is left out (SeparableConv1D has a config of its own instead).
The registry is tfmot's, falling back to tfcompress's configs.
"""

import tensorflow as tf
from tfcompress._tfmot import (
    default_8bit_transforms,
    model_transformer,
    quantize_layer,
    quantize_utils,
    tfmot,
)

from tfcompress.quantization.registry import QuantizeRegistry

_Transforms = default_8bit_transforms


class FloatInputQuantize(_Transforms.InputLayerQuantize):
    """tfmot's input quantizer, for floating-point inputs only."""

    def replacement(self, match_layer):
        dtype = match_layer.layer["config"].get("dtype") or "float32"
        if not tf.as_dtype(dtype).is_floating:
            return match_layer
        return super().replacement(match_layer)


class Conv1DBatchNormQuantize(_Transforms.Conv2DBatchNormQuantize):
    """Conv1D + BatchNorm: the range goes after the BatchNorm, none between them."""

    def pattern(self):
        return _Transforms.LayerPattern(
            "BatchNormalization|SyncBatchNormalization",
            inputs=[
                _Transforms.LayerPattern("Conv1D", config={"activation": "linear", "data_format": "channels_last"})
            ],
        )


class Conv1DBatchNormReLUQuantize(_Transforms.Conv2DBatchNormReLUQuantize):
    """Conv1D + BatchNorm + ReLU: one range, after the ReLU."""

    def pattern(self):
        return _Transforms.LayerPattern("ReLU", inputs=[Conv1DBatchNormQuantize.pattern(self)])


class Conv1DBatchNormActivationQuantize(_Transforms.Conv2DBatchNormReLUQuantize):
    """Conv1D + BatchNorm + Activation("relu"): one range, after the activation."""

    def pattern(self):
        return _Transforms.LayerPattern(
            "Activation", config={"activation": "relu"}, inputs=[Conv1DBatchNormQuantize.pattern(self)]
        )


class OpOutputQuantize(_Transforms.InputLayerQuantize):
    """A range (tfmot's QuantizeLayer) after the `TFOpLambda` layers named in `names`.

    A `TFOpLambda` cannot sit in a quantization wrapper: the annotation
    wrapper loses its call arguments and the quantization wrapper cannot
    infer its output shape. An op computing a new range (`x + 3.0`, `x * y`)
    gets a QuantizeLayer after it instead; ops that keep their input's scale
    (reshapes, slices) need nothing.
    """

    def __init__(self, names):
        self.names = frozenset(names)

    def pattern(self):
        return _Transforms.LayerPattern("TFOpLambda")

    def replacement(self, match_layer):
        name = match_layer.layer["config"]["name"]
        if name not in self.names:
            return match_layer
        quantizer = tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False
        )
        layer = quantize_layer.QuantizeLayer(quantizer, name=f"quant_{name}")
        config = quantize_utils.serialize_layer(layer, use_legacy_format=True)
        config["name"] = layer.name
        return _Transforms.LayerNode(config, input_layers=[match_layer])


class LayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    """tfmot's default 8-bit layout transform with tfcompress's changes (see the module docstring).

    Arguments:
        op_layers: names of the `TFOpLambda` layers to quantize (see
            `OpOutputQuantize`), mapped to whether a range follows them.
    """

    def __init__(self, op_layers=None):
        self.op_layers = dict(op_layers or {})

    def transforms(self):
        return [
            FloatInputQuantize(),
            OpOutputQuantize(name for name, ranged in self.op_layers.items() if ranged),
            _Transforms.SeparableConvQuantize(),
            _Transforms.Conv2DReshapeBatchNormReLUQuantize(),
            _Transforms.Conv2DReshapeBatchNormActivationQuantize(),
            _Transforms.Conv2DBatchNormReLUQuantize(),
            _Transforms.Conv2DBatchNormActivationQuantize(),
            Conv1DBatchNormReLUQuantize(),
            Conv1DBatchNormActivationQuantize(),
            _Transforms.Conv2DReshapeBatchNormQuantize(),
            _Transforms.Conv2DBatchNormQuantize(),
            Conv1DBatchNormQuantize(),
            _Transforms.ConcatTransform6Inputs(),
            _Transforms.ConcatTransform5Inputs(),
            _Transforms.ConcatTransform4Inputs(),
            _Transforms.ConcatTransform3Inputs(),
            _Transforms.ConcatTransform(),
            _Transforms.DenseBatchNormQuantize(),
            _Transforms.DenseBatchNormReLUQuantize(),
            _Transforms.DenseBatchNormActivationQuantize(),
            _Transforms.LayerReLUQuantize(),
            _Transforms.LayerReluActivationQuantize(),
        ]

    def apply(self, model, layer_quantize_map):
        for name in self.op_layers:
            layer_quantize_map.setdefault(name, {"quantize_config": None})
        transformed, layer_quantize_map = model_transformer.ModelTransformer(
            model, self.transforms(), set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()
        # The ops themselves stay unwrapped (see OpOutputQuantize).
        return transformed, {name: v for name, v in layer_quantize_map.items() if name not in self.op_layers}


class QuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """A tfmot scheme (`base`) with tfcompress's layout and registry fallback.

    Arguments:
        base: a tfmot 8-bit scheme (default or collaborative); its registry
            stays in charge of the layers it knows.
        op_layers: see `LayoutTransform`.
    """

    def __init__(self, base, op_layers=None):
        self.base = base
        self.op_layers = dict(op_layers or {})

    def get_layout_transformer(self):
        return LayoutTransform(self.op_layers)

    def get_quantize_registry(self):
        return QuantizeRegistry(self.base.get_quantize_registry())
