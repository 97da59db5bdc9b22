"""Quantization-aware training for Keras 3 (`import keras`) models."""

from tfcompress._keras import check_keras3_model


def quantize_keras3(model, *, start=0.0, freeze=None, layers=None, preserve=None, unsupported="error"):
    """`tfc.quantize` for a Keras 3 model; see `tfc.quantize` for the arguments."""
    check_keras3_model(model, "tfc.quantize")
    raise NotImplementedError(
        "tfc.quantize does not take Keras 3 models yet. Build the model with tf_keras "
        "(`import tf_keras as keras`) for quantization-aware training, or export the Keras 3 "
        "model with post-training int8: tflite_export.export(model, path, precision='int8', "
        "representative_data=x)."
    )
