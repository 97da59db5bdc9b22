"""Channel pruning of Keras 3 models (`import keras`): masks inside fit, a smaller model from tfc.strip.

Real Keras 3 models on scikit-learn's digits and a `keras.applications` net.
Each masked weight carries a `ChannelMask` constraint; every test checks the
smaller model against the masked one it came from. The JAX backend is tested
in test_jax_backend.py (a fresh interpreter).
"""

import keras
import numpy as np
import pytest

import tfcompress as tfc
import tflite_export
from test_keras3 import compiled, mlp
from tfcompress.pruning import channel_summary
from tfcompress.pruning.channels import channel_pruning
from tfcompress.pruning.channels_keras3 import ChannelMask

L = keras.layers


def cnn(seed=0):
    """Conv-BatchNorm-ReLU, Conv-ReLU, pool, Dense: 16, 32 and 64 channels to prune, 10 logits kept."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="dense")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def callback():
    return tfc.CompressionCallback(verbose=0)


def dead_channels(values, axis):
    """Indices along `axis` where every weight is zero."""
    moved = np.moveaxis(np.asarray(values), axis, 0).reshape(values.shape[axis], -1)
    return set(np.nonzero(~moved.any(axis=1))[0])


def test_fit_masks_whole_channels_and_strip_builds_the_smaller_model(digits, tmp_path):
    x, y, x_test, y_test = digits
    pruned = compiled(tfc.prune(cnn(), 0.5, structure="channels"))
    conv1 = pruned.get_layer("conv1")
    assert isinstance(conv1.kernel.constraint, ChannelMask)
    assert isinstance(pruned.get_layer("bn1").gamma.constraint, ChannelMask)
    assert pruned.get_layer("logits").kernel.constraint is None  # the model's outputs stay whole
    history = pruned.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[callback()])
    course = history.history["channel_sparsity"]
    assert course[0] < course[-1] == pytest.approx(0.5)

    # The optimizer kept the masked channels at exactly zero: conv1's filters, bn1's gamma and beta.
    masked = dead_channels(conv1.kernel.numpy(), -1)
    assert len(masked) == 8
    bn = pruned.get_layer("bn1")
    assert masked == dead_channels(bn.gamma.numpy(), 0) & dead_channels(bn.beta.numpy(), 0)
    assert len(dead_channels(pruned.get_layer("conv2").kernel.numpy(), -1)) == 16
    assert len(dead_channels(pruned.get_layer("dense").kernel.numpy(), -1)) == 32

    summary = channel_summary(pruned, print_fn=None)
    assert summary.params["now"] == summary.params["target"] < summary.params["dense"] / 3

    small = tfc.strip(pruned)
    assert [small.get_layer(n).kernel.shape[-1] for n in ("conv1", "conv2", "dense", "logits")] == [8, 16, 32, 10]
    assert small.count_params() == summary.params["target"]
    assert "tfcompress" not in small.to_json()
    logits = np.asarray(small(x_test, training=False))
    np.testing.assert_allclose(logits, np.asarray(pruned(x_test, training=False)), atol=1e-5)
    accuracy = float(np.mean(logits.argmax(-1) == y_test))
    assert accuracy > 0.85

    # The export of the channel-pruned model is the smaller model's: it strips for the user.
    result = tflite_export.export(pruned, tmp_path / "pruned.tflite", precision="fp32",
                                  validation_data=(x_test, y_test))
    assert result.stripped == ["channel pruning"]
    assert result.verification.tflite_accuracy == pytest.approx(accuracy, abs=0.005)
    assert result.bytes < 4 * cnn().count_params() / 3  # under a third of the dense model's float32 weights


def test_keras_file_saved_mid_schedule_resumes_bit_for_bit(digits, tmp_path):
    x, y, _, _ = digits
    path = tmp_path / "mid.keras"
    saved = {}

    class SaveAndStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.save(path)
                saved["kept"] = channel_pruning(self.model).kept
                self.model.stop_training = True

    def start():
        return compiled(tfc.prune(mlp(), 0.5, structure="channels", end=1.0))

    uninterrupted = start()
    uninterrupted.fit(x, y, epochs=4, batch_size=64, shuffle=False, verbose=0, callbacks=[callback()])
    first = start()
    first.fit(x, y, epochs=4, batch_size=64, shuffle=False, verbose=0, callbacks=[callback(), SaveAndStop()])
    resumed = tfc.load_model(path)
    assert isinstance(resumed.get_layer("hidden1").kernel.constraint, ChannelMask)
    # The masks came back from the file, as they were when it was saved.
    kept = channel_pruning(resumed).kept
    np.testing.assert_array_equal(kept, saved["kept"])
    assert 0 < (~kept).sum() < kept.size / 2
    resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=64, shuffle=False, verbose=0, callbacks=[callback()])
    for before, after in zip(uninterrupted.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert tfc.strip(resumed).count_params() == tfc.strip(uninterrupted).count_params()


def test_applications_net_loses_channels_across_its_residual_blocks():
    """MobileNetV2 (keras.applications): depthwise blocks, residual Adds; masks set without a fit."""
    model = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=10)
    pruned = tfc.prune(model, 0.5, structure="channels")
    pruning = channel_pruning(pruned)
    assert len(pruning.targets) > 20
    pruning.update_masks()
    small = tfc.strip(pruned)
    summary = channel_summary(pruned, print_fn=None)
    assert small.count_params() == summary.params["target"] < model.count_params() / 2
    assert tfc.pruning.count_macs(small) == summary.macs["target"] < summary.macs["dense"] / 2
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(small(images, training=False)), np.asarray(pruned(images, training=False)),
                               atol=1e-5)
    # The blocks on both sides of a residual Add lose the same channels: every Add narrows with them.
    adds = [layer.name for layer in model.layers if isinstance(layer, L.Add)]
    assert len(adds) == 10
    for name in adds:
        assert small.get_layer(name).output.shape[-1] < model.get_layer(name).output.shape[-1], name


def test_distilled_student_and_a_second_fit_for_qat(digits, tmp_path):
    x, y, x_test, y_test = digits
    teacher = compiled(cnn(seed=1))
    teacher.fit(x, y, epochs=2, batch_size=64, verbose=0)
    student = tfc.prune(cnn(), 0.5, structure="channels")
    distiller = tfc.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with pytest.raises(ValueError, match="not pruned yet.*CompressionCallback"):
        tfc.quantize(student)
    history = distiller.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[callback()])
    assert history.history["channel_sparsity"][-1] == pytest.approx(0.5)

    # QAT trains the smaller model in a second fit; its int8 file keeps the pruned shapes.
    qat = compiled(tfc.quantize(student))
    assert qat.count_params() < student.count_params() / 2
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[callback()])
    result = tflite_export.export(qat, tmp_path / "qat.tflite", precision="int8", validation_data=(x_test, y_test))
    assert result.verification.tflite_accuracy > 0.85
    assert result.verification.tflite_accuracy == pytest.approx(result.verification.keras_accuracy, abs=0.005)


def test_bad_input_names_the_fix(digits):
    x, y, _, _ = digits

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = L.Dense(32, activation="relu")
            self.out = L.Dense(10)

        def call(self, inputs):
            return self.out(self.hidden(keras.ops.reshape(inputs, (-1, 64))))

    subclassed = Subclassed()
    subclassed(x[:1])
    with pytest.raises(ValueError, match="subclassed Keras 3 model.*functional"):
        tfc.prune(subclassed, 0.5, structure="channels")
    pruned = tfc.prune(mlp(), 0.5, structure="channels")
    with pytest.raises(ValueError, match="channel-pruned.*Call tfc.strip"):
        tfc.prune(pruned, 0.5, structure="channels")
    with pytest.raises(ValueError, match="already carries tfcompress constraints"):
        tfc.prune(pruned, 0.5)
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        compiled(pruned).fit(x, y, epochs=1, verbose=0)
