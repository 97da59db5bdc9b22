"""Bad input to tflite_export.export: clear errors that name the fix, and never a partial file."""

import os

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

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


def test_keras3_model_gets_a_clear_error(tmp_path):
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(), keras3.layers.Dense(10)])
    with pytest.raises(TypeError, match="import tf_keras as keras"):
        tflite_export.export(model, tmp_path / "m.tflite", "fp32")
    assert _files(tmp_path) == []
