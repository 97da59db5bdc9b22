"""tflite_export.export: every precision on a real digits CNN, run on the LiteRT interpreter."""

import json
import os
import re

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import EXPORT_PRECISIONS, cnn_digits_model, compile_classifier, dense_digits_model
from helpers import fit

import tflite_export
from tfcompress._keras import keras


def _litert_accuracy(path, x, y):
    """Independent check: run the file with the raw LiteRT API, one example at a time."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    correct = 0
    for example, label in zip(x, y):
        value = example[None]
        scale, zero = inp["quantization"]
        if scale:
            value = np.clip(np.round(value / scale + zero), np.iinfo(inp["dtype"]).min,
                            np.iinfo(inp["dtype"]).max)
        interpreter.resize_tensor_input(inp["index"], value.shape) if inp["shape_signature"][0] == -1 else None
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        correct += int(interpreter.get_tensor(out["index"])[0].argmax() == label)
    return correct / len(x)


@pytest.mark.parametrize("precision", EXPORT_PRECISIONS)
def test_every_precision_runs_on_litert_within_1_5_points_of_keras(precision, exported_digits, digits_cnn, digits):
    _, _, x_test, y_test = digits
    result = exported_digits[precision]
    keras_accuracy = float((digits_cnn.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    assert keras_accuracy > 0.85, "the fixture model must have learned digits"
    v = result.verification
    assert v.samples == len(x_test)
    assert v.keras_accuracy == pytest.approx(keras_accuracy)
    assert abs(v.tflite_accuracy - keras_accuracy) <= 0.015
    assert v.agreement >= 0.97 and v.agreement_with == "keras"
    assert v.latency_ms > 0 and v.fp32_latency_ms > 0 and v.num_threads == 1
    assert v.cpu["name"]
    # The file on disk is what was verified: the raw LiteRT API agrees.
    assert os.path.getsize(result.path) == result.bytes
    assert _litert_accuracy(result.path, x_test[:120], y_test[:120]) == pytest.approx(
        float((tflite_export.verify(result.path, x_test[:120], y_test[:120], latency_runs=0)
               .tflite_accuracy)))


def test_sizes_shrink_with_precision(exported_digits):
    size = {p: r.bytes for p, r in exported_digits.items()}
    assert size["fp16"] < 0.6 * size["fp32"]
    for p in ("dynamic", "int8", "int16x8", "edgetpu"):
        assert size[p] < 0.35 * size["fp32"], p
    for r in exported_digits.values():
        assert 0 < r.gzip_bytes <= r.bytes * 1.01


def test_io_types_and_tensor_types_match_the_precision(exported_digits):
    dtypes = {p: r.report.tensor_dtypes for p, r in exported_digits.items()}
    io = {p: (r.inputs[0]["dtype"], r.outputs[0]["dtype"]) for p, r in exported_digits.items()}
    for p in ("fp32", "fp16", "dynamic", "int8", "int16x8"):
        assert io[p] == ("float32", "float32"), p
    assert "float16" in dtypes["fp16"]
    assert "int8" in dtypes["dynamic"] and not exported_digits["dynamic"].report.fully_integer
    assert "int16" in dtypes["int16x8"] and exported_digits["int16x8"].report.fully_integer
    assert exported_digits["int8"].report.fully_integer
    assert exported_digits["int8"].op_counts["QUANTIZE"] == 1
    assert exported_digits["int8"].op_counts["DEQUANTIZE"] == 1


def test_edgetpu_has_uint8_io_batch_1_and_no_float_tensor(exported_digits):
    result = exported_digits["edgetpu"]
    for tensor in result.inputs + result.outputs:
        assert tensor["dtype"] == "uint8"
        assert tensor["shape"][0] == 1
        assert tensor["scale"] > 0
    assert not any(d.startswith("float") for d in result.report.tensor_dtypes)
    interpreter = Interpreter(model_path=result.path)
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [1, 8, 8, 1]
    assert result.edgetpu.fully_mapped


def test_every_file_has_a_signature_with_the_keras_input_and_output_names(exported_digits, digits_cnn, digits):
    # Batch-1 (edgetpu) files included: apps look the model up by these keys.
    assert digits_cnn.input_names == ["conv1_input"] and digits_cnn.output_names == ["logits"]
    for precision, result in exported_digits.items():
        interpreter = Interpreter(model_path=result.path)
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["conv1_input"], "outputs": ["logits"]}}, precision
    # The signature runs what the file's output tensor holds.
    interpreter = Interpreter(model_path=exported_digits["edgetpu"].path)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    example = np.full(inp["shape"], 128, np.uint8)
    interpreter.set_tensor(inp["index"], example)
    interpreter.invoke()
    expected = interpreter.get_tensor(out["index"])
    np.testing.assert_array_equal(interpreter.get_signature_runner()(conv1_input=example)["logits"], expected)


def test_multi_input_models_convert_with_their_names_at_a_dynamic_batch_and_at_batch_1():
    import keras as keras3

    from tflite_export.convert import convert_to_bytes

    a, b = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4), np.ones((2, 3), "float32")
    for k in (keras, keras3):  # tf_keras and Keras 3, inputs passed as a dict
        k.utils.set_random_seed(0)
        first, second = k.Input((4,), name="first"), k.Input((3,), name="second")
        joined = k.layers.Dense(5, name="joined")(k.layers.Concatenate()([first, second]))
        model = k.Model({"first": first, "second": second}, [joined, k.layers.Dense(2, name="head")(joined)])
        expected = [o.numpy() if hasattr(o, "numpy") else np.asarray(o)
                    for o in model({"first": a, "second": b}, training=False)]
        for fixed_batch in (False, True):
            interpreter = Interpreter(model_content=convert_to_bytes(model, "fp32", fixed_batch=fixed_batch))
            assert interpreter.get_signature_list() == {
                "serving_default": {"inputs": ["first", "second"], "outputs": ["head", "joined"]}}
            assert [list(d["shape_signature"][:1]) for d in interpreter.get_input_details()] == [
                [1 if fixed_batch else -1]] * 2
            runner = interpreter.get_signature_runner()
            rows = [runner(first=a[i:i + 1], second=b[i:i + 1]) for i in range(2)]
            for name, want in zip(("joined", "head"), expected):
                np.testing.assert_allclose(np.concatenate([row[name] for row in rows]), want, atol=1e-5)


def test_result_prints_a_table_and_round_trips_through_json(exported_digits):
    result = exported_digits["int8"]
    text = str(result)
    for label in ("precision", "bytes", "gzip bytes", "inputs", "ops", "tflite accuracy",
                  "keras accuracy", "top-1 agreement", "median latency", "measured on"):
        assert label in text
    data = json.loads(result.to_json())
    assert data["precision"] == "int8" and data["bytes"] == result.bytes
    assert data["model"]["op_counts"] == result.op_counts
    assert data["verification"]["tflite_accuracy"] == result.verification.tflite_accuracy
    assert data["calibration_samples"] == 256
    assert data["fixed_batch"] is None and data["unrolled"] == [] and data["float32_copy"] is False
    assert data["edgetpu_fully_mapped"] is None and data["first_cpu_op"] is None
    assert "fixed batch" not in text and "float32 copy" not in text
    edgetpu = exported_digits["edgetpu"]
    assert edgetpu.fixed_batch == 1 and "fixed batch" in str(edgetpu)
    assert json.loads(edgetpu.to_json())["edgetpu_fully_mapped"] is True
    assert re.search(r"edge tpu fully mapped +yes", str(edgetpu))


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_int8_with_integer_io(io_dtype, digits_cnn, digits, tmp_path):
    x_train, _, x_test, y_test = digits
    result = tflite_export.export(digits_cnn, tmp_path / "m.tflite", "int8", representative_data=x_train[:128],
                                  validation_data=(x_test, y_test), io_dtype=io_dtype, latency_runs=0)
    assert result.inputs[0]["dtype"] == io_dtype and result.outputs[0]["dtype"] == io_dtype
    assert "float32" not in result.report.tensor_dtypes
    assert result.verification.accuracy_drop <= 0.015


@pytest.mark.parametrize("filename", ["digits.keras", "digits.h5"])
def test_export_from_a_saved_model_file(filename, digits_cnn, digits, tmp_path):
    _, _, x_test, y_test = digits
    digits_cnn.save(tmp_path / filename)
    result = tflite_export.export(str(tmp_path / filename), tmp_path / "m.tflite", "fp32",
                                  validation_data=(x_test, y_test), latency_runs=0)
    assert result.verification.agreement == 1.0
    assert result.verification.max_abs_diff < 1e-4


def test_quantization_aware_model_needs_no_representative_data(digits, tmp_path):
    import tensorflow_model_optimization as tfmot

    x_train, y_train, x_test, y_test = digits
    qat = compile_classifier(tfmot.quantization.keras.quantize_model(dense_digits_model(width=64)))
    qat.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    result = tflite_export.export(qat, tmp_path / "qat.tflite", "int8", validation_data=(x_test, y_test),
                                  latency_runs=0)
    assert result.quantization_aware and result.calibration_samples == 0
    assert result.report.fully_integer
    assert result.verification.keras_accuracy > 0.85
    assert abs(result.verification.accuracy_drop) <= 0.015


def conv_act_and_conv_bn_digits_model(seed=0):
    """A convolution with its own ReLU, then Conv-BatchNorm-ReLU, where tfmot moves the activation."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def test_quantization_aware_int8_is_timed_against_the_float_model(digits, tmp_path):
    """The FP32 latency reference of a QAT export is the float model inside it, not the QAT graph."""
    import tensorflow_model_optimization as tfmot

    import tfcompress as tfc
    from tflite_export.convert import convert_to_bytes
    from tflite_export.flatbuffer import parse_flatbuffer
    from tflite_export.float_twin import float_twin

    x_train, y_train, x_test, y_test = digits
    float_model = compile_classifier(conv_act_and_conv_bn_digits_model())
    fit(float_model, x_train, y_train, epochs=1, batch_size=64, verbose=0)
    expected = float_model.predict(x_test, verbose=0)
    for qat in (tfmot.quantization.keras.quantize_model(float_model), tfc.strip(tfc.quantize(float_model))):
        twin = float_twin(qat)
        np.testing.assert_allclose(twin(x_test, training=False).numpy(), expected, atol=1e-5)
    quantizing = {"QUANTIZE", "DEQUANTIZE", "FAKE_QUANT"}
    assert quantizing & set(parse_flatbuffer(convert_to_bytes(qat, "fp32")).op_counts())
    assert not quantizing & set(parse_flatbuffer(convert_to_bytes(twin, "fp32")).op_counts())
    result = tflite_export.export(qat, tmp_path / "qat.tflite", "int8", validation_data=(x_test[:64], y_test[:64]),
                                  latency_runs=5)
    assert any("fp32 latency is the float model's" in note for note in result.notes)
    assert result.verification.fp32_latency_ms > 0 and result.report.fully_integer


def test_fp32_reference_is_converted_once_per_model_and_weights(digits_cnn, digits, tmp_path, monkeypatch):
    import sys

    convert_module = sys.modules["tflite_export.convert"]
    real, calls = convert_module.convert_to_bytes, []

    def counting(model, precision, *args, **kwargs):
        calls.append(precision)
        return real(model, precision, *args, **kwargs)

    monkeypatch.setattr(convert_module, "convert_to_bytes", counting)
    _, _, x_test, y_test = digits
    model = keras.models.clone_model(digits_cnn)
    model.set_weights(digits_cnn.get_weights())

    def export(precision, name):
        result = tflite_export.export(model, tmp_path / f"{name}.tflite", precision,
                                      validation_data=(x_test[:64], y_test[:64]), latency_runs=3)
        assert result.verification.fp32_latency_ms > 0
        return result

    export("fp16", "a")
    export("dynamic", "b")
    assert calls == ["fp16", "fp32", "dynamic"]  # the second export times against the first's reference
    model.set_weights([w * 0.5 for w in model.get_weights()])
    export("fp16", "c")
    assert calls[3:] == ["fp16", "fp32"]  # new weights, new reference
    model.set_weights([w * 0.5 for w in model.get_weights()])
    fp32 = export("fp32", "d")
    dynamic = export("dynamic", "e")
    assert calls[5:] == ["fp32", "dynamic"]  # the fp32 export's file is the reference
    assert dynamic.verification.fp32_latency_ms > 0 and fp32.verification.fp32_latency_ms > 0


@pytest.fixture(scope="module")
def pruned_dense(digits):
    """A dense digits MLP pruned to 80% with tfcompress (a PruneLowMagnitude subclass), not stripped."""
    import tfcompress as tfc

    x_train, y_train, _, _ = digits
    model = compile_classifier(tfc.prune(dense_digits_model(width=256), final_sparsity=0.8))
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0,
              callbacks=[tfc.CompressionCallback(verbose=0)])
    return model


def test_pruning_wrappers_are_stripped_and_sparse_encoding_shrinks_fp32(pruned_dense, digits, tmp_path, caplog):
    _, _, x_test, y_test = digits
    with caplog.at_level("INFO", logger="tflite_export"):
        result = tflite_export.export(pruned_dense, tmp_path / "sparse.tflite", "fp32",
                                      validation_data=(x_test, y_test), latency_runs=0)
    assert result.stripped == ["pruning"]
    assert "stripped pruning wrappers" in caplog.text
    import tensorflow_model_optimization as tfmot

    assert tflite_export.weight_sparsity(tfmot.sparsity.keras.strip_pruning(pruned_dense)) >= 0.75
    assert result.sparse_encoding == "used"
    assert result.sparse_bytes == result.bytes < 0.5 * result.dense_bytes
    assert result.report.sparse_tensors > 0
    assert result.verification.agreement == 1.0 and result.verification.max_abs_diff < 1e-4


def test_clustering_wrappers_are_stripped(digits_cnn, digits, tmp_path):
    import tensorflow_model_optimization as tfmot

    _, _, x_test, y_test = digits
    copy = keras.models.clone_model(digits_cnn)
    copy.set_weights(digits_cnn.get_weights())
    clustered = tfmot.clustering.keras.cluster_weights(
        copy, number_of_clusters=16,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.LINEAR)
    result = tflite_export.export(clustered, tmp_path / "clustered.tflite", "fp32",
                                  validation_data=(x_test, y_test), latency_runs=0)
    assert result.stripped == ["clustering"]
    assert result.verification.keras_accuracy > 0.8
    assert result.verification.agreement == 1.0
    # The flatbuffer holds the clustered weights: few distinct values, so gzip shrinks it a lot.
    plain = tflite_export.export(digits_cnn, tmp_path / "plain.tflite", "fp32")
    assert result.gzip_bytes < 0.5 * plain.gzip_bytes


def test_sparse_int8_falls_back_to_dense_when_xnnpack_cannot_run_it(pruned_dense, digits, tmp_path):
    x_train, _, x_test, y_test = digits
    auto = tflite_export.export(pruned_dense, tmp_path / "auto.tflite", "int8", x_train[:128],
                                (x_test, y_test), latency_runs=0)
    assert auto.sparse_bytes < auto.dense_bytes == auto.bytes
    assert "XNNPACK" in auto.sparse_encoding and auto.report.sparse_tensors == 0
    forced = tflite_export.export(pruned_dense, tmp_path / "forced.tflite", "int8", x_train[:128],
                                  (x_test, y_test), sparse=True, latency_runs=0)
    assert forced.bytes == forced.sparse_bytes < auto.bytes
    assert forced.verification.runtime.startswith("builtin kernels")
    assert forced.verification.accuracy_drop <= 0.015
    off = tflite_export.export(pruned_dense, tmp_path / "off.tflite", "fp32", sparse=False)
    assert off.sparse_bytes is None and off.report.sparse_tensors == 0


def test_representative_data_accepts_arrays_tuples_datasets_and_generators(digits_cnn, digits, tmp_path):
    import tensorflow as tf

    x_train, y_train, x_test, y_test = digits
    keras_accuracy = float((digits_cnn.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    forms = {
        "array": x_train,
        "tuple": (x_train, y_train),
        "batched dataset": tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32),
        "unbatched dataset": tf.data.Dataset.from_tensor_slices(x_train),
        "generator": (x_train[i:i + 10] for i in range(0, 400, 10)),
        "TFLiteConverter-style callable": lambda: ([x_train[i:i + 1]] for i in range(150)),
    }
    for name, data in forms.items():
        result = tflite_export.export(digits_cnn, tmp_path / "m.tflite", "int8", data,
                                      max_calibration_samples=100)
        assert result.calibration_samples == 100, name
        accuracy = tflite_export.verify(result.path, x_test, y_test, latency_runs=0).tflite_accuracy
        assert abs(accuracy - keras_accuracy) <= 0.015, name


def test_int16x8_with_int16_io(digits_cnn, digits, tmp_path):
    x_train, _, x_test, y_test = digits
    result = tflite_export.export(digits_cnn, tmp_path / "m.tflite", "int16x8", x_train[:128],
                                  (x_test, y_test), io_dtype="int16", latency_runs=0)
    assert result.inputs[0]["dtype"] == "int16" and result.outputs[0]["dtype"] == "int16"
    assert result.inputs[0]["zero_point"] == 0  # int16 activations are symmetric
    assert abs(result.verification.accuracy_drop) <= 0.015


def test_binary_tabular_classifier_with_one_sigmoid_unit(breast_cancer, tmp_path):
    x_train, y_train, x_test, y_test = breast_cancer
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Dense(32, activation="relu", input_shape=(30,)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    fit(model, x_train, y_train, epochs=10, batch_size=32, verbose=0)
    result = tflite_export.export(model, tmp_path / "cancer.tflite", "int8", x_train, (x_test, y_test),
                                  latency_runs=0, metadata={"name": "breast cancer", "labels": ["malignant"]})
    v = result.verification
    assert v.keras_accuracy > 0.9
    # 119 test examples: one example is 0.84 points, so allow two borderline flips.
    assert abs(v.accuracy_drop) * v.samples <= 2 and v.agreement >= 0.97
    assert result.report.fully_integer
    meta = tflite_export.read_metadata(result.path)
    assert meta["inputs"][0]["content"] == "feature" and meta["labels"] == ["malignant"]


def test_tfcompress_qat_pipeline_exports_to_edgetpu_without_calibration(digits, tmp_path):
    """The GUIDE's pipeline: tfc.quantize -> fit with CompressionCallback -> tfc.strip -> export."""
    import tfcompress as tfc

    x_train, y_train, x_test, y_test = digits
    model = compile_classifier(tfc.quantize(cnn_digits_model(seed=0), start=0.5))
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(tfc.strip(model), tmp_path / "qat_edgetpu.tflite", "edgetpu",
                                  validation_data=(x_test, y_test), latency_runs=0)
    assert result.quantization_aware and result.calibration_samples == 0
    assert result.inputs[0]["dtype"] == "uint8" and result.edgetpu.fully_mapped
    assert result.verification.keras_accuracy > 0.85
    assert abs(result.verification.accuracy_drop) <= 0.015


def test_unstripped_prune_and_qat_model_exports_as_tfc_strip_gives_it(digits, tmp_path):
    """A trained tfc.quantize(tfc.prune(...)) model, never stripped, exports fully integer at int8."""
    import tfcompress as tfc

    x_train, y_train, x_test, y_test = digits
    model = compile_classifier(tfc.quantize(tfc.prune(dense_digits_model(width=64), 0.5), start=0.5))
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(model, tmp_path / "unstripped.tflite", "int8", validation_data=(x_test, y_test),
                                  latency_runs=0)
    assert result.stripped == ["pruning", "quantization"] and result.quantization_aware
    assert result.calibration_samples == 0
    assert "compression wrappers (pruning, quantization) with tfcompress.strip before conversion" in str(result)
    assert result.report.fully_integer and result.inputs[0]["dtype"] == "float32"
    assert result.verification.keras_accuracy > 0.8
    assert abs(result.verification.accuracy_drop) <= 0.015
    # The raw LiteRT API agrees with the verification.
    assert _litert_accuracy(result.path, x_test[:120], y_test[:120]) == pytest.approx(
        tflite_export.verify(result.path, x_test[:120], y_test[:120], latency_runs=0).tflite_accuracy)
    # The same file as exporting the user's own tfc.strip(model).
    stripped = tflite_export.export(tfc.strip(model), tmp_path / "stripped.tflite", "int8", latency_runs=0)
    assert stripped.stripped == [] and stripped.quantization_aware
    assert open(stripped.path, "rb").read() == open(result.path, "rb").read()


def test_no_fp32_reference_without_latency_and_conversion_time_is_reported(digits_cnn, digits, tmp_path,
                                                                            monkeypatch):
    import sys

    convert_module = sys.modules["tflite_export.convert"]
    real, calls = convert_module.convert_to_bytes, []

    def counting(model, precision, *args, **kwargs):
        calls.append(precision)
        return real(model, precision, *args, **kwargs)

    monkeypatch.setattr(convert_module, "convert_to_bytes", counting)
    _, _, x_test, y_test = digits
    model = keras.models.clone_model(digits_cnn)  # a model no earlier export cached a reference for
    model.set_weights(digits_cnn.get_weights())
    result = tflite_export.export(model, tmp_path / "m.tflite", "dynamic", validation_data=(x_test, y_test),
                                  latency_runs=0)
    assert calls == ["dynamic"]  # no FP32 reference conversion
    assert result.verification.latency_ms is None and result.verification.fp32_latency_ms is None
    assert result.verification.tflite_accuracy > 0.85 and result.verification.agreement_with == "keras"
    assert not any("fp32 latency" in note for note in result.notes)
    assert 0 < result.conversion_seconds < 600
    row = next(line for line in str(result).splitlines() if line.startswith("conversion time"))
    assert row.endswith(f"{result.conversion_seconds:.2f} s")
    assert json.loads(result.to_json())["conversion_seconds"] == result.conversion_seconds
    timed = tflite_export.export(model, tmp_path / "t.tflite", "dynamic", validation_data=(x_test, y_test),
                                 latency_runs=3)
    assert calls == ["dynamic", "dynamic", "fp32"] and timed.verification.fp32_latency_ms > 0
    assert timed.conversion_seconds > 0


_QUIET_EXPORT = """
import json, sys
sys.path.insert(0, TESTS_DIR)
from conftest import cnn_digits_model
import tflite_export
from tfcompress.demo import load_digits

(x_train, y_train), (x_test, y_test) = load_digits()
model = cnn_digits_model()
print("EXPORT STARTS", flush=True)
print("EXPORT STARTS", file=sys.stderr, flush=True)
result = tflite_export.export(model, OUTPUT, "int8", representative_data=x_train[:64],
                              validation_data=(x_test[:32], y_test[:32]), latency_runs=3, verbose=VERBOSE)
print("EXPORT ENDS", flush=True)
print("EXPORT ENDS", file=sys.stderr, flush=True)
print("RESULT " + json.dumps({"fully_integer": result.report.fully_integer}))
"""


@pytest.mark.slow  # a fresh interpreter
def test_export_hides_the_converters_log_unless_verbose(tmp_path):
    """A real export in a fresh process: between its first and last line, only what export prints."""
    import subprocess
    import sys

    from fresh_process import TESTS_DIR

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # TensorFlow's default level: everything is logged
    processes = {}
    for verbose in (False, True):
        script = (_QUIET_EXPORT.replace("TESTS_DIR", repr(TESTS_DIR))
                  .replace("OUTPUT", repr(str(tmp_path / f"m_{verbose}.tflite"))).replace("VERBOSE", str(verbose)))
        processes[verbose] = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, env=env)
    during = {}
    for verbose, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert '"fully_integer": true' in stdout

        def between(text):
            return text.split("EXPORT STARTS\n", 1)[1].split("EXPORT ENDS\n", 1)[0]

        during[verbose] = between(stdout) + between(stderr)
    assert during[False] == ""
    for marker in ("Reading SavedModel from", "tf_tfl_flatbuffer_helpers.cc", "fully_quantize:", "XNNPACK delegate"):
        assert marker in during[True], marker
