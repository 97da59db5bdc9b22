"""Android metadata written from the published schema, proven by reading it back."""

import io
import zipfile

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tflite_export

LABELS = [f"digit {d}" for d in range(10)]


def _run(path, x):
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


@pytest.fixture(scope="module")
def with_metadata(digits_cnn, digits, tmp_path_factory):
    x_train, _, x_test, y_test = digits
    path = tmp_path_factory.mktemp("metadata") / "digits_meta.tflite"
    result = tflite_export.export(
        digits_cnn, path, "edgetpu", x_train[:256], (x_test, y_test), latency_runs=0,
        metadata=dict(name="Digits CNN", description="8x8 handwritten digits", version="1.0",
                      author="tfcompress tests", license="Apache-2.0", labels=LABELS,
                      mean=0.0, std=16.0),
    )
    return result


def test_metadata_round_trip(with_metadata):
    meta = tflite_export.read_metadata(with_metadata.path)
    assert meta["name"] == "Digits CNN" and meta["description"] == "8x8 handwritten digits"
    assert meta["version"] == "1.0" and meta["author"] == "tfcompress tests"
    assert meta["license"] == "Apache-2.0" and meta["min_parser_version"] == "1.0.0"
    (inp,), (out,) = meta["inputs"], meta["outputs"]
    assert inp["content"] == "image" and inp["color_space"] == "GRAYSCALE" and inp["size"] == [8, 8]
    assert inp["mean"] == [0.0] and inp["std"] == [16.0]
    assert out["associated_files"][0]["name"] == "labels.txt"
    assert out["associated_files"][0]["type"] == 2  # TENSOR_AXIS_LABELS
    assert meta["labels"] == LABELS
    assert "TFLITE_METADATA" in tflite_export.inspect(with_metadata.path).metadata


def test_labels_are_a_stored_zip_that_android_can_memory_map(with_metadata):
    data = open(with_metadata.path, "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (info,) = archive.infolist()
        assert info.filename == "labels.txt" and info.compress_type == zipfile.ZIP_STORED
        assert archive.read("labels.txt").decode().splitlines() == LABELS


def test_metadata_does_not_change_what_the_model_computes(with_metadata, exported_digits, digits):
    x = (digits[2][:1] * 255).round().astype(np.uint8)  # uint8 IO with scale 1/255
    np.testing.assert_array_equal(_run(with_metadata.path, x), _run(exported_digits["edgetpu"].path, x))
    assert with_metadata.verification.tflite_accuracy == exported_digits["edgetpu"].verification.tflite_accuracy


def test_add_metadata_to_an_existing_file_and_replace_it(exported_digits, tmp_path):
    path = tmp_path / "fp32.tflite"
    path.write_bytes(open(exported_digits["fp32"].path, "rb").read())
    first = tflite_export.add_metadata(path, name="first", mean=[0.5], std=[0.5])
    assert first["name"] == "first" and first["labels"] is None
    second = tflite_export.add_metadata(path, name="second", labels=[str(d) for d in range(10)])
    assert second["name"] == "second" and second["labels"][9] == "9"
    assert "mean" not in second["inputs"][0]
    assert tflite_export.inspect(path).metadata.count("TFLITE_METADATA") == 1


def test_bad_metadata_is_rejected_and_the_file_is_untouched(exported_digits, tmp_path):
    path = tmp_path / "fp32.tflite"
    original = open(exported_digits["fp32"].path, "rb").read()
    path.write_bytes(original)
    with pytest.raises(ValueError, match="one label per output unit"):
        tflite_export.add_metadata(path, name="m", labels=["a", "b"])
    with pytest.raises(ValueError, match="both mean and std"):
        tflite_export.add_metadata(path, name="m", mean=0.0)
    with pytest.raises(ValueError, match="one per input channel"):
        tflite_export.add_metadata(path, name="m", mean=[0, 0, 0], std=[1, 1, 1])
    assert path.read_bytes() == original
    assert tflite_export.read_metadata(path) is None
