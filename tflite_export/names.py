"""Dropping the converter's tensor names from a flatbuffer: bytes a download carries and no runtime reads.

The converter names every intermediate tensor after the TensorFlow ops folded
into it (`model/quant_fc1/MatMul;model/quant_fc1/Relu;model/quant_fc1/BiasAdd`).
LiteRT finds tensors by index and signatures by their own keys, so these names
only serve people reading the graph (Netron, `tfcompress inspect`). On a small
compressed model they are several percent of the gzip size. TFLite's own
`strip_strings` tool drops every string, signatures included; this keeps the
names of the inputs and outputs and the signatures, which apps look up.
"""

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from tflite_export.flatbuffer import NO_OFFSET


def drop_tensor_names(content):
    """`content` with every tensor name emptied except the subgraphs' inputs and outputs.

    Arguments:
        content: flatbuffer bytes.

    Returns:
        `(bytes, dropped)`: the new flatbuffer and the bytes of names dropped;
        `content` itself and 0 when its buffers live outside the flatbuffer
        (models over 2 GB), which a rewrite would lose.

    Example:

    >>> smaller, dropped = drop_tensor_names(open("model_int8.tflite", "rb").read())
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if any(buffer.offset not in NO_OFFSET for buffer in model.buffers or []):
        return content, 0
    dropped = 0
    for subgraph in model.subgraphs or []:
        keep = set(subgraph.inputs if subgraph.inputs is not None else []) | set(
            subgraph.outputs if subgraph.outputs is not None else [])
        for index, tensor in enumerate(subgraph.tensors or []):
            if index not in keep and tensor.name:
                dropped += len(tensor.name)
                tensor.name = b""
    if not dropped:
        return content, 0
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), dropped
