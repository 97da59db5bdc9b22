"""Bad input to tflite_export.export: clear errors that name the fix, and never a partial file."""

import os

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import tflite_export
from tflite_export import EdgeTPUCompatibilityError, RepresentativeDataError, VerificationError
from tfcompress._keras import keras


def _files(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("data, message", [
    (np.zeros((0, 8, 8, 1), "float32"), "empty"),
    (np.full((10, 8, 8, 1), np.nan, "float32"), "NaN"),
    (np.zeros((10, 64), "float32"), "(batch, 8, 8, 1)"),
    (np.zeros((10, 8, 8, 3), "float32"), "(batch, 8, 8, 1)"),
    ((np.arange(640) % 17).reshape(10, 8, 8, 1).astype("uint8"), "astype('float32')"),
    (np.array([["a"] * 8] * 8), "dtype"),
    ("x_train.npy", "numpy array"),
    (iter([]), "empty"),
])
def test_bad_representative_data_is_rejected_and_nothing_is_written(data, message, digits_cnn, tmp_path):
    target = tmp_path / "model.tflite"
    with pytest.raises(RepresentativeDataError) as error:
        tflite_export.export(digits_cnn, target, "int8", representative_data=data)
    assert message in str(error.value)
    assert _files(tmp_path) == []


def test_nan_deep_inside_a_dataset_is_found(digits_cnn, digits, tmp_path):
    x = digits[0][:64].copy()
    x[50, 3, 3, 0] = np.inf
    with pytest.raises(RepresentativeDataError, match="NaN or infinite"):
        tflite_export.export(digits_cnn, tmp_path / "m.tflite", "edgetpu",
                             tf.data.Dataset.from_tensor_slices(x).batch(16))


def test_calibrated_precisions_require_representative_data(digits_cnn, tmp_path):
    for precision in ("int8", "int16x8", "edgetpu"):
        with pytest.raises(RepresentativeDataError, match="x_train"):
            tflite_export.export(digits_cnn, tmp_path / "m.tflite", precision)
    assert _files(tmp_path) == []


def test_failed_export_keeps_the_previous_file_intact(digits_cnn, digits, tmp_path):
    target = tmp_path / "model.tflite"
    tflite_export.export(digits_cnn, target, "fp32")
    before = target.read_bytes()
    with pytest.raises(RepresentativeDataError):
        tflite_export.export(digits_cnn, target, "int8", representative_data=digits[0][:0])
    _, _, x_test, y_test = digits
    with pytest.raises(VerificationError, match="min_accuracy"):
        tflite_export.export(digits_cnn, target, "int8", digits[0][:64], (x_test, y_test),
                             min_accuracy=0.999, latency_runs=0)
    assert target.read_bytes() == before
    assert _files(tmp_path) == ["model.tflite"]  # no temp file left behind


def test_model_with_a_float_only_op_fails_edgetpu_export_without_a_file(digits, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16)(x)
    x = keras.layers.Lambda(lambda t: tf.math.sin(t) * tf.math.cumsum(t, axis=1))(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    with pytest.raises(EdgeTPUCompatibilityError, match="int8"):
        tflite_export.export(model, tmp_path / "m.tflite", "edgetpu", representative_data=digits[0][:32])
    assert _files(tmp_path) == []


def test_dynamic_spatial_shape_fails_edgetpu_export(digits, tmp_path):
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(EdgeTPUCompatibilityError, match="static shapes"):
        tflite_export.export(model, tmp_path / "m.tflite", "edgetpu", representative_data=digits[0][:8])
    assert _files(tmp_path) == []


def test_bad_arguments_name_the_fix(digits_cnn, tmp_path):
    with pytest.raises(ValueError, match="fp32, fp16, dynamic, int8, int16x8, edgetpu"):
        tflite_export.export(digits_cnn, tmp_path / "m.tflite", "int4")
    with pytest.raises(ValueError, match="'uint8'"):
        tflite_export.export(digits_cnn, tmp_path / "m.tflite", "fp16", io_dtype="uint8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tflite_export.export(digits_cnn, tmp_path / "missing_dir" / "m.tflite", "fp32")
    with pytest.raises(FileNotFoundError, match="model.save"):
        tflite_export.export(str(tmp_path / "nope.keras"), tmp_path / "m.tflite", "fp32")
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        tflite_export.export(digits_cnn, tmp_path / "m.tflite", "fp32", validation_data=np.zeros((4, 8, 8, 1)))
    assert _files(tmp_path) == []


@pytest.fixture(scope="module")
def keras3_mlp(digits):
    """A Keras 3 (`import keras`) MLP trained briefly on digits."""
    keras3.utils.set_random_seed(0)
    model = keras3.Sequential([keras3.Input((8, 8, 1), name="pixels"), keras3.layers.Flatten(),
                               keras3.layers.Dense(32, activation="relu"), keras3.layers.Dense(10, name="logits")])
    model.compile("adam", keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits[0], digits[1], epochs=4, batch_size=64, verbose=0)
    return model


@pytest.mark.parametrize("precision", ["fp32", "int8", "edgetpu"])
def test_keras3_model_converts_as_is_and_verifies_against_itself(precision, keras3_mlp, digits, tmp_path):
    x_train, _, x_test, y_test = digits
    keras_accuracy = float((keras3_mlp.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    assert keras_accuracy > 0.8  # a real model, so agreement below means something
    result = tflite_export.export(keras3_mlp, tmp_path / "m.tflite", precision, representative_data=x_train[:128],
                                  validation_data=(x_test, y_test), latency_runs=0)
    assert any("Keras 3 model converted as is" in note for note in result.notes)
    signatures = Interpreter(model_path=str(tmp_path / "m.tflite")).get_signature_list()
    assert signatures == {"serving_default": {"inputs": ["pixels"], "outputs": ["logits"]}}  # Keras' names
    assert result.verification.keras_accuracy == pytest.approx(keras_accuracy)
    assert result.verification.agreement >= (1.0 if precision == "fp32" else 0.95)
    if precision != "fp32":
        assert tflite_export.inspect(tmp_path / "m.tflite").fully_integer
    checked = tflite_export.verify(tmp_path / "m.tflite", x_test, y_test, keras_model=keras3_mlp, latency_runs=0)
    assert checked.agreement_with == "keras" and checked.keras_accuracy == pytest.approx(keras_accuracy)
    assert checked.tflite_accuracy == pytest.approx(result.verification.tflite_accuracy)
    assert _files(tmp_path) == ["m.tflite"]


def test_keras3_models_without_inputs_name_the_fix(tmp_path):
    class Subclassed(keras3.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras3.layers.Dense(10)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 64), "float32"))
    for model in (subclassed, keras3.Sequential([keras3.layers.Dense(10)])):
        with pytest.raises(ValueError, match=r"no defined inputs.*keras.Model\(inputs, model\(inputs\)\)"):
            tflite_export.export(model, tmp_path / "m.tflite", "fp32")
    with pytest.raises(TypeError, match=r"keras.Sequential\(\[layer\]\)"):
        tflite_export.export(keras3.layers.Dense(10), tmp_path / "m.tflite", "fp32")
    assert _files(tmp_path) == []


def test_verify_names_the_fix_when_keras_model_is_not_a_model(exported_digits, digits):
    _, _, x_test, y_test = digits
    with pytest.raises(TypeError, match=r"got str.*load_keras_model\(path\)"):
        tflite_export.verify(exported_digits["fp32"].path, x_test, y_test, keras_model="digits.keras", latency_runs=0)


def test_a_failed_conversion_carries_the_converters_log_and_prints_nothing(tmp_path, capfd):
    inputs = keras.Input((8,))
    hidden = keras.layers.Lambda(lambda t: tf.math.bessel_i0e(t))(inputs)  # no TFLite builtin, no int8 kernel
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    capfd.readouterr()
    with pytest.raises(tflite_export.ConversionError) as error:
        tflite_export.export(model, tmp_path / "m.tflite", "fp32")
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the converter's C++ log did not reach the console...
    assert "BesselI0e" in error.value.converter_log  # ...it is in the error, which ends with its tail
    assert str(error.value).endswith(error.value.converter_log)
    assert "Last lines of the TFLite converter's log" in str(error.value)
    assert _files(tmp_path) == []


def test_integer_input_model_takes_whole_ids_only(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24,), dtype="int32"), keras.layers.Embedding(17, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    ids = np.arange(24 * 8).reshape(8, 24) % 17
    for data, message in [(ids + 0.5, "non-integer values"), (ids.astype("int64") + 2**40, "outside the model's int32"),
                          (np.array([["a"] * 24] * 8), r"expected int32 \(integer\) inputs")]:
        with pytest.raises(RepresentativeDataError, match=message):
            tflite_export.export(model, tmp_path / "m.tflite", "int8", representative_data=data)
    assert _files(tmp_path) == []


def test_a_recurrent_loop_that_cannot_be_unrolled_is_refused_before_calibration(tmp_path):
    # Calibrating the WHILE loop a GRU converts to crashes the process; a variable-length GRU
    # cannot be unrolled, so the export must stop with an error first.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 4)), keras.layers.GRU(8, name="gru"), keras.layers.Dense(3)])
    x = np.random.default_rng(0).random((16, 12, 4)).astype("float32")
    with pytest.raises(tflite_export.ConversionError, match=r"loop that gru.*fixed number of timesteps.*unroll=True"):
        tflite_export.export(model, tmp_path / "m.tflite", "int8", representative_data=x)
    assert _files(tmp_path) == []


def test_same_scale_violation_says_what_it_means_and_names_a_working_fix(tmp_path):
    """tfmot's own QAT gives a pool feeding a Concatenate and a Conv two ranges; the error explains that."""
    import tensorflow_model_optimization as tfmot

    from tfcompress.demo import load_digits
    from tflite_export import ConversionError

    (x, y), _ = load_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.AveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    side = keras.layers.Conv2D(8, 1)(keras.layers.ReLU()(pooled))
    h = keras.layers.Flatten()(keras.layers.Concatenate()([pooled, side]))
    qat = tfmot.quantization.keras.quantize_model(keras.Model(inputs, keras.layers.Dense(10)(h)))
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    with pytest.raises(ConversionError) as caught:
        tflite_export.export(qat, tmp_path / "m.tflite", precision="int8")
    message = str(caught.value).split("Last lines")[0]
    assert "one scale on its input and output" in message and "representative_data" in message
    assert "no int8 kernel" not in message and ": error:" not in message  # no location in Python
    assert not (tmp_path / "m.tflite").exists()
