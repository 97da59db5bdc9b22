"""Quantization phases inside one fit: float, then fake-quant, then frozen ranges.

TF1 offered `quant_delay` and `freeze_bn_delay`; tfmot in TF2 fake-quantizes
from the first step. `GatedQuantizer` wraps any tfmot quantizer so that its
owning layer's phase variables decide, per step, whether its output is the
float input or the fake-quantized one, and whether ranges still learn.
Ranges are collected from the first step either way, so fake quantization
starts from calibrated ranges.
"""

import tensorflow as tf
from tfcompress._tfmot import tfmot


class GatedQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Runs `inner` but lets `owner.qat_on` / `owner.qat_frozen` pick the result.

    Arguments:
        inner: the tfmot quantizer doing the work.
        owner: the layer holding the `qat_on` and `qat_frozen` variables.
        freezable: True for activation ranges (frozen at `freeze`); False for
            weight ranges, which always follow the current weights.
    """

    def __init__(self, inner, owner, freezable):
        self.inner = inner
        self.owner = owner
        self.freezable = freezable

    def build(self, tensor_shape, name, layer):
        return self.inner.build(tensor_shape, name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        # Phases that cannot happen add no ops, so the default graph is tfmot's own.
        if training and self.freezable and self.owner.freeze is not None:
            quantized = tf.cond(
                self.owner.qat_frozen > 0,
                lambda: self.inner(inputs, False, weights, **kwargs),
                lambda: self.inner(inputs, True, weights, **kwargs),
            )
        else:
            quantized = self.inner(inputs, training, weights, **kwargs)
        if self.owner.start == 0:
            return quantized
        return tf.where(self.owner.qat_on > 0, quantized, inputs)

    def get_config(self):
        return self.inner.get_config()
