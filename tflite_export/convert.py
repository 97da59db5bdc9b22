"""`export()`: a Keras model to a verified `.tflite` file at one of six precisions."""

import hashlib
import json
import logging
import os
import re
import time
import warnings
import weakref
import zipfile

import numpy as np

from tflite_export._atomic import atomic_write_bytes, check_writable
from tflite_export._quiet import quiet
from tflite_export.edgetpu import mapping_report
from tflite_export.errors import ConversionError, EdgeTPUCompatibilityError, RepresentativeDataError
from tflite_export.flatbuffer import FLOAT_TYPES, parse_flatbuffer
from tflite_export.float_twin import float_twin
from tflite_export.inspection import gzip_size, report_from_bytes, runs_on_litert
from tflite_export.keras3_lowering import lowered_for_integer
from tflite_export.metadata import embed_metadata
from tflite_export.names import drop_tensor_names
from tflite_export.representative import as_converter_dataset, collect_samples
from tflite_export.result import ExportResult
from tflite_export.verification import compare, variable_tensors

logger = logging.getLogger("tflite_export")

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu")
_CALIBRATED = ("int8", "int16x8", "edgetpu")
_IO_DTYPES = {
    "fp32": (None, "float32"), "fp16": (None, "float32"), "dynamic": (None, "float32"),
    "int8": (None, "float32", "int8", "uint8"), "int16x8": (None, "float32", "int16"),
    "edgetpu": (None, "uint8", "int8"),
}
# Below this fraction of zero weights the sparse encoding costs more than it saves.
SPARSE_THRESHOLD = 0.5


def _tf():
    import tensorflow as tf

    return tf


def _keras():
    from tfcompress._keras import keras

    return keras


def _is_keras3(model):
    from tfcompress._keras import is_keras3_object

    return is_keras3_object(model)


def _saved_keras_version(source):
    """The Keras version recorded in a `.keras` archive or an `.h5` file ("" when none is)."""
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
        import h5py

        if h5py.is_hdf5(source):
            with h5py.File(source, "r") as f:
                version = f.attrs.get("keras_version", "")
                return version.decode() if isinstance(version, bytes) else str(version)
    except (OSError, KeyError, ValueError):
        pass
    return ""


def load_keras_model(source, custom_objects=None):
    """Loads a model from a `.keras`, `.h5` or SavedModel path, tfmot wrappers in scope.

    Files written by tf_keras (what tfcompress trains) load as tf_keras models; a
    `.keras` or `.h5` file written by Keras 3 (`import keras`) loads with Keras 3,
    which `export` converts as is.

    Arguments:
        source: the model path.
        custom_objects: dict of custom layers/functions the file refers to.

    Returns:
        The model (not compiled).

    Example:

    >>> model = tflite_export.load_keras_model("digits.keras")
    """
    from tfcompress._tfmot import tfmot

    source = os.fspath(source)
    if not os.path.exists(source):
        raise FileNotFoundError(f"Model file {source} does not exist. Pass a tf_keras model, or the "
                                "path of a model saved with model.save('model.keras').")
    if not os.path.isdir(source) and _saved_keras_version(source).startswith("3"):
        import keras as keras3

        try:
            return keras3.saving.load_model(source, compile=False, custom_objects=custom_objects)
        except Exception as e:
            raise ValueError(
                f"Could not load {source}, which Keras 3 wrote, with Keras {keras3.__version__} "
                f"({type(e).__name__}: {e}). Pass custom_objects= for custom layers, or load it "
                "yourself with keras.saving.load_model and pass the model."
            ) from e
    keras = _keras()
    try:
        with tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope(), \
                tfmot.clustering.keras.cluster_scope(), keras.utils.custom_object_scope(custom_objects or {}):
            return keras.models.load_model(source, compile=False)
    except Exception as e:
        raise ValueError(
            f"Could not load {source} as a tf_keras model ({type(e).__name__}: {e}). Save it with "
            "tf_keras (`model.save('model.keras')`), and pass custom_objects= for custom layers."
        ) from e


def _check_model(model):
    """Raises unless `model` is a built tf_keras or Keras 3 model with defined inputs.

    Returns:
        True for a Keras 3 model (converted as is: it cannot carry tfmot wrappers).
    """
    if _is_keras3(model):
        import keras as keras3

        if not isinstance(model, keras3.Model):
            raise TypeError(f"tflite_export.export expects a model or a model file path, got the Keras 3 "
                            f"{type(model).__name__}. Wrap it in a model: keras.Sequential([layer]).")
        if not getattr(model, "inputs", None):  # unbuilt Sequential models raise AttributeError here
            raise ValueError(
                "The Keras 3 model has no defined inputs. Start it from keras.Input(shape), or wrap a "
                "subclassed model: inputs = keras.Input(shape); keras.Model(inputs, model(inputs)).")
        return True
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"tflite_export.export expects a tf_keras.Model or a model file path, got "
                        f"{type(model).__name__}.")
    if not model.built or not model.inputs:
        raise ValueError("The model has no defined inputs yet. Give its first layer an input_shape= "
                         "(or start from keras.Input), or call it once on data, then export.")
    return False


def _compression_kinds(model):
    """Which compression wrappers `tfc.strip` would remove: (channel) pruning, clustering, quantization.

    "quantization" means tfcompress's phased QAT layers; tfmot's standard quantization
    layers (what `tfc.strip` leaves, with their learned ranges) need no stripping.
    """
    from tfcompress._tfmot import ClusterWeights, PruneLowMagnitude
    from tfcompress.quantization import QuantizeInput, QuantizeWrapper

    from tfcompress.pruning.channels import is_channel_pruned

    kinds = ["channel pruning"] if is_channel_pruned(model) else []
    for kind, classes in (("pruning", PruneLowMagnitude), ("clustering", ClusterWeights),
                          ("quantization", (QuantizeWrapper, QuantizeInput))):
        if any(isinstance(layer, classes) for layer in model.submodules):  # subclasses included
            kinds.append(kind)
    return kinds


def _is_quantization_aware(model):
    from tfcompress._tfmot import QuantizeLayer, QuantizeWrapper

    return any(isinstance(layer, (QuantizeWrapper, QuantizeLayer)) for layer in model.submodules)


def _strip_for_conversion(model, notes):
    """`tfc.strip(model)` when it carries compression wrappers, so export converts what the user's strip gives.

    Returns:
        `(model, stripped kinds, quantization_aware)`.
    """
    kinds = _compression_kinds(model)
    if kinds:
        import tfcompress

        model = tfcompress.strip(model)
        message = (f"stripped {' and '.join(kinds)} wrappers before conversion with tfcompress.strip "
                   "(the model tfc.strip(model) gives)")
        logger.info(message)
        notes.append(message)
    return model, kinds, _is_quantization_aware(model)


# The FP32 reference flatbuffer of each model exported in this process, with its weights' digest:
# exporting one model at several precisions converts its reference once, not once per precision
# (and not at all after its fp32 export, whose file is that reference).
_REFERENCES = weakref.WeakKeyDictionary()


def _cached_reference(original, digest):
    """`(FP32 flatbuffer, notes)` converted earlier for `original` at weights `digest`, or None."""
    cached = _REFERENCES.get(original)
    if cached is not None and cached[0] == digest:
        return cached[1], cached[2]
    return None


def _fp32_reference(original, model, qat, notes, digest=None):
    """FP32 flatbuffer bytes to time an export against; `original` is the model `export` was given.

    `digest`: `original`'s weights digest when the caller already computed it.
    """
    digest = digest or _weights_digest(original)
    cached = _cached_reference(original, digest)
    if cached is not None:
        notes.extend(cached[1])
        return cached[0]
    reference_notes = []
    content = convert_to_bytes(_float_reference(model, qat, reference_notes), "fp32")
    _REFERENCES[original] = (digest, content, reference_notes)
    notes.extend(reference_notes)
    return content


def _weights_digest(model):
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _float_reference(model, qat, notes):
    """The model whose FP32 flatbuffer is the latency reference: for QAT, the float model inside."""
    if not qat:
        return model
    if _is_keras3(model):
        from tfcompress.quantization.keras3 import float_twin_keras3

        notes.append("fp32 latency is the float model's: the same layers and weights, fake quantization off")
        return float_twin_keras3(model)
    twin = float_twin(model)
    if twin is None:
        notes.append("fp32 latency is the quantization-aware model's converted to float, fake-quant "
                     "ops included (its float twin could not be rebuilt)")
        return model
    notes.append("fp32 latency is the float model's: the quantization-aware layers unwrapped, same weights")
    return twin


def weight_sparsity(model):
    """Fraction of exactly-zero values among the model's kernels (tfcompress's one definition)."""
    from tfcompress.summary import kernel_sparsity

    return kernel_sparsity(model.get_weights())


def _input_shape(model):
    if len(model.inputs) != 1:
        raise ValueError(f"The model has {len(model.inputs)} inputs; tflite_export calibrates and "
                         "verifies single-input models.")
    return tuple(model.inputs[0].shape[1:])


def _input_dtype(model):
    """The numpy dtype of the model's input: float32 for images, int32 for token ids."""
    return np.dtype(_tf().as_dtype(model.inputs[0].dtype).as_numpy_dtype)


def _rnn_class(model):
    if _is_keras3(model):
        import keras as keras3

        return keras3.layers.RNN
    return _keras().layers.RNN


def recurrent_layers(model):
    """The model's recurrent layers (LSTM, GRU, SimpleRNN, ... and those inside Bidirectional)."""
    rnn = _rnn_class(model)
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, rnn)]


def _needs_static_batch(error):
    # TensorList ops (what a recurrent loop keeps its outputs in) legalize only with a known batch.
    return "TensorListReserve" in str(error)


def _signature_keys(names):
    """`names` as signature keys: TensorFlow op-name characters only, repeats suffixed `_1`, `_2`, ...

    A key TensorFlow cannot name an op after leaves the file with no signature at all.
    """
    seen = {}
    unique = []
    for name in names:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("_-") or "input"
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(f"{name}_{count}" if count else name)
    return unique


def _keras_io_names(model):
    """`(input names, output names)` of a tf_keras or Keras 3 model: the names of its input and output layers.

    They are the keys of a converted file's signature (`interpreter.get_signature_runner()`),
    in the order of `model.inputs` and `model.outputs`.
    """
    def layer_names(tensors):
        history = [getattr(tensor, "_keras_history", None) for tensor in tensors]
        return [h[0].name if h else tensor.name.split(":")[0] for h, tensor in zip(history, tensors)]

    # tf_keras models and Keras 3 functional models name their outputs; Keras 3 names no inputs.
    inputs = getattr(model, "input_names", None) or layer_names(model.inputs)
    outputs = getattr(model, "output_names", None) or layer_names(model.outputs)
    return _signature_keys(inputs), _signature_keys(outputs)


def _function_converter(tf, model, batch):
    """A converter for a tf_keras or Keras 3 model from its call as a concrete function.

    `from_keras_model` first saves the model as a SavedModel, tracing every layer's
    serialization functions: three quarters of an int8 MobileNetV2's conversion (50 CPU s
    against 11 this way, same LiteRT outputs); `from_concrete_functions` given the model as
    its trackable does the same. The converter saves a plain `tf.Module` holding the variables
    instead. The signature takes the Keras input names and returns the outputs keyed by the
    Keras output names.

    Arguments:
        tf: the tensorflow module.
        model: a built tf_keras or Keras 3 model with defined inputs (one or several).
        batch: the signature's batch size: None (dynamic) or 1.
    """
    keras3 = _is_keras3(model)
    input_names, output_names = _keras_io_names(model)
    specs = [tf.TensorSpec([batch, *tensor.shape[1:]], tensor.dtype, name=name)
             for tensor, name in zip(model.inputs, input_names)]
    # The model is called with its inputs as it was built with them: one tensor, a list, a dict.
    structure = getattr(model, "_inputs_struct" if keras3 else "_nested_inputs", None)
    if structure is None:  # a Keras 3 Sequential model
        structure = model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)

    def call(*inputs):
        outputs = model(tf.nest.pack_sequence_as(structure, list(inputs)), training=False)
        return dict(zip(output_names, tf.nest.flatten(outputs)))

    function = tf.function(call).get_concrete_function(*specs)
    holder = tf.Module()
    # The converter freezes the tf.Variables it finds on this object; Keras 3 keeps them inside its own.
    holder.model_variables = [variable.value if keras3 else variable for variable in model.variables]
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder)


def _converter(model, precision, samples, io_dtype, sparse, fixed_batch=False):
    tf = _tf()
    if precision == "edgetpu":
        dynamic = [tuple(tensor.shape[1:]) for tensor in model.inputs if None in tuple(tensor.shape[1:])]
        if dynamic:
            raise EdgeTPUCompatibilityError(
                f"The model's input shape (batch, {dynamic[0]}) has dynamic dimensions; the Edge TPU needs "
                "static shapes. Build it with keras.Input(shape=(H, W, C)) of fixed size.")
    # Batch 1 for the Edge TPU and for recurrent layers, whose loops convert only with a static batch.
    converter = _function_converter(tf, model, 1 if precision == "edgetpu" or fixed_batch else None)
    optimizations = [] if precision == "fp32" else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision in _CALIBRATED and samples is not None:
        converter.representative_dataset = as_converter_dataset(samples)
    if precision in ("int8", "edgetpu") and samples is not None:
        # A QAT model carries its ranges; the INT8-only op set would demand calibration
        # data, so integer-ness is checked on the result instead.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if precision == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if precision == "edgetpu":
        io_dtype = io_dtype or "uint8"
    # The converter applies an integer IO type to float inputs only: integer inputs (token
    # ids) stay int32, as they must (quantizing an id would change which row it picks).
    if io_dtype and io_dtype != "float32":
        dtype = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[io_dtype]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return converter


def convert_to_bytes(model, precision, samples=None, io_dtype=None, sparse=False, *, fixed_batch=None,
                     notes=None, verbose=False):
    """Runs the TFLite converter and returns flatbuffer bytes (no file, no checks).

    A model with recurrent layers (LSTM, GRU, ...) is converted from a batch-1
    signature: with a dynamic batch the converter fails on `TensorListReserve`. Any
    other model that fails that way is converted again from a batch-1 signature.

    Arguments:
        model: a tf_keras model without pruning/clustering wrappers.
        precision: one of `PRECISIONS`.
        samples: calibration samples for int8/int16x8/edgetpu (None for QAT models).
        io_dtype: `None`/"float32", "int8", "uint8" or "int16" IO (see `export`).
        sparse: apply the converter's sparse encoding.
        fixed_batch: True converts from a batch-1 signature, False from a dynamic batch;
            None (default) decides as described above.
        notes: a list to append the decision to, when a batch-1 signature is used.
        verbose: show the converter's own log instead of capturing it.

    Returns:
        The flatbuffer bytes.

    Raises:
        ConversionError / EdgeTPUCompatibilityError: the converter failed; the error
            ends with the last lines of the converter's log.

    Example:

    >>> content = convert_to_bytes(model, "fp16")
    """
    recurrent = recurrent_layers(model) if fixed_batch is None else []
    if fixed_batch is None:
        fixed_batch = bool(recurrent)
    reason = f"its recurrent layers ({', '.join(layer.name for layer in recurrent)})" if recurrent else ""
    with quiet(verbose) as log:
        try:
            content = _run_converter(_converter(model, precision, samples, io_dtype, sparse, fixed_batch),
                                     precision, log)
        except (ConversionError, EdgeTPUCompatibilityError) as error:
            if fixed_batch or not _needs_static_batch(error.__cause__):
                raise
            content = _run_converter(_converter(model, precision, samples, io_dtype, sparse, True),
                                     precision, log)
            reason = "its TensorList ops (a loop over time steps)"
    if reason and notes is not None and precision != "edgetpu":
        notes.append(f"converted from a batch-1 signature: {reason} convert only with a static batch "
                     "(with a dynamic batch the converter fails on TensorListReserve); the file takes "
                     "one example per invoke, and verification runs it example by example")
    return content


def _run_converter(converter, precision, log):
    start = log.mark()
    try:
        with warnings.catch_warnings():
            # TF1-era warning about `quantized_input_stats`; the TF2 converter derives them.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return converter.convert()
    except Exception as e:
        error = _conversion_error(e, precision)
        error.converter_log = log.tail(since=start)
        raise error from e


# The converter's words when an op that keeps one int8 scale from input to output (pooling,
# concatenation, ...) is given two different ranges, as quantization-aware training can learn.
_SAME_SCALE = "violate the same scale constraint"


def _conversion_error(e, precision):
    message = str(e).strip().splitlines()
    detail = " ".join(line.strip() for line in message if "error" in line.lower())[:1500] or str(e)[:1500]
    # The MLIR location ("<frozen runpy>:198:1: error: ...") points into Python, not the model.
    detail = re.sub(r"\S+:\d+:\d+: error: ", "", detail)
    if precision in ("int8", "edgetpu") and _SAME_SCALE in detail:
        error = EdgeTPUCompatibilityError if precision == "edgetpu" else ConversionError
        return error(
            f"Full-integer conversion failed: {detail}. That op (pooling, concatenation) runs in int8 "
            "with one scale on its input and output, but the model's fake-quant ranges, learned by "
            "quantization-aware training, give it two different ones; the op has an int8 kernel. "
            "Export the float model (before quantization-aware training) at this precision with "
            "representative_data instead: post-training int8 calibrates one scale for such ops. For "
            "an AVERAGE_POOL_2D in a model from tfmot's quantize_model, tfc.quantize (which gives "
            "average pooling its input's range) avoids it.")
    if precision == "edgetpu":
        return EdgeTPUCompatibilityError(
            "The model cannot be converted with every op in int8, which the Edge TPU requires: "
            f"{detail}. Replace the layers named there with int8-capable ones (Conv2D, "
            "DepthwiseConv2D, Dense, pooling, ReLU/ReLU6, Add, Concatenate, Reshape).")
    if precision == "int8":
        return ConversionError(
            f"Full-integer conversion failed: {detail}. Some op has no int8 kernel; use "
            "precision='dynamic' or 'fp16', or replace that layer.")
    if precision == "int16x8" and "16x8-bit not yet supported" in detail:
        return ConversionError(
            f"The TFLite converter failed for precision 'int16x8': {detail}. That op has no 16x8 "
            "kernel; use precision='int8' or 'dynamic'.")
    return ConversionError(f"The TFLite converter failed for precision {precision!r}: {detail}")


def _half_dtype(model):
    """"float16"/"bfloat16" when a model (either Keras) computes in half precision (a mixed policy), else None."""
    from tfcompress._layers import HALF_DTYPES, computes_in_half, walk

    if not computes_in_half(model):
        return None
    return next(layer.compute_dtype for layer in walk(model) if getattr(layer, "compute_dtype", None) in HALF_DTYPES)


def _fake_quant_started(model, notes):
    """A Keras 3 QAT model whose inference graph fake-quantizes: `model`, or a copy if its fit ended before `start`.

    A model trained but stopped before `start` (an early stop) converts with
    the ranges its float training learned, as a tf_keras one does, and a
    warning; one never trained has none, and is refused with the fix.
    """
    from tfcompress._keras import is_keras3_object

    if not is_keras3_object(model):
        return model
    from tfcompress.quantization.keras3 import fake_quant_not_started, fake_quant_twin_keras3, ranges_learned

    waiting = fake_quant_not_started(model)
    if not waiting:
        return model
    names = ", ".join(list(waiting)[:4]) + (f" and {len(waiting) - 4} more" if len(waiting) > 4 else "")
    if not ranges_learned(model):
        raise RepresentativeDataError(
            f"This quantization-aware model has not reached its fake-quant phase ({names}): it has never "
            "been trained with tfc.CompressionCallback, so it has no int8 ranges to convert with. Train it "
            "with fit(..., callbacks=[tfc.CompressionCallback()]), or pass representative_data to calibrate it.")
    step, start = max(step for step, _ in waiting.values()), max(start or 0 for _, start in waiting.values())
    message = (f"Quantization-aware training never started in this model (step {step}, before its start at step "
               f"{start}: {names}): the int8 ranges come from float training only")
    logger.warning(message)
    notes.append(message)
    return fake_quant_twin_keras3(model)


def _has_loop(content):
    """True when the flatbuffer keeps control flow (a WHILE loop, more subgraphs than the main one)."""
    structure = parse_flatbuffer(content)
    return structure.num_subgraphs > 1 or any(op.name in ("WHILE", "IF") for op in structure.ops)


def _fuses(layer):
    # tf_keras's LSTM with its default activations (the layers that could use cuDNN) becomes
    # TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM, which calibrates; every other recurrent layer
    # becomes a WHILE loop. So does a Keras 3 LSTM lowered to tf_keras's function (keras3_lowering).
    if getattr(layer, "fuses_in_tflite", False):
        return True
    return type(layer).__name__ == "LSTM" and bool(getattr(layer, "_could_use_gpu_kernel", False))


def _unrolled_config(config):
    config = dict(config)
    if "unroll" in config:
        config["unroll"] = True
    for key in ("layer", "backward_layer"):  # Bidirectional's forward and backward layers
        inner = config.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            config[key] = {**inner, "config": _unrolled_config(inner["config"])}
    return config


def _unrolled_copy(model, names):
    """`model` with the recurrent layers named in `names` unrolled, same weights.

    A Bidirectional wrapper is rebuilt from its config with both directions
    unrolled: its recurrent layers are not layers of the model's own graph.
    """
    names = set(names)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        directions = (getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None))
        if any(inner is not None and inner.name in names for inner in directions):
            names.add(layer.name)

    def clone(layer):
        config = layer.get_config()
        return layer.__class__.from_config(_unrolled_config(config) if layer.name in names else config)

    from tfcompress._layers import clone_with_weights

    return clone_with_weights(model, clone)


def _calibratable(model, notes, probe=None):
    """A model whose graph the converter can calibrate: recurrent layers that become a loop are unrolled.

    The converter's calibration runs the float graph in TFLite's interpreter, and that crashes
    the process (a segmentation fault) on the WHILE loop a GRU or SimpleRNN converts to. A
    float conversion first shows whether the graph keeps a loop; `probe`, when given, is that
    conversion already made (the model's fp32 export).

    Returns:
        `(model, unrolled layer names, the FP32 flatbuffer of the model given)`.
    """
    if probe is None:
        probe = convert_to_bytes(model, "fp32")
    if not _has_loop(probe):
        return model, [], probe
    names = [layer.name for layer in recurrent_layers(model) if not _fuses(layer)]
    names = names or [layer.name for layer in recurrent_layers(model)]
    advice = ("Build those layers with unroll=True and a fixed sequence length, or export at "
              "precision='fp32', 'fp16' or 'dynamic', which need no calibration.")
    try:
        unrolled = _unrolled_copy(model, set(names))
    except Exception as e:
        # Keras wraps a layer's error in call details; its own sentence is the first other line.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.startswith(("Exception encountered", "Call arguments",
                                                                       "•"))), type(e).__name__)
        raise ConversionError(
            f"Calibration cannot run the loop that {', '.join(names)} convert(s) to, and unrolling "
            f"them failed: {reason} {advice}") from e
    if _has_loop(convert_to_bytes(unrolled, "fp32")):
        raise ConversionError(
            "The converted model keeps a loop (WHILE) even with its recurrent layers unrolled, and "
            "the converter's calibration cannot run loops. " + advice)
    notes.append(f"unrolled {', '.join(names)} over the time steps for calibration: the converter's "
                 "calibration cannot run the WHILE loop such a layer converts to; the unrolled copy "
                 "computes the same function with the same weights")
    return unrolled, names, probe


def _check_edgetpu(content):
    structure = parse_flatbuffer(content)
    # Tensors no op reads or writes (a fused LSTM's empty "intermediate" placeholders) compute nothing.
    used = {i for op in structure.ops for i in op.inputs + op.outputs} | set(structure.inputs + structure.outputs)
    float_tensors = [t.name for t in structure.tensors if t.dtype in FLOAT_TYPES and t.index in used]
    float_ops = list(dict.fromkeys(op.name for op in structure.float_ops()))
    if float_tensors or float_ops:
        raise EdgeTPUCompatibilityError(
            f"The converted model still computes in float (ops: {', '.join(float_ops) or 'none'}; "
            f"float tensors: {', '.join(float_tensors[:5])}), so edgetpu_compiler would reject it or "
            "run those ops on the CPU. Replace those layers with int8-capable ones.")
    for t in structure.input_tensors + structure.output_tensors:
        # Integer ids (an Embedding's input) stay int32: quantizing an id would change its row.
        allowed = ("uint8", "int8", "int32") if t.index in structure.inputs else ("uint8", "int8")
        if t.dtype not in allowed or any(d < 0 for d in t.shape_signature) or t.shape[0] != 1:
            raise EdgeTPUCompatibilityError(
                f"IO tensor {t.name!r} is {t.dtype}{t.shape_signature}; the Edge TPU needs uint8/int8 "
                "IO with a static batch of 1.")


def _validation_arrays(validation_data):
    if isinstance(validation_data, tuple) and len(validation_data) == 2:
        x, y = validation_data
        return np.asarray(x), None if y is None else np.asarray(y)  # compare() checks and converts x
    raise ValueError("validation_data must be an (x, y) tuple of arrays, e.g. (x_test, y_test).")


def export(model, path, precision="fp32", representative_data=None, validation_data=None, *,
           max_calibration_samples=256, io_dtype=None, sparse="auto", strip_names=False, metadata=None,
           num_threads=1, latency_runs=100, min_accuracy=None, max_accuracy_drop=None,
           custom_objects=None, verbose=False):
    """Converts a tf_keras model to a `.tflite` file, verifies it on LiteRT, writes it atomically.

    Arguments:
        model: a tf_keras model, or the path of one (`.keras`, `.h5`, SavedModel directory).
            A model with tfcompress/tfmot pruning or clustering wrappers, or tfcompress's
            QAT layers, is converted as `tfcompress.strip(model)` gives it (`result.stripped`
            names what was stripped); tfmot's standard QAT layers are kept so their learned
            ranges are used. A Keras 3 model (or a `.keras`/`.h5`
            file Keras 3 wrote) with defined inputs is converted as is (a `tfc.quantize` one
            needs no representative_data for int8); on the JAX backend `export` saves it and
            converts it in a fresh TensorFlow-backend process (`keras3_reload`). A tf_keras model
            built under a mixed-precision policy is converted as its float32 copy, same
            weights (`result.float32_copy`). A model with recurrent layers (LSTM, GRU, ...)
            is converted from a batch-1 signature (`result.fixed_batch`); for calibrated
            precisions, layers that become a loop (GRU, SimpleRNN) are unrolled
            (`result.unrolled`), since calibration cannot run loops.
        path: destination `.tflite` file. Written only after every check passed; an
            existing file there is replaced in one atomic rename, and a failed export
            leaves it (and the directory) as they were.
        precision: `"fp32"`; `"fp16"` (float16 weights); `"dynamic"` (int8 weights, float
            activations); `"int8"` (full integer, float IO unless `io_dtype`); `"int16x8"`
            (16-bit activations, 8-bit weights); `"edgetpu"` (full int8, uint8 IO unless
            `io_dtype="int8"`, batch 1, static shapes; fails if any op stays float; when the
            offline report predicts some ops on the CPU, a warning and `result.first_cpu_op`
            name the first one and why).
        representative_data: calibration inputs for int8/int16x8/edgetpu: numpy array,
            `(x, y)` tuple, `tf.data.Dataset` (batched or not), or a generator. Not needed
            for a QAT model at int8/edgetpu. For a model with integer inputs (token ids into
            an Embedding), integer ids: they stay int32 in the file, never quantized.
        validation_data: `(x, y)`; when given, the flatbuffer runs on LiteRT and the result
            reports its accuracy next to Keras', top-1 agreement, max abs output difference
            and median 1-thread latency next to the FP32 flatbuffer's (the FP32 reference is
            converted only when latency is measured).
        max_calibration_samples: at most this many representative samples are used.
        io_dtype: input/output type: int8 accepts `"int8"`/`"uint8"`, edgetpu `"uint8"`
            (default) or `"int8"`, int16x8 `"int16"`; float elsewhere.
        sparse: `"auto"` (sparse encoding when >= 50% of kernel weights are zero, the sparse file
            is smaller after gzip, and LiteRT's default runtime invokes it), `True` (always when
            sparse), `False` (never). `result.sparse_encoding` says which was used and why.
        strip_names: drop the names of intermediate tensors (the converter's layer paths),
            which no runtime reads: a few percent of a small compressed model's download.
            Input and output names and signatures stay; `tfcompress inspect` and Netron then
            show the intermediate tensors unnamed. `result.names_dropped` counts the bytes.
        metadata: optional dict of Android metadata for `embed_metadata` (name, description,
            labels, mean, std, ...).
        num_threads: LiteRT threads for the latency measurement.
        latency_runs: timed single-example invokes (0 skips latency).
        min_accuracy / max_accuracy_drop: verification thresholds; when missed,
            `VerificationError` is raised and no file is written.
        custom_objects: for loading a model path with custom layers.
        verbose: show TensorFlow's, the converter's and LiteRT's logs. By default they are
            captured, and a failed conversion's error ends with the converter's last lines.

    Returns:
        An `ExportResult`: `print(result)` for a table, `result.to_json()` for scripts.

    Raises:
        RepresentativeDataError: missing/empty/NaN/misshaped/mistyped calibration data.
        EdgeTPUCompatibilityError: the model cannot be fully int8 with static shapes.
        VerificationError: a verification threshold was missed.
        OSError: `path` cannot be written (a directory, a parent that is a file or does not
            exist, a read-only directory); checked before conversion.

    Example:

    >>> result = tflite_export.export(model, "digits_int8.tflite", precision="int8",
    ...                               representative_data=x_train[:256],
    ...                               validation_data=(x_test, y_test))
    >>> print(result)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if io_dtype not in _IO_DTYPES[precision]:
        allowed = ", ".join(repr(d) for d in _IO_DTYPES[precision] if d)
        raise ValueError(f"io_dtype={io_dtype!r} is not available for precision {precision!r}; use {allowed}.")
    if sparse not in ("auto", True, False):
        raise ValueError(f"sparse must be 'auto', True or False; got {sparse!r}.")
    path = check_writable(path)  # before the conversion, which takes seconds
    from tflite_export.keras3_reload import export_through_tensorflow, on_jax

    if on_jax(model):  # the converter reads TensorFlow graphs: reload the model on the TF backend
        return export_through_tensorflow(model, path, dict(
            precision=precision, representative_data=representative_data, validation_data=validation_data,
            max_calibration_samples=max_calibration_samples, io_dtype=io_dtype, sparse=sparse,
            strip_names=strip_names, metadata=metadata, num_threads=num_threads, latency_runs=latency_runs, min_accuracy=min_accuracy,
            max_accuracy_drop=max_accuracy_drop, verbose=verbose))
    with quiet(verbose):
        result = _export(model, path, precision, representative_data, validation_data,
                         max_calibration_samples=max_calibration_samples, io_dtype=io_dtype, sparse=sparse,
                         strip_names=strip_names, metadata=metadata, num_threads=num_threads, latency_runs=latency_runs,
                         min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
                         custom_objects=custom_objects)
    if result.edgetpu is not None and not result.edgetpu_fully_mapped:
        # Outside `quiet`, so it reaches the console: the file works, but not all of it on the TPU.
        logger.warning("%s: %s", path, _partial_mapping_message(result.edgetpu))
    return result


def _export(model, path, precision, representative_data, validation_data, *, max_calibration_samples,
            io_dtype, sparse, strip_names, metadata, num_threads, latency_runs, min_accuracy, max_accuracy_drop,
            custom_objects):
    """`export` after its arguments were checked, inside one `quiet` block."""
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_model(model, custom_objects)
    original = model
    notes = []
    if _check_model(model):
        from tfcompress.pruning.channels import is_channel_pruned
        from tfcompress.quantization.keras3 import is_quantization_aware

        stripped = []
        if is_channel_pruned(model):  # the masked channels go: the smaller, faster model tfc.strip gives
            import tfcompress

            model = tfcompress.strip(model)
            stripped = ["channel pruning"]
            notes.append("removed the masked channels with tfcompress.strip before conversion "
                         "(the model tfc.strip(model) gives)")
        qat = is_quantization_aware(model)
        notes.append("Keras 3 model converted as is: its kernels hold their zeros and shared values"
                     + (", its quantization-aware layers their learned int8 ranges" if qat else ""))
    else:
        model, stripped, qat = _strip_for_conversion(model, notes)
    half = _half_dtype(model)
    keras_model = model  # what verification compares with: the user's model, as tfc.strip gives it
    if half:
        from tfcompress._layers import float32_copy

        try:
            model = float32_copy(model)
        except Exception as e:
            raise ConversionError(
                f"The model computes in {half} (a mixed-precision policy), which the TFLite converter cannot "
                f"convert, and its float32 copy could not be built ({type(e).__name__}: {e}). Build the "
                "same model under keras.mixed_precision.set_global_policy('float32'), copy the weights "
                "with set_weights, and export that.") from e
        notes.append(f"the model computes in {half} (a mixed-precision policy), which the TFLite converter "
                     "cannot convert: converted its float32 copy (tfcompress float32_copy, same weights); "
                     f"verification compares with the {half} model")

    if qat and precision in ("int8", "edgetpu") and representative_data is None:
        model = _fake_quant_started(model, notes)
    converts_as_cached = True  # False: a lowered copy, whose graph is not the model's cached FP32 file's
    if _is_keras3(model):
        lowered = lowered_for_integer(model, precision, notes)
        converts_as_cached, model = lowered is model, lowered
    samples = None
    if precision in _CALIBRATED:
        if representative_data is None and not (qat and precision != "int16x8"):
            raise RepresentativeDataError(
                f"precision={precision!r} needs representative_data: 100-500 real training inputs "
                "(e.g. representative_data=x_train[:256]) to calibrate activation ranges. "
                "Models trained with quantization-aware training need none for int8/edgetpu.")
        if representative_data is not None:
            samples = collect_samples(representative_data, _input_shape(model), max_calibration_samples,
                                      dtype=_input_dtype(model))
    elif representative_data is not None:
        notes.append(f"representative_data ignored: {precision} needs no calibration")

    started = time.perf_counter()
    float_model, unrolled, digest = model, [], None
    if samples is not None and recurrent_layers(model):
        digest = _weights_digest(original)
        # A QAT model's reference is its float twin's, not the probe of the QAT graph.
        known = None if qat or not converts_as_cached else _cached_reference(original, digest)
        model, unrolled, probe = _calibratable(model, notes, probe=known and known[0])
        if not qat:  # the probe is this model's FP32 file: the latency reference
            _REFERENCES[original] = (digest, probe, [])
    content = convert_to_bytes(model, precision, samples, io_dtype, notes=notes)
    conversion_seconds = time.perf_counter() - started
    if precision == "fp32" and not qat:  # this dense file is the latency reference at other precisions
        digest = digest or _weights_digest(original)
        _REFERENCES[original] = (digest, content, [])
    dense_bytes, sparse_bytes, sparse_state = len(content), None, "off"
    dense_gzip_bytes = sparse_gzip_bytes = None
    sparsity = weight_sparsity(model)
    if sparse is False:
        sparse_state = "off"
    elif precision in ("edgetpu", "int16x8"):
        sparse_state = f"not available for {precision}"
    elif sparsity < SPARSE_THRESHOLD and sparse == "auto":
        sparse_state = f"not sparse ({sparsity:.0%} zero weights)"
    else:
        started = time.perf_counter()
        sparse_content = convert_to_bytes(model, precision, samples, io_dtype, sparse=True)  # batch as above
        conversion_seconds += time.perf_counter() - started
        sparse_bytes = len(sparse_content)
        # The download decides: sizes after gzip, where the zeros of a dense file cost little.
        dense_gzip_bytes, sparse_gzip_bytes = gzip_size(content), gzip_size(sparse_content)
        runs = runs_on_litert(sparse_content)
        if sparse is True:
            content, sparse_state = sparse_content, "used"
            if not runs:
                sparse_state = "used (LiteRT's default XNNPACK runtime cannot run it; builtin kernels can)"
        elif not runs:
            sparse_state = ("not used: LiteRT's default XNNPACK runtime cannot run the sparse "
                            "file; pass sparse=True to keep it anyway")
        elif sparse_gzip_bytes >= dense_gzip_bytes:
            sparse_state = "not smaller after gzip; dense kept"
        else:
            content, sparse_state = sparse_content, "used"
        notes.append(f"sparse encoding {sparse_state}: dense {dense_bytes:,} B ({dense_gzip_bytes:,} gzip), "
                     f"sparse {sparse_bytes:,} B ({sparse_gzip_bytes:,} gzip)")

    if precision == "int8" and samples is None:
        float_ops = [op.name for op in parse_flatbuffer(content).float_ops()]
        if float_ops:
            raise ConversionError(
                f"The quantization-aware model still has float ops after conversion ({', '.join(float_ops)}): "
                "those layers were not quantized by QAT. Pass representative_data to calibrate them, "
                "or quantize every layer in training.")

    if variable_tensors(content):
        notes.append("the file keeps state between invokes (a fused LSTM's variable tensors): call "
                     "interpreter.reset_all_variables() before each new sequence, as verification does")

    edgetpu = None
    if precision == "edgetpu":
        _check_edgetpu(content)
        edgetpu = mapping_report(content, path)
        if not edgetpu.fully_mapped:
            notes.append(_partial_mapping_message(edgetpu))
    names_dropped = 0
    if strip_names:
        content, names_dropped = drop_tensor_names(content)
        notes.append(f"dropped {names_dropped:,} bytes of intermediate tensor names (strip_names=True)")
    if metadata:
        content = embed_metadata(content, **metadata)

    verification = None
    if validation_data is not None:
        x, y = _validation_arrays(validation_data)
        # The FP32 reference only times the export: without latency runs it is not converted.
        reference = None
        if latency_runs:
            reference = content if precision == "fp32" else _fp32_reference(
                original, float_model, qat, notes, digest)
        verification = compare(content, x, y, keras_model=keras_model, reference_content=reference,
                               num_threads=num_threads, latency_runs=latency_runs)
        verification.check(min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop)
    elif min_accuracy is not None or max_accuracy_drop is not None:
        raise ValueError("min_accuracy/max_accuracy_drop need validation_data=(x, y).")

    atomic_write_bytes(path, content)
    if edgetpu is not None:
        edgetpu.path = path
    batch = parse_flatbuffer(content).input_tensors[0].shape_signature[0]
    return ExportResult(
        path=path, precision=precision, report=report_from_bytes(content, path),
        verification=verification, edgetpu=edgetpu,
        calibration_samples=0 if samples is None else len(samples), stripped=stripped,
        quantization_aware=qat, sparse_encoding=sparse_state, dense_bytes=dense_bytes,
        sparse_bytes=sparse_bytes, dense_gzip_bytes=dense_gzip_bytes, sparse_gzip_bytes=sparse_gzip_bytes,
        conversion_seconds=conversion_seconds, notes=notes, names_dropped=names_dropped,
        fixed_batch=None if batch < 0 else int(batch), unrolled=unrolled, float32_copy=bool(half),
    )


def _partial_mapping_message(report):
    """One line: the Edge TPU report predicts some ops on the CPU; which one first, why, and the fix."""
    message = f"Edge TPU: {report.summary()}"
    if report.first_cpu_op is not None:
        fix = report.ops[report.first_cpu_op].fix
        message += f". Fix: {fix}" if fix else ""
    return message
