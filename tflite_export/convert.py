"""`export()`: a Keras model to a verified `.tflite` file at one of six precisions."""

import hashlib
import json
import logging
import os
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
from tflite_export.inspection import report_from_bytes
from tflite_export.metadata import embed_metadata
from tflite_export.representative import as_converter_dataset, collect_samples
from tflite_export.result import ExportResult
from tflite_export.verification import compare, default_runtime_loads

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
    """Which compression wrappers `tfc.strip` would remove: pruning, clustering, quantization.

    "quantization" means tfcompress's phased QAT layers; tfmot's standard quantization
    layers (what `tfc.strip` leaves, with their learned ranges) need no stripping.
    """
    from tfcompress._tfmot import ClusterWeights, PruneLowMagnitude
    from tfcompress.quantization import QuantizeInput, QuantizeWrapper

    kinds = []
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
# exporting one model at several precisions converts its reference once, not once per precision.
_REFERENCES = weakref.WeakKeyDictionary()


def _fp32_reference(original, model, qat, notes):
    """FP32 flatbuffer bytes to time an export against; `original` is the model `export` was given."""
    digest = _weights_digest(original)
    cached = _REFERENCES.get(original)
    if cached is not None and cached[0] == digest:
        notes.extend(cached[2])
        return cached[1]
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
    twin = float_twin(model)
    if twin is None:
        notes.append("fp32 latency is the quantization-aware model's converted to float, fake-quant "
                     "ops included (its float twin could not be rebuilt)")
        return model
    notes.append("fp32 latency is the float model's: the quantization-aware layers unwrapped, same weights")
    return twin


def weight_sparsity(model):
    """Fraction of exactly-zero values among the model's kernels (biases excluded)."""
    zeros = total = 0
    for weight in model.weights:
        if "kernel" in weight.name and len(weight.shape) >= 2:
            value = weight.numpy()
            zeros += int((value == 0).sum())
            total += value.size
    return zeros / total if total else 0.0


def _input_shape(model):
    if len(model.inputs) != 1:
        raise ValueError(f"The model has {len(model.inputs)} inputs; tflite_export calibrates and "
                         "verifies single-input models.")
    return tuple(model.inputs[0].shape[1:])


def _converter(model, precision, samples, io_dtype, sparse):
    tf = _tf()
    keras3 = _is_keras3(model)
    if precision == "edgetpu" or keras3:
        # A concrete function fixes the batch (1 for the Edge TPU); for Keras 3 it also avoids
        # from_keras_model's export step, which prints its signature to stdout.
        shape = _input_shape(model)
        if precision == "edgetpu" and any(d is None for d in shape):
            raise EdgeTPUCompatibilityError(
                f"The model's input shape (batch, {shape}) has dynamic dimensions; the Edge TPU needs "
                "static shapes. Build it with keras.Input(shape=(H, W, C)) of fixed size.")
        batch = 1 if precision == "edgetpu" else None
        spec = tf.TensorSpec([batch, *shape], model.inputs[0].dtype)
        function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        trackable = model
        if keras3:
            # The converter freezes the tf.Variables it finds on this object; Keras 3 keeps them
            # inside its own variables, so hand them over directly.
            trackable = tf.Module()
            trackable.model_variables = [variable.value for variable in model.variables]
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], trackable)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
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
    if io_dtype and io_dtype != "float32":
        dtype = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[io_dtype]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    return converter


def convert_to_bytes(model, precision, samples=None, io_dtype=None, sparse=False, *, verbose=False):
    """Runs the TFLite converter once and returns flatbuffer bytes (no file, no checks).

    Arguments:
        model: a tf_keras model without pruning/clustering wrappers.
        precision: one of `PRECISIONS`.
        samples: float32 calibration samples for int8/int16x8/edgetpu (None for QAT models).
        io_dtype: `None`/"float32", "int8", "uint8" or "int16" IO (see `export`).
        sparse: apply the converter's sparse encoding.
        verbose: show the converter's own log instead of capturing it.

    Returns:
        The flatbuffer bytes.

    Raises:
        ConversionError / EdgeTPUCompatibilityError: the converter failed; the error
            ends with the last lines of the converter's log.

    Example:

    >>> content = convert_to_bytes(model, "fp16")
    """
    with quiet(verbose) as log:
        converter = _converter(model, precision, samples, io_dtype, sparse)
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


def _conversion_error(e, precision):
    message = str(e).strip().splitlines()
    detail = " ".join(line.strip() for line in message if "error" in line.lower())[:1500] or str(e)[:1500]
    if precision == "edgetpu":
        return EdgeTPUCompatibilityError(
            "The model cannot be converted with every op in int8, which the Edge TPU requires: "
            f"{detail}. Replace the layers named there with int8-capable ones (Conv2D, "
            "DepthwiseConv2D, Dense, pooling, ReLU/ReLU6, Add, Concatenate, Reshape).")
    if precision == "int8":
        return ConversionError(
            f"Full-integer conversion failed: {detail}. Some op has no int8 kernel; use "
            "precision='dynamic' or 'fp16', or replace that layer.")
    return ConversionError(f"The TFLite converter failed for precision {precision!r}: {detail}")


def _check_edgetpu(content):
    structure = parse_flatbuffer(content)
    float_tensors = [t.name for t in structure.tensors if t.dtype in FLOAT_TYPES]
    float_ops = list(dict.fromkeys(op.name for op in structure.float_ops()))
    if float_tensors or float_ops:
        raise EdgeTPUCompatibilityError(
            f"The converted model still computes in float (ops: {', '.join(float_ops) or 'none'}; "
            f"float tensors: {', '.join(float_tensors[:5])}), so edgetpu_compiler would reject it or "
            "run those ops on the CPU. Replace those layers with int8-capable ones.")
    for t in structure.input_tensors + structure.output_tensors:
        if t.dtype not in ("uint8", "int8") or any(d < 0 for d in t.shape_signature) or t.shape[0] != 1:
            raise EdgeTPUCompatibilityError(
                f"IO tensor {t.name!r} is {t.dtype}{t.shape_signature}; the Edge TPU needs uint8/int8 "
                "IO with a static batch of 1.")


def _validation_arrays(validation_data):
    if isinstance(validation_data, tuple) and len(validation_data) == 2:
        x, y = validation_data
        return np.asarray(x), None if y is None else np.asarray(y)  # compare() checks and converts x
    raise ValueError("validation_data must be an (x, y) tuple of arrays, e.g. (x_test, y_test).")


def export(model, path, precision="fp32", representative_data=None, validation_data=None, *,
           max_calibration_samples=256, io_dtype=None, sparse="auto", metadata=None,
           num_threads=1, latency_runs=100, min_accuracy=None, max_accuracy_drop=None,
           custom_objects=None, verbose=False):
    """Converts a tf_keras model to a `.tflite` file, verifies it on LiteRT, writes it atomically.

    Arguments:
        model: a tf_keras model, or the path of one (`.keras`, `.h5`, SavedModel directory).
            A model with tfcompress/tfmot pruning or clustering wrappers, or tfcompress's
            QAT layers, is converted as `tfcompress.strip(model)` gives it (`result.stripped`
            names what was stripped); tfmot's standard QAT layers are kept so their learned
            ranges are used. A Keras 3 model (or a `.keras`/`.h5`
            file Keras 3 wrote) with defined inputs is converted as is.
        path: destination `.tflite` file. Written only after every check passed; an
            existing file there is replaced in one atomic rename, and a failed export
            leaves it (and the directory) as they were.
        precision: `"fp32"`; `"fp16"` (float16 weights); `"dynamic"` (int8 weights, float
            activations); `"int8"` (full integer, float IO unless `io_dtype`); `"int16x8"`
            (16-bit activations, 8-bit weights); `"edgetpu"` (full int8, uint8 IO unless
            `io_dtype="int8"`, batch 1, static shapes; fails if any op stays float).
        representative_data: calibration inputs for int8/int16x8/edgetpu: numpy array,
            `(x, y)` tuple, `tf.data.Dataset` (batched or not), or a generator. Not needed
            for a QAT model at int8/edgetpu.
        validation_data: `(x, y)`; when given, the flatbuffer runs on LiteRT and the result
            reports its accuracy next to Keras', top-1 agreement, max abs output difference
            and median 1-thread latency next to the FP32 flatbuffer's (the FP32 reference is
            converted only when latency is measured).
        max_calibration_samples: at most this many representative samples are used.
        io_dtype: input/output type: int8 accepts `"int8"`/`"uint8"`, edgetpu `"uint8"`
            (default) or `"int8"`, int16x8 `"int16"`; float elsewhere.
        sparse: `"auto"` (sparse encoding when >= 50% of kernel weights are zero and LiteRT's
            default runtime runs the result), `True` (always when sparse), `False` (never).
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
    with quiet(verbose):
        return _export(model, path, precision, representative_data, validation_data,
                       max_calibration_samples=max_calibration_samples, io_dtype=io_dtype, sparse=sparse,
                       metadata=metadata, num_threads=num_threads, latency_runs=latency_runs,
                       min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop,
                       custom_objects=custom_objects)


def _export(model, path, precision, representative_data, validation_data, *, max_calibration_samples,
            io_dtype, sparse, metadata, num_threads, latency_runs, min_accuracy, max_accuracy_drop,
            custom_objects):
    """`export` after its arguments were checked, inside one `quiet` block."""
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_model(model, custom_objects)
    original = model
    notes = []
    if _check_model(model):
        stripped, qat = [], False
        notes.append("Keras 3 model converted as is (tfcompress's compression wrappers need tf_keras)")
    else:
        model, stripped, qat = _strip_for_conversion(model, notes)

    samples = None
    if precision in _CALIBRATED:
        if representative_data is None and not (qat and precision != "int16x8"):
            raise RepresentativeDataError(
                f"precision={precision!r} needs representative_data: 100-500 real training inputs "
                "(e.g. representative_data=x_train[:256]) to calibrate activation ranges. "
                "Models trained with quantization-aware training need none for int8/edgetpu.")
        if representative_data is not None:
            samples = collect_samples(representative_data, _input_shape(model), max_calibration_samples)
    elif representative_data is not None:
        notes.append(f"representative_data ignored: {precision} needs no calibration")

    started = time.perf_counter()
    content = convert_to_bytes(model, precision, samples, io_dtype)
    conversion_seconds = time.perf_counter() - started
    dense_bytes, sparse_bytes, sparse_state = len(content), None, "off"
    sparsity = weight_sparsity(model)
    if sparse is False:
        sparse_state = "off"
    elif precision in ("edgetpu", "int16x8"):
        sparse_state = f"not available for {precision}"
    elif sparsity < SPARSE_THRESHOLD and sparse == "auto":
        sparse_state = f"not sparse ({sparsity:.0%} zero weights)"
    else:
        started = time.perf_counter()
        sparse_content = convert_to_bytes(model, precision, samples, io_dtype, sparse=True)
        conversion_seconds += time.perf_counter() - started
        sparse_bytes = len(sparse_content)
        if sparse_bytes >= dense_bytes:
            sparse_state = "not smaller; dense kept"
        elif sparse is True or default_runtime_loads(sparse_content):
            content, sparse_state = sparse_content, "used"
            if not default_runtime_loads(sparse_content):
                sparse_state = "used (LiteRT's default XNNPACK runtime cannot run it; builtin kernels can)"
        else:
            sparse_state = ("not used: LiteRT's default XNNPACK runtime cannot run the sparse "
                            "file; pass sparse=True to keep it anyway")
        notes.append(f"sparse encoding {sparse_state}: dense {dense_bytes:,} B, sparse {sparse_bytes:,} B")

    if precision == "int8" and samples is None:
        float_ops = [op.name for op in parse_flatbuffer(content).float_ops()]
        if float_ops:
            raise ConversionError(
                f"The quantization-aware model still has float ops after conversion ({', '.join(float_ops)}): "
                "those layers were not quantized by QAT. Pass representative_data to calibrate them, "
                "or quantize every layer in training.")

    edgetpu = None
    if precision == "edgetpu":
        _check_edgetpu(content)
        edgetpu = mapping_report(content, path)
    if metadata:
        content = embed_metadata(content, **metadata)

    verification = None
    if validation_data is not None:
        x, y = _validation_arrays(validation_data)
        # The FP32 reference only times the export: without latency runs it is not converted.
        reference = None
        if latency_runs:
            reference = content if precision == "fp32" else _fp32_reference(original, model, qat, notes)
        verification = compare(content, x, y, keras_model=model, reference_content=reference,
                               num_threads=num_threads, latency_runs=latency_runs)
        verification.check(min_accuracy=min_accuracy, max_accuracy_drop=max_accuracy_drop)
    elif min_accuracy is not None or max_accuracy_drop is not None:
        raise ValueError("min_accuracy/max_accuracy_drop need validation_data=(x, y).")

    atomic_write_bytes(path, content)
    if edgetpu is not None:
        edgetpu.path = path
    return ExportResult(
        path=path, precision=precision, report=report_from_bytes(content, path),
        verification=verification, edgetpu=edgetpu,
        calibration_samples=0 if samples is None else len(samples), stripped=stripped,
        quantization_aware=qat, sparse_encoding=sparse_state, dense_bytes=dense_bytes,
        sparse_bytes=sparse_bytes, conversion_seconds=conversion_seconds, notes=notes,
    )
