"""tfc.Distiller on real digits: soft targets, features, schedules, cache, pruning, QAT, saving, errors."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import compile_classifier, dense_digits_model
from litert_helpers import int8_flatbuffer, int8_kernels, litert_predict
from scipy.special import log_softmax, softmax

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.distillation import Distiller, FeatureDistillation, LinearSchedule, LogitsDistillation
from tfcompress.pruning import PruneLowMagnitude


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_distiller(distiller, learning_rate=1e-3, optimizer=None):
    distiller.compile(optimizer or keras.optimizers.Adam(learning_rate), hard_loss(), metrics=["accuracy"])
    return distiller


def small_cnn(seed=0, filters=8, units=16):
    """A narrower functional CNN than the teacher: feature widths differ, spatial sizes match."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(units, activation="relu", name="dense")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


@pytest.fixture(scope="module")
def teacher(trained_cnn):
    """This module's copy of the session's digits CNN (about 99% test accuracy); Distillers freeze it."""
    return trained_cnn()


@pytest.mark.slow
def test_distilled_student_beats_the_student_trained_alone(teacher, digits):
    # 150 labelled digits; the teacher gives soft targets on the other train images (labels hidden).
    x, y, x_test, y_test = digits
    labelled = 150
    alone = compile_classifier(dense_digits_model(seed=2, width=64))
    initial = alone.get_weights()
    steps = 20 * len(x) // 64
    alone.fit(x[:labelled], y[:labelled], epochs=steps // (labelled // 32), batch_size=32, verbose=0)
    alone_accuracy = alone.evaluate(x_test, y_test, verbose=0)[1]

    student = dense_digits_model(seed=2, width=64)
    student.set_weights(initial)
    distiller = compile_distiller(Distiller(teacher=teacher, student=student, temperature=2.0, alpha=0.3))
    has_label = (np.arange(len(x)) < labelled).astype("float32")
    distiller.fit(x, y, sample_weight=has_label, epochs=20, batch_size=64, verbose=0)
    distilled_accuracy = distiller.evaluate(x_test, y_test, verbose=0)[1]

    teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
    assert teacher_accuracy > 0.97
    assert distilled_accuracy >= alone_accuracy + 0.015, (alone_accuracy, distilled_accuracy)
    assert distiller.student is student
    assert student.evaluate is not None and student.built


def test_loss_is_alpha_hard_plus_t2_kl_and_teacher_stays_frozen(teacher, digits):
    x, y, _, _ = digits
    batch, labels = x[:64], y[:64]
    student = dense_digits_model(seed=4, width=32)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.3, teacher_cache=False)
    compile_distiller(distiller, optimizer=keras.optimizers.SGD(0.0))
    history = distiller.fit(batch, labels, batch_size=64, epochs=1, verbose=0)

    student_logits = student.predict(batch, verbose=0)
    teacher_logits = teacher.predict(batch, verbose=0)
    t = 4.0
    kl = (softmax(teacher_logits / t, 1) * (log_softmax(teacher_logits / t, 1) - log_softmax(student_logits / t, 1)))
    distillation = kl.sum(1).mean() * t**2
    hard = -log_softmax(student_logits, 1)[np.arange(64), labels].mean()
    logs = {key: values[0] for key, values in history.history.items()}
    assert logs["distillation_loss"] == pytest.approx(distillation, rel=1e-4)
    assert logs["student_loss"] == pytest.approx(hard, rel=1e-4)
    assert logs["loss"] == pytest.approx(0.3 * hard + 0.7 * distillation, rel=1e-4)
    assert logs["temperature"] == 4.0 and logs["alpha"] == pytest.approx(0.3)
    assert not teacher.trainable
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_teacher_batchnorm_runs_in_inference_mode(digits):
    x, y, _, _ = digits
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential(
        [
            keras.layers.Flatten(input_shape=(8, 8, 1)),
            keras.layers.Dense(32, name="hidden"),
            keras.layers.BatchNormalization(momentum=0.9, name="norm"),
            keras.layers.ReLU(),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    norm = teacher.get_layer("norm")
    moving = [norm.moving_mean.numpy().copy(), norm.moving_variance.numpy().copy()]
    distiller = compile_distiller(Distiller(teacher=teacher, student=dense_digits_model(width=16), teacher_cache=False))
    distiller.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    np.testing.assert_array_equal(moving[0], norm.moving_mean.numpy())
    np.testing.assert_array_equal(moving[1], norm.moving_variance.numpy())


def test_evaluate_and_predict_are_the_students(teacher, digits):
    x, y, x_test, y_test = digits
    student = dense_digits_model(seed=1, width=32)
    distiller = compile_distiller(Distiller(teacher=teacher, student=student))
    history = distiller.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0, validation_data=(x_test, y_test))
    np.testing.assert_allclose(distiller.predict(x_test, verbose=0), student.predict(x_test, verbose=0), atol=1e-6)
    results = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    reference = compile_classifier(student).evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert results["accuracy"] == pytest.approx(reference["accuracy"])
    assert history.history["val_accuracy"][-1] == pytest.approx(reference["accuracy"])
    assert {"loss", "student_loss", "distillation_loss", "accuracy", "temperature", "alpha"} <= set(history.history)


def test_feature_distillation_with_different_widths_trains_projections(teacher, digits):
    x, y, _, _ = digits
    student = small_cnn(seed=3, filters=8, units=16)
    distiller = Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[
            LogitsDistillation(),
            FeatureDistillation(teacher_layer_name="conv2"),  # (8, 8, 32) teacher vs (8, 8, 8) student
            FeatureDistillation(teacher_layer_name="dense"),  # 64 vs 16 units
        ],
        distillation_loss_weights=[1.0, 0.5, 0.5],
    )
    assert [p.units for p in distiller.projections] == [32, 64]
    compile_distiller(distiller, learning_rate=3e-3)
    initial_projections = [p.kernel.numpy().copy() for p in distiller.projections]
    history = distiller.fit(x, y, epochs=6, batch_size=64, verbose=0).history
    for name in ("feature_loss_conv2", "feature_loss_dense", "logits_loss"):
        assert history[name][-1] < 0.7 * history[name][0], (name, history[name])
    assert history["accuracy"][-1] > 0.8
    for before, projection in zip(initial_projections, distiller.projections):
        assert not np.allclose(before, projection.kernel.numpy())  # learned
    # The projections are training-only: the student keeps its own layers and size.
    assert student.count_params() == small_cnn(filters=8, units=16).count_params()


def test_schedules_follow_the_fit_and_are_logged(teacher, digits):
    x, y, _, _ = digits
    distiller = compile_distiller(
        Distiller(
            teacher=teacher,
            student=dense_digits_model(width=16),
            temperature=LinearSchedule(8.0, 2.0),
            alpha=LinearSchedule(0.0, 0.5, begin=0.5, end=1.0),
        )
    )
    callback = tfc.CompressionCallback(verbose=0)
    history = distiller.fit(x[:640], y[:640], epochs=4, batch_size=64, verbose=0, callbacks=[callback]).history
    # 40 steps; the log shows the value of the epoch's last step (steps 9, 19, 29, 39).
    np.testing.assert_allclose(history["temperature"], [8 - 6 * s / 40 for s in (9, 19, 29, 39)], rtol=1e-6)
    np.testing.assert_allclose(history["alpha"], [0.0, 0.0, 0.5 * 9 / 20, 0.5 * 19 / 20], rtol=1e-6, atol=1e-7)
    (entry,) = [e for e in callback.plan if e["compression"] == "distillation"]
    assert "temperature 8 -> 2 over steps 0-40" in entry["description"]


def test_scheduled_values_need_the_callback(teacher, digits):
    distiller = compile_distiller(
        Distiller(teacher=teacher, student=dense_digits_model(width=16), temperature=LinearSchedule(4.0, 1.0))
    )
    with pytest.raises(ValueError, match=r"callbacks=\[tfc.CompressionCallback\(\)\]"):
        distiller.fit(digits[0][:64], digits[1][:64], verbose=0)


def test_cache_on_and_off_give_the_same_loss_and_step(teacher, digits):
    x, y, _, _ = digits
    batch, labels = x[:256], y[:256]
    results = {}
    for cache in (True, False):
        student = small_cnn(seed=5)
        distiller = Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=[LogitsDistillation(), FeatureDistillation(teacher_layer_name="dense")],
            teacher_cache=cache,
        )
        compile_distiller(distiller, optimizer=keras.optimizers.SGD(0.1))
        history = distiller.fit(batch, labels, batch_size=256, epochs=1, verbose=0).history
        assert distiller.teacher_cache_used is cache
        results[cache] = (history, student.get_weights())
    (cached, cached_weights), (uncached, uncached_weights) = results[True], results[False]
    for key in ("loss", "student_loss", "distillation_loss", "logits_loss", "feature_loss_dense"):
        assert cached[key][0] == pytest.approx(uncached[key][0], rel=1e-5), key
    for a, b in zip(cached_weights, uncached_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


class TraceCountingDistiller(Distiller):
    """Counts how often `fit` traces the train step (its Python body runs only while tracing)."""

    traces = 0

    def train_step(self, data):
        self.traces += 1
        return super().train_step(data)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain student", "pruned + QAT student"])
def test_fit_on_arrays_traces_the_train_step_once(teacher, digits, compressed):
    # Keras traces a step that creates variables (optimizer slots, metrics) twice; the Distiller creates them first.
    from tfcompress.quantization import quantize

    x, y, _, _ = digits
    student = dense_digits_model(seed=3, width=32)
    if compressed:
        student = quantize(tfc.prune(student, 0.5, end=0.5), start=0.5)
    distiller = compile_distiller(TraceCountingDistiller(teacher=teacher, student=student, temperature=2.0))
    history = distiller.fit(
        x[:256], y[:256], epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)]
    )
    assert distiller.traces == 1
    assert history.history["accuracy"][-1] > history.history["accuracy"][0]
    assert len(distiller.optimizer.variables) > 1  # the slots the first step would otherwise have created
    if compressed:
        assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.02)


def test_cached_teacher_outputs_follow_their_examples_through_shuffling(teacher, digits):
    # The student is a copy of the teacher: any example/teacher-output mismatch would give a KL > 0.
    x, y, _, _ = digits
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    distiller = Distiller(teacher=teacher, student=student, alpha=0.0)
    compile_distiller(distiller, optimizer=keras.optimizers.SGD(0.0))
    history = distiller.fit(x, y, epochs=3, batch_size=32, shuffle=True, validation_split=0.2, verbose=0).history
    assert distiller.teacher_cache_used
    assert max(history["distillation_loss"]) < 1e-5
    assert history["val_accuracy"][-1] > 0.95


def test_cache_is_announced_and_refused_with_reasons(teacher, digits, capsys):
    x, y, _, _ = digits
    distiller = compile_distiller(Distiller(teacher=teacher, student=dense_digits_model(width=16)))
    distiller.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=2)
    assert "teacher outputs cached: 128 examples" in capsys.readouterr().out

    dataset = tf.data.Dataset.from_tensor_slices((x[:128], y[:128]))
    distiller.fit(dataset.batch(64), epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert "teacher outputs not cached" in out and "tf.data.Dataset" in out and "cache_teacher_outputs" in out
    assert distiller.teacher_cache_used is False

    cached = distiller.cache_teacher_outputs(dataset).shuffle(128).batch(64)
    history = distiller.fit(cached, epochs=1, verbose=2)
    assert "they come with the dataset" in capsys.readouterr().out
    assert distiller.teacher_cache_used and np.isfinite(history.history["loss"][0])

    with pytest.raises(ValueError, match="before .shuffle"):
        distiller.cache_teacher_outputs(dataset.shuffle(128, seed=1))
    strict = compile_distiller(Distiller(teacher=teacher, student=dense_digits_model(width=16), teacher_cache=True))
    with pytest.raises(ValueError, match="teacher_cache=True.*cache_teacher_outputs"):
        strict.fit(dataset.batch(64), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"numpy arrays or tensors.*a list. Pass np.asarray\(x\)"):
        strict.fit(x[:64].tolist(), y[:64], epochs=1, verbose=0)


def test_cached_dataset_gives_the_loss_of_cached_arrays(teacher, digits):
    x, y, _, _ = digits
    losses = []
    for as_dataset in (False, True):
        distiller = Distiller(teacher=teacher, student=dense_digits_model(seed=6, width=16))
        compile_distiller(distiller, optimizer=keras.optimizers.SGD(0.0))
        if as_dataset:
            data = distiller.cache_teacher_outputs(tf.data.Dataset.from_tensor_slices((x[:200], y[:200]))).batch(200)
            history = distiller.fit(data, epochs=1, verbose=0)
        else:
            history = distiller.fit(x[:200], y[:200], batch_size=200, epochs=1, verbose=0)
        losses.append(history.history["loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.slow
def test_prune_and_distill_in_one_fit_then_litert(teacher, digits):
    x, y, x_test, y_test = digits
    student = tfc.prune(dense_digits_model(seed=8, width=64), final_sparsity=0.8, end=0.5)
    distiller = compile_distiller(
        Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=[
                LogitsDistillation(),
                FeatureDistillation(teacher_layer_name="dense", student_layer_name="hidden2"),
            ],
            temperature=LinearSchedule(4.0, 2.0),
        ),
        learning_rate=3e-3,
    )
    callback = tfc.CompressionCallback(verbose=0)
    history = distiller.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[callback]).history
    assert {e["compression"] for e in callback.plan} == {"pruning", "distillation"}
    (pruning,) = [e for e in callback.plan if e["compression"] == "pruning"]
    assert sorted(pruning["layers"]) == ["hidden1", "hidden2", "logits"]  # each wrapper found once
    assert history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    for wrapper in (layer for layer in student.layers if isinstance(layer, PruneLowMagnitude)):
        (weight, mask, _), = wrapper.pruning_vars
        assert 1 - np.count_nonzero(weight.numpy() * mask.numpy()) / mask.shape.num_elements() == pytest.approx(
            0.8, abs=0.01
        )

    final = tfc.strip(distiller.student)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in final.layers)
    assert tfc.summary(final, print_fn=None).total.sparsity == pytest.approx(0.8, abs=0.01)
    keras_accuracy = float(np.mean(final.predict(x_test, verbose=0).argmax(-1) == y_test))
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(final).convert()
    litert_accuracy = float(np.mean(litert_predict(flatbuffer, x_test).argmax(-1) == y_test))
    assert keras_accuracy > 0.85
    assert litert_accuracy == pytest.approx(keras_accuracy, abs=0.005)


@pytest.mark.slow
def test_prune_qat_and_distill_in_one_fit_converts_to_int8(teacher, digits):
    from tfcompress.quantization import quantize

    x, y, x_test, y_test = digits
    student = quantize(tfc.prune(dense_digits_model(seed=8, width=64), 0.8, end=0.5), start=0.6)
    distiller = compile_distiller(
        Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=[LogitsDistillation(), FeatureDistillation(teacher_layer_name="dense", student_layer_name="hidden2")],
        ),
        learning_rate=3e-3,
    )
    history = distiller.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert history.history["qat_phase"][-1] == 1.0
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    final = tfc.strip(distiller.student)
    flatbuffer = int8_flatbuffer(final)
    kernels = int8_kernels(flatbuffer)
    assert len(kernels) == 3
    for kernel in kernels:
        assert 1 - np.count_nonzero(kernel) / kernel.size >= 0.79
    assert float(np.mean(litert_predict(flatbuffer, x_test).argmax(-1) == y_test)) > 0.85


def test_save_saves_the_student(teacher, digits, tmp_path):
    x, y, x_test, _ = digits
    student = tfc.prune(dense_digits_model(seed=9, width=16), 0.5)
    distiller = compile_distiller(Distiller(teacher=teacher, student=student))
    distiller.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    expected = student.predict(x_test, verbose=0)

    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert loaded.name == student.name
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), expected, atol=1e-6)

    tfc.strip(distiller.student).save(tmp_path / "student.keras")
    plain = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(plain.predict(x_test, verbose=0), expected, atol=1e-5)

    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    distiller.fit(x[:256], y[:256], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0), checkpoint])
    assert keras.models.load_model(tmp_path / "best.keras").count_params() == student.count_params()
    with pytest.raises(NotImplementedError, match="distiller.student.save"):
        distiller.get_config()

    # Training checkpoints of the whole Distiller (student, projections, schedule values) still work.
    distiller.save_weights(tmp_path / "checkpoint" / "distiller")
    restored = Distiller(teacher=teacher, student=tfc.prune(dense_digits_model(seed=10, width=16), 0.5))
    restored.load_weights(tmp_path / "checkpoint" / "distiller").expect_partial()  # no optimizer state: not compiled
    np.testing.assert_allclose(restored.predict(x_test, verbose=0), student.predict(x_test, verbose=0), atol=1e-6)
    restored.summary(print_fn=lambda line, **kwargs: None)


def test_a_keras3_model_beside_a_tf_keras_one_is_refused_with_the_fix(teacher):
    import keras as keras3

    keras3_model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(), keras3.layers.Dense(10)])
    with pytest.raises(TypeError, match=r"Keras 3 teacher and a tf_keras \(Keras 2\) student.*import tf_keras as keras"):
        Distiller(teacher=keras3_model, student=dense_digits_model())
    with pytest.raises(TypeError, match=r"tf_keras \(Keras 2\) teacher and a Keras 3 student.*rebuild the teacher"):
        Distiller(teacher=teacher, student=keras3_model)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"temperature": 0.0}, ValueError, r"`temperature` must be > 0; got 0.0. A typical temperature"),
        ({"temperature": LinearSchedule(4.0, -1.0)}, ValueError, r"`temperature` must be > 0"),
        ({"alpha": 1.5}, ValueError, r"`alpha` must be in \[0, 1\]; got 1.5"),
        ({"alpha": -0.1}, ValueError, r"`alpha` must be in \[0, 1\]"),
        ({"alpha": 0.5, "student_loss_weight": 0.5}, ValueError, "not both"),
        ({"teacher_cache": "yes"}, ValueError, "teacher_cache"),
        ({"distillation_losses": [FeatureDistillation(teacher_layer_name="hidden9")]}, ValueError,
         r"the teacher .* has no layer named 'hidden9'.*\['conv1', 'conv2'"),
        ({"distillation_losses": [FeatureDistillation(teacher_layer_name="dense", student_layer_name="nope")]},
         ValueError, r"the student .* no layer named 'nope'.*'hidden1'.*student_layer_name="),
        ({"distillation_losses": [FeatureDistillation(teacher_layer_name="conv2", student_layer_name="hidden1")]},
         ValueError, "differ beyond the channel axis"),
        ({"distillation_losses": [LogitsDistillation()], "distillation_loss_weights": [1.0, 2.0]}, ValueError,
         "one weight per loss"),
        ({"temperature": 2.0, "distillation_losses": LogitsDistillation(temperature=5.0)}, ValueError,
         "given twice"),
    ],
)
def test_bad_arguments_name_the_fix(teacher, kwargs, error, message):
    with pytest.raises(error, match=message):
        Distiller(teacher=teacher, student=dense_digits_model(width=16), **kwargs)


def test_incompatible_models_name_the_fix(teacher):
    inputs = keras.Input((8, 8, 1))
    five_classes = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match=r"output shapes differ: teacher \(10,\), student \(5,\).*10 units"):
        Distiller(teacher=teacher, student=five_classes)
    softmax_student = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match=r"ends in a softmax.*from_logits=True"):
        Distiller(teacher=teacher, student=softmax_student)
    distiller = Distiller(teacher=teacher, student=dense_digits_model(width=16))
    with pytest.raises(ValueError, match=r"needs `loss=`.*alpha=0.0"):
        distiller.compile("adam", metrics=["accuracy"])


def test_pure_distillation_needs_no_labels(teacher, digits):
    x, _, x_test, y_test = digits
    distiller = Distiller(teacher=teacher, student=dense_digits_model(seed=3, width=64), alpha=0.0, temperature=2.0)
    distiller.compile(keras.optimizers.Adam(3e-3))
    history = distiller.fit(x, epochs=8, batch_size=64, verbose=0).history
    assert "student_loss" not in history
    assert float(np.mean(distiller.predict(x_test, verbose=0).argmax(-1) == y_test)) > 0.9
