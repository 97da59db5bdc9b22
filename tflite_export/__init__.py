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
"""

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

__all__ = [
    "PRECISIONS", "SUPPORTED_OPS", "ConversionError", "EdgeTPUCompatibilityError", "EdgeTPUReport", "ExportResult",
    "InvalidModelFileError", "ModelReport", "RepresentativeDataError", "VerificationError",
    "VerificationResult", "add_metadata", "collect_samples", "edgetpu_report", "embed_metadata",
    "export", "inspect", "load_keras_model", "read_metadata", "verify", "weight_sparsity",
]
