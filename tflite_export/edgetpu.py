"""Offline Edge TPU mapping report, from Coral's published supported-operations table.

The Edge TPU compiler (`edgetpu_compiler`) only runs on the user's machine; this
module predicts what it will do. Source: "TensorFlow models on the Edge TPU",
https://coral.ai/docs/edgetpu/models-intro/#supported-operations. The compiler
maps ops in execution order until the first op it cannot map; that op and every
op after it run on the CPU (the graph is split once). A report is a prediction,
not the compiler's verdict: run `edgetpu_compiler -s model.tflite` to confirm.
"""

import json
import os
from dataclasses import dataclass, field

from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer

# Both resize ops share one published limitation.
_RESIZE_LIMITATION = ("Input/output is a 3-dimensional tensor. Depending on input/output size, this "
                      "operation might not be mapped to the Edge TPU to avoid loss in precision.")

# TFLite builtin op -> (Coral's name, Coral's published limitation).
# From "TensorFlow models on the Edge TPU", https://coral.ai/docs/edgetpu/models-intro/#supported-operations
SUPPORTED_OPS = {
    "ADD": ("Add", ""),
    "AVERAGE_POOL_2D": ("AveragePool2d", "No fused activation function."),
    "CONCATENATION": ("Concatenation", "No fused activation function. If any input is a "
                      "compile-time constant tensor, there must be only 2 inputs, and this constant "
                      "tensor must be all zeros (effectively, a zero-padding op)."),
    "CONV_2D": ("Conv2d", "Must use the same dilation in x and y dimensions."),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2d", "Must use the same dilation in x and y dimensions."),
    "EXPAND_DIMS": ("ExpandDims", ""),
    "FULLY_CONNECTED": ("FullyConnected", "Only the default format is supported for "
                        "fully-connected weights. Output tensor is one-dimensional."),
    "L2_NORMALIZATION": ("L2Normalization", ""),
    "LOGISTIC": ("Logistic", ""),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("LSTM", "Unidirectional LSTM only."),
    "MAXIMUM": ("Maximum", ""),
    "MAX_POOL_2D": ("MaxPool2d", "No fused activation function."),
    "MEAN": ("Mean", "No reduction in batch dimension. If a z-reduction, the z-dimension must "
             "be multiple of 4."),
    "MINIMUM": ("Minimum", ""),
    "MUL": ("Mul", ""),
    "PACK": ("Pack", "No packing in batch dimension."),
    "PAD": ("Pad", "No padding in batch dimension."),
    "PRELU": ("PReLU", "Alpha must be 1-dimensional (only the innermost dimension can be >1 "
              "size). If using Keras PReLU with 4D input (batch, height, width, channels), then "
              "shared_axes must be [1,2] so each filter has only one set of parameters."),
    "QUANTIZE": ("Quantize", ""),
    "REDUCE_MAX": ("ReduceMax", "Cannot operate on the batch dimension."),
    "REDUCE_MIN": ("ReduceMin", "Cannot operate on the batch dimension."),
    "RELU": ("ReLU", ""),
    "RELU6": ("ReLU6", ""),
    "RELU_N1_TO_1": ("ReLUN1To1", ""),
    "RESHAPE": ("Reshape", "Certain reshapes might not be mapped for large tensor sizes."),
    "RESIZE_BILINEAR": ("ResizeBilinear", _RESIZE_LIMITATION),
    # Copies of the current table found end at ResizeBilinear; rows below match the 2019 table.
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighbor", _RESIZE_LIMITATION),
    "RSQRT": ("Rsqrt", ""),  # unverified: not in the 2019 table
    "SLICE": ("Slice", ""),
    "SOFTMAX": ("Softmax", "Supports only 1D input tensor with a max of 16,000 elements."),
    "SPACE_TO_DEPTH": ("SpaceToDepth", ""),
    # Limitation unverified: the 2019 table lists Split with none.
    "SPLIT": ("Split", "No splitting in batch dimension."),
    # Unverified for newer runtimes: the 2019 table allowed only squeezing leading 1s (no relayout).
    "SQUEEZE": ("Squeeze", ""),
    # "new-axis-max" is Coral's own wording (it means new_axis_mask); quoted as published.
    "STRIDED_SLICE": ("StridedSlice", "Supported only when all strides are equal to 1 (that is, "
                      "effectively a Stride op), and with ellipsis-axis-mask == 0, and "
                      "new-axis-max == 0."),
    "SUB": ("Sub", ""),
    "SUM": ("Sum", "Cannot operate on the batch dimension."),  # unverified: not in the 2019 table
    "SQUARED_DIFFERENCE": ("SquaredDifference", ""),  # unverified: not in the 2019 table
    "TANH": ("Tanh", ""),
    "TRANSPOSE": ("Transpose", ""),  # listed since compiler 16 (Coral); limitation text unverified
    "TRANSPOSE_CONV": ("TransposeConv", ""),  # unverified: not in the 2019 table
}

_QUANTIZED = ("int8", "uint8")
_FIXES = {
    "float": "quantize the whole model: export with precision='edgetpu' (full int8) or train with "
             "tfc.quantize (QAT)",
    "unsupported": "replace this layer with one from Coral's table (e.g. ReLU/ReLU6 instead of "
                   "other activations, Conv2D/DepthwiseConv2D/Dense), or move it to the end of the model",
    "dynamic": "give the model a fixed input shape (keras.Input(shape=..., batch_size=1))",
    "rank": "keep tensors at most 3-D beyond a batch of 1 (reshape before the op)",
    "constraint": "change the layer's configuration to meet the limitation quoted",
}
# Unsupported ops whose layer has a better fix than replacing it.
_OP_FIXES = {
    "GATHER": "GATHER is an Embedding lookup of token ids, which the Edge TPU cannot run (and the "
              "graph splits at it, so nothing after it runs on the TPU either). Look the embeddings "
              "up in the app instead: export keras.Model(embedding_layer.output, model.output) for "
              "the TPU, calibrated with embedding_layer(token_ids) as representative data, and feed "
              "it rows of the Embedding's weights (embedding_layer.get_weights()[0])",
    "HARD_SWISH": "HARD_SWISH is MobileNetV3's hard-swish activation: build the model with "
                  "minimalistic=True (ReLU, no squeeze-excite) for the Edge TPU, or use MobileNetV2",
}


@dataclass
class OpMapping:
    """The predicted placement of one op."""

    index: int
    op: str
    coral_name: str
    on_edgetpu: bool
    reason: str = ""
    fix: str = ""
    version: int = 1  # the builtin op version; the compiler reports unknown versions as unmapped

    def to_dict(self):
        return dict(vars(self))


@dataclass
class EdgeTPUReport:
    """Offline prediction of how `edgetpu_compiler` maps a flatbuffer.

    Attributes:
        path: the analysed file.
        ops: one `OpMapping` per op, in execution order.
        first_cpu_op: index of the op where the graph splits to the CPU, or None.
        model_problems: file-level problems (IO types, dynamic shapes, subgraphs).
    """

    path: str
    ops: list
    first_cpu_op: int = None
    model_problems: list = field(default_factory=list)

    @property
    def mapped(self):
        return sum(op.on_edgetpu for op in self.ops)

    @property
    def fully_mapped(self):
        """True when every op is predicted to run on the Edge TPU and the file is acceptable."""
        return self.first_cpu_op is None and not self.model_problems

    def summary(self):
        """One line: how many ops map and where the graph splits."""
        text = f"{self.mapped}/{len(self.ops)} ops predicted on the Edge TPU"
        if self.first_cpu_op is not None:
            op = self.ops[self.first_cpu_op]
            text += f"; CPU from op {op.index} {op.op} ({op.reason})"
        if self.model_problems:
            text += "; " + "; ".join(self.model_problems)
        return text

    def to_dict(self):
        return {
            "path": self.path, "mapped": self.mapped, "total": len(self.ops),
            "first_cpu_op": self.first_cpu_op, "fully_mapped": self.fully_mapped,
            "model_problems": self.model_problems, "ops": [op.to_dict() for op in self.ops],
            "source": "offline prediction from coral.ai/docs/edgetpu/models-intro "
                      "(run edgetpu_compiler to confirm)",
        }

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        # Same shape as the compiler's own log: operator, count, status.
        groups = {}
        for op in self.ops:
            status = ("Mapped to Edge TPU" if op.on_edgetpu and not op.reason else op.reason)
            groups[(op.op, status)] = groups.get((op.op, status), 0) + 1
        width = max([len(k[0]) for k in groups] + [8])
        lines = [f"Edge TPU offline mapping report: {self.path}",
                 "(prediction from Coral's supported-ops table; edgetpu_compiler gives the final word)",
                 f"{'Operator'.ljust(width)}  Count  Status"]
        lines += [f"{op.ljust(width)}  {n:5d}  {status}" for (op, status), n in groups.items()]
        lines.append(self.summary())
        fixes = {(op.op, op.fix) for op in self.ops if op.fix}
        lines += [f"fix {name}: {fix}" for name, fix in sorted(fixes)]
        lines += [f"fix: {p}" for p in self.model_problems]
        return "\n".join(lines)


def _fused_activation(options):
    return getattr(options, "fusedActivationFunction", 0) or 0


def _op_problems(op, structure):
    """Reasons (kind, text) why `op` will not map; empty when it should map."""
    tensors = structure.tensors
    ins = [tensors[i] for i in op.inputs if i >= 0]
    outs = [tensors[i] for i in op.outputs]
    if op.name not in SUPPORTED_OPS:
        return [("unsupported", f"{op.name} is not in Coral's supported-operations table")]
    problems = []
    for t in ins + outs:
        if t.dtype in _QUANTIZED or (t.constant and t.dtype in ("int32", "int64")):
            continue
        problems.append(("float" if t.dtype.startswith("float") else "constraint",
                         f"tensor {t.name!r} is {t.dtype}; the Edge TPU needs int8/uint8 tensors"))
        break
    for t in ins + outs:
        if t.constant:
            continue
        if any(d < 0 for d in t.shape_signature):
            problems.append(("dynamic", f"tensor {t.name!r} has a dynamic shape {t.shape_signature}"))
            break
        if len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            problems.append(("rank", f"tensor {t.name!r} {t.shape} has a dimension > 1 outside the "
                                     "innermost three"))
            break
    options = op.options
    if op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") and _fused_activation(options):
        problems.append(("constraint", "has a fused activation function"))
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and options is not None and (
            options.dilationWFactor != options.dilationHFactor):
        problems.append(("constraint", "uses different dilations in x and y"))
    if op.name == "FULLY_CONNECTED" and options is not None:
        if options.weightsFormat != 0:
            problems.append(("constraint", "uses a non-default weights format"))
        if outs and len([d for d in outs[0].shape[1:] if d > 1]) > 1:
            problems.append(("constraint", f"output {outs[0].shape} is not one-dimensional"))
    if op.name == "SOFTMAX" and ins:
        dims = [d for d in ins[0].shape[1:] if d > 1]
        size = 1
        for d in dims:
            size *= d
        if len(dims) > 1 or size > 16000:
            problems.append(("constraint", f"input {ins[0].shape} is not 1-D with <= 16,000 elements"))
    if op.name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and len(ins) > 1 and ins[1].values is not None:
        rank = len(ins[0].shape)
        axes = [a % rank for a in ins[1].values] if rank else []
        if 0 in axes:
            problems.append(("constraint", "reduces over the batch dimension"))
        if op.name == "MEAN" and rank - 1 in axes and ins[0].shape[-1] % 4:
            problems.append(("constraint", f"z-reduction over {ins[0].shape[-1]} channels (not a multiple of 4)"))
    if op.name == "PRELU" and len(ins) > 1 and any(d > 1 for d in ins[1].shape[:-1]):
        problems.append(("constraint", f"alpha {ins[1].shape} has a dimension > 1 besides the "
                                       "innermost (Keras PReLU: shared_axes=[1, 2])"))
    if op.name == "PAD" and len(ins) > 1 and ins[1].values and any(ins[1].values[:2]):
        problems.append(("constraint", "pads the batch dimension"))
    if op.name == "STRIDED_SLICE" and options is not None:
        strides = ins[3].values if len(ins) > 3 else None
        if strides is None or any(s != 1 for s in strides):
            problems.append(("constraint", "strides are not all 1 (or not constant)"))
        if options.ellipsisMask or options.newAxisMask:
            problems.append(("constraint", "uses ellipsis or new-axis masks"))
    if op.name == "CONCATENATION" and any(t.constant for t in ins) and len(ins) != 2:
        problems.append(("constraint", "has constant inputs and more than 2 inputs"))
    return problems


def mapping_report(path_or_bytes, path=None):
    """Predicts, op by op, what `edgetpu_compiler` will map to the Edge TPU.

    Arguments:
        path_or_bytes: a `.tflite` path, or flatbuffer bytes.
        path: name to show when bytes are given.

    Returns:
        An `EdgeTPUReport`: per-op placement, the split point, file-level problems,
        and a fix for each problem. `print()` it for a compiler-style table.

    Example:

    >>> report = tflite_export.edgetpu_report("digits_edgetpu.tflite")
    >>> report.fully_mapped
    True
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = bytes(path_or_bytes), path or "<bytes>"
    else:
        data, name = read_flatbuffer(path_or_bytes), os.fspath(path_or_bytes)
    structure = parse_flatbuffer(data, source=name)
    model_problems = []
    if structure.num_subgraphs > 1:
        model_problems.append(f"the file has {structure.num_subgraphs} subgraphs; the Edge TPU "
                              "compiler maps only one (remove control flow such as tf.cond/while)")
    for t in structure.input_tensors + structure.output_tensors:
        if t.index in structure.inputs and t.dtype in ("int32", "int64"):
            model_problems.append(f"input tensor {t.name!r} is {t.dtype} (integer ids, e.g. an "
                                  "Embedding's input): the Edge TPU takes uint8/int8 tensors, so the "
                                  "ops reading it run on the CPU")
        elif t.dtype not in _QUANTIZED:
            model_problems.append(f"IO tensor {t.name!r} is {t.dtype}; export with "
                                  "precision='edgetpu' for uint8/int8 IO")
        if any(d < 0 for d in t.shape_signature):
            model_problems.append(f"IO tensor {t.name!r} has a dynamic shape {t.shape_signature}; "
                                  "export with precision='edgetpu' (batch fixed to 1)")
    ops, first_cpu = [], None
    for op in structure.ops:
        coral = SUPPORTED_OPS.get(op.name, (op.name, ""))[0]
        if first_cpu is not None:
            ops.append(OpMapping(op.index, op.name, coral, False,
                                 "runs on the CPU: after the first unmapped op (the graph splits once)",
                                 "", op.version))
            continue
        if op.name == "CUSTOM:edgetpu-custom-op":  # already compiled by edgetpu_compiler
            ops.append(OpMapping(op.index, op.name, "edgetpu-custom-op", True,
                                 "already compiled for the Edge TPU", version=op.version))
            continue
        problems = _op_problems(op, structure)
        if problems:
            first_cpu = op.index
            kind = problems[0][0]
            fix = _OP_FIXES.get(op.name, _FIXES[kind]) if kind == "unsupported" else _FIXES[kind]
            ops.append(OpMapping(op.index, op.name, coral, False, "; ".join(p[1] for p in problems),
                                 fix, op.version))
        else:
            ops.append(OpMapping(op.index, op.name, coral, True, version=op.version))
    return EdgeTPUReport(path=name, ops=ops, first_cpu_op=first_cpu, model_problems=model_problems)
