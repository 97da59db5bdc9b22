"""Reads the structure of a TFLite flatbuffer: tensors, operators, inputs, outputs.

Parsing uses LiteRT's generated schema (`ai_edge_litert.schema_py_generated`),
so it needs no TensorFlow and reads exactly what the runtime reads.
"""

import os

import numpy as np
from dataclasses import dataclass, field

from ai_edge_litert import schema_py_generated as schema

from tflite_export.errors import InvalidModelFileError

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
# Large models (> 2 GB) keep buffers outside the flatbuffer; this offset marks "no data".
NO_OFFSET = (0, 1)
_SMALL_INT = {"int32": "<i4", "int64": "<i8"}


@dataclass
class TensorInfo:
    """One tensor of the graph.

    Arguments:
        index: position in the subgraph's tensor list.
        name: tensor name given by the converter.
        shape: static shape (batch included).
        shape_signature: shape with -1 for dynamic dimensions.
        dtype: lower-case TFLite type name, e.g. `"int8"`, `"float32"`.
        scale: quantization scales (empty when not quantized).
        zero_point: quantization zero points (empty when not quantized).
        constant: True when the tensor holds weights/constants stored in the file.
        sparse: True when the tensor uses TFLite's sparse encoding.
    """

    index: int
    name: str
    shape: list
    shape_signature: list
    dtype: str
    scale: list = field(default_factory=list)
    zero_point: list = field(default_factory=list)
    constant: bool = False
    sparse: bool = False
    values: list = None  # contents of small integer constants (axes, paddings, strides)

    def to_dict(self):
        """Returns the JSON-ready fields of an input or output tensor."""
        out = {"name": self.name, "shape": self.shape, "dtype": self.dtype}
        if self.scale:
            # Per-tensor quantization is what IO tensors use; keep lists for per-channel.
            out["scale"] = self.scale[0] if len(self.scale) == 1 else self.scale
            out["zero_point"] = self.zero_point[0] if len(self.zero_point) == 1 else self.zero_point
        return out


@dataclass
class OpInfo:
    """One operator: its builtin name (e.g. `CONV_2D`), version and tensor indices."""

    index: int
    name: str
    version: int
    inputs: list
    outputs: list
    options: object = None


@dataclass
class ModelStructure:
    """The main subgraph of a flatbuffer, plus file-level facts."""

    tensors: list
    ops: list
    inputs: list
    outputs: list
    num_subgraphs: int
    metadata_names: list
    metadata_buffers: dict

    @property
    def input_tensors(self):
        return [self.tensors[i] for i in self.inputs]

    @property
    def output_tensors(self):
        return [self.tensors[i] for i in self.outputs]

    def op_counts(self):
        """Returns `{op name: count}` in order of first appearance."""
        counts = {}
        for op in self.ops:
            counts[op.name] = counts.get(op.name, 0) + 1
        return counts

    def dtype_counts(self):
        """Returns `{dtype: number of tensors}`."""
        counts = {}
        for t in self.tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items()))

    def float_ops(self):
        """Ops that compute in floating point, boundary (de)quantization excepted.

        A QUANTIZE reading a graph input and a DEQUANTIZE writing a graph output
        are the float IO boundary of an otherwise integer graph, so they do not count.

        Returns:
            A list of `OpInfo`.
        """
        found = []
        for op in self.ops:
            if op.name == "QUANTIZE" and all(i in self.inputs for i in op.inputs):
                continue
            if op.name == "DEQUANTIZE" and all(o in self.outputs for o in op.outputs):
                continue
            tensors = [self.tensors[i] for i in op.inputs + op.outputs if i >= 0]
            if any(t.dtype in FLOAT_TYPES and not t.constant for t in tensors):
                found.append(op)
        return found

    def sparse_tensors(self):
        return [t for t in self.tensors if t.sparse]


def read_flatbuffer(path):
    """Reads a `.tflite` file's bytes with clear errors for missing or empty files.

    Arguments:
        path: the file path.

    Returns:
        The file's bytes.

    Example:

    >>> data = read_flatbuffer("model_int8.tflite")
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidModelFileError(
            f"{path} does not exist. Check the path, or export it first with tflite_export.export().")
    if os.path.isdir(path):
        raise InvalidModelFileError(f"{path} is a directory; pass the .tflite file inside it.")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise InvalidModelFileError(f"{path} is empty (0 bytes): the export did not finish. Export the model again.")
    return data


def parse_flatbuffer(data, source="<bytes>"):
    """Parses TFLite flatbuffer bytes into a `ModelStructure`.

    Arguments:
        data: the flatbuffer bytes (a file may carry appended metadata files; that is fine).
        source: name used in error messages, e.g. the file path.

    Returns:
        A `ModelStructure` of the main subgraph.

    Raises:
        InvalidModelFileError: when the bytes are not a complete TFLite flatbuffer.

    Example:

    >>> structure = parse_flatbuffer(open("model.tflite", "rb").read())
    >>> structure.op_counts()
    {'CONV_2D': 2, 'MAX_POOL_2D': 1, ...}
    """
    hint = (f"{source} is not a valid TFLite flatbuffer ({len(data)} bytes): it may be "
            "truncated, corrupted, or another format (.keras, .h5, SavedModel). "
            "Export it again with tflite_export.export().")
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise InvalidModelFileError(hint + " (The file identifier 'TFL3' is missing.)")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        subgraph = model.subgraphs[0]
        buffers = model.buffers or []
        tensors = []
        for i, t in enumerate(subgraph.tensors or []):
            q = t.quantization
            scale = [float(v) for v in q.scale] if q is not None and q.scale is not None else []
            zero = [int(v) for v in q.zeroPoint] if q is not None and q.zeroPoint is not None else []
            buf = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
            constant = buf is not None and (
                (buf.data is not None and len(buf.data) > 0) or buf.offset not in NO_OFFSET
            )
            shape = [int(d) for d in t.shape] if t.shape is not None else []
            signature = [int(d) for d in t.shapeSignature] if t.shapeSignature is not None else shape
            dtype = _TYPE_NAMES.get(t.type, str(t.type))
            values = None
            if constant and buf.data is not None and dtype in _SMALL_INT and len(buf.data) <= 256:
                values = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), _SMALL_INT[dtype]).tolist()
            tensors.append(TensorInfo(
                index=i, name=(t.name or b"").decode("utf-8", "replace"), shape=shape,
                shape_signature=signature, dtype=dtype, scale=scale, zero_point=zero,
                constant=constant, sparse=t.sparsity is not None, values=values,
            ))
        ops = []
        for i, op in enumerate(subgraph.operators or []):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = _OP_NAMES.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = "CUSTOM:" + (code.customCode or b"").decode("utf-8", "replace")
            ops.append(OpInfo(
                index=i, name=name, version=int(code.version),
                inputs=[int(v) for v in op.inputs] if op.inputs is not None else [],
                outputs=[int(v) for v in op.outputs] if op.outputs is not None else [],
                options=op.builtinOptions,
            ))
        metadata_names, metadata_buffers = [], {}
        for m in model.metadata or []:
            name = m.name.decode("utf-8", "replace")
            metadata_names.append(name)
            data_ = buffers[m.buffer].data if m.buffer < len(buffers) else None
            metadata_buffers[name] = np.asarray(data_, np.uint8).tobytes() if data_ is not None else b""
        return ModelStructure(
            tensors=tensors, ops=ops,
            inputs=[int(v) for v in subgraph.inputs], outputs=[int(v) for v in subgraph.outputs],
            num_subgraphs=len(model.subgraphs), metadata_names=metadata_names,
            metadata_buffers=metadata_buffers,
        )
    except InvalidModelFileError:
        raise
    except Exception as e:  # the generated parser fails with many types on garbage
        raise InvalidModelFileError(f"{hint} (Parser error: {type(e).__name__}: {e})") from e


# Kernel storage types: integer constants of rank >= 2 (PAD's paddings, ...) are not weights.
WEIGHT_TYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int16")
_NUMPY = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int8": "i1", "uint8": "u1", "int16": "<i2"}


@dataclass
class WeightTensor:
    """One kernel stored in a flatbuffer: what `weight_cost` counts.

    Arguments:
        name: the tensor's name.
        dtype: its storage type (`"int8"`, `"float16"`, ...).
        shape: its dense shape.
        values: the stored values as a numpy array: every value of a dense
            tensor, only the kept ones (or kept blocks) of a sparse one.
        sparse: True when the tensor uses TFLite's sparse encoding.
        index: the bytes of a sparse tensor's index arrays (segments and
            indices of its compressed dimensions, traversal order, block map);
            empty for a dense tensor.
    """

    name: str
    dtype: str
    shape: list
    values: np.ndarray
    sparse: bool = False
    index: bytes = b""


def _vector_bytes(vector):
    """The raw bytes of one of the schema's index vectors (Int32Vector, Uint16Vector, Uint8Vector)."""
    if vector is None or getattr(vector, "values", None) is None:
        return b""
    return np.ascontiguousarray(vector.values).tobytes()


def weight_tensors(data):
    """The kernels of a flatbuffer: constant tensors of rank >= 2 with a weight storage type.

    Every subgraph is read; a buffer shared by several tensors counts once.

    Arguments:
        data: flatbuffer bytes.

    Returns:
        A list of `WeightTensor`.

    Example:

    >>> kernels = weight_tensors(open("model_int8.tflite", "rb").read())
    >>> sum(k.values.size for k in kernels)
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    buffers = model.buffers or []
    seen, found = set(), []
    for subgraph in model.subgraphs or []:
        for t in subgraph.tensors or []:
            dtype = _TYPE_NAMES.get(t.type, "")
            shape = [int(d) for d in t.shape] if t.shape is not None else []
            if dtype not in WEIGHT_TYPES or len(shape) < 2 or not 0 < t.buffer < len(buffers) or t.buffer in seen:
                continue
            buf = buffers[t.buffer]
            if buf.data is not None and len(buf.data):
                raw = np.asarray(buf.data, np.uint8).tobytes()
            elif buf.offset not in NO_OFFSET:
                raw = bytes(data[buf.offset:buf.offset + buf.size])
            else:
                continue
            seen.add(t.buffer)
            index = b""
            if t.sparsity is not None:
                s = t.sparsity
                parts = [np.asarray(s.traversalOrder if s.traversalOrder is not None else [], "<i4").tobytes(),
                         np.asarray(s.blockMap if s.blockMap is not None else [], "<i4").tobytes()]
                for dim in s.dimMetadata or []:
                    parts += [_vector_bytes(dim.arraySegments), _vector_bytes(dim.arrayIndices)]
                index = b"".join(parts)
            found.append(WeightTensor(
                name=(t.name or b"").decode("utf-8", "replace"), dtype=dtype, shape=shape,
                values=np.frombuffer(raw, _NUMPY[dtype]), sparse=t.sparsity is not None, index=index,
            ))
    return found
