"""tfc.quantize: QAT phases inside one fit, composition with pruning, INT8 on LiteRT."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from ai_edge_litert.interpreter import Interpreter
from helpers import compile_classifier, dense_digits_model
from litert_helpers import int8_flatbuffer, int8_kernels, litert_predict

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.quantization import QuantizeWrapper, quantize
from tfcompress.quantization.wrappers import find_quantization_layers


def set_phase(model, on):
    for layer in find_quantization_layers(model):
        layer.qat_on.assign(on)


@pytest.fixture(scope="module")
def float_cnn(trained_cnn):
    """This module's copy of the session's trained digits CNN; tests quantize clones of it."""
    return trained_cnn()


def test_before_start_training_is_exactly_float_training(digits):
    x, y, x_test, _ = digits
    float_model = compile_classifier(dense_digits_model(seed=5))
    qat = compile_classifier(quantize(dense_digits_model(seed=5), start=1.0))
    np.testing.assert_array_equal(qat.predict(x_test, verbose=0), float_model.predict(x_test, verbose=0))
    float_model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    history = qat.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[tfc.CompressionCallback()])
    assert history.history["qat_phase"] == [0.0]
    np.testing.assert_allclose(qat.predict(x_test, verbose=0), float_model.predict(x_test, verbose=0), atol=1e-5)


def test_fake_quant_is_on_after_start_and_logged(float_cnn, digits):
    x, y, x_test, _ = digits
    qat = compile_classifier(quantize(float_cnn, start=0.5))
    history = qat.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])
    assert history.history["qat_phase"] == [0.0, 1.0]
    quantized = qat.predict(x_test, verbose=0)
    set_phase(qat, 0)
    as_float = qat.predict(x_test, verbose=0)
    set_phase(qat, 1)
    assert np.abs(quantized - as_float).max() > 1e-3
    # The stripped model computes what the trained model computes in its last phase.
    np.testing.assert_allclose(tfc.strip(qat).predict(x_test, verbose=0), quantized, atol=1e-5)


def test_phases_count_every_step_with_steps_per_execution(digits):
    x, y, _, _ = digits
    qat = tfc.prune(dense_digits_model(seed=5), 0.5, end=0.25)
    qat = quantize(qat, start=0.5, freeze=0.75)
    # 22 steps per epoch, two calls of 11: the callback sees one batch per call.
    qat.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"], steps_per_execution=11,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    # Start (step 22) and freeze (step 33) fall on call boundaries: both reached in the second epoch.
    assert history.history["qat_phase"] == [0.0, 2.0]
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.01)


def _range_values(model):
    names = ("post_activation_min", "post_activation_max", "quantize_layer_min", "quantize_layer_max", "moving_mean", "moving_variance")
    return {v.name: v.numpy().copy() for v in model.weights if any(n in v.name for n in names)}


def test_freeze_stops_ranges_and_batchnorm_statistics(digits):
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    model = compile_classifier(quantize(keras.Model(inputs, keras.layers.Dense(10)(h)), start=0, freeze=0.5))
    initial = _range_values(model)
    assert any("moving_mean" in name for name in initial)
    at_freeze = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # 22 steps done; freeze is step 22 of 44
                at_freeze.update(_range_values(self.model))

    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(), Snapshot()])
    assert history.history["qat_phase"] == [1.0, 2.0]
    final = _range_values(model)
    for name, value in at_freeze.items():
        assert not np.array_equal(value, initial[name]), f"{name} never learned"
        np.testing.assert_array_equal(final[name], value, err_msg=f"{name} moved after freeze")


@pytest.mark.slow
def test_qat_int8_flatbuffer_matches_float_accuracy_without_representative_data(float_cnn, digits):
    x, y, x_test, y_test = digits
    float_accuracy = float_cnn.evaluate(x_test, y_test, verbose=0)[1]
    qat = compile_classifier(quantize(float_cnn, start=0.0), learning_rate=1e-4)
    qat.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
    flatbuffer = int8_flatbuffer(tfc.strip(qat))
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    float_tensors = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert len(float_tensors) == 2, float_tensors  # only the float input and output of the interface
    tflite_accuracy = float(np.mean(litert_predict(flatbuffer, x_test).argmax(-1) == y_test))
    assert float_accuracy > 0.9
    assert tflite_accuracy >= float_accuracy - 0.01


@pytest.mark.slow
def test_prune_then_quantize_in_one_fit_keeps_zeros_in_int8(digits):
    x, y, x_test, y_test = digits
    dense = dense_digits_model()
    model = compile_classifier(quantize(tfc.prune(dense, 0.8, end=0.5), start=0.6), learning_rate=3e-3)
    np.testing.assert_allclose(model.predict(x_test, verbose=0), dense.predict(x_test, verbose=0), atol=1e-5)
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
    assert history.history["qat_phase"][-1] == 1.0
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    final = tfc.strip(model)
    assert tfc.summary(final, print_fn=None).total.sparsity == pytest.approx(0.8, abs=0.01)
    flatbuffer = int8_flatbuffer(final)
    kernels = int8_kernels(flatbuffer)
    assert len(kernels) == 3
    for kernel in kernels:
        assert 1 - np.count_nonzero(kernel) / kernel.size >= 0.79
    assert float(np.mean(litert_predict(flatbuffer, x_test).argmax(-1) == y_test)) > 0.85


def test_forgetting_the_callback_names_it(digits):
    model = compile_classifier(quantize(dense_digits_model(), start=0))
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        model.fit(digits[0], digits[1], epochs=1, verbose=0)


def test_unsupported_layer_is_named_with_the_fix():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    # One error naming the class and the layer, with one layers= filter that leaves the class out.
    with pytest.raises(
        ValueError, match=r"LayerNormalization \(norm\).*layers=lambda l: not isinstance\(l, keras.layers.LayerNormalization\)"
    ):
        quantize(model)
    qat = quantize(model, layers=lambda l: not isinstance(l, keras.layers.LayerNormalization))
    assert {layer.layer.name for layer in qat.layers if isinstance(layer, QuantizeWrapper)} >= {"logits"}


@pytest.mark.parametrize(
    "kwargs, message",
    [({"start": 1.5}, "fraction"), ({"start": 0.5, "freeze": 0.2}, "must not come before"), ({"start": -1}, ">= 0")],
)
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(dense_digits_model(), **kwargs)


def test_keras3_model_gets_tfcompress_keras3_qat_layers():
    import keras as keras3

    from tfcompress.quantization.keras3_layers import QuantDense

    qat = quantize(keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(1, name="dense")]))
    assert isinstance(qat, keras3.Model) and isinstance(qat.get_layer("dense"), QuantDense)


def test_stripped_qat_model_saves_and_loads(float_cnn, digits, tmp_path):
    x, y, x_test, _ = digits
    qat = compile_classifier(quantize(float_cnn, start=0))
    qat.fit(x[:256], y[:256], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(qat)
    assert not find_quantization_layers(final)
    info = tfc.summary(final, print_fn=None)
    dense = next(row for row in info.rows if row.name == "dense")
    assert dense.bits == pytest.approx((32768 * 8 + 64 * 32) / 32832)  # int8 kernel, float bias
    assert info.total.bits < 9
    # Plain tfmot loading takes .h5: tfmot's QuantizeLayer is built twice when loaded from .keras
    # (tfmot PR #1123, unreleased); tfc.load_model loads either (tests/test_saving.py).
    path = str(tmp_path / "qat.h5")
    final.save(path)
    with tfmot.quantization.keras.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), final.predict(x_test, verbose=0), atol=1e-6)


class Scale(keras.layers.Layer):
    """A user's layer QAT cannot cover; counts how many times it is constructed."""

    constructed = 0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        Scale.constructed += 1

    def build(self, input_shape):
        self.scale = self.add_weight("scale", shape=input_shape[-1:], initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


def test_quantize_copies_the_model_once_and_leaves_it_untouched():
    inputs = keras.Input((8, 8, 1))
    h = Scale(name="scale")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    model.get_layer("scale").set_weights([np.arange(64, dtype="float32")])
    calls = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    Scale.constructed = 0
    qat = quantize(model, unsupported="float")
    # One copy (tfmot's layout transform), kept by the QAT model: not one per clone of the model.
    assert Scale.constructed == 1
    np.testing.assert_array_equal(qat.get_layer("scale").get_weights()[0], np.arange(64))
    assert isinstance(qat.get_layer("quant_logits"), QuantizeWrapper)
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == calls
    assert not hasattr(model, "use_legacy_config")
