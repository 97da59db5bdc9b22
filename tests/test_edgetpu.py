"""The Edge TPU profile: a compiler-ready flatbuffer and an offline mapping report."""

import json

import numpy as np

import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from helpers import fit

import tflite_export
from tflite_export.edgetpu import SUPPORTED_OPS
from tfcompress._keras import keras


def test_digits_cnn_maps_fully(exported_digits):
    report = exported_digits["edgetpu"].edgetpu
    assert report.fully_mapped and report.first_cpu_op is None
    assert report.mapped == len(report.ops) == sum(exported_digits["edgetpu"].op_counts.values())
    assert {op.coral_name for op in report.ops} == {"Quantize", "Conv2d", "MaxPool2d", "Reshape", "FullyConnected"}
    text = str(report)
    assert "Mapped to Edge TPU" in text and "edgetpu_compiler" in text
    assert json.loads(report.to_json())["fully_mapped"] is True
    assert all(op.version >= 1 for op in report.ops)


def test_float_io_int8_file_is_flagged_with_the_fix(exported_digits):
    report = tflite_export.edgetpu_report(exported_digits["int8"].path)
    assert not report.fully_mapped
    assert any("float32" in p and "precision='edgetpu'" in p for p in report.model_problems)
    assert any("dynamic shape" in p for p in report.model_problems)


def test_fp32_file_splits_at_the_first_op(exported_digits):
    report = tflite_export.edgetpu_report(exported_digits["fp32"].path)
    assert report.first_cpu_op == 0 and report.mapped == 0
    assert "int8/uint8" in report.ops[0].reason and "quantize" in report.ops[0].fix


@pytest.fixture(scope="module")
def leaky_model(digits):
    """A CNN whose LeakyReLU (LEAKY_RELU, int8 in TFLite but not in Coral's table) splits the graph."""
    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = digits
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    fit(model, x_train, y_train, epochs=2, verbose=0)
    return model


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tflite_export" and r.levelname == "WARNING"]


def test_unsupported_op_splits_the_graph_and_everything_after_runs_on_cpu(leaky_model, digits, tmp_path, caplog):
    x_train, _, x_test, y_test = digits
    result = tflite_export.export(leaky_model, tmp_path / "leaky.tflite", "edgetpu", x_train[:128],
                                  (x_test, y_test), latency_runs=0)
    assert result.report.fully_integer  # the file is valid for the compiler ...
    report = result.edgetpu               # ... but the compiler will split it
    names = [op.op for op in report.ops]
    split = names.index("LEAKY_RELU")
    assert report.first_cpu_op == split
    assert all(op.on_edgetpu for op in report.ops[:split])
    assert not any(op.on_edgetpu for op in report.ops[split:])
    assert "not in Coral's supported-operations table" in report.ops[split].reason
    assert "ReLU" in report.ops[split].fix
    assert "after the first unmapped op" in report.ops[-1].reason
    assert "SOFTMAX" in names[split:]  # a supported op, but after the split
    assert f"CPU from op {split} LEAKY_RELU" in report.summary()
    assert result.verification.accuracy_drop <= 0.03
    # The result and a warning say it: which op falls back first, and why.
    assert result.edgetpu_fully_mapped is False
    assert result.first_cpu_op.startswith(f"LEAKY_RELU (op {split}): ")
    assert "not in Coral's supported-operations table" in result.first_cpu_op
    data = json.loads(result.to_json())
    assert data["edgetpu_fully_mapped"] is False and data["first_cpu_op"] == result.first_cpu_op
    assert "edge tpu fully mapped" in str(result) and f"no: CPU from LEAKY_RELU (op {split})" in str(result)
    (warning,) = _warnings(caplog)
    assert "leaky.tflite" in warning and f"CPU from op {split} LEAKY_RELU" in warning and "Fix:" in warning
    assert any(f"CPU from op {split} LEAKY_RELU" in note for note in result.notes)


def test_softmax_and_relu_map_when_before_any_unsupported_op(digits, tmp_path, caplog):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.AveragePooling2D()(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    result = tflite_export.export(model, tmp_path / "m.tflite", "edgetpu", digits[0][:64], io_dtype="int8")
    assert result.inputs[0]["dtype"] == "int8"
    assert result.edgetpu.fully_mapped, str(result.edgetpu)
    assert "SOFTMAX" in result.op_counts and "DEPTHWISE_CONV_2D" in result.op_counts
    assert result.edgetpu_fully_mapped is True and result.first_cpu_op is None
    assert _warnings(caplog) == [] and not any("Edge TPU:" in note for note in result.notes)


def test_table_covers_the_common_layers():
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "MEAN", "ADD",
               "CONCATENATION", "RESHAPE", "QUANTIZE", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
        assert op in SUPPORTED_OPS
    for op in ("DEQUANTIZE", "LEAKY_RELU", "HARD_SWISH", "EXP"):
        assert op not in SUPPORTED_OPS


@pytest.mark.parametrize("name, layer, reason", [
    ("z-mean over 3 channels", lambda t: tf.reduce_mean(t, axis=-1, keepdims=True), "not a multiple of 4"),
    ("stride-2 slice", lambda t: t[:, ::2, :, :], "strides are not all 1"),
])
def test_published_limitations_of_supported_ops_are_checked(name, layer, reason, digits, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.Lambda(layer)(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    result = tflite_export.export(model, tmp_path / "m.tflite", "edgetpu", digits[0][:32])
    report = result.edgetpu
    split = report.ops[report.first_cpu_op]
    assert split.op in SUPPORTED_OPS and not split.on_edgetpu, name
    assert reason in split.reason and split.fix
    assert [op.op for op in report.ops[: report.first_cpu_op]] == ["QUANTIZE", "CONV_2D"]


@pytest.mark.parametrize("shared_axes, maps", [(None, False), ([1, 2], True)])
def test_prelu_alpha_must_be_one_dimensional(shared_axes, maps, digits, tmp_path):
    # Coral: alpha may be > 1 only in the innermost dimension, hence shared_axes=[1,2] on 4D input.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.PReLU(shared_axes=shared_axes)(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    report = tflite_export.export(model, tmp_path / "m.tflite", "edgetpu", digits[0][:32]).edgetpu
    prelu = next(op for op in report.ops if op.op == "PRELU")
    assert prelu.coral_name == "PReLU" and prelu.on_edgetpu is maps
    if maps:
        assert report.fully_mapped, str(report)
    else:
        assert report.first_cpu_op == prelu.index
        assert "alpha [8, 8, 4]" in prelu.reason and "shared_axes=[1, 2]" in prelu.reason and prelu.fix


def _tokens(n, seed):
    """Token sequences whose class (of 4) is the band of ids they mostly draw from."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = y[:, None] * 25 + rng.integers(0, 25, (n, 12))
    return x.astype("int32"), y


def test_embedding_lookup_gets_the_fix_that_maps_the_rest(tmp_path):
    """GATHER (the Embedding) splits the graph at op 0; the advice it gets is followed and maps everything."""
    keras.utils.set_random_seed(0)
    x, y = _tokens(512, 0)
    inputs = keras.Input((12,), dtype="int32")
    embedding = keras.layers.Embedding(100, 8, name="embed")
    h = keras.layers.Conv1D(16, 3, activation="relu")(embedding(inputs))
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(4)(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit(model, x, y, epochs=3, verbose=0)

    report = tflite_export.export(model, tmp_path / "tokens.tflite", "edgetpu", x[:64], latency_runs=0).edgetpu
    assert report.ops[0].op == "GATHER" and report.first_cpu_op == 0 and report.mapped == 0
    assert "Embedding" in report.ops[0].fix and "keras.Model(embedding_layer.output" in report.ops[0].fix

    # The advice: the TPU model starts at the embeddings; the app looks the rows up.
    tpu_model = keras.Model(embedding.output, model.output)
    x_test, y_test = _tokens(128, 1)
    result = tflite_export.export(tpu_model, tmp_path / "from_embeddings.tflite", "edgetpu",
                                  embedding(x[:64]).numpy(), latency_runs=0)
    assert result.edgetpu.fully_mapped, result.edgetpu.summary()
    table = embedding.get_weights()[0]
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = source["quantization"]
    agree = []
    for tokens, keras_logits in zip(x_test, model.predict(x_test, verbose=0)):
        rows = np.round(table[tokens][None] / scale + zero).clip(0, 255).astype(source["dtype"])
        interpreter.set_tensor(source["index"], rows)
        interpreter.invoke()
        agree.append(interpreter.get_tensor(target["index"]).argmax() == keras_logits.argmax())
    assert np.mean(agree) >= 0.95


def test_hard_swish_gets_the_mobilenet_v3_fix(digits, tmp_path):
    """MobileNetV3's hard-swish (x * ReLU6(x + 3) / 6, as its builder writes it) becomes HARD_SWISH."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.Multiply()([h, keras.layers.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)])
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)))
    report = tflite_export.export(model, tmp_path / "hard_swish.tflite", "edgetpu", x_train[:64],
                                  latency_runs=0).edgetpu
    split = report.ops[report.first_cpu_op]
    assert split.op == "HARD_SWISH" and "minimalistic=True" in split.fix
