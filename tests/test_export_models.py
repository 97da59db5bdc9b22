"""tflite_export.export on architectures beyond the digits CNN: recurrent and Embedding text models,
and a model built under a mixed-precision policy.

The text models read real shipped data: rows 2-4 of each 8x8 digit (24 pixels, intensities
0..16) are a sequence of 24 token ids from a 17-word vocabulary, labelled with the digit.
"""

import importlib

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tfcompress as tfc
import tflite_export
from helpers import cnn_digits_model, compile_classifier, fit
from tflite_export.flatbuffer import parse_flatbuffer, read_flatbuffer
from tflite_export.verification import variable_tensors
from tfcompress._keras import keras


def _token_ids(images):
    return np.rint(images[:, 2:5, :, 0] * 16).reshape(len(images), 24).astype("int32")


@pytest.fixture(scope="module")
def tokens(digits):
    """(x_train, y_train, x_test, y_test): int32 token ids shaped (n, 24), digit labels."""
    x_train, y_train, x_test, y_test = digits
    return _token_ids(x_train), y_train, _token_ids(x_test), y_test


def _text_model(tokens, *layers, embedding, epochs, learning_rate):
    x_train, y_train, _, _ = tokens
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24,), dtype="int32"), keras.layers.Embedding(17, embedding), *layers,
                              keras.layers.Dense(10)])
    fit(compile_classifier(model, learning_rate), x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def recurrent_models(tokens):
    """`{"LSTM": model, "GRU": model}`: 32-wide Embedding + 48-unit recurrent layer + Dense, 4 epochs.

    Every kernel has >= 1024 weights, the least the converter quantizes at `dynamic` (and a
    fused LSTM takes int8 weights only when all of its kernels have them).
    """
    return {cell: _text_model(tokens, getattr(keras.layers, cell)(48, name=cell.lower()), embedding=32,
                              epochs=4, learning_rate=3e-3)
            for cell in ("LSTM", "GRU")}


def _export(model, tmp_path, precision, tokens):
    x_train, _, x_test, y_test = tokens
    return tflite_export.export(model, tmp_path / f"{precision}.tflite", precision,
                                representative_data=x_train[:64] if precision == "int8" else None,
                                validation_data=(x_test, y_test), latency_runs=0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_text_model_converts_from_a_batch_1_signature(cell, recurrent_models, tokens, tmp_path, monkeypatch):
    model = recurrent_models[cell]
    assert model.evaluate(tokens[2], tokens[3], verbose=0)[1] > 0.3  # it learned something (chance: 0.1)
    convert_module = importlib.import_module("tflite_export.convert")
    real, conversions = convert_module.convert_to_bytes, []

    def counting(model, precision, *args, **kwargs):
        conversions.append(precision)
        return real(model, precision, *args, **kwargs)

    monkeypatch.setattr(convert_module, "convert_to_bytes", counting)
    results = {p: _export(model, tmp_path, p, tokens) for p in ("fp32", "dynamic", "int8")}
    # int8's calibration first asks whether the graph keeps a loop: the fp32 export's file answers.
    # (The GRU's unrolled copy is converted to fp32 once more, to check that its loop is gone.)
    assert conversions == ["fp32", "dynamic"] + (["fp32"] if cell == "GRU" else []) + ["int8"]
    for precision, result in results.items():
        assert result.fixed_batch == 1, precision
        assert result.inputs[0]["dtype"] == "int32" and result.inputs[0]["shape"] == [1, 24]
        signature = Interpreter(model_path=result.path).get_signature_list()["serving_default"]
        assert signature == {"inputs": model.input_names, "outputs": model.output_names}, precision
        assert any("batch-1 signature" in note and cell.lower() in note for note in result.notes)
        assert result.conversion_seconds > 0
        assert result.verification.samples == len(tokens[2])  # every example, one invoke each
    fp32, dynamic, int8 = results["fp32"], results["dynamic"], results["int8"]
    assert fp32.verification.agreement >= 0.95 and fp32.verification.max_abs_diff < 1e-4
    assert dynamic.verification.agreement >= 0.95
    assert dynamic.bytes < 0.6 * fp32.bytes  # int8 recurrent kernels
    assert not dynamic.report.fully_integer
    assert int8.report.fully_integer, int8.report.float_ops
    assert int8.verification.agreement >= 0.95
    if cell == "LSTM":
        # TFLite's fused LSTM, full integer, keeps its state in variable tensors between invokes.
        for result in results.values():
            assert result.op_counts.get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1 and "WHILE" not in result.op_counts
            assert variable_tensors(read_flatbuffer(result.path))
            assert any("reset_all_variables" in note for note in result.notes)
        assert int8.unrolled == []
        assert {"int8", "int16"} <= set(int8.report.tensor_dtypes)
    else:
        # A GRU converts to a WHILE loop, which calibration cannot run: int8 converts it unrolled.
        assert fp32.op_counts.get("WHILE") == 1 and dynamic.op_counts.get("WHILE") == 1
        assert int8.unrolled == ["gru"] and "WHILE" not in int8.op_counts
        assert parse_flatbuffer(read_flatbuffer(int8.path)).num_subgraphs == 1
        assert any("unrolled gru" in note for note in int8.notes)
        assert "unrolled" in str(int8) and int8.to_dict()["unrolled"] == ["gru"]


def test_bidirectional_recurrent_model_converts_to_int8_unrolled(tokens, tmp_path):
    # A GRU has no fused TFLite op (in either Keras): both directions convert to WHILE loops, which
    # calibration cannot run; the wrapper is rebuilt with both unrolled.
    import keras as K

    x_train, y_train, x_test, y_test = tokens
    K.utils.set_random_seed(0)
    model = K.Sequential([K.Input((24,), dtype="int32"), K.layers.Embedding(17, 8),
                          K.layers.Bidirectional(K.layers.GRU(8), name="bi"), K.layers.Dense(10)])
    model.compile(K.optimizers.Adam(1e-2), K.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.3  # it learned something (chance: 0.1)
    result = tflite_export.export(model, tmp_path / "bi.tflite", "int8", representative_data=x_train[:32],
                                  validation_data=(x_test, y_test), latency_runs=0)
    directions = [layer.name for layer in (model.get_layer("bi").forward_layer, model.get_layer("bi").backward_layer)]
    assert sorted(result.unrolled) == sorted(directions)
    assert "WHILE" not in result.op_counts and parse_flatbuffer(read_flatbuffer(result.path)).num_subgraphs == 1
    # The cells' arithmetic is int8. (The converter may leave one first-step gate SPLIT float,
    # between a DEQUANTIZE and QUANTIZEs: it did for this model's backward direction.)
    assert not {"FULLY_CONNECTED", "MUL", "ADD", "LOGISTIC", "TANH"} & set(result.report.float_ops)
    assert result.op_counts["FULLY_CONNECTED"] > 24 and "int8" in result.report.tensor_dtypes
    assert result.verification.agreement >= 0.95


@pytest.fixture(scope="module")
def bag_of_tokens(tokens):
    """Embedding + GlobalAveragePooling1D + Dense on the digit-row tokens."""
    return _text_model(tokens, keras.layers.GlobalAveragePooling1D(), embedding=8, epochs=20, learning_rate=1e-2)


def test_integer_representative_data_calibrates_an_embedding_model(bag_of_tokens, tokens, tmp_path):
    x_train, _, x_test, y_test = tokens
    result = tflite_export.export(bag_of_tokens, tmp_path / "bag.tflite", "int8", representative_data=x_train[:128],
                                  validation_data=(x_test, y_test), latency_runs=3)
    assert result.calibration_samples == 128
    assert result.report.fully_integer and "GATHER" in result.op_counts
    assert result.inputs[0]["dtype"] == "int32" and "scale" not in result.inputs[0]  # ids are not quantized
    assert result.fixed_batch is None  # no recurrent layer: the batch stays dynamic
    assert result.verification.agreement >= 0.95
    assert abs(result.verification.accuracy_drop) <= 0.03
    assert result.verification.latency_ms > 0
    # verify() feeds integer ids as integers too, and agrees with what export measured.
    again = tflite_export.verify(result.path, x_test, y_test, keras_model=bag_of_tokens, latency_runs=0)
    assert again.tflite_accuracy == result.verification.tflite_accuracy
    # Whole numbers stored as floats are ids too.
    floats = tflite_export.export(bag_of_tokens, tmp_path / "floats.tflite", "int8",
                                  representative_data=x_train[:128].astype("float32"))
    assert floats.calibration_samples == 128 and floats.report.fully_integer


# ---- a model built under a mixed-precision policy ----


@pytest.fixture(scope="module")
def mixed_float16_pruned_cnn(digits):
    """The digits CNN built under mixed_float16, pruned to 0.5 in a 3-epoch fit; the policy is float32 after."""
    x_train, y_train, _, _ = digits
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_classifier(tfc.prune(cnn_digits_model(seed=0), 0.5), learning_rate=3e-3)
        model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    yield model
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_model_exports_its_float32_copy(mixed_float16_pruned_cnn, digits, tmp_path):
    x_train, _, x_test, y_test = digits
    model = mixed_float16_pruned_cnn
    for precision in ("fp32", "fp16", "int8", "edgetpu"):
        result = tflite_export.export(model, tmp_path / f"{precision}.tflite", precision,
                                      representative_data=x_train[:128], validation_data=(x_test, y_test),
                                      latency_runs=0)
        assert result.float32_copy and result.to_dict()["float32_copy"] is True, precision
        assert any("computes in float16" in note and "float32 copy" in note for note in result.notes)
        assert "float32 copy" in str(result)
        assert result.stripped == ["pruning"]
        assert result.verification.keras_accuracy > 0.85
        assert result.verification.agreement >= 0.97, precision
    assert result.edgetpu_fully_mapped and result.report.fully_integer
    # The user's model is untouched: still pruning wrappers, still computing in float16.
    assert tfc.strip(model).get_layer("conv2").compute_dtype == "float16"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_keras3_layer_normalization_exports_fully_int8(digits, tmp_path):
    """Keras 3's LayerNormalization (a NEG in its graph, no int8 kernel) converts fully integer."""
    import keras as keras3

    x_train, y_train, x_test, y_test = digits
    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((8, 8))  # a digit as a sequence of 8 rows of 8 pixels
    h = keras3.layers.Dense(16, name="embed")(inputs)
    h = keras3.layers.LayerNormalization(name="norm_last")(h)
    h = keras3.layers.LayerNormalization(axis=[1, 2], center=False, name="norm_both")(keras3.layers.ReLU()(h))
    h = keras3.layers.Flatten()(h)
    model = keras3.Model(inputs, keras3.layers.Dense(10)(h))
    model.compile(keras3.optimizers.Adam(3e-3),
                  keras3.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train[..., 0], y_train, epochs=4, batch_size=32, verbose=0)

    path = tmp_path / "norm.tflite"
    result = tflite_export.export(model, path, "int8", representative_data=x_train[:128, ..., 0],
                                  validation_data=(x_test[..., 0], y_test), latency_runs=0)
    ops = {op.name for op in parse_flatbuffer(read_flatbuffer(path)).ops}
    assert result.report.fully_integer and "NEG" not in ops, ops
    assert any("LayerNormalization layers (norm_last, norm_both)" in note for note in result.notes)
    assert result.verification.keras_accuracy > 0.8
    assert result.verification.agreement >= 0.95
    # The user's model is untouched; fp32 converts it as Keras computes it (the NEG stays, in float).
    assert type(model.get_layer("norm_last")) is keras3.layers.LayerNormalization
    fp32 = tflite_export.export(model, tmp_path / "fp32.tflite", "fp32", latency_runs=0)
    assert not any("LayerNormalization" in note for note in fp32.notes)
    assert "NEG" in {op.name for op in parse_flatbuffer(read_flatbuffer(tmp_path / "fp32.tflite")).ops}


def test_keras3_lstm_exports_int8_as_tflites_fused_lstm(tokens, tmp_path):
    """Keras 3 LSTMs (a Bidirectional's too) convert to fused LSTM ops at int8, not to an unrolled loop."""
    import keras as keras3
    from tflite_export.keras3_lowering import fusable_lstms

    x_train, y_train, x_test, y_test = tokens
    keras3.utils.set_random_seed(0)
    layers = keras3.layers
    inputs = keras3.Input((24,), dtype="int32")
    h = layers.Embedding(17, 16)(inputs)
    h = layers.Bidirectional(layers.LSTM(16, return_sequences=True), name="both_ways")(h)
    h = layers.LSTM(24, go_backwards=True, name="last")(h)
    model = keras3.Model(inputs, layers.Dense(10)(h))
    model.compile(keras3.optimizers.Adam(3e-3),
                  keras3.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)

    results, ops = {}, {}
    for precision in ("fp32", "int8"):
        path = tmp_path / f"{precision}.tflite"
        results[precision] = tflite_export.export(model, path, precision, representative_data=x_train[:64],
                                                  validation_data=(x_test, y_test), latency_runs=0)
        ops[precision] = [op.name for op in parse_flatbuffer(read_flatbuffer(path)).ops]
    int8 = results["int8"]
    assert ops["int8"].count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 3 and "WHILE" not in ops["int8"], ops["int8"]
    assert int8.report.fully_integer and int8.unrolled == []
    both_ways = model.get_layer("both_ways")
    names = [both_ways.forward_layer.name, both_ways.backward_layer.name, "last"]
    assert any(f"LSTM layers ({', '.join(names)})" in note and "fuses" in note for note in int8.notes)
    assert int8.bytes < results["fp32"].bytes
    assert int8.verification.keras_accuracy > 0.5
    assert int8.verification.agreement >= 0.9
    # fp32 converts the model as Keras 3 computes it: its step loop.
    assert "WHILE" in ops["fp32"] and results["fp32"].verification.agreement >= 0.99
    # A masked LSTM keeps Keras 3's loop (tf_keras's own LSTM keeps its loop when masked too).
    masked = keras3.Sequential([keras3.Input((24,), dtype="int32"), layers.Embedding(17, 8, mask_zero=True),
                                layers.LSTM(8), layers.Dense(10)])
    assert fusable_lstms(masked) == [] and [layer.name for layer in fusable_lstms(model)] == names
