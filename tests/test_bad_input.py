"""Bad input not covered elsewhere: each gets the error type, a message that names the fix, and no file."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
import tflite_export
from tfcompress._keras import keras


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


ENTRY_POINTS = {"tfc.quantize": tfc.quantize, "tfc.cluster": tfc.cluster, "tfc.strip": tfc.strip}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_subclassed_and_unbuilt_models_are_refused_by_every_entry_point(name):
    entry = ENTRY_POINTS[name]
    with pytest.raises(TypeError, match=rf"{name} got a subclassed model.*rebuild it as a functional model"):
        entry(subclassed())
    with pytest.raises(ValueError, match=rf"{name} got a model that is not built.*input_shape="):
        entry(keras.Sequential([keras.layers.Dense(2)]))


def test_summary_refuses_unbuilt_models_and_reads_subclassed_ones():
    import keras as keras3

    class Keras3Subclassed(keras3.Model):  # defined outside keras: found through its base classes
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"tfc.summary got a model that is not built.*model\(x\[:1\]\)"):
        tfc.summary(Keras3Subclassed(), print_fn=None)
    with pytest.raises(ValueError, match=r"tfc.summary got a model that is not built.*input_shape="):
        tfc.summary(keras.Sequential([keras.layers.Dense(2)]), print_fn=None)
    with pytest.raises(ValueError, match=r"tfc.summary got a model that is not built.*model\(x\[:1\]\)"):
        tfc.summary(Subclassed(), print_fn=None)
    with pytest.raises(TypeError, match=r"tfc.summary expects a tf_keras.Model, got Dense"):
        tfc.summary(keras.layers.Dense(2), print_fn=None)
    # A subclassed model is only read, never cloned: its tracked layers are summarized.
    model = subclassed()
    info = tfc.summary(model, print_fn=None)
    assert [row.name for row in info.rows] == [model.dense.name]
    assert info.total.params == model.count_params() == 10


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda: tfc.quantize(dense_digits_model(width=8), start=0.5), "quantization"),
        (lambda: tfc.cluster(dense_digits_model(width=8), 4, begin=0.5), "clustering"),
    ],
)
def test_unknown_length_dataset_is_refused_when_fit_starts(make, what, digits):
    x, y = digits[0][:128], digits[1][:128]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).filter(lambda a, b: True)
    model = compile_classifier(make())
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=rf"cannot schedule {what}.*steps_per_epoch="):
        model.fit(dataset, epochs=2, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # refused before the first step, not at the end


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda m: tfc.cluster(m, begin=1.5), "fraction of the fit and must be in"),
        (lambda m: tfc.cluster(m, begin=-2), "must be >= 0"),
        (lambda m: tfc.quantize(m, freeze=-1), "must be >= 0"),
        (lambda m: tfc.prune(m, float("nan")), r"\[0, 1\)"),
        (lambda m: tfc.prune(m, 0.5, initial_sparsity=1.0), r"\[0, 1\)"),
    ],
)
def test_schedule_arguments_out_of_range(build, message):
    with pytest.raises(ValueError, match=message):
        build(dense_digits_model(width=8))


def test_mixed_step_and_fraction_begin_after_end_is_refused_at_fit_start(digits):
    model = compile_classifier(tfc.prune(dense_digits_model(width=8), 0.5, begin=50, end=0.1))
    with pytest.raises(ValueError, match="`begin` must not come after `end`"):
        model.fit(digits[0][:128], digits[1][:128], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])


@pytest.fixture(scope="module")
def small_model():
    return dense_digits_model(width=8)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.full((10, 8, 8, 1), np.nan, "float32"), "NaN or infinite"),
        (np.array([["a"] * 8] * 8), "astype('float32')"),
        (np.zeros((0, 8, 8, 1), "float32"), "at least one"),
        (np.zeros((10, 64), "float32"), "(batch, 8, 8, 1)"),
    ],
)
def test_bad_validation_data_fails_the_export_and_writes_nothing(x, message, small_model, tmp_path):
    with pytest.raises(ValueError) as error:
        tflite_export.export(small_model, tmp_path / "m.tflite", "fp32", validation_data=(x, np.zeros(len(x))))
    assert message in str(error.value)
    assert os.listdir(tmp_path) == []


def test_a_directory_as_output_path_names_the_fix(small_model, tmp_path):
    (tmp_path / "out.tflite").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out.tflite.*model.tflite"):
        tflite_export.export(small_model, tmp_path / "out.tflite", "fp32")
    assert os.listdir(tmp_path) == ["out.tflite"] and os.listdir(tmp_path / "out.tflite") == []


@pytest.mark.parametrize("relative", ["afile/out.tflite", "afile/sub/out.tflite"])
def test_an_output_path_under_a_regular_file_names_the_path_and_writes_nothing(relative, small_model, tmp_path):
    (tmp_path / "afile").write_bytes(b"not a directory")
    with pytest.raises(NotADirectoryError) as error:
        tflite_export.export(small_model, tmp_path / relative, "fp32")
    message = str(error.value)
    assert f"Cannot write {tmp_path / relative}" in message and f"{tmp_path / 'afile'} is a file" in message
    assert f"e.g. {tmp_path / 'out.tflite'}" in message  # a writable path next to the file
    assert os.listdir(tmp_path) == ["afile"] and (tmp_path / "afile").read_bytes() == b"not a directory"


def _refuses_new_files(directory):
    try:
        fd, probe = tempfile.mkstemp(dir=directory)
    except OSError:
        return True
    os.close(fd)
    os.remove(probe)
    return False


@pytest.mark.skipif(not (os.path.isdir("/sys") and _refuses_new_files("/sys")),
                    reason="needs a directory that refuses new files even for root (Linux /sys)")
def test_a_directory_that_refuses_new_files_fails_before_conversion(small_model):
    before = set(os.listdir("/sys"))
    with pytest.raises(PermissionError, match=r"Cannot write /sys/model.tflite: .*Choose a writable directory"):
        tflite_export.export(small_model, "/sys/model.tflite", "fp32")
    assert set(os.listdir("/sys")) == before


def test_an_existing_file_is_replaced_whole(small_model, digits, tmp_path):
    """The documented rule: export overwrites, atomically; no temporary file stays."""
    target = tmp_path / "model.tflite"
    target.write_bytes(b"an older model")
    result = tflite_export.export(small_model, target, "int8", representative_data=digits[0][:64], latency_runs=0)
    assert target.read_bytes()[4:8] == b"TFL3" and os.path.getsize(target) == result.bytes
    assert os.listdir(tmp_path) == ["model.tflite"]
