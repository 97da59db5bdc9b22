"""tfc.prune + tfc.CompressionCallback on real digits models."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.pruning import PruneLowMagnitude


def kernel_sparsity(layer):
    """Zero share of the kernel a pruned (wrapped) layer computes with."""
    (weight, mask, _), = layer.pruning_vars
    return 1.0 - np.count_nonzero(weight.numpy() * mask.numpy()) / weight.shape.num_elements()


def wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def fit(model, data, epochs, batch_size=64, **kwargs):
    x, y, _, _ = data
    kwargs.setdefault("callbacks", [tfc.CompressionCallback()])
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, **kwargs)


def test_short_fit_reaches_target_on_every_layer(pruned_cnn):
    # pruned_cnn: 2 epochs of 22 steps, where tfmot's default frequency=100 would never prune.
    assert {w.layer.name for w in wrappers(pruned_cnn)} == {"conv1", "conv2", "dense", "logits"}
    for layer in wrappers(pruned_cnn):
        assert kernel_sparsity(layer) == pytest.approx(0.8, abs=0.01), layer.name


@pytest.mark.slow
def test_pruned_accuracy_close_to_dense_twin(trained_mlp, digits):
    # trained_mlp is the dense twin: seed 2, 6 epochs of batch 32 at 3e-3; the pruned twin trains the same way.
    x, y, x_test, y_test = digits
    _, dense_accuracy = trained_mlp().evaluate(x_test, y_test, verbose=0)

    pruned = compile_classifier(tfc.prune(dense_digits_model(seed=2), 0.8), learning_rate=3e-3)
    pruned.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
    final = compile_classifier(tfc.strip(pruned))
    _, pruned_accuracy = final.evaluate(x_test, y_test, verbose=0)[:2]
    assert tfc.summary(final, print_fn=None).total.sparsity > 0.75
    assert dense_accuracy > 0.9
    assert pruned_accuracy >= dense_accuracy - 0.03


def test_two_four_pattern_block_by_block(digits):
    model = compile_classifier(tfc.prune(dense_digits_model(), m_by_n=(2, 4)))
    fit(model, digits, epochs=1)
    final = tfc.strip(model)
    for name in ("hidden1", "hidden2"):
        kernel = final.get_layer(name).kernel.numpy()  # (inputs, units)
        blocks = kernel.T.reshape(kernel.shape[1], -1, 4)  # 4 consecutive input weights per unit
        zeros = (blocks == 0).sum(axis=-1)
        assert (zeros >= 2).all(), name
        assert (zeros == 2).mean() > 0.99, name


def test_m_by_n_leaves_1d_convolutions_dense_by_name(caplog):
    # tfmot's M:N masks take 2-D and 4-D kernels: a Conv1D's 3-D kernel would fail at the first step.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 3))
    x = keras.layers.Conv1D(8, 3, name="conv1d")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"'conv1d' \(Conv1D\) cannot take m_by_n=\(2, 4\).*`import keras`"):
        tfc.prune(model, m_by_n=(2, 4), layers=["conv1d"])
    with caplog.at_level("WARNING", logger="absl"):
        pruned = compile_classifier(tfc.prune(model, m_by_n=(2, 4)))
    assert "left these layers dense" in caplog.text and "conv1d" in caplog.text
    rng = np.random.default_rng(0)
    pruned.fit(rng.random((64, 16, 3), "float32"), rng.integers(0, 10, 64), epochs=1, verbose=0,
               callbacks=[tfc.CompressionCallback(verbose=0)])
    final = tfc.strip(pruned)
    assert np.count_nonzero(final.get_layer("conv1d").kernel.numpy()) == 3 * 3 * 8
    blocks = final.get_layer("logits").kernel.numpy().T.reshape(-1, 4)  # 4 consecutive inputs per unit
    assert ((blocks == 0).sum(axis=-1) >= 2).all()


def test_per_layer_targets_and_layer_choice(digits):
    model = dense_digits_model()
    by_target = compile_classifier(tfc.prune(model, 0.8, layer_sparsity={"logits": 0.5}))
    fit(by_target, digits, epochs=2)
    sparsity = {w.layer.name: kernel_sparsity(w) for w in wrappers(by_target)}
    assert sparsity["logits"] == pytest.approx(0.5, abs=0.01)
    assert sparsity["hidden1"] == pytest.approx(0.8, abs=0.01)

    only_first = tfc.prune(model, 0.6, layers=["hidden1"])
    assert [w.layer.name for w in wrappers(only_first)] == ["hidden1"]
    by_predicate = tfc.prune(model, 0.6, layers=lambda layer: layer.name != "logits")
    assert [w.layer.name for w in wrappers(by_predicate)] == ["hidden1", "hidden2"]


def test_constant_schedule_reaches_target(digits):
    model = compile_classifier(tfc.prune(dense_digits_model(), 0.7, schedule="constant", begin=0.25))
    history = fit(model, digits, epochs=4)
    assert history.history["sparsity"][0] == pytest.approx(0.7, abs=0.01)
    for layer in wrappers(model):
        assert kernel_sparsity(layer) == pytest.approx(0.7, abs=0.01)


@pytest.fixture(scope="module")
def ramp(digits, tmp_path_factory):
    """One 4-epoch unshuffled fit of prune(0.8, end=0.75), logged to CSV, and the model it was pruned from."""
    original = dense_digits_model()
    original_weights = [w.copy() for w in original.get_weights()]
    model = compile_classifier(tfc.prune(original, 0.8, end=0.75))
    csv_path = tmp_path_factory.mktemp("ramp") / "log.csv"
    callbacks = [tfc.CompressionCallback(), keras.callbacks.CSVLogger(str(csv_path))]
    history = fit(model, digits, epochs=4, shuffle=False, callbacks=callbacks)
    return {"sparsity": history.history["sparsity"], "csv": csv_path, "original": original,
            "original_weights": original_weights}


def test_original_model_is_untouched(ramp):
    for old, new in zip(ramp["original_weights"], ramp["original"].get_weights()):
        np.testing.assert_array_equal(old, new)


def test_logs_history_and_csv_contain_sparsity(ramp):
    sparsity = ramp["sparsity"]
    assert len(sparsity) == 4
    assert sparsity[0] < sparsity[1] <= sparsity[2] == pytest.approx(0.8, abs=0.01)
    header, *rows = ramp["csv"].read_text().splitlines()
    column = header.split(",").index("sparsity")
    assert float(rows[-1].split(",")[column]) == pytest.approx(0.8, abs=0.01)


def test_initial_epoch_resume_continues_the_schedule(ramp, digits):
    epochs = 4

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    expected = ramp["sparsity"]  # the same pruning, fit straight through
    resumed = compile_classifier(tfc.prune(dense_digits_model(), 0.8, end=0.75))
    first = fit(resumed, digits, epochs, shuffle=False, callbacks=[tfc.CompressionCallback(), StopAfterTwo()])
    second = fit(resumed, digits, epochs, shuffle=False, initial_epoch=2)
    assert len(first.history["sparsity"]) == 2
    np.testing.assert_allclose(first.history["sparsity"] + second.history["sparsity"], expected, atol=1e-4)
    assert expected[-1] == pytest.approx(0.8, abs=0.01)
    assert expected[1] < 0.79  # still ramping where the fit was cut

    # A model whose counters start fresh is put at epoch 2 of the schedule too.
    fresh = compile_classifier(tfc.prune(dense_digits_model(), 0.8, end=0.75))
    late = fit(fresh, digits, epochs, shuffle=False, initial_epoch=2)
    np.testing.assert_allclose(late.history["sparsity"], expected[2:], atol=1e-4)


def test_absolute_steps(digits):
    model = compile_classifier(tfc.prune(dense_digits_model(), 0.5, begin=3, end=10, frequency=1))
    callback = tfc.CompressionCallback()
    fit(model, digits, epochs=1, callbacks=[callback])
    assert callback.plan[0]["begin_step"] == 3 and callback.plan[0]["end_step"] == 10
    for layer in wrappers(model):
        assert kernel_sparsity(layer) == pytest.approx(0.5, abs=0.01)


def test_forgetting_the_callback_names_it(digits):
    model = compile_classifier(tfc.prune(dense_digits_model(), 0.8))
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        fit(model, digits, epochs=1, callbacks=[])
    absolute = compile_classifier(tfc.prune(dense_digits_model(), 0.8, begin=0, end=20))
    with pytest.raises(tf.errors.InvalidArgumentError, match="CompressionCallback"):
        fit(absolute, digits, epochs=1, callbacks=[])


def test_unknown_length_dataset_fails_at_fit_start(digits):
    x, y, _, _ = digits
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).filter(lambda a, b: True)
    model = compile_classifier(tfc.prune(dense_digits_model(), 0.8))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(dataset, epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    model.fit(dataset.repeat(), epochs=2, steps_per_epoch=10, verbose=0, callbacks=[tfc.CompressionCallback()])
    for layer in wrappers(model):
        assert kernel_sparsity(layer) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"final_sparsity": 1.0}, ValueError, r"\[0, 1\)"),
        ({"final_sparsity": -0.1}, ValueError, r"\[0, 1\)"),
        ({"begin": 0.8, "end": 0.2}, ValueError, "must not come after"),
        ({"begin": -3}, ValueError, ">= 0"),
        ({"end": 1.5}, ValueError, "fraction"),
        ({"schedule": "cosine"}, ValueError, "polynomial"),
        ({"frequency": 0}, ValueError, "frequency"),
        ({"m_by_n": (4, 2)}, ValueError, "0 < m < n"),
        ({"m_by_n": (2, 4), "final_sparsity": 0.8}, ValueError, "drop `final_sparsity`"),
        ({"layers": ["no_such_layer"]}, ValueError, "Layer names are"),
        ({"layer_sparsity": {"logits": 1.2}}, ValueError, r"\[0, 1\)"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfc.prune(dense_digits_model(), **kwargs)


def test_layer_that_cannot_be_pruned_is_named():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    with pytest.raises(ValueError, match="'depthwise'.*cannot be pruned"):
        tfc.prune(model, 0.5, layers=["depthwise"])
    pruned = tfc.prune(model, 0.5)  # by default the depthwise kernel is left dense
    assert [w.layer.name for w in wrappers(pruned)] == ["logits"]


def test_subclassed_and_unbuilt_models_are_refused():
    import keras as keras3

    # Keras 3 models prune with constraints (tests/test_keras3.py), once built.
    with pytest.raises(ValueError, match="not built"):
        tfc.prune(keras3.Sequential([keras3.layers.Dense(2)]), 0.5)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed"):
        tfc.prune(subclassed, 0.5)
    with pytest.raises(ValueError, match="not built"):
        tfc.prune(keras.Sequential([keras.layers.Dense(2)]), 0.5)


def test_callback_drives_scheduled_parts_step_by_step(digits):
    from tfcompress.scheduling import Scheduled

    class Recorder(keras.layers.Layer, Scheduled):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.steps, self.totals = [], []

        def resolve_schedule(self, total_steps):
            self.totals.append(total_steps)
            return [{"compression": "recorder", "description": f"recorder over {total_steps} steps"}]

        def on_schedule_step(self, step):
            self.steps.append(step)

        def call(self, inputs):
            return inputs

    inputs = keras.Input((8, 8, 1))
    recorder = Recorder()
    x = keras.layers.Flatten()(recorder(inputs))
    model = compile_classifier(keras.Model(inputs, keras.layers.Dense(10)(x)))
    callback = tfc.CompressionCallback()
    fit(model, digits, epochs=2, callbacks=[callback])  # 22 steps per epoch
    assert recorder.totals == [44]
    assert recorder.steps == list(range(44))
    assert callback.plan == [{"compression": "recorder", "description": "recorder over 44 steps"}]
    fit(model, digits, epochs=3, initial_epoch=2, callbacks=[callback])
    assert recorder.totals == [44, 66]
    assert recorder.steps[44:] == list(range(44, 66))


class _SignGate(keras.layers.Layer):
    """Flips its input when the batch mean is negative: a Python `if` on a tensor, which needs autograph."""

    def call(self, x):
        if tf.reduce_mean(x) < 0:
            return -x
        return x


class _SignedDense(keras.layers.Dense, tfmot.sparsity.keras.PrunableLayer):
    """A prunable Dense that flips its output when the batch mean is negative: a Python `if` on a tensor."""

    def get_prunable_weights(self):
        return [self.kernel]

    def call(self, x):
        y = super().call(x)
        if tf.reduce_mean(y) < 0:
            return -y
        return y


def test_a_wrapped_layer_that_needs_autograph_trains_pruned(digits):
    """tfmot's helpers run as written in a trace; the wrappers, which call the user's layer, keep autograph."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = _SignedDense(16, name="signed")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    pruned = compile_classifier(tfc.prune(model, final_sparsity=0.5))
    assert isinstance(pruned.get_layer("prune_low_magnitude_signed"), PruneLowMagnitude)
    pruned.fit(x_train, y_train, epochs=1, batch_size=128, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    kernel = tfc.strip(pruned).get_layer("signed").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)


def test_a_layer_that_needs_autograph_still_prunes_and_strips(digits):
    """Cloning skips autograph for speed; a user layer whose `call` branches on a tensor gets it back."""
    x_train, y_train, x_test, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(16, name="hidden")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(_SignGate(name="gate")(h)))
    pruned = tfc.prune(model, final_sparsity=0.5, layers=["hidden", "logits"])
    assert isinstance(pruned.get_layer("gate"), _SignGate)
    np.testing.assert_allclose(pruned.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-6)
    compile_classifier(pruned).fit(x_train, y_train, epochs=2, batch_size=128, verbose=0,
                                   callbacks=[tfc.CompressionCallback(verbose=0)])
    final = tfc.strip(pruned)
    kernel = final.get_layer("hidden").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)
    np.testing.assert_allclose(final.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5)


@pytest.mark.parametrize("data", ["arrays", "dataset with sample weights"])
def test_compression_fit_traces_its_train_step_once(digits, data):
    """The callback creates optimizer slots and metric variables before the first step: one trace, not two."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = tfc.quantize(tfc.prune(dense_digits_model(seed=0, width=16), final_sparsity=0.5))
    compile_classifier(model)
    callbacks = [tfc.CompressionCallback(verbose=0)]
    if data == "arrays":
        history = model.fit(x_train, y_train, epochs=2, batch_size=128, verbose=0, callbacks=callbacks)
    else:
        weights = np.where(y_train < 5, 1.0, 2.0).astype("float32")
        dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train, weights)).batch(128)
        history = model.fit(dataset, epochs=2, verbose=0, callbacks=callbacks)
    assert model.train_function.experimental_get_tracing_count() == 1
    # The metrics are the ones Keras would have chosen in the step (sparse labels: sparse accuracy).
    accuracy = next(m for m in model.metrics if m.name == "accuracy")
    assert accuracy._fn.__name__ == "sparse_categorical_accuracy"
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.01)
