"""Keras 3 models (`import keras`): prune, cluster, CompressionCallback, strip, summary, load_model.

Real Keras 3 models trained on scikit-learn's digits. No wrapper layers: each
kernel carries a tfcompress constraint that the optimizer applies after every
step. The JAX backend and the backends refused are tested in test_jax_backend.py
(a fresh interpreter: a process has one backend).
"""

import keras
import numpy as np
import pytest
import tf_keras

import tfcompress as tfc
from tfcompress.clustering.constraints import ClusterCentroids
from tfcompress.demo import load_digits
from tfcompress.pruning.constraints import PruningMask


@pytest.fixture(scope="module")
def data():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test, y_test


def cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(64, activation="relu", name="hidden1")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def compiled(model, learning_rate=3e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def count_traces(model):
    """A list that grows by one each time TensorFlow traces `model`'s train step (set before its first fit)."""
    traces = []
    train_step = model.train_step

    def counted(data):
        traces.append(data)
        return train_step(data)

    model.train_step = counted
    return traces


def sparsity(kernel):
    values = np.asarray(kernel.numpy() if hasattr(kernel, "numpy") else kernel)
    return 1.0 - np.count_nonzero(values) / values.size


def kernels(model):
    return {layer.name: layer.kernel for layer in model.layers if getattr(layer, "kernel", None) is not None}


@pytest.fixture(scope="module")
def pruned_cnn(data):
    """The digits CNN pruned to 0.8 in one 3-epoch fit: (original, pruned, history, callback, train step traces)."""
    x, y, _, _ = data
    original = cnn()
    pruned = compiled(tfc.prune(original, final_sparsity=0.8))
    traces = count_traces(pruned)
    callback = tfc.CompressionCallback(verbose=0)
    history = pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    return original, pruned, history, callback, traces


def test_cnn_reaches_its_sparsity_in_one_fit_and_history_shows_it(pruned_cnn, data):
    original, pruned, history, callback, _ = pruned_cnn
    _, _, x_test, y_test = data
    assert [type(layer) for layer in pruned.layers] == [type(layer) for layer in original.layers]  # no wrappers
    for name, kernel in kernels(pruned).items():
        assert isinstance(kernel.constraint, PruningMask), name
        assert sparsity(kernel) == pytest.approx(0.8, abs=0.01), name
    for name, kernel in kernels(original).items():
        assert kernel.constraint is None and sparsity(kernel) == 0.0, name  # the original is untouched
    (entry,) = callback.plan
    steps = 3 * 44
    assert (entry["begin_step"], entry["end_step"], entry["total_steps"]) == (0, round(0.75 * steps), steps)
    assert entry["frequency"] == 5  # about 20 updates over the span, not tfmot's 100
    logged = history.history["sparsity"]
    assert len(logged) == 3 and logged[0] < logged[1] <= logged[2] == pytest.approx(0.8, abs=0.005)
    assert pruned.evaluate(x_test, y_test, verbose=0)[1] > 0.85


def test_compression_fit_traces_its_train_step_once(pruned_cnn):
    """On TensorFlow the callback builds the optimizer and metrics before the first step: one trace, not two."""
    _, pruned, history, _, traces = pruned_cnn
    assert len(traces) == 1
    assert pruned.optimizer.built and pruned.optimizer.iterations.numpy() == 3 * 44
    # The metric is the one Keras would have chosen in the step (sparse labels: sparse accuracy).
    accuracy = next(m for m in pruned.metrics[1].metrics if m.name == "accuracy")
    assert accuracy._fn.__name__ == "sparse_categorical_accuracy"
    assert history.history["accuracy"][-1] > 0.85


def test_strip_gives_a_plain_model_that_plain_keras_loads(pruned_cnn, data, tmp_path):
    _, pruned, _, _, _ = pruned_cnn
    _, _, x_test, _ = data
    final = tfc.strip(pruned)
    assert "tfcompress" not in final.to_json()
    assert all(kernel.constraint is None for kernel in kernels(final).values())
    path = tmp_path / "final.keras"
    final.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is keras.Sequential
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5)
    assert sparsity(loaded.get_layer("dense").kernel) == pytest.approx(0.8, abs=0.01)


def test_summary_counts_the_pruned_weights(pruned_cnn):
    _, pruned, _, _, _ = pruned_cnn
    info = tfc.summary(pruned, print_fn=None)
    assert [row.name for row in info.rows] == ["conv1", "conv2", "dense", "logits"]
    dense = info.rows[2]
    assert dense.params == 32 * 16 * 64 + 64
    kernel_zeros = int(round(0.8 * 32 * 16 * 64))
    bias_zeros = int(np.sum(pruned.get_layer("dense").bias.numpy() == 0))
    assert dense.nonzero == dense.params - kernel_zeros - bias_zeros
    assert dense.sparsity == pytest.approx(0.8, abs=1e-4)
    assert info.total.params == pruned.count_params()
    assert info.total.bytes == 4 * info.total.params
    assert info.total.gzip_bytes < 0.5 * info.total.bytes
    assert tfc.summary(tfc.strip(pruned), print_fn=None).as_dict() == info.as_dict()


def test_layer_choice_per_layer_targets_and_a_schedule_ending_with_the_fit(data):
    x, y, _, _ = data
    model = mlp()
    only_first = tfc.prune(model, 0.6, layers=["hidden1"])
    assert [name for name, k in kernels(only_first).items() if isinstance(k.constraint, PruningMask)] == ["hidden1"]
    by_class = tfc.prune(model, 0.6, layers=[keras.layers.Dense])
    assert all(isinstance(k.constraint, PruningMask) for k in kernels(by_class).values())
    with pytest.raises(ValueError, match="'flatten'.*cannot be pruned"):
        tfc.prune(model, 0.6, layers=["flatten"])

    # end=1.0 (step 44 of 44): the last mask update falls after the last batch, and still happens.
    pruned = compiled(tfc.prune(model, 0.8, end=1.0, power=1, frequency=10, layer_sparsity={"logits": 0.5},
                                layers=lambda layer: layer.name != "hidden2"))
    history = pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    found = {name: sparsity(kernel) for name, kernel in kernels(pruned).items()}
    assert found["hidden1"] == pytest.approx(0.8, abs=0.001)
    assert found["logits"] == pytest.approx(0.5, abs=0.002)
    assert found["hidden2"] == 0.0
    # Logged at the last epoch's end, after the update at step 40 (0.8 * 40/44 and 0.5 * 40/44).
    assert history.history["sparsity"][-1] == pytest.approx((0.8 * 64 * 64 + 0.5 * 640) * 40 / 44 / 4736, abs=0.002)


def test_m_by_n_masks_are_tfmots_and_a_cnn_trains_to_them(data):
    """Keras 3 M:N masks are tfmot's for the same weights (partial blocks padded, ties included); a digits
    CNN, whose first convolution has one input channel, prunes 2:4 in one fit."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

    from tfcompress.pruning.constraints import m_by_n_mask

    rng = np.random.default_rng(0)
    for shape in [(10, 6), (3, 3, 3, 8), (3, 3, 8, 4)]:
        for values in (rng.normal(size=shape), np.round(rng.normal(size=shape))):  # rounded: equal magnitudes
            values = values.astype("float32")
            rows = pruning_utils.generate_m_by_n_mask(pruning_utils.weights_rearrange(tf.constant(values)), (2, 4))
            tfmot_mask = pruning_utils.m_by_n_sparsity_mask_prepare(rows, tf.TensorShape(shape)).numpy()
            np.testing.assert_array_equal(m_by_n_mask(values, 2, 4), tfmot_mask, err_msg=str(shape))
    # A Conv1D kernel, which tfmot's masks do not take (tf_keras leaves it dense): 2 zeros in every 4 inputs.
    conv1d = m_by_n_mask(rng.normal(size=(3, 8, 5)).astype("float32"), 2, 4)
    assert (np.moveaxis(conv1d, -2, -1).reshape(-1, 4).sum(axis=-1) == 2).all()
    x, y, x_test, y_test = data
    model = compiled(tfc.prune(cnn(), m_by_n=(2, 4)))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    final = tfc.strip(model)
    for name in ("conv2", "dense", "logits"):
        blocks = np.moveaxis(final.get_layer(name).kernel.numpy(), -2, -1).reshape(-1, 4)  # 4 consecutive inputs
        assert ((blocks == 0).sum(axis=-1) >= 2).all(), name
    # One input channel is a block padded with three zeros: its weight is kept.
    assert np.count_nonzero(final.get_layer("conv1").kernel.numpy()) == 3 * 3 * 16
    assert final.evaluate(x_test, y_test, verbose=0)[1] > 0.85


def test_cluster_keeps_16_values_per_kernel(data):
    x, y, x_test, y_test = data
    clustered = compiled(tfc.cluster(cnn(), clusters=16, begin=0.3))
    assert all(isinstance(k.constraint, ClusterCentroids) for k in kernels(clustered).values())
    clustered.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    for name, kernel in kernels(clustered).items():
        assert np.unique(kernel.numpy()).size == 16, name
    assert clustered.evaluate(x_test, y_test, verbose=0)[1] > 0.85
    final = tfc.strip(clustered)
    assert "tfcompress" not in final.to_json()
    info = tfc.summary(final, print_fn=None)
    assert [row.clusters for row in info.rows] == [16, 16, 16, 16]


def test_a_pruned_kernel_counts_its_zero_among_its_clusters(data):
    # As tfmot's sparsity-preserving clustering: 4 clusters are the zero and 3 shared values (2-bit indices).
    x, y, _, _ = data
    model = compiled(tfc.cluster(tfc.prune(mlp(), 0.5, end=0.5), clusters=4, begin=0.5, init="linear"))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    for name, kernel in kernels(tfc.strip(model)).items():
        values = kernel.numpy()
        assert 0.0 in values and np.unique(values).size <= 4, name
        assert np.mean(values == 0) >= 0.5, name  # the pruned zeros, and weights that came nearest zero


def test_keras_file_saved_mid_schedule_resumes_on_the_same_course(data, tmp_path):
    x, y, _, _ = data
    callback = lambda: tfc.CompressionCallback(verbose=0)  # noqa: E731
    # Mask updates every 7 steps: the resumed fit starts at step 44, between two updates.
    uninterrupted = compiled(tfc.prune(mlp(), 0.8, end=0.9, frequency=7))
    course = uninterrupted.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[callback()]).history["sparsity"]

    path = tmp_path / "mid.keras"

    class SaveAndStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.save(path)
                self.model.stop_training = True

    first = compiled(tfc.prune(mlp(), 0.8, end=0.9, frequency=7))
    before = first.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[callback(), SaveAndStop()])
    saved = {name: kernel.numpy() for name, kernel in kernels(first).items()}

    resumed = tfc.load_model(path)
    assert isinstance(resumed.get_layer("hidden1").kernel.constraint, PruningMask)
    assert int(resumed.optimizer.iterations.numpy()) == 2 * 22
    first_step = {}

    class RecordFirstStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not first_step:
                first_step.update({name: kernel.numpy() == 0 for name, kernel in kernels(self.model).items()})

    after = resumed.fit(
        x, y, epochs=4, initial_epoch=2, batch_size=64, verbose=0, callbacks=[callback(), RecordFirstStep()]
    )
    assert before.history["sparsity"] + after.history["sparsity"] == pytest.approx(course, abs=1e-9)
    for name, kernel in kernels(resumed).items():
        # The masks came back from the file's zeros: one step later exactly those weights are zero.
        np.testing.assert_array_equal(first_step[name], saved[name] == 0, err_msg=name)
        assert sparsity(kernel) == pytest.approx(0.8, abs=0.001), name


class TwoLayerNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(64, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, inputs):
        return self.out(self.hidden(self.flatten(inputs)))


def test_subclassed_model_prunes_in_place(data):
    x, y, _, _ = data
    keras.utils.set_random_seed(0)
    model = TwoLayerNet()
    model(x[:1])
    pruned = compiled(tfc.prune(model, 0.7))
    assert pruned is model  # Keras cannot clone a subclassed model
    history = pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert sparsity(model.hidden.kernel) == pytest.approx(0.7, abs=0.001)
    assert sparsity(model.out.kernel) == pytest.approx(0.7, abs=0.001)
    assert history.history["sparsity"][-1] == pytest.approx(0.7, abs=0.001)
    final = tfc.strip(pruned)
    assert final.hidden.kernel.constraint is None and final.hidden.kernel_constraint is None


def test_bidirectional_lstm_prunes_both_directions_and_round_trips(data, tmp_path):
    # A text model: rows 2-4 of each digit as 24 token ids (intensities 0..16), labelled with the digit.
    x, y, x_test, y_test = data
    tokens = lambda images: np.rint(images[:, 2:5, :, 0] * 16).reshape(len(images), 24).astype("int32")  # noqa: E731
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24,), dtype="int32"), keras.layers.Embedding(17, 8, name="embedding"),
                              keras.layers.Bidirectional(keras.layers.LSTM(8), name="bi"),
                              keras.layers.Dense(10, name="logits")])
    pruned = compiled(tfc.prune(model, 0.5), learning_rate=1e-2)
    history = pruned.fit(tokens(x), y, epochs=2, batch_size=64, verbose=0,
                         callbacks=[tfc.CompressionCallback(verbose=0)])
    directions = [pruned.get_layer("bi").forward_layer, pruned.get_layer("bi").backward_layer]
    recurrent = {f"{d.name}/{w.name}": w for d in directions for w in (d.cell.kernel, d.cell.recurrent_kernel)}
    assert len(recurrent) == 4
    for name, weight in recurrent.items():
        assert isinstance(weight.constraint, PruningMask), name
        assert sparsity(weight) == pytest.approx(0.5, abs=0.01), name
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.01)
    assert pruned.evaluate(tokens(x_test), y_test, verbose=0)[1] > 0.3  # chance: 0.1
    pruned.save(tmp_path / "bi.keras")
    loaded = tfc.load_model(tmp_path / "bi.keras")
    assert isinstance(loaded.get_layer("bi").backward_layer.cell.recurrent_kernel.constraint, PruningMask)
    assert all(np.array_equal(a, b) for a, b in zip(pruned.get_weights(), loaded.get_weights()))
    final = tfc.strip(pruned)
    final.save(tmp_path / "plain.keras")
    plain = keras.models.load_model(tmp_path / "plain.keras")
    assert sparsity(plain.get_layer("bi").backward_layer.cell.kernel) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("K", [keras, tf_keras], ids=["keras3", "tf_keras"])
def test_schedule_step_follows_the_optimizer_with_steps_per_execution(K, data):
    # 22 batches an epoch, 8 steps per call: Keras 3 names the epoch's last call steps 16-23, though it runs 6.
    x, y, _, _ = data
    K.utils.set_random_seed(0)
    model = K.Sequential([K.Input((8, 8, 1)), K.layers.Flatten(), K.layers.Dense(10)])
    pruned = tfc.prune(model, 0.8, end=1.0)
    pruned.compile(K.optimizers.Adam(1e-3), K.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=8)
    callback = tfc.CompressionCallback(verbose=0)
    steps = []
    after_each_epoch = K.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: steps.append(callback.step))
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[callback, after_each_epoch])
    assert steps == [22, 44] and int(pruned.optimizer.iterations.numpy()) == 44
    assert sparsity(pruned.layers[-1].kernel if K is keras else pruned.layers[-1].layer.kernel) == pytest.approx(0.8, abs=0.01)


def test_training_without_the_callback_fails_and_never_moves_the_masks(data):
    x, y, _, _ = data
    pruned = compiled(tfc.prune(mlp(), 0.8))
    with pytest.raises(RuntimeError, match=r"tfcompress.CompressionCallback\(\)"):
        pruned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    pruned = compiled(tfc.prune(mlp(), 0.8, end=0.5))
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    zeros = {name: kernel.numpy() == 0 for name, kernel in kernels(pruned).items()}
    # A later fit without the callback reuses the compiled step: the masks stay exactly as they are.
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    for name, kernel in kernels(pruned).items():
        np.testing.assert_array_equal(kernel.numpy() == 0, zeros[name], err_msg=name)


class HoldsATfKerasLayer(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = tf_keras.layers.Dense(8)  # Keras 3 neither tracks nor trains it

    def call(self, inputs):
        return self.hidden(inputs)


def test_mixed_generations_are_refused_with_the_fix(data):
    x = data[0].reshape(-1, 64)
    model = HoldsATfKerasLayer()
    model(x[:1])
    for entry in (tfc.prune, tfc.cluster, tfc.strip, lambda m: tfc.summary(m, print_fn=None)):
        with pytest.raises(TypeError, match=r"Keras 3 model.*tf_keras \(Keras 2\) layer.*`import keras`"):
            entry(model)
    model.compile("adam", "mse")
    with pytest.raises(TypeError, match=r"tfc.CompressionCallback got a Keras 3 model.*tf_keras"):
        model.fit(x[:64], np.zeros((64, 8)), epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])

