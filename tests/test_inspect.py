"""tflite_export.inspect and verify on existing files, including broken ones."""

import json
import shutil

import numpy as np
import pytest

import tflite_export
from tflite_export import InvalidModelFileError, VerificationError


def test_inspect_reports_what_the_export_wrote(exported_digits):
    for precision, result in exported_digits.items():
        report = tflite_export.inspect(result.path)
        assert report.bytes == result.bytes and report.gzip_bytes == result.gzip_bytes
        assert report.op_counts == result.op_counts
        assert report.inputs == result.inputs and report.outputs == result.outputs
    edgetpu = tflite_export.inspect(exported_digits["edgetpu"].path)
    assert edgetpu.fully_integer and edgetpu.inputs[0]["dtype"] == "uint8"
    assert edgetpu.inputs[0]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    fp32 = tflite_export.inspect(exported_digits["fp32"].path)
    assert not fp32.fully_integer and "CONV_2D" in fp32.float_ops
    assert fp32.op_counts == {"CONV_2D": 2, "MAX_POOL_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 2}
    text = str(edgetpu)
    assert "uint8[1, 8, 8, 1]" in text and "fully integer" in text
    assert json.loads(edgetpu.to_json())["op_counts"]["CONV_2D"] == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "keras file", "flipped identifier"])
def test_broken_files_give_a_clear_error(damage, exported_digits, digits_cnn, tmp_path):
    good = open(exported_digits["int8"].path, "rb").read()
    path = tmp_path / "broken.tflite"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "keras file":
        digits_cnn.save(tmp_path / "model.keras")
        shutil.copy(tmp_path / "model.keras", path)
    else:
        path.write_bytes(good[:4] + b"XXXX" + good[8:])
    with pytest.raises(InvalidModelFileError) as error:
        tflite_export.inspect(path)
    assert "broken.tflite" in str(error.value)
    assert "export" in str(error.value).lower()
    with pytest.raises(InvalidModelFileError):
        tflite_export.verify(path, np.zeros((2, 8, 8, 1), "float32"))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelFileError, match="does not exist"):
        tflite_export.inspect(tmp_path / "nope.tflite")


def test_verify_an_existing_file_against_its_fp32_twin(exported_digits, digits, digits_cnn):
    _, _, x_test, y_test = digits
    int8, fp32 = exported_digits["int8"].path, exported_digits["fp32"].path
    result = tflite_export.verify(int8, x_test, y_test, reference=fp32, latency_runs=20)
    assert result.tflite_accuracy == pytest.approx(exported_digits["int8"].verification.tflite_accuracy)
    assert result.agreement_with == "fp32 flatbuffer" and result.agreement >= 0.97
    assert result.fp32_latency_ms > 0 and result.latency_ms > 0
    with_keras = tflite_export.verify(int8, x_test, y_test, keras_model=digits_cnn, latency_runs=0)
    assert with_keras.agreement == pytest.approx(exported_digits["int8"].verification.agreement)
    assert with_keras.latency_ms is None
    one_hot = np.eye(10)[y_test]
    assert tflite_export.verify(int8, x_test, one_hot, latency_runs=0).tflite_accuracy == result.tflite_accuracy


def test_verify_thresholds_and_bad_data(exported_digits, digits, digits_cnn):
    _, _, x_test, y_test = digits
    path = exported_digits["edgetpu"].path
    with pytest.raises(VerificationError, match="below min_accuracy"):
        tflite_export.verify(path, x_test, y_test, min_accuracy=0.9999, latency_runs=0)
    tflite_export.verify(path, x_test, y_test, keras_model=digits_cnn, max_accuracy_drop=0.015, latency_runs=0)
    with pytest.raises(ValueError, match="8, 8, 1"):
        tflite_export.verify(path, x_test.reshape(len(x_test), 64), y_test)
    with pytest.raises(ValueError, match="y has"):
        tflite_export.verify(path, x_test, y_test[:10])


def test_files_with_custom_ops_are_inspected_but_not_run(tmp_path):
    """An edgetpu_compiler output holds a custom op; inspect must describe it, verify must explain."""
    import tensorflow as tf

    from tfcompress._keras import keras

    inputs = keras.Input((8,))
    hidden = keras.layers.Lambda(lambda t: tf.math.bessel_i0e(t))(inputs)  # no TFLite builtin
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Dense(2)(hidden)))
    converter.allow_custom_ops = True
    path = tmp_path / "custom.tflite"
    path.write_bytes(converter.convert())
    report = tflite_export.inspect(path)
    assert report.op_counts == {"CUSTOM:BesselI0e": 1, "FULLY_CONNECTED": 1}
    with pytest.raises(InvalidModelFileError, match="custom ops"):
        tflite_export.verify(path, np.zeros((2, 8), "float32"))
    assert "not in Coral" in tflite_export.edgetpu_report(path).ops[0].reason


def test_an_edgetpu_compiled_custom_op_counts_as_mapped(tmp_path):
    """The compiler's output wraps the mapped graph in `edgetpu-custom-op`; rename a custom op to it."""
    import tensorflow as tf
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from tfcompress._keras import keras

    inputs = keras.Input((8,))
    hidden = keras.layers.Lambda(lambda t: tf.math.bessel_i0e(t))(inputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Dense(2)(hidden)))
    converter.allow_custom_ops = True
    model = schema.ModelT.InitFromPackedBuf(bytearray(converter.convert()), 0)
    for code in model.operatorCodes:
        if code.customCode:
            code.customCode = b"edgetpu-custom-op"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "model_edgetpu.tflite"
    path.write_bytes(bytes(builder.Output()))
    report = tflite_export.edgetpu_report(path)
    assert report.ops[0].on_edgetpu and report.ops[0].reason == "already compiled for the Edge TPU"
    assert "CUSTOM:edgetpu-custom-op" in tflite_export.inspect(path).op_counts
