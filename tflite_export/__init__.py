"""tflite_export: FP32/FP16/INT8/INT16x8/Edge TPU TFLite flatbuffers, verified on LiteRT.

    import tflite_export as tfe

    result = tfe.export(model, "model_int8.tflite", precision="int8",
                        representative_data=x_train[:256], validation_data=(x_test, y_test))
    print(result)                               # bytes, gzip bytes, IO, ops, accuracy, latency
    print(tfe.inspect("model_int8.tflite"))     # what an existing file contains
    tfe.verify("model_int8.tflite", x_test, y_test)
    print(tfe.edgetpu_report("model_edgetpu.tflite"))   # offline Edge TPU mapping

Modules are named after the concept (`inspection`, `verification`) rather than
after the functions, so `tflite_export.inspect` / `.verify` stay functions.

Names load on first use (PEP 562): `tflite_export.inspect` reads a file without
importing TensorFlow or tfcompress, which only `export` and Keras-related
verification need.
"""

import importlib
from typing import TYPE_CHECKING

# public name -> (module, name inside it)
_EXPORTS = {
    "PRECISIONS": ("convert", "PRECISIONS"),
    "export": ("convert", "export"),
    "load_keras_model": ("convert", "load_keras_model"),
    "weight_sparsity": ("convert", "weight_sparsity"),
    "SUPPORTED_OPS": ("edgetpu", "SUPPORTED_OPS"),
    "EdgeTPUReport": ("edgetpu", "EdgeTPUReport"),
    "edgetpu_report": ("edgetpu", "mapping_report"),
    "ConversionError": ("errors", "ConversionError"),
    "EdgeTPUCompatibilityError": ("errors", "EdgeTPUCompatibilityError"),
    "InvalidModelFileError": ("errors", "InvalidModelFileError"),
    "RepresentativeDataError": ("errors", "RepresentativeDataError"),
    "VerificationError": ("errors", "VerificationError"),
    "inspect": ("inspection", "inspect"),
    "add_metadata": ("metadata", "add_metadata"),
    "embed_metadata": ("metadata", "embed_metadata"),
    "read_metadata": ("metadata", "read_metadata"),
    "collect_samples": ("representative", "collect_samples"),
    "ExportResult": ("result", "ExportResult"),
    "ModelReport": ("result", "ModelReport"),
    "VerificationResult": ("result", "VerificationResult"),
    "verify": ("verification", "verify"),
}

__all__ = [
    "PRECISIONS", "SUPPORTED_OPS", "ConversionError", "EdgeTPUCompatibilityError", "EdgeTPUReport", "ExportResult",
    "InvalidModelFileError", "ModelReport", "RepresentativeDataError", "VerificationError",
    "VerificationResult", "add_metadata", "collect_samples", "edgetpu_report", "embed_metadata",
    "export", "inspect", "load_keras_model", "read_metadata", "verify", "weight_sparsity",
]

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ loads these
    from tflite_export.convert import PRECISIONS, export, load_keras_model, weight_sparsity
    from tflite_export.edgetpu import SUPPORTED_OPS, EdgeTPUReport, mapping_report as edgetpu_report
    from tflite_export.errors import (
        ConversionError,
        EdgeTPUCompatibilityError,
        InvalidModelFileError,
        RepresentativeDataError,
        VerificationError,
    )
    from tflite_export.inspection import inspect
    from tflite_export.metadata import add_metadata, embed_metadata, read_metadata
    from tflite_export.representative import collect_samples
    from tflite_export.result import ExportResult, ModelReport, VerificationResult
    from tflite_export.verification import verify


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tflite_export' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"tflite_export.{module}"), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
