"""Quantization-aware training with phases inside one fit (tfmot's 8-bit scheme)."""

from tfcompress.quantization.quantize import quantize
from tfcompress.quantization.wrappers import WrappedLayerQuantizeConfig, QuantizeInput, QuantizeWrapper
