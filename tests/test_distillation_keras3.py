"""tfc.Distiller with Keras 3 teacher and student (`import keras`), on real digits.

One Distiller for both generations: Keras 3 models get a Keras 3 model whose
`compute_loss` uses `keras.ops` only, so the same class trains on TensorFlow
and on JAX (test_jax_backend.py: a fresh interpreter, a process has one backend),
with a student pruned by `tfc.prune` and every schedule driven by `tfc.CompressionCallback`.
"""

import keras
import numpy as np
import pytest
import tf_keras
from scipy.special import log_softmax, softmax

import tfcompress as tfc
from test_keras3 import compiled, count_traces
from tfcompress.demo import load_digits
from tfcompress.distillation import FeatureDistillation, Keras3Distiller, LinearSchedule, LogitsDistillation
from tfcompress.pruning.constraints import PruningMask

LABELLED = 150  # the rest of the training digits come without labels: the teacher alone teaches them


@pytest.fixture(scope="module")
def data():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test, y_test


def mlp(seed=0, width=64):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten(name="flatten")(inputs)
    h = keras.layers.Dense(width, activation="relu", name="hidden1")(h)
    h = keras.layers.Dense(width, activation="relu", name="hidden2")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def logits(model, x):
    """`model`'s outputs for `x`, called eagerly (a predict loop would be traced for each model)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def accuracy(model, x, y):
    return float(np.mean(np.argmax(logits(model, x), -1) == y))


def sparsity(variable):
    values = keras.ops.convert_to_numpy(variable)
    return 1.0 - np.count_nonzero(values) / values.size


@pytest.fixture(scope="module")
def teacher(data):
    """A Keras 3 MLP trained on every label (about 97% test accuracy); Distillers freeze it."""
    x, y, _, _ = data
    model = compiled(mlp(seed=0, width=64))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    return model


def pruned_student(seed=2):
    return tfc.prune(mlp(seed=seed, width=64), final_sparsity=0.8, end=0.5)


@pytest.fixture(scope="module")
def distilled(teacher, data):
    """A student pruned to 0.8 and distilled in one fit from the teacher, with 150 labels: (distiller, history, traces)."""
    x, y, _, _ = data
    distiller = tfc.Distiller(teacher=teacher, student=pruned_student(), alpha=0.3,
                              temperature=LinearSchedule(3.0, 1.5))
    compiled(distiller, learning_rate=1e-2)
    has_label = (np.arange(len(x)) < LABELLED).astype("float32")
    traces = count_traces(distiller)
    history = distiller.fit(
        x, y, sample_weight=has_label, epochs=6, batch_size=64, verbose=0,
        callbacks=[tfc.CompressionCallback(verbose=0)],
    )
    return distiller, history.history, traces


def test_one_distiller_class_gives_a_keras3_model_for_keras3_models(distilled, teacher):
    distiller, _, _ = distilled
    assert isinstance(distiller, Keras3Distiller) and isinstance(distiller, keras.Model)
    assert isinstance(distiller, tfc.Distiller)
    assert distiller.teacher is teacher and not teacher.trainable
    assert distiller.teacher_cache_used  # numpy inputs: the teacher ran once, before training


def test_pruned_student_learns_from_the_teacher_in_one_fit(distilled, teacher, data):
    distiller, history, traces = distilled
    x, y, x_test, y_test = data
    student = distiller.student
    # The same student pruned and trained alone on the 150 labels, repeated: as many steps of 64 examples.
    alone = compiled(pruned_student(), learning_rate=1e-2)
    repeated = np.resize(np.arange(LABELLED), len(x))
    alone.fit(x[repeated], y[repeated], epochs=6, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert accuracy(teacher, x_test, y_test) > 0.95
    # Measured over student seeds 2-5: +0.003 to +0.031 test accuracy (seed 2: +0.028) and +0.015 to
    # +0.043 agreement with the teacher (seed 2: +0.040), distilled over alone.
    distilled_accuracy, alone_accuracy = accuracy(student, x_test, y_test), accuracy(alone, x_test, y_test)
    assert distilled_accuracy >= alone_accuracy, (distilled_accuracy, alone_accuracy)
    assert distilled_accuracy > 0.93
    teacher_classes = logits(teacher, x_test).argmax(-1)
    agreement = {model.name: np.mean(logits(model, x_test).argmax(-1) == teacher_classes)
                 for model in (student, alone)}
    assert agreement[student.name] >= agreement[alone.name] + 0.01, agreement

    for name in ("hidden1", "hidden2", "logits"):
        kernel = student.get_layer(name).kernel
        assert isinstance(kernel.constraint, PruningMask)
        assert sparsity(kernel) == pytest.approx(0.8, abs=0.01), name
    assert history["sparsity"][0] < 0.8 and history["sparsity"][-1] == pytest.approx(0.8, abs=0.005)
    # Logged per epoch: the temperature at the epoch's last step (3 -> 1.5 over the 132 steps), alpha.
    assert history["temperature"] == pytest.approx([3.0 - 1.5 * (22 * e - 1) / 132 for e in range(1, 7)], abs=1e-4)
    assert history["alpha"] == pytest.approx([0.3] * 6)
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        assert len(history[key]) == 6, key
    assert history["distillation_loss"][-1] < 0.5 * history["distillation_loss"][0]
    assert len(traces) == 1  # the optimizer and metrics were built before the step (sample weights included)


def test_student_saves_loads_and_strips(distilled, data, tmp_path):
    distiller, _, _ = distilled
    _, _, x_test, _ = data
    expected = distiller.predict(x_test, verbose=0)
    np.testing.assert_allclose(logits(distiller.student, x_test), expected, atol=1e-6)
    distiller.save(tmp_path / "student.keras")  # the student, not the Distiller
    loaded = tfc.load_model(tmp_path / "student.keras")
    assert loaded.name == distiller.student.name
    assert isinstance(loaded.get_layer("hidden1").kernel.constraint, PruningMask)
    np.testing.assert_allclose(logits(loaded, x_test), expected, atol=1e-5)

    final = tfc.strip(distiller.student)
    assert "tfcompress" not in final.to_json()
    final.save(tmp_path / "final.keras")
    plain = keras.models.load_model(tmp_path / "final.keras")
    np.testing.assert_allclose(logits(plain, x_test), expected, atol=1e-5)
    assert sparsity(plain.get_layer("hidden1").kernel) == pytest.approx(0.8, abs=0.01)
    with pytest.raises(NotImplementedError, match="distiller.student.save"):
        distiller.get_config()


def test_loss_is_alpha_hard_plus_t2_kl_plus_features_and_evaluation_is_the_students(teacher, data):
    x, y, _, _ = data
    batch, labels = x[:64], y[:64]
    student = mlp(seed=4, width=16)
    distiller = tfc.Distiller(
        teacher=teacher, student=student, temperature=4.0, alpha=0.3, teacher_cache=False,
        distillation_losses=[LogitsDistillation(), FeatureDistillation(teacher_layer_name="hidden2")],
        distillation_loss_weights=[1.0, 0.5],
    )
    distiller.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logs = distiller.fit(batch, labels, batch_size=64, epochs=1, verbose=0).history

    student_logits = logits(student, batch)
    teacher_logits = logits(teacher, batch)
    t = 4.0
    soft = softmax(teacher_logits / t, 1)
    kl = np.mean(np.sum(soft * (log_softmax(teacher_logits / t, 1) - log_softmax(student_logits / t, 1)), 1)) * t**2
    hard = -np.mean(log_softmax(student_logits, 1)[np.arange(64), labels])
    # The projection (not part of the student) maps the student's 16 features onto the teacher's 64.
    (projection,) = distiller.projections
    assert tuple(projection.kernel.shape) == (16, 64)
    assert all(w is not projection.kernel for w in student.weights)
    features = [logits(keras.Model(m.input, m.get_layer("hidden2").output), batch) for m in (teacher, student)]
    mse = np.mean((features[0] - features[1] @ keras.ops.convert_to_numpy(projection.kernel)) ** 2)
    assert logs["logits_loss"][0] == pytest.approx(kl, rel=1e-4)
    assert logs["feature_loss_hidden2"][0] == pytest.approx(mse, rel=1e-4)
    assert logs["distillation_loss"][0] == pytest.approx(kl + 0.5 * mse, rel=1e-4)
    assert logs["student_loss"][0] == pytest.approx(hard, rel=1e-4)
    assert logs["loss"][0] == pytest.approx(0.3 * hard + 0.7 * (kl + 0.5 * mse), rel=1e-4)
    evaluated = distiller.evaluate(batch, labels, verbose=0, return_dict=True)
    assert set(evaluated) == {"loss"} and evaluated["loss"] == pytest.approx(hard, rel=1e-4)


def test_scheduled_values_need_the_callback(teacher, data):
    x, y, _, _ = data
    distiller = compiled(tfc.Distiller(teacher=teacher, student=mlp(width=16), alpha=LinearSchedule(0.1, 0.5)))
    with pytest.raises(ValueError, match=r"callbacks=\[tfc.CompressionCallback\(\)\]"):
        distiller.fit(x[:64], y[:64], epochs=1, verbose=0)


def tf_keras_mlp():
    inputs = tf_keras.Input((8, 8, 1))
    h = tf_keras.layers.Flatten()(inputs)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(10)(h))


def test_mixed_generations_name_the_fix(teacher):
    with pytest.raises(TypeError, match=r"tf_keras \(Keras 2\) teacher and a Keras 3 student.*rebuild the teacher "
                                        r"with `import keras`.*set_weights\(teacher.get_weights\(\)\)"):
        tfc.Distiller(teacher=tf_keras_mlp(), student=mlp(width=16))
    with pytest.raises(TypeError, match=r"Keras 3 teacher and a tf_keras \(Keras 2\) student.*rebuild the student "
                                        r"with `import keras`.*build the teacher with `import tf_keras as keras`"):
        tfc.Distiller(teacher=teacher, student=tf_keras_mlp())
    with pytest.raises(TypeError, match=r"tf_keras loss.*keras.losses"):
        tfc.Distiller(teacher=teacher, student=mlp(width=64), distillation_losses=[
            FeatureDistillation(loss=tf_keras.losses.MeanSquaredError(), teacher_layer_name="hidden2")])



def test_array_inputs_become_batches_as_keras_slices_them(data):
    """The Distiller's own input pipeline for arrays: Keras's batches, cached teacher outputs kept aligned."""
    from tfcompress.distillation import teacher_cache
    from tfcompress.distillation.keras3 import array_batches

    x = np.arange(70, dtype="float32").reshape(70, 1)
    packed = teacher_cache.pack(x, {"final": 2 * x})
    dataset, steps = array_batches(packed, np.arange(70), {"batch_size": 32})
    assert steps == 3
    # Keras 3 keeps one iterator for the whole fit (steps_per_epoch=steps): each pass of it is an epoch.
    stream = iter(dataset)
    epochs = [[(inputs, targets.numpy()) for inputs, targets in (next(stream) for _ in range(steps))]
              for _ in range(2)]
    orders = []
    for batches in epochs:
        assert [len(targets) for _, targets in batches] == [32, 32, 6]  # the last batch partial
        order = np.concatenate([targets for _, targets in batches])
        assert sorted(order) == list(range(70))  # every example once
        for inputs, targets in batches:  # inputs, teacher outputs and targets gathered together
            features, teacher = teacher_cache.unpack(inputs)
            assert np.array_equal(features.numpy()[:, 0], targets)
            assert np.array_equal(teacher["final"].numpy()[:, 0], 2 * targets)
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    kept, steps = array_batches(x, None, {"batch_size": 32, "shuffle": False})
    assert np.array_equal(np.concatenate([batch.numpy() for batch in kept.take(2 * steps)])[:, 0],
                          np.tile(np.arange(70), 2))
    # What only Keras's own slicing does is left to it.
    for kwargs in ({"validation_split": 0.2}, {"sample_weight": np.ones(70)}, {"shuffle": "batch"},
                   {"class_weight": {0: 1.0}}, {"steps_per_epoch": 2}):
        assert array_batches(x, np.arange(70), kwargs) is None, kwargs
    assert array_batches(x, np.arange(69), {}) is None  # Keras names the mismatch


def test_fit_on_arrays_trains_through_the_pipeline_and_keeps_keras_options(data):
    x, y, _, _ = data
    teacher, student = compiled(mlp(seed=1, width=64)), mlp(seed=2, width=16)
    teacher.fit(x, y, epochs=1, batch_size=64, verbose=0)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=2.0)
    distiller.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = distiller.fit(x, y, epochs=2, batch_size=100, verbose=0)
    assert int(distiller.optimizer.iterations.numpy()) == 2 * 14  # 1,400 digits in batches of 100
    history = distiller.fit(x, y, epochs=1, batch_size=100, validation_split=0.25, verbose=0)
    assert "val_loss" in history.history  # Keras's own slicing, as asked
