"""tfc.quantize on real architectures: keyword spotting (Conv1D), MobileNetV3, EfficientNet, text.

Every model is trained (a few steps), stripped and converted by the real
TFLite converter, and its flatbuffer run on LiteRT. Two conversion routes are
used: `tflite_export.export` for the keyword net (the user's route), and the
converter on a concrete function for the application nets (the same MLIR
quantizer, without the SavedModel export that makes `from_keras_model` take
minutes on a 300-layer QAT graph).
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from ai_edge_litert.interpreter import Interpreter

import tfcompress as tfc
import tflite_export
from tfcompress._keras import keras
from tfcompress.demo import load_digits
from tfcompress.quantization import QuantizeInput, QuantizeWrapper
from tflite_export.flatbuffer import parse_flatbuffer

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(model, learning_rate=3e-3, run_eagerly=False):
    model.compile(keras.optimizers.Adam(learning_rate), LOSS, metrics=["accuracy"], run_eagerly=run_eagerly)
    return model


def _traced(model, input_spec):
    """`model`'s inference call as a concrete function for `input_spec`.

    Traced without autograph: the layers' calls hold no tensor-dependent Python control flow,
    and converting a few hundred QAT wrappers' calls was most of the trace (MobileNetV3Small:
    5.4 CPU s against 1.2; the same flatbuffer bytes either way).
    """
    return tf.function(lambda x: model(x, training=False), autograph=False).get_concrete_function(input_spec)


def _convert(model, input_spec=None, representative=None):
    """Flatbuffer bytes of `model` at the converter's default int8 optimization.

    `model` is a concrete function from `_traced` (fast on big graphs), or a Keras
    model: with `input_spec`, converted from its `_traced` call; without, through
    `from_keras_model` (the route its users take).
    """
    if isinstance(model, tf.types.experimental.ConcreteFunction):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([model])
    elif input_spec is None:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_traced(model, input_spec)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        converter.representative_dataset = lambda: ([sample[None]] for sample in representative)
    return converter.convert()


def _float_ops(content):
    return [op.name for op in parse_flatbuffer(content).float_ops()]


def _litert_top1(content, x):
    """Top-1 class of each example, one invoke per example (works with a fixed batch of 1)."""
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    labels = []
    for sample in x:
        interpreter.set_tensor(source["index"], sample[None].astype(source["dtype"]))
        interpreter.invoke()
        labels.append(int(interpreter.get_tensor(target["index"]).argmax()))
    return np.array(labels)


def _wrapped(model):
    """`{name the user gave the layer: its quantization wrapper}`."""
    wrappers = {}
    for layer in model.layers:
        if isinstance(layer, QuantizeWrapper):
            inner = getattr(layer.layer, "layer", layer.layer)  # inside a pruning wrapper
            wrappers[inner.name] = layer
    return wrappers


# ---- keyword spotting: Conv1D / SeparableConv1D + BatchNorm + ReLU -------------------------------


def _signals(n, seed):
    """Keyword-spotting-like inputs (49 frames x 10 features): a class is a tone and a band."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    t = np.arange(49)[None, :, None]
    band = np.arange(10)[None, None, :]
    x = np.sin(2 * np.pi * (1 + y[:, None, None]) * t / 49.0) * np.exp(-((band - y[:, None, None]) ** 2) / 4.0)
    return (x + 0.3 * rng.standard_normal(x.shape)).astype("float32"), y


def _keyword_net():
    """A DS-CNN-style keyword spotter on (49 frames, 10 features)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((49, 10))
    h = keras.layers.Conv1D(32, 5, strides=2, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, name="conv_bn")(h)
    h = keras.layers.ReLU(name="conv_relu")(h)
    for block in (1, 2):
        h = keras.layers.SeparableConv1D(32, 3, padding="same", use_bias=False, name=f"ds{block}")(h)
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"ds{block}_bn")(h)
        h = keras.layers.ReLU(name=f"ds{block}_relu")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def test_keyword_net_pruned_and_quantized_in_one_fit_exports_full_int8(tmp_path):
    x, y = _signals(640, seed=0)
    x_test, y_test = _signals(128, seed=1)
    model = tfc.quantize(tfc.prune(_keyword_net(), 0.5, end=0.5), start=0.5)
    layers = _wrapped(model)
    assert {"conv", "conv_bn", "ds1", "ds2", "pool", "logits"} <= set(layers)
    # The pruned Conv1D feeds its BatchNorm without a fake quant, so the converter folds them.
    assert layers["conv"].quantize_config.quantize_activation is False
    history = _compile(model).fit(
        x, y, epochs=6, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)]
    )
    assert history.history["qat_phase"][-1] == 1.0
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.02)

    final = tfc.strip(model)
    result = tflite_export.export(
        final, tmp_path / "kws_int8.tflite", precision="int8", representative_data=x[:64],
        validation_data=(x_test, y_test), latency_runs=0,
    )
    assert result.report.fully_integer, result.report.float_ops
    assert result.verification.keras_accuracy > 0.8
    assert result.verification.agreement >= 0.9
    # BatchNorm folded into the Conv1D's CONV_2D; each SeparableConv1D's stays a MUL + ADD pair.
    assert result.op_counts["CONV_2D"] == 3 and result.op_counts["MUL"] == 2

    # QAT alone covers the Conv1D block: without calibration only the separable blocks stay float.
    without_calibration = _float_ops(_convert(final, tf.TensorSpec([None, 49, 10])))
    assert without_calibration.count("CONV_2D") == 2 and "DEPTHWISE_CONV_2D" in without_calibration
    assert "EXPAND_DIMS" not in without_calibration


# ---- activations, merges of two tensors, TFOpLambda arithmetic, pooling, reshapes -------------------


def test_activations_merges_ops_pooling_and_reshapes_are_int8_from_qat_alone():
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    # Hard-swish as MobileNetV3 writes it: TFOpLambda `+ 3.0` and `* (1 / 6)` around a ReLU(6).
    hard_sigmoid = keras.layers.ReLU(6.0, name="relu6")(a + 3.0) * (1.0 / 6.0)
    hard_swish = keras.layers.Multiply(name="hard_swish")([a, hard_sigmoid])
    swish = keras.layers.Activation("swish", name="swish")(a)
    gelu = keras.layers.Activation("gelu", name="gelu")(a)
    h = tf.nn.relu6(swish * gelu + hard_swish - 1.0)  # TFOpLambda: two-tensor multiply and add
    h = keras.layers.Multiply(name="gate")([h, keras.layers.Activation("sigmoid", name="sigmoid")(a)])
    h = keras.layers.MaxPooling2D(name="pool")(h / 6.0)
    h = keras.layers.Reshape((16, 8), name="frames")(h)
    h = keras.layers.Conv1D(8, 3, activation="relu", name="conv1d")(h)
    h = tf.reshape(keras.layers.MaxPooling1D(name="pool1d")(h), (-1, 56))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    qat = tfc.quantize(model)
    assert {"conv", "relu6", "hard_swish", "swish", "gelu", "gate", "sigmoid", "pool", "frames", "conv1d",
            "pool1d", "logits"} <= set(_wrapped(qat))
    _compile(qat, 1e-2).fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    final = tfc.strip(qat)
    keras_top1 = final.predict(x_test, verbose=0).argmax(-1)
    assert np.mean(keras_top1 == y_test) > 0.6
    content = _convert(final, tf.TensorSpec([None, 8, 8, 1]))  # no representative data
    assert _float_ops(content) == []
    assert {"GELU", "LOGISTIC", "MUL", "ADD", "SUB", "MAX_POOL_2D", "CONV_2D"} <= {
        op.name for op in parse_flatbuffer(content).ops
    }
    assert np.mean(_litert_top1(content, x_test) == keras_top1) >= 0.95


def _conv_block(h, name):
    """DenseNet's conv block: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv, concatenated to its input."""
    x1 = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_0_bn")(h)
    x1 = keras.layers.Conv2D(16, 1, use_bias=False, name=f"{name}_1_conv")(keras.layers.ReLU(name=f"{name}_0_relu")(x1))
    x1 = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_1_bn")(x1)
    x1 = keras.layers.ReLU(name=f"{name}_1_relu")(x1)
    x1 = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x1)
    return keras.layers.Concatenate(name=f"{name}_concat")([h, x1])


def test_densenet_transition_average_pool_into_a_dense_block_exports_full_int8(tmp_path):
    # The pooled tensor feeds both a BatchNorm and a Concatenate. TFLite's int8 AVERAGE_POOL_2D needs
    # its input's scale at its output; a learned range of its own there failed conversion ("violate
    # the same scale constraint"), as tf_keras.applications.DenseNet121's QAT model did.
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(h))
    h = _conv_block(h, "block1")
    h = keras.layers.ReLU(name="pool_relu")(keras.layers.BatchNormalization(momentum=0.9, name="pool_bn")(h))
    h = keras.layers.Conv2D(16, 1, use_bias=False, name="pool_conv")(h)
    h = keras.layers.AveragePooling2D(2, name="pool_pool")(h)
    h = _conv_block(h, "block2")
    h = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(momentum=0.9, name="bn")(h))
    h = keras.layers.GlobalAveragePooling2D(name="avg_pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    qat = tfc.quantize(model)
    _compile(qat, 1e-2).fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    final = tfc.strip(qat)
    result = tflite_export.export(
        final, tmp_path / "densenet_int8.tflite", precision="int8", representative_data=x[:64],
        validation_data=(x_test, y_test), latency_runs=0,
    )
    assert result.report.fully_integer, result.report.float_ops
    assert "AVERAGE_POOL_2D" in result.op_counts and "CONCATENATION" in result.op_counts
    assert result.verification.keras_accuracy > 0.8
    assert result.verification.agreement >= 0.95


def test_conv1d_and_op_ranges_save_and_load(tmp_path):
    x, y = _signals(64, seed=3)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((49, 10))
    h = keras.layers.Conv1D(8, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(h))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h * 0.5 + 1.0)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    qat = _compile(tfc.quantize(tfc.prune(model, 0.5)))
    qat.fit(x, y, epochs=1, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    qat.save(tmp_path / "qat.h5")
    np.testing.assert_array_equal(tfc.load_model(tmp_path / "qat.h5").predict(x, verbose=0), qat.predict(x, verbose=0))
    final = tfc.strip(qat)
    final.save(tmp_path / "int8_ready.h5")  # .h5: see test_stripped_qat_model_saves_and_loads
    with tfmot.quantization.keras.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "int8_ready.h5")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), final.predict(x, verbose=0))


# ---- MobileNetV3 (hard-swish as TFOpLambda), EfficientNet (SE Multiply, Rescaling, Normalization) --


def _digit_images(n):
    """Real digits upsampled to 32x32x3, in [0, 255] as the applications' preprocessing expects."""
    (x, y), _ = load_digits()
    x = np.repeat(np.repeat(x[:n], 4, axis=1), 4, axis=2)
    return np.repeat(x, 3, axis=-1).astype("float32") * 255.0, y[:n]


def _briefly_trained_and_stripped(qat, x, y):
    """One eager training step (no trace of a 300-layer graph) sets the ranges; returns `tfc.strip(qat)`."""
    _compile(qat, 1e-3, run_eagerly=True).fit(
        x, y, epochs=1, batch_size=len(x), verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)]
    )
    return tfc.strip(qat)


def test_mobilenet_v3_hard_swish_quantizes_and_exports_full_int8():
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), alpha=0.75, minimalistic=False, include_preprocessing=True, classes=10,
        weights=None, classifier_activation=None,
    )
    qat = tfc.quantize(model)
    ops = [layer for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    assert len(ops) == 56  # x + 3.0 and x * (1 / 6) of 28 hard-swish / hard-sigmoid
    # Every other layer is wrapped; each `x * (1 / 6)` gets a range, each `x + 3.0` shares its ReLU6's.
    assert len(_wrapped(qat)) == len(model.layers) - len(ops) - 1
    ranged = {layer.name for layer in qat.layers if isinstance(layer, QuantizeInput)}
    assert {f"quant_{op.name}" for op in ops if "multiply" in op.name} <= ranged
    assert not any(f"quant_{op.name}" in ranged for op in ops if "add" in op.name)

    x, y = _digit_images(48)
    final = _briefly_trained_and_stripped(qat, x[:16], y[:16])
    function = _traced(final, tf.TensorSpec([None, 32, 32, 3]))  # traced once, converted twice
    content = _convert(function, representative=x[16:])
    assert _float_ops(content) == []
    assert _litert_top1(content, x[:4]).shape == (4,)  # LiteRT runs it
    # Every ADD and MUL of the hard-swishes is int8 from QAT alone; only the input Rescaling
    # (x / 127.5 - 1: a MUL and an ADD whose middle tensor no fake quant sees) needs calibration.
    # (One step from random weights leaves the logits nearly constant, so agreement with Keras
    # would measure noise; the hard-swish's int8 fidelity is asserted on a trained net above.)
    assert _float_ops(_convert(function)) == ["DEQUANTIZE", "MUL", "ADD", "QUANTIZE"]


def test_efficientnet_b0_quantizes_in_one_call_and_exports_full_int8():
    model = keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None
    )
    qat = tfc.quantize(model)
    wrapped = _wrapped(qat)
    assert len(wrapped) == len(model.layers) - 1  # all but the input, in one call
    for name in ("rescaling", "normalization"):
        assert any(layer.startswith(name) for layer in wrapped)
    assert sum(isinstance(w.layer, keras.layers.Multiply) for w in wrapped.values()) == 16  # the SE blocks

    x, y = _digit_images(48)
    content = _convert(_briefly_trained_and_stripped(qat, x[:16], y[:16]), tf.TensorSpec([None, 32, 32, 3]),
                       representative=x[16:])
    assert _float_ops(content) == []
    assert {"LOGISTIC", "MUL", "MEAN", "DEPTHWISE_CONV_2D"} <= {op.name for op in parse_flatbuffer(content).ops}


# ---- text: integer inputs, Embedding, LSTM kept float ---------------------------------------------


def _tokens(n, seed):
    """Token sequences whose class is the token band (of 4) they mostly draw from."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = y[:, None] * 25 + rng.integers(0, 25, (n, 12))
    noise = rng.random((n, 12)) < 0.2
    x[noise] = rng.integers(0, 100, noise.sum())
    return x.astype("int32"), y


def _text_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(100, 16, name="embed")(inputs)
    # Unrolled: the converter's fused int8 LSTM op gives one output for every input here, even
    # for the float model calibrated without QAT; the unrolled cell's ops calibrate faithfully.
    h = keras.layers.LSTM(16, unroll=True, name="lstm")(h)
    h = keras.layers.LayerNormalization(name="norm1")(h)
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    h = keras.layers.LayerNormalization(name="norm2")(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))


def test_unsupported_layers_are_listed_once_grouped_by_class_pruned_or_not():
    model = _text_model()
    messages = []
    for candidate in (model, tfc.prune(model, 0.5)):
        with pytest.raises(ValueError) as error:
            tfc.quantize(candidate)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "cannot quantize 2 layer classes" in messages[0]
    assert "LSTM (lstm); LayerNormalization (norm1, norm2)" in messages[0]
    assert "unsupported='float'" in messages[0]
    # The one filter the message offers leaves exactly those layers float.
    offered = re.search(r"layers=(lambda l: .+?), or pass", messages[0]).group(1)
    qat = tfc.quantize(model, layers=eval(offered, {"keras": keras}))
    assert set(_wrapped(qat)) == {"embed", "hidden", "logits"}


class Doubling(keras.layers.Layer):
    """A user's layer, unknown to any registry (and not registered for serialization)."""

    def call(self, inputs):
        return 2.0 * inputs


def test_filter_names_layers_whose_class_is_partly_covered():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, activation="elu", name="elu_dense")(inputs)  # a Dense, but not its activation
    h = tf.clip_by_value(Doubling(name="double")(h), 0.0, 1.0)  # an op without an 8-bit config
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.Dense(8, name="hidden")(h)))
    with pytest.raises(ValueError) as error:
        tfc.quantize(model)
    message = str(error.value)
    assert "Dense (elu_dense: activation 'elu' inside the layer); Doubling (double); TFOpLambda (tf.clip_by_value)" in (
        message
    )
    offered = re.search(r"layers=(lambda l: .+?), or pass", message).group(1)
    assert offered == "lambda l: not (isinstance(l, Doubling) or l.name in {'elu_dense', 'tf.clip_by_value'})"
    for qat in (tfc.quantize(model, layers=eval(offered)), tfc.quantize(model, unsupported="float")):
        assert set(_wrapped(qat)) == {"hidden", "logits"}


def test_text_model_keeps_lstm_float_and_exports_full_int8_from_calibration():
    x, y = _tokens(512, seed=0)
    x_test, _ = _tokens(128, seed=1)
    qat = tfc.quantize(_text_model(), unsupported="float")
    assert set(_wrapped(qat)) == {"embed", "hidden", "logits"}
    assert not any(isinstance(layer, QuantizeInput) for layer in qat.layers)  # token ids stay int32
    history = _compile(qat).fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert history.history["qat_phase"][-1] == 1.0 and history.history["accuracy"][-1] > 0.8
    final = tfc.strip(qat)

    content = _convert(final, representative=x[:64])  # through from_keras_model, as its users convert
    assert _float_ops(content) == []
    # Calibration is what makes them integer: the LSTM and the LayerNorms stay float without it.
    # (From the traced call: the same float ops as from_keras_model's SavedModel, 0.5 CPU s against 2.9.)
    uncalibrated = _convert(final, tf.TensorSpec([None, 12], tf.int32))
    assert {"LOGISTIC", "TANH", "MEAN", "RSQRT"} <= set(_float_ops(uncalibrated))
    keras_top1 = final.predict(x_test, verbose=0).argmax(-1)
    assert np.mean(_litert_top1(content, x_test) == keras_top1) >= 0.9


def test_integer_input_goes_into_the_embedding_unquantized():
    x, y = _tokens(256, seed=2)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(100, 8, name="embed")(inputs)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    qat = tfc.quantize(model)
    assert qat.layers[1].name == "quant_embed"  # straight from the int32 input, no input quantizer
    _compile(qat).fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    content = _convert(tfc.strip(qat), tf.TensorSpec([None, 12], tf.int32))
    assert _float_ops(content) == []  # QAT ranges alone: GATHER, MEAN, FULLY_CONNECTED in int8
    assert parse_flatbuffer(content).input_tensors[0].dtype == "int32"
