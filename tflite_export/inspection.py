"""`inspect(path)`: what a `.tflite` file contains, with clear errors for broken files."""

import gzip
import os
import zlib

import numpy as np

from tflite_export.errors import InvalidModelFileError
from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer, weight_tensors
from tflite_export.result import ModelReport


def gzip_size(data):
    """Bytes after `gzip -9`: what a download or an APK actually carries."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def deflate_size(data):
    """Bytes after raw deflate at level 9 (a zip or APK entry's payload, without gzip's 18-byte frame)."""
    if not data:
        return 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(compressor.compress(data) + compressor.flush())


def weight_cost(data):
    """What the kernels of a flatbuffer cost after deflate, with the sparse index apart.

    Kernels are the constant tensors of rank >= 2 stored as float32, float16,
    bfloat16, int8, uint8 or int16 (biases, scales and integer shape constants
    are not). Their stored values are concatenated and deflated (level 9, raw
    deflate as in a zip or APK): `weight_deflate_bytes`. A dense tensor stores
    its zeros among its values, so their positions cost nothing apart; a tensor
    in TFLite's sparse encoding stores only its kept values (or blocks) there,
    and its index arrays (segments and indices of the compressed dimensions,
    traversal order, block map) are deflated separately: `index_deflate_bytes`
    (0 when no tensor is sparse). `nonzero` counts the nonzero stored values, so
    `bits_per_nonzero = 8 * weight_deflate_bytes / nonzero` and
    `index_bits_per_nonzero = 8 * index_deflate_bytes / nonzero`.

    Arguments:
        data: flatbuffer bytes.

    Returns:
        A dict: `weights` (dense element count of the kernels), `nonzero`,
        `weight_deflate_bytes`, `index_deflate_bytes`, `sparse_kernels`.
    """
    kernels = weight_tensors(data)
    values = b"".join(np.ascontiguousarray(k.values).tobytes() for k in kernels)
    return {
        "weights": int(sum(int(np.prod(k.shape)) for k in kernels)),
        "nonzero": int(sum(np.count_nonzero(k.values) for k in kernels)),
        "weight_deflate_bytes": deflate_size(values),
        "index_deflate_bytes": deflate_size(b"".join(k.index for k in kernels)),
        "sparse_kernels": sum(k.sparse for k in kernels),
    }


def runs_on_litert(content):
    """True when LiteRT's default runtime (XNNPACK, as on Android) builds and invokes `content`.

    Every input is fed zeros once (dynamic dimensions as 1): a file whose
    kernels fail only when they run is caught too.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        return True
    except (RuntimeError, ValueError):
        return False


def report_from_bytes(data, path="<bytes>"):
    """Builds the `ModelReport` of flatbuffer bytes (used by `inspect` and `export`)."""
    from tflite_export.metadata import METADATA_NAME, read_metadata_bytes

    structure = parse_flatbuffer(data, source=path)
    cost = weight_cost(data)
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
        model_metadata=model_metadata, weights=cost["weights"], nonzero_weights=cost["nonzero"],
        weight_deflate_bytes=cost["weight_deflate_bytes"], index_deflate_bytes=cost["index_deflate_bytes"],
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
