"""tfc.load_model: wrapped models saved mid-schedule load from .keras, .h5 and SavedModel and train on."""

import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.clustering import ClusterWeights
from tfcompress.pruning import PruneLowMagnitude
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization import QuantizeWrapper
from tfcompress.saving import custom_object_scope, custom_objects, load_model

EPOCHS = 3
FORMATS = {".keras": "model.keras", ".h5": "model.h5", "SavedModel": "saved_model"}


def pruned_and_quantized():
    """hidden1 pruned then quantized, hidden2 and logits only quantized: both wrapper layouts."""
    pruned = tfc.prune(dense_digits_model(seed=4, width=32), 0.75, end=1.0, layers=["hidden1"])
    return compile_classifier(tfc.quantize(pruned, start=0.5))


def clustered():
    return compile_classifier(tfc.cluster(dense_digits_model(seed=4, width=32), clusters=8, begin=0.5))


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Ends a fit after its first epoch, as an interruption would."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def fit(model, data, extra_callbacks=(), **kwargs):
    x, y = data[0][:256], data[1][:256]
    return model.fit(
        x, y, epochs=EPOCHS, batch_size=64, shuffle=False, verbose=0,
        callbacks=[tfc.CompressionCallback(verbose=0), *extra_callbacks], **kwargs,
    ).history


@pytest.fixture(scope="module")
def uninterrupted(digits):
    """`{make: (model, history)}`: each model fit straight through its schedules. Tests only read the model."""
    runs = {}
    for make in (pruned_and_quantized, clustered):
        model = make()
        runs[make] = model, fit(model, digits)
    return runs


@pytest.fixture(scope="module")
def interrupted(digits, tmp_path_factory):
    """`interrupted(make, fmt)` -> (model, first-epoch history, path).

    One fit per model, stopped after its first epoch, saved once per format; tests
    load from the path and only read the model.
    """
    directory = tmp_path_factory.mktemp("interrupted")
    fits, paths = {}, {}

    def get(make, fmt):
        if make not in fits:
            model = make()
            fits[make] = model, fit(model, digits, [StopAfterFirstEpoch()])
        model, first = fits[make]
        if (make, fmt) not in paths:
            paths[make, fmt] = directory / f"{make.__name__}_{FORMATS[fmt]}"
            model.save(paths[make, fmt], **({"save_format": "tf"} if fmt == "SavedModel" else {}))
        return model, first, paths[make, fmt]

    return get


def state_logs(history):
    return {key: history[key] for key in ("sparsity", "qat_phase") if key in history}


@pytest.mark.parametrize(
    "make, wrapper, fmt",
    [
        (pruned_and_quantized, QuantizeWrapper, ".keras"),
        (pruned_and_quantized, QuantizeWrapper, ".h5"),
        (clustered, ClusterWeights, ".h5"),
    ],
)
def test_saved_mid_schedule_loads_and_trains_on_like_an_uninterrupted_fit(
    make, wrapper, fmt, uninterrupted, interrupted, digits
):
    _, straight = uninterrupted[make]
    model, first, path = interrupted(make, fmt)
    loaded = load_model(path)
    assert any(isinstance(layer, wrapper) for layer in loaded.layers)
    x_test = digits[2]
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-6)

    rest = fit(loaded, digits, initial_epoch=1)
    for key, values in state_logs(straight).items():
        np.testing.assert_allclose(first[key] + rest[key], values, atol=1e-6, err_msg=key)
    # The optimizer state comes back too, so training continues on the same path.
    np.testing.assert_allclose(first["loss"] + rest["loss"], straight["loss"], rtol=1e-3)
    if wrapper is QuantizeWrapper:
        assert straight["qat_phase"] == [0.0, 1.0, 1.0]
        assert straight["sparsity"][0] < straight["sparsity"][-1] == pytest.approx(0.75, abs=0.01)
        assert isinstance(loaded.get_layer("quant_prune_low_magnitude_hidden1").layer, PruneLowMagnitude)
    else:
        final = tfc.strip(loaded)
        assert all(np.unique(final.get_layer(name).kernel.numpy()).size <= 8 for name in ("hidden1", "logits"))


def test_saved_model_resumes_the_schedules_with_a_fresh_optimizer(uninterrupted, interrupted, digits, caplog):
    _, straight = uninterrupted[pruned_and_quantized]
    model, first, path = interrupted(pruned_and_quantized, "SavedModel")
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(digits[2], verbose=0), model.predict(digits[2], verbose=0), atol=1e-6)
    assert "fresh optimizer" in caplog.text and ".keras or .h5" in caplog.text
    assert int(loaded.optimizer.iterations) == 0  # tf_keras restores no optimizer state from a SavedModel

    rest = fit(loaded, digits, initial_epoch=1)
    # The schedules continue exactly and History reports them live, not the values at saving time.
    for key in ("sparsity", "qat_phase"):
        np.testing.assert_allclose(first[key] + rest[key], straight[key], atol=1e-6, err_msg=key)
    assert first["sparsity"][0] < 0.6 and mask_sparsity(loaded) == pytest.approx(0.75, abs=0.01)  # masks advanced


def test_saved_model_loaded_with_plain_tf_keras_reports_live_sparsity_and_phase(uninterrupted, interrupted, digits):
    _, straight = uninterrupted[pruned_and_quantized]
    _, first, path = interrupted(pruned_and_quantized, "SavedModel")
    loaded = keras.models.load_model(path, custom_objects=custom_objects())
    rest = fit(loaded, digits, initial_epoch=1)
    for key in ("sparsity", "qat_phase"):
        np.testing.assert_allclose(first[key] + rest[key], straight[key], atol=1e-6, err_msg=key)


def test_fresh_wrapped_models_save_before_any_fit(tmp_path):
    # A SavedModel traces training=True, which must not demand the callback.
    model = pruned_and_quantized()
    model.save(tmp_path / "fresh", save_format="tf")
    loaded = load_model(tmp_path / "fresh")
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_pruned_clustered_quantized_model_loads_from_h5(digits, tmp_path):
    # tfmot's QuantizeWrapper config nests tfcompress's clustering wrapper under the bare "ClusterWeights".
    model = compile_classifier(tfc.quantize(tfc.cluster(
        tfc.prune(dense_digits_model(seed=4, width=32), 0.75, end=0.4), clusters=8, begin=0.5), start=0.8))
    model.save(tmp_path / "deep.h5")
    loaded = load_model(tmp_path / "deep.h5")
    x_test = digits[2][:64]
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-6)


def test_stripped_qat_model_loads_from_keras_and_h5_files(uninterrupted, digits, tmp_path):
    """A stripped QAT model holds tfmot's layers, which tfmot 0.8.1 alone cannot load from `.keras`."""
    model, _ = uninterrupted[pruned_and_quantized]
    final = tfc.strip(model)
    expected = final.predict(digits[2], verbose=0)
    for name in ("stripped.keras", "stripped.h5"):
        final.save(tmp_path / name)
        loaded = load_model(tmp_path / name, compile=False)
        np.testing.assert_array_equal(loaded.predict(digits[2], verbose=0), expected, err_msg=name)
        for saved, restored in zip(final.weights, loaded.weights):
            np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=f"{name}: {saved.name}")
    # Saved again, it is still a file of tfmot's classes, and loads once more.
    loaded.save(tmp_path / "again.keras")
    with zipfile.ZipFile(tmp_path / "again.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert {layer["class_name"] for layer in config["config"]["layers"]} == {
        "InputLayer", "QuantizeLayer", "QuantizeWrapperV2"
    }
    again = load_model(tmp_path / "again.keras", compile=False)
    np.testing.assert_array_equal(again.predict(digits[2], verbose=0), expected)
    converter = tf.lite.TFLiteConverter.from_keras_model(again)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    assert len(converter.convert()) > 0


def test_custom_objects_work_with_plain_tf_keras_loading(interrupted, digits):
    model, _, path = interrupted(clustered, ".h5")
    plain = keras.models.load_model(path, custom_objects=custom_objects())
    with custom_object_scope():
        scoped = keras.models.load_model(path)
    expected = model.predict(digits[2], verbose=0)
    for loaded in (plain, scoped):
        np.testing.assert_allclose(loaded.predict(digits[2], verbose=0), expected, atol=1e-6)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.save\('model.keras'\)"):
        load_model(tmp_path / "nope.keras")


@pytest.fixture(scope="module")
def teacher(trained_mlp):
    return trained_mlp()


def distilled_student(teacher):
    """A Distiller whose student is pruned, then quantization-aware: all three compressions in one fit."""
    student = tfc.quantize(tfc.prune(dense_digits_model(seed=12, width=32), 0.8, end=1.0), start=0.5)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=2.0)
    distiller.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


@pytest.fixture(scope="module")
def straight_distilled(teacher, digits):
    return fit(distilled_student(teacher), digits)


@pytest.fixture(scope="module")
def interrupted_distiller(teacher, digits, tmp_path_factory):
    """(distiller, first-epoch history, {format: path}): one distilled fit stopped after its first epoch, saved in every format."""
    distiller = distilled_student(teacher)
    first = fit(distiller, digits, [StopAfterFirstEpoch()])
    directory = tmp_path_factory.mktemp("distilled")
    paths = {fmt: directory / name for fmt, name in FORMATS.items()}
    for path in paths.values():
        distiller.save(path)  # the student, with its wrappers and their step counters
    return distiller, first, paths


def mask_sparsity(model):
    masks = [mask.numpy() for wrapper in find_pruning_wrappers(model) for _, mask, _ in wrapper.pruning_vars]
    return 1.0 - sum(np.count_nonzero(m) for m in masks) / sum(m.size for m in masks)


@pytest.mark.parametrize("fmt", [".keras", ".h5", "SavedModel"])
def test_pruned_quantized_distilled_student_loads_and_trains_on(fmt, teacher, straight_distilled, interrupted_distiller, digits):
    straight = straight_distilled
    distiller, first, paths = interrupted_distiller
    loaded = load_model(paths[fmt])
    hidden1 = loaded.get_layer("quant_prune_low_magnitude_hidden1")
    assert isinstance(hidden1, QuantizeWrapper) and isinstance(hidden1.layer, PruneLowMagnitude)
    x_test = digits[2]
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), distiller.student.predict(x_test, verbose=0), atol=1e-6)
    saved_sparsity = mask_sparsity(loaded)
    assert saved_sparsity == pytest.approx(first["sparsity"][0], abs=1e-6) and saved_sparsity < 0.75

    # A restarted job builds a new Distiller around the loaded student (its optimizer starts afresh).
    resumed = tfc.Distiller(teacher=teacher, student=loaded, temperature=2.0)
    resumed.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rest = fit(resumed, digits, initial_epoch=1)
    for key in ("sparsity", "qat_phase"):
        np.testing.assert_allclose(first[key] + rest[key], straight[key], atol=1e-6, err_msg=key)
    assert straight["qat_phase"] == [0.0, 1.0, 1.0]
    assert mask_sparsity(loaded) == pytest.approx(0.8, abs=0.01)  # the masks kept advancing after loading
    assert rest["loss"][-1] < first["loss"][0]
