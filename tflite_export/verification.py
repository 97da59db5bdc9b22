"""Runs a flatbuffer on the LiteRT interpreter and compares it with its reference."""

import os
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export._cpu import cpu_description
from tflite_export._quiet import quiet
from tflite_export.errors import InvalidModelFileError
from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer
from tflite_export.result import VerificationResult

DEFAULT_RUNTIME = "default (XNNPACK)"
BUILTIN_RUNTIME = "builtin kernels (XNNPACK cannot run this file)"


def load_interpreter(content, num_threads=1):
    """Creates and allocates a LiteRT interpreter for flatbuffer bytes.

    LiteRT's default XNNPACK delegate rejects some valid files (e.g. sparse int8
    FULLY_CONNECTED); those fall back to the builtin kernels, and the returned
    runtime string says so.

    Arguments:
        content: flatbuffer bytes.
        num_threads: interpreter threads.

    Returns:
        `(interpreter, runtime)` where runtime is a short description.

    Example:

    >>> interpreter, runtime = load_interpreter(open("m.tflite", "rb").read())
    """
    try:
        interpreter = Interpreter(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
        return interpreter, DEFAULT_RUNTIME
    except (RuntimeError, ValueError) as default_error:
        try:
            interpreter = Interpreter(
                model_content=content, num_threads=num_threads,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            if "custom op" in str(e):
                raise InvalidModelFileError(
                    f"LiteRT cannot run this flatbuffer: {e}. It contains custom ops, which need "
                    "their own kernels (an edgetpu_compiler output needs the Edge TPU delegate, "
                    "libedgetpu, and the device); verify the file from before compilation instead."
                ) from e
            raise InvalidModelFileError(
                f"LiteRT cannot load this flatbuffer: {e} (default runtime: {default_error}). "
                "Export it again, or use a precision that LiteRT supports for these ops."
            ) from e
        return interpreter, BUILTIN_RUNTIME


def variable_tensors(content):
    """Names of the tensors a flatbuffer keeps between invokes (a fused LSTM's state), in its main subgraph."""
    from ai_edge_litert import schema_py_generated as schema

    subgraph = schema.Model.GetRootAsModel(content, 0).Subgraphs(0)
    return [subgraph.Tensors(i).Name().decode("utf-8", "replace") for i in range(subgraph.TensorsLength())
            if subgraph.Tensors(i).IsVariable()]


def _quantize(x, detail):
    scale, zero_point = detail["quantization"]
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(np.asarray(x, np.float32) / scale + zero_point), info.min, info.max).astype(dtype)
    return x.astype(dtype)  # float inputs, and integer inputs that are not quantized (token ids)


def model_inputs(x):
    """`x` as an array the model can take: integer arrays (token ids) kept, anything else float32."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        return x
    return x.astype(np.float32)


def _dequantize(y, detail):
    scale, zero_point = detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def run_flatbuffer(content, x, num_threads=1, batch_size=256):
    """Runs a single-input, single-output flatbuffer on LiteRT; real values in, float out.

    Quantized IO (int8/uint8/int16) is quantized and dequantized with the file's own
    scale and zero point, so callers always pass and receive real values. An input
    the file keeps as integers (int32 token ids) is fed as integers. A file with a
    fixed batch (1 for the Edge TPU and for recurrent models) runs batch by batch, and
    its variable tensors (a fused LSTM's state) are reset before every batch, so each
    example is its own sequence, as in Keras.

    Arguments:
        content: flatbuffer bytes.
        x: inputs shaped `(n, *input_shape)`: floats, or integers for integer inputs.
        num_threads: interpreter threads.
        batch_size: examples per invoke when the batch axis is dynamic.

    Returns:
        `(outputs, runtime)`: float32 outputs `(n, ...)` and the runtime description.

    Example:

    >>> logits, _ = run_flatbuffer(open("m.tflite", "rb").read(), x_test)
    """
    interpreter, runtime = load_interpreter(content, num_threads)
    inp = interpreter.get_input_details()
    out = interpreter.get_output_details()
    if len(inp) != 1 or len(out) != 1:
        raise ValueError(
            f"verification runs single-input, single-output models; this one has {len(inp)} "
            f"inputs and {len(out)} outputs. Run it with ai_edge_litert's Interpreter directly."
        )
    inp, out = inp[0], out[0]
    x = model_inputs(x)
    expected = tuple(int(d) for d in inp["shape"][1:])
    if x.shape[1:] != expected:
        raise ValueError(f"x has examples shaped {x.shape[1:]}, but the model's input is "
                         f"(batch, {', '.join(map(str, expected))}).")
    dynamic_batch = int(inp["shape_signature"][0]) == -1
    step = batch_size if dynamic_batch else int(inp["shape"][0])
    if not dynamic_batch and len(x) % step:
        raise ValueError(f"The file's batch is fixed at {step}, and {len(x)} examples do not divide "
                         f"into batches of {step}; pass a multiple of {step} examples.")
    stateful = bool(variable_tensors(content))
    results = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        if dynamic_batch and interpreter.get_input_details()[0]["shape"][0] != len(chunk):
            interpreter.resize_tensor_input(inp["index"], [len(chunk), *expected])
            interpreter.allocate_tensors()
        if stateful:
            interpreter.reset_all_variables()
        interpreter.set_tensor(inp["index"], _quantize(chunk, inp))
        interpreter.invoke()
        results.append(_dequantize(interpreter.get_tensor(out["index"]).copy(), out))
    return np.concatenate(results, axis=0), runtime


def median_latency_ms(content, example, num_threads=1, runs=100, warmup=10):
    """Median wall time of one single-example invoke on LiteRT, in milliseconds.

    Arguments:
        content: flatbuffer bytes.
        example: one input shaped `input_shape` (no batch axis): float, or integer ids.
        num_threads: interpreter threads (1 matches the issue's single-core figure).
        runs: timed invokes; the median is reported.
        warmup: untimed invokes first (allocations, caches).

    Returns:
        The median latency in ms.

    Example:

    >>> median_latency_ms(open("m.tflite", "rb").read(), x_test[0])
    0.0123
    """
    interpreter, _ = load_interpreter(content, num_threads)
    inp = interpreter.get_input_details()[0]
    if int(inp["shape"][0]) != 1:
        interpreter.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
        interpreter.allocate_tensors()
    value = _quantize(model_inputs(example)[None], inp)
    stateful = bool(variable_tensors(content))
    times = []
    for i in range(warmup + runs):
        if stateful:  # a new sequence each time, as an app would run it (not timed)
            interpreter.reset_all_variables()
        interpreter.set_tensor(inp["index"], value)
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def predicted_labels(outputs):
    """Top-1 class of each row: argmax, or a threshold for a single output unit.

    With one output unit, values inside [0, 1] are read as sigmoid probabilities
    (threshold 0.5) and anything else as logits (threshold 0).
    """
    outputs = np.asarray(outputs)
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        threshold = 0.5 if outputs.min() >= 0.0 and outputs.max() <= 1.0 else 0.0
        return (outputs[:, 0] > threshold).astype(np.int64)
    return outputs.argmax(axis=1)


def true_labels(y):
    """Integer labels from integer labels or one-hot rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    return y.reshape(len(y)).astype(np.int64)


def compare(content, x, y=None, *, keras_model=None, reference_content=None, num_threads=1,
            latency_runs=100):
    """Core of `verify` on bytes: accuracy, agreement, output difference, latency."""
    try:
        x = model_inputs(x)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"x must hold numeric model inputs, got dtype {np.asarray(x).dtype}; pass the float "
            "inputs the model takes, e.g. x_test.astype('float32'), or integer ids for a text model."
        ) from error
    if len(x) == 0:
        raise ValueError("x is empty; pass at least one validation example.")
    if x.dtype == np.float32 and not np.isfinite(x).all():
        raise ValueError(
            "x contains NaN or infinite values, which make accuracy meaningless; drop or fix those "
            "examples first (e.g. x[np.isfinite(x).reshape(len(x), -1).all(axis=1)])."
        )
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; pass matching arrays.")
    if keras_model is not None and not callable(getattr(keras_model, "predict", None)):
        raise TypeError(f"keras_model must be a Keras model (tf_keras or Keras 3), got "
                        f"{type(keras_model).__name__}. Load a saved one with "
                        "tflite_export.load_keras_model(path).")
    outputs, runtime = run_flatbuffer(content, x, num_threads=num_threads)
    result = VerificationResult(samples=len(x), num_threads=num_threads, cpu=cpu_description(),
                                runtime=runtime)
    labels = predicted_labels(outputs)
    if y is not None:
        truth = true_labels(y)
        result.tflite_accuracy = float((labels == truth).mean())
    reference = None
    if keras_model is not None:
        reference = np.asarray(keras_model.predict(x, verbose=0, batch_size=256), np.float32)
        result.agreement_with = "keras"
        if y is not None:
            result.keras_accuracy = float((predicted_labels(reference) == truth).mean())
    elif reference_content is not None:
        reference, _ = run_flatbuffer(reference_content, x, num_threads=num_threads)
        result.agreement_with = "fp32 flatbuffer"
    if reference is not None:
        reference = reference.reshape(outputs.shape)
        result.agreement = float((predicted_labels(reference) == labels).mean())
        result.max_abs_diff = float(np.abs(reference - outputs).max())
    if latency_runs:
        result.latency_ms = median_latency_ms(content, x[0], num_threads, latency_runs)
        if reference_content is content:
            result.fp32_latency_ms = result.latency_ms
        elif reference_content is not None:
            result.fp32_latency_ms = median_latency_ms(reference_content, x[0], num_threads, latency_runs)
    return result


def verify(path, x, y=None, *, keras_model=None, reference=None, num_threads=1, latency_runs=100,
           min_accuracy=None, max_accuracy_drop=None, verbose=False):
    """Runs an existing `.tflite` file on LiteRT and reports how it behaves.

    Arguments:
        path: the `.tflite` file.
        x: validation inputs `(n, *input_shape)`, preprocessed like training data (float
            inputs, or integer ids for a model that takes them, e.g. an Embedding).
        y: integer labels (or one-hot rows); without them, no accuracy is reported.
        keras_model: optional Keras model the file came from (tf_keras or Keras 3); gives
            Keras accuracy, top-1 agreement and max absolute output difference.
        reference: optional path of the FP32 `.tflite` twin; gives its latency, and
            agreement/difference when `keras_model` is not given.
        num_threads: LiteRT threads for the latency (default 1).
        latency_runs: timed single-example invokes (0 skips latency).
        min_accuracy: raise `VerificationError` below this TFLite accuracy.
        max_accuracy_drop: raise `VerificationError` when Keras minus TFLite accuracy exceeds it.
        verbose: show LiteRT's and TensorFlow's own log lines (captured by default).

    Returns:
        A `VerificationResult` (printable table, `to_json()`).

    Example:

    >>> result = tflite_export.verify("digits_int8.tflite", x_test, y_test,
    ...                               reference="digits_fp32.tflite")
    >>> print(result)
    """
    content = read_flatbuffer(path)
    parse_flatbuffer(content, source=os.fspath(path))  # clear error before LiteRT sees garbage
    reference_content = None
    if reference is not None:
        reference_content = read_flatbuffer(reference)
        parse_flatbuffer(reference_content, source=os.fspath(reference))
    with quiet(verbose):
        result = compare(content, x, y, keras_model=keras_model, reference_content=reference_content,
                         num_threads=num_threads, latency_runs=latency_runs)
    return result.check(min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop)
