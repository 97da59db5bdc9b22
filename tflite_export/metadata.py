"""Android metadata (model name, input normalization, labels) in TFLite's published format.

The official writer (`tflite-support` 0.4.4) pins `protobuf<4`, which cannot be
installed next to TensorFlow 2.21 (`protobuf>=6.31`). This module writes the
same bytes from the published schema, `tensorflow_lite_support/metadata/
metadata_schema.fbs` (file identifier "M001"): a `ModelMetadata` flatbuffer stored
in the model's metadata entry named "TFLITE_METADATA", plus associated files
(labels.txt) appended to the model as an uncompressed zip, exactly as
`MetadataPopulator` does. Android's `MetadataExtractor` and the Task Library
(`ImageClassifier.createFromFile`) read it.
"""

import io
import zipfile

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import number_types
from flatbuffers.table import Table

from tflite_export._atomic import atomic_write_bytes
from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer

METADATA_NAME = "TFLITE_METADATA"
_IDENTIFIER = b"M001"
# Fields used here all exist since metadata schema 1.0.0.
_MIN_PARSER_VERSION = "1.0.0"
_TENSOR_AXIS_LABELS = 2
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2
_NORMALIZATION_OPTIONS = 1
_COLOR_SPACES = {1: "RGB", 2: "GRAYSCALE"}
LABELS_FILE = "labels.txt"


class _Writer:
    """Thin helpers over `flatbuffers.Builder` for the metadata tables."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, text):
        return self.b.CreateString(text) if text else None

    def offsets(self, items):
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for v in reversed(values):
            self.b.PrependFloat32(float(v))
        return self.b.EndVector()

    def table(self, num_slots, fields):
        """fields: (slot, kind, value) with kind in offset/int8/uint8/uint32; None skipped."""
        self.b.StartObject(num_slots)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "int8":
                self.b.PrependInt8Slot(slot, value, 0)
            elif kind == "uint8":
                self.b.PrependUint8Slot(slot, value, 0)
            elif kind == "uint32":
                self.b.PrependUint32Slot(slot, value, 0)
        return self.b.EndObject()


def _model_metadata_bytes(name, description, version, author, license, input_tensor, output_tensor,
                          mean, std, labels, image):
    w = _Writer()
    # Children first: flatbuffers are built bottom-up.
    process_units = None
    if mean is not None:
        norm = w.table(2, [(0, "offset", w.floats(mean)), (1, "offset", w.floats(std))])
        unit = w.table(2, [(0, "uint8", _NORMALIZATION_OPTIONS), (1, "offset", norm)])
        process_units = w.offsets([unit])
    if image:
        height, width, channels = image
        size = w.table(2, [(0, "uint32", width), (1, "uint32", height)])
        props = w.table(2, [(0, "int8", 2 if channels == 1 else 1), (1, "offset", size)])
        content_in = w.table(3, [(0, "uint8", _IMAGE_PROPERTIES), (1, "offset", props)])
    else:
        content_in = w.table(3, [(0, "uint8", _FEATURE_PROPERTIES), (1, "offset", w.table(0, []))])
    input_meta = w.table(7, [
        (0, "offset", w.string(input_tensor["name"])),
        (1, "offset", w.string(input_tensor["description"])),
        (3, "offset", content_in),
        (4, "offset", process_units),
    ])
    files = None
    if labels:
        label_file = w.table(4, [
            (0, "offset", w.string(LABELS_FILE)),
            (1, "offset", w.string("Labels for the classes of the output, one per line.")),
            (2, "int8", _TENSOR_AXIS_LABELS),
        ])
        files = w.offsets([label_file])
    content_out = w.table(3, [(0, "uint8", _FEATURE_PROPERTIES), (1, "offset", w.table(0, []))])
    output_meta = w.table(7, [
        (0, "offset", w.string(output_tensor["name"])),
        (1, "offset", w.string(output_tensor["description"])),
        (3, "offset", content_out),
        (6, "offset", files),
    ])
    subgraph = w.table(7, [
        (2, "offset", w.offsets([input_meta])),
        (3, "offset", w.offsets([output_meta])),
    ])
    root = w.table(8, [
        (0, "offset", w.string(name)),
        (1, "offset", w.string(description)),
        (2, "offset", w.string(version)),
        (3, "offset", w.offsets([subgraph])),
        (4, "offset", w.string(author)),
        (5, "offset", w.string(license)),
        (7, "offset", w.string(_MIN_PARSER_VERSION)),
    ])
    w.b.Finish(root, file_identifier=_IDENTIFIER)
    return bytes(w.b.Output())


def _check_per_channel(value, channels, what):
    value = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
    if len(value) not in (1, channels):
        raise ValueError(f"{what} has {len(value)} values; give one value, or one per input "
                         f"channel ({channels}).")
    return value


def embed_metadata(content, *, name, description="", version="", author="", license="",
                   labels=None, mean=None, std=None, input_description="", output_description=""):
    """Returns flatbuffer bytes carrying Android metadata (and labels.txt when given).

    Arguments:
        content: the `.tflite` bytes.
        name: model name shown by Android tooling.
        description: what the model does.
        version, author, license: optional strings.
        labels: class names, one per output unit, written as an associated labels.txt.
        mean, std: input normalization `(x - mean) / std` that the app applies to raw
            input (e.g. pixels 0..255); a number or one value per channel. Give both or neither.
        input_description, output_description: per-tensor descriptions.

    Returns:
        New flatbuffer bytes (the input is not modified).

    Example:

    >>> content = embed_metadata(content, name="digits", mean=0.0, std=16.0,
    ...                          labels=[str(d) for d in range(10)])
    """
    if not name:
        raise ValueError("metadata needs a model name (name='...').")
    if (mean is None) != (std is None):
        raise ValueError("Give both mean and std for input normalization, or neither.")
    structure = parse_flatbuffer(content)
    if len(structure.inputs) != 1 or len(structure.outputs) != 1:
        raise ValueError("metadata is written for single-input, single-output models; this model "
                         f"has {len(structure.inputs)} inputs and {len(structure.outputs)} outputs.")
    inp, out = structure.input_tensors[0], structure.output_tensors[0]
    channels = inp.shape[-1] if inp.shape else 1
    if mean is not None:
        mean = _check_per_channel(mean, channels, "mean")
        std = _check_per_channel(std, channels, "std")
        if any(s == 0 for s in std):
            raise ValueError("std must be non-zero (it divides the input).")
    if labels is not None:
        labels = [str(label) for label in labels]
        classes = out.shape[-1] if out.shape else 0
        if len(labels) != classes:
            raise ValueError(f"labels has {len(labels)} entries but the output has {classes} "
                             "classes; give exactly one label per output unit.")
        if any("\n" in label for label in labels):
            raise ValueError("labels must not contain newlines (labels.txt has one per line).")
    image = tuple(inp.shape[1:]) if len(inp.shape) == 4 and inp.shape[-1] in (1, 3) else None
    metadata = _model_metadata_bytes(
        name, description, version, author, license,
        {"name": "image" if image else "input", "description": input_description},
        {"name": "probability" if labels else "output", "description": output_description},
        mean, std, labels, image,
    )
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = bytes(builder.Output())
    if not labels:
        return packed
    # Associated files ride after the flatbuffer as a stored (uncompressed) zip,
    # which Android memory-maps; this is MetadataPopulator's layout.
    stream = io.BytesIO(packed)
    with zipfile.ZipFile(stream, mode="a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
    return stream.getvalue()


def add_metadata(path, **kwargs):
    """Embeds Android metadata into an existing `.tflite` file, atomically.

    Arguments:
        path: the `.tflite` file (rewritten in place; on error it is left unchanged).
        **kwargs: see `embed_metadata` (name, description, labels, mean, std, ...).

    Returns:
        The dict that `read_metadata(path)` returns for the new file.

    Example:

    >>> tflite_export.add_metadata("digits.tflite", name="digits", mean=0.0, std=16.0,
    ...                            labels=[str(d) for d in range(10)])
    """
    content = embed_metadata(read_flatbuffer(path), **kwargs)
    atomic_write_bytes(path, content)
    return read_metadata(path)


# ---- reading back -------------------------------------------------------------------------

def _sub(tab, slot):
    o = tab.Offset(4 + 2 * slot)
    return Table(tab.Bytes, tab.Indirect(o + tab.Pos)) if o else None


def _str(tab, slot):
    o = tab.Offset(4 + 2 * slot)
    return tab.String(o + tab.Pos).decode("utf-8") if o else None


def _scalar(tab, slot, flags):
    o = tab.Offset(4 + 2 * slot)
    return tab.Get(flags, o + tab.Pos) if o else 0


def _tables(tab, slot):
    o = tab.Offset(4 + 2 * slot)
    if not o:
        return []
    start = tab.Vector(o)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(o))]


def _floats(tab, slot):
    o = tab.Offset(4 + 2 * slot)
    if not o:
        return []
    start = tab.Vector(o)
    return [tab.Get(number_types.Float32Flags, start + 4 * i) for i in range(tab.VectorLen(o))]


def _tensor_metadata(tab):
    info = {"name": _str(tab, 0), "description": _str(tab, 1)}
    content = _sub(tab, 3)
    if content is not None:
        kind = _scalar(content, 0, number_types.Uint8Flags)
        info["content"] = {_FEATURE_PROPERTIES: "feature", _IMAGE_PROPERTIES: "image"}.get(kind, kind)
        props = _sub(content, 1)
        if kind == _IMAGE_PROPERTIES and props is not None:
            info["color_space"] = _COLOR_SPACES.get(_scalar(props, 0, number_types.Int8Flags))
            size = _sub(props, 1)
            if size is not None:
                info["size"] = [_scalar(size, 0, number_types.Uint32Flags),
                                _scalar(size, 1, number_types.Uint32Flags)]
    for unit in _tables(tab, 4):
        if _scalar(unit, 0, number_types.Uint8Flags) == _NORMALIZATION_OPTIONS:
            norm = _sub(unit, 1)
            info["mean"], info["std"] = _floats(norm, 0), _floats(norm, 1)
    info["associated_files"] = [
        {"name": _str(f, 0), "description": _str(f, 1), "type": _scalar(f, 2, number_types.Int8Flags)}
        for f in _tables(tab, 6)
    ]
    return info


def parse_metadata(buffer):
    """Decodes `ModelMetadata` bytes (identifier "M001") into a dict."""
    buffer = bytearray(buffer)
    if len(buffer) < 8 or not flatbuffers.util.BufferHasIdentifier(buffer, 0, _IDENTIFIER):
        raise ValueError("The TFLITE_METADATA buffer is not a metadata flatbuffer (identifier M001 missing).")
    root = Table(buffer, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buffer, 0))
    subgraphs = _tables(root, 3)
    result = {
        "name": _str(root, 0), "description": _str(root, 1), "version": _str(root, 2),
        "author": _str(root, 4), "license": _str(root, 5), "min_parser_version": _str(root, 7),
        "inputs": [], "outputs": [],
    }
    if subgraphs:
        result["inputs"] = [_tensor_metadata(t) for t in _tables(subgraphs[0], 2)]
        result["outputs"] = [_tensor_metadata(t) for t in _tables(subgraphs[0], 3)]
    return result


def read_metadata_bytes(content, structure=None):
    """Reads the Android metadata of flatbuffer bytes; None when there is none."""
    structure = structure or parse_flatbuffer(content)
    if METADATA_NAME not in structure.metadata_names:
        return None
    result = parse_metadata(structure.metadata_buffers[METADATA_NAME])
    files = {}
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            files = {n: archive.read(n).decode("utf-8") for n in archive.namelist()}
    except zipfile.BadZipFile:
        pass
    result["associated_files"] = sorted(files)
    result["labels"] = files[LABELS_FILE].splitlines() if LABELS_FILE in files else None
    return result


def read_metadata(path):
    """Reads back the Android metadata of a `.tflite` file.

    Arguments:
        path: the `.tflite` file.

    Returns:
        A dict with name, description, version, author, license, min_parser_version,
        inputs/outputs (tensor name, content, color space, size, mean, std, associated
        files), associated_files (names packed in the zip) and labels; None when the
        file has no metadata.

    Example:

    >>> tflite_export.read_metadata("digits.tflite")["labels"][:3]
    ['0', '1', '2']
    """
    return read_metadata_bytes(read_flatbuffer(path))
