"""`inspect(path)`: what a `.tflite` file contains, with clear errors for broken files."""

import gzip
import os

from tflite_export.errors import InvalidModelFileError
from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer
from tflite_export.result import ModelReport


def gzip_size(data):
    """Bytes after `gzip -9`: what a download or an APK actually carries."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def report_from_bytes(data, path="<bytes>"):
    """Builds the `ModelReport` of flatbuffer bytes (used by `inspect` and `export`)."""
    from tflite_export.metadata import METADATA_NAME, read_metadata_bytes

    structure = parse_flatbuffer(data, source=path)
    float_ops = [op.name for op in structure.float_ops()]
    model_metadata = None
    if METADATA_NAME in structure.metadata_names:
        model_metadata = read_metadata_bytes(data, structure)
    return ModelReport(
        path=path, bytes=len(data), gzip_bytes=gzip_size(data),
        inputs=[t.to_dict() for t in structure.input_tensors],
        outputs=[t.to_dict() for t in structure.output_tensors],
        op_counts=structure.op_counts(), tensor_dtypes=structure.dtype_counts(),
        float_ops=sorted(set(float_ops), key=float_ops.index), fully_integer=not float_ops,
        sparse_tensors=len(structure.sparse_tensors()), metadata=structure.metadata_names,
        model_metadata=model_metadata,
    )


def inspect(path):
    """Describes a `.tflite` file: size, gzip size, IO types and quantization, ops.

    Arguments:
        path: the `.tflite` file.

    Returns:
        A `ModelReport`; `print()` it for a table, `.to_json()` for scripts.

    Raises:
        InvalidModelFileError: the file is missing, empty, truncated or not a flatbuffer.

    Example:

    >>> report = tflite_export.inspect("digits_int8.tflite")
    >>> report.fully_integer, report.inputs[0]["dtype"]
    (True, 'uint8')
    """
    from ai_edge_litert.interpreter import Interpreter

    data = read_flatbuffer(path)
    report = report_from_bytes(data, os.fspath(path))
    # The Python parser is lenient about truncated buffers; LiteRT's flatbuffer verifier,
    # which runs when an interpreter is built, is not. Building needs no kernels, so
    # files with custom ops (e.g. an edgetpu_compiler output) still pass.
    try:
        Interpreter(model_content=data)
    except ValueError as e:
        raise InvalidModelFileError(
            f"{os.fspath(path)} is not a valid TFLite flatbuffer (truncated or corrupted?): {e}. "
            "Export it again with tflite_export.export()."
        ) from e
    return report
