"""Mixed precision (mixed_float16 / mixed_bfloat16) on real digits: prune, cluster, quantize, Distiller, export.

Every verb works under both policies: QAT and export run on a float32 copy with the same weights.
"""

import contextlib
import functools

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax, softmax

import tfcompress as tfc
import tflite_export
from tfcompress._keras import keras
from tfcompress._layers import walk
from tfcompress.distillation import LogitsDistillation

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")
HALF = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
HALF_NUMPY = {"mixed_float16": np.float16, "mixed_bfloat16": tf.bfloat16.as_numpy_dtype}



@pytest.fixture(autouse=True)
def float32_afterwards():
    """Every test leaves the global policy as it found it: float32."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@functools.lru_cache(maxsize=None)
def unsupported_reason(policy):
    """Why this CPU cannot run `policy` (None when it can): one conv + dense step in its compute dtype."""
    dtype = tf.as_dtype(HALF.get(policy, "float32"))
    try:
        images = tf.ones((2, 8, 8, 1), dtype)
        features = tf.nn.conv2d(images, tf.ones((3, 3, 1, 4), dtype), 1, "SAME")
        tf.matmul(tf.reshape(features, (2, -1)), tf.ones((256, 3), dtype)).numpy()
    except (tf.errors.OpError, TypeError, ValueError) as error:
        return f"{policy} does not run on this CPU: {type(error).__name__}: {str(error)[:200]}"
    return None


def use_policy(policy):
    reason = unsupported_reason(policy)
    if reason:
        pytest.skip(reason)
    keras.mixed_precision.set_global_policy(policy)


@contextlib.contextmanager
def keras3_mixed_float16():
    """Keras 3's own global policy at mixed_float16 for the block (skipped where the CPU cannot run it)."""
    import keras as keras3

    reason = unsupported_reason("mixed_float16")
    if reason:
        pytest.skip(reason)
    keras3.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras3.utils.set_random_seed(0)
        yield keras3
    finally:
        keras3.mixed_precision.set_global_policy("float32")


def digits_cnn(seed=0, float32_logits=True):
    """The digits CNN, built under the current global policy; optionally with float32 logits (tf_keras's advice)."""
    keras.utils.set_random_seed(seed)
    layers = [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="dense"),
        keras.layers.Dense(10, name="logits"),
    ]
    if float32_logits:
        layers.append(keras.layers.Activation("linear", dtype="float32", name="float32_logits"))
    return keras.Sequential(layers)


def digits_mlp(seed=0, float32_logits=True):
    keras.utils.set_random_seed(seed)
    layers = [
        keras.layers.Flatten(input_shape=(8, 8, 1)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ]
    if float32_logits:
        layers.append(keras.layers.Activation("linear", dtype="float32", name="float32_logits"))
    return keras.Sequential(layers)


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_classifier(model, learning_rate=3e-3):
    model.compile(keras.optimizers.Adam(learning_rate), hard_loss(), metrics=["accuracy"])
    return model


def float_variables(model):
    return [v for v in model.weights if v.dtype.is_floating]


def assert_mixed(model, policy):
    """Variables are float32; the layers that compute (not the float32 head) compute in the half dtype."""
    assert {v.dtype.name for v in float_variables(model)} == {"float32"}
    computing = [layer for layer in walk(model) if layer.name != "float32_logits" and layer.weights]
    assert computing and {layer.compute_dtype for layer in computing} == {HALF[policy]}
    logits = model.get_layer(index=len(model.layers) - 2)
    assert logits.output.dtype == HALF[policy]
    assert model.output.dtype == "float32"


@pytest.fixture(scope="module")
def teacher(digits):
    """A float32 digits CNN (about 99% test accuracy), built and trained under the float32 policy."""
    x, y, _, _ = digits
    keras.mixed_precision.set_global_policy("float32")
    model = compile_classifier(digits_cnn(seed=0))
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    return model


# ---- tfc.prune ----


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_prune_under_a_mixed_policy_reaches_its_sparsity(policy, digits):
    x, y, x_test, y_test = digits
    use_policy(policy)
    pruned = compile_classifier(tfc.prune(digits_cnn(seed=0), final_sparsity=0.8))
    if policy == "mixed_float16":
        assert isinstance(pruned.optimizer, keras.mixed_precision.LossScaleOptimizer)
    history = pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])

    assert_mixed(pruned, policy)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.002)
    assert pruned.evaluate(x_test, y_test, verbose=0)[1] > 0.85
    final = tfc.strip(pruned)
    for layer in final.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            assert np.mean(layer.kernel.numpy() == 0) == pytest.approx(0.8, abs=0.003), layer.name
    # The stripped model keeps its layers' policy and still answers in float32.
    assert final.get_layer("conv2").compute_dtype == HALF[policy]
    assert final.predict(x_test[:4], verbose=0).dtype == np.float32


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_pruning_keeps_the_float32_master_kernel(policy, digits):
    # A step with learning rate 0 must leave the float32 kernel exactly as it was.
    x, y, _, _ = digits
    use_policy(policy)
    pruned = tfc.prune(digits_mlp(seed=0), final_sparsity=0.5)
    pruned.compile(keras.optimizers.SGD(0.0), hard_loss())
    kernel = pruned.get_layer("prune_low_magnitude_hidden").layer.kernel
    before = kernel.numpy()
    assert np.mean(before.astype(HALF_NUMPY[policy]).astype(np.float32) != before) > 0.5  # off the half grid
    pruned.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])
    after = kernel.numpy()
    kept = after != 0
    np.testing.assert_array_equal(after[kept], before[kept])


# ---- tfc.cluster ----


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_cluster_under_a_mixed_policy_shares_its_values(policy, digits):
    x, y, x_test, y_test = digits
    use_policy(policy)
    model = compile_classifier(digits_cnn(seed=0))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    clustered = compile_classifier(tfc.cluster(model, clusters=8), learning_rate=1e-3)
    clustered.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])

    assert_mixed(clustered, policy)
    assert clustered.evaluate(x_test, y_test, verbose=0)[1] > 0.85
    final = tfc.strip(clustered)
    for layer in final.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            assert len(np.unique(layer.kernel.numpy())) <= 8, layer.name


# ---- tfc.quantize and tflite_export ----


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_quantize_under_a_mixed_policy_trains_and_exports_int8(policy, digits, tmp_path):
    x, y, x_test, y_test = digits
    use_policy(policy)
    qat = compile_classifier(tfc.quantize(digits_cnn(seed=0), start=0.3))
    history = qat.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])

    assert history.history["qat_phase"][-1] == 1
    # Fake quantization is float32-only, so QAT computes in float32 whatever the policy.
    assert {layer.compute_dtype for layer in walk(qat)} == {"float32"}
    assert {v.dtype.name for v in float_variables(qat)} == {"float32"}
    accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.9
    result = tflite_export.export(
        tfc.strip(qat), tmp_path / "qat.tflite", precision="int8", validation_data=(x_test, y_test), latency_runs=2
    )
    assert result.verification.tflite_accuracy >= accuracy - 0.02


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_export_of_a_mixed_policy_model(policy, digits, tmp_path):
    x, y, x_test, y_test = digits
    use_policy(policy)
    model = compile_classifier(digits_cnn(seed=0))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    keras.mixed_precision.set_global_policy("float32")
    for precision in ("fp32", "int8"):
        result = tflite_export.export(
            model, tmp_path / f"{precision}.tflite", precision=precision, representative_data=x[:256],
            validation_data=(x_test, y_test), latency_runs=2,
        )
        assert result.verification.tflite_accuracy >= accuracy - 0.02, precision
    # The user's model is untouched: it still computes in half precision.
    assert model.get_layer("conv2").compute_dtype == HALF[policy]


def test_keras3_model_under_a_mixed_policy_trains_and_exports_int8(digits, tmp_path):
    # Keras 3 (`import keras`) keeps a global policy of its own; its QAT layers follow it.
    x, y, x_test, y_test = digits
    with keras3_mixed_float16() as keras3:
        inputs = keras3.Input((8, 8, 1))
        h = keras3.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
        h = keras3.layers.ReLU(name="relu")(keras3.layers.BatchNormalization(name="bn")(h))
        # A standalone BatchNorm (after the ReLU) becomes a QuantBatchNormalization, whose ranges are float32.
        h = keras3.layers.BatchNormalization(name="bn_after")(h)
        h = keras3.layers.Flatten(name="flatten")(h)
        # Logits in float16, then float32 (Keras's advice): the output quantizer keeps float32.
        h = keras3.layers.Dense(10, name="logits")(h)
        model = keras3.Model(inputs, keras3.layers.Activation("linear", dtype="float32", name="float32_logits")(h))
        qat = tfc.quantize(tfc.prune(model, final_sparsity=0.5), start=0.3)
    qat.compile(keras3.optimizers.Adam(3e-3), keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert qat.get_layer("conv").compute_dtype == "float16"
    assert keras3.backend.standardize_dtype(qat(x_test[:2]).dtype) == "float32"
    accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.9
    result = tflite_export.export(qat, tmp_path / "qat.tflite", precision="int8",
                                  validation_data=(x_test, y_test), latency_runs=0)
    # The converter takes float32 graphs: the float32 copy (same weights and ranges) is what converts.
    assert result.float32_copy and result.report.fully_integer
    assert abs(result.verification.tflite_accuracy - accuracy) <= 0.01
    assert qat.get_layer("conv").compute_dtype == "float16"  # the user's model is untouched


def test_keras3_quantization_phases_count_steps_past_float16s_precision(digits):
    # float16 holds integers exactly only up to 2,048: the phase step must not be read in float16.
    x, y, _, _ = digits
    with keras3_mixed_float16() as keras3:
        model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(),
                                   keras3.layers.Dense(16, activation="relu", name="hidden"),
                                   keras3.layers.Dense(10, dtype="float32", name="logits")])
        qat = tfc.quantize(model, start=2101)
    qat.compile(keras3.optimizers.Adam(1e-3), keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.optimizer.iterations.assign(2099)  # a fit resumed late in its schedule
    history = qat.fit(x[:192], y[:192], epochs=1, batch_size=64, verbose=0,
                      callbacks=[tfc.CompressionCallback(verbose=0)])
    hidden = qat.get_layer("hidden")
    assert hidden.compute_dtype == "float16"
    assert float(keras3.ops.convert_to_numpy(hidden.qat_step)) == 2099 + 3
    assert history.history["qat_phase"] == [1.0]


# ---- tfc.Distiller ----


def distill(teacher, digits, policy, epochs=4, seed=1):
    """A pruned digits CNN distilled from the float32 teacher under `policy`; returns (distiller, test accuracy)."""
    x, y, x_test, y_test = digits
    use_policy(policy)
    student = tfc.prune(digits_cnn(seed=seed), final_sparsity=0.8)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0)
    distiller.compile(keras.optimizers.Adam(3e-3), hard_loss(), metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    distiller.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
    return distiller, distiller.evaluate(x_test, y_test, verbose=0)[1]


def test_mixed_precision_distillation_matches_float32_accuracy(teacher, digits):
    _, float32_accuracy = distill(teacher, digits, "float32")
    keras.mixed_precision.set_global_policy("float32")
    assert float32_accuracy > 0.9
    for policy in MIXED_POLICIES:
        if unsupported_reason(policy):
            continue
        distiller, accuracy = distill(teacher, digits, policy)
        keras.mixed_precision.set_global_policy("float32")
        assert abs(accuracy - float32_accuracy) <= 0.03, (policy, accuracy, float32_accuracy)
        assert_mixed(distiller.student, policy)
        wrappers = walk(distiller.student, tfc.pruning.PruneLowMagnitude)
        sparsity = [np.mean(w.pruning_vars[0][1].numpy() == 0) for w in wrappers]
        assert sparsity and all(s == pytest.approx(0.8, abs=0.003) for s in sparsity)
        optimizer = distiller.optimizer
        if policy == "mixed_float16":
            # Loss scaling was on; an occasional overflowing step halves the scale, as it should.
            assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
            assert int(optimizer.iterations.numpy()) == 4 * 44
            assert 2.0**12 <= float(optimizer.loss_scale.numpy()) <= 2.0**15
        else:
            assert not isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)


def test_float16_logits_do_not_overflow_the_scaled_loss(teacher, digits):
    # Without a float32 head the student's logits are float16; the losses must still be float32,
    # or loss * 2**15 overflows float16 and LossScaleOptimizer skips steps and shrinks its scale.
    x, y, _, _ = digits
    use_policy("mixed_float16")
    student = digits_mlp(seed=1, float32_logits=False)
    assert student.output.dtype == "float16"
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0)
    distiller.compile(keras.optimizers.Adam(1e-3), hard_loss(), metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)

    optimizer = distiller.optimizer
    # A float16 loss overflows at the first steps (distillation loss ~10 times 2**15 > 65504).
    assert int(optimizer.iterations.numpy()) == 88
    assert int(optimizer.dynamic_counter.numpy()) == 88, "steps were skipped: the scaled loss overflowed"
    assert float(optimizer.loss_scale.numpy()) == 2.0**15
    for key in ("loss", "student_loss", "distillation_loss"):
        assert np.isfinite(history.history[key]).all(), key
    assert history.history["loss"][1] < history.history["loss"][0]


def test_overflowing_step_is_skipped_without_touching_weights(teacher, digits):
    x, y, _, _ = digits
    use_policy("mixed_float16")
    results = {}
    for initial_scale in (2.0**40, 2.0**15):
        student = digits_mlp(seed=3)
        before = [w.numpy() for w in student.weights]
        distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0)
        optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=initial_scale)
        distiller.compile(optimizer, hard_loss())
        distiller.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
        changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, student.weights)]
        results[initial_scale] = (changed, float(optimizer.loss_scale.numpy()), int(optimizer.iterations.numpy()))

    # 2**40 times the loss overflows float16 gradients: the step is skipped and the scale halves.
    changed, scale, iterations = results[2.0**40]
    assert not any(changed) and scale == 2.0**39 and iterations == 1
    # The same step at the default scale updates every weight.
    changed, scale, iterations = results[2.0**15]
    assert all(changed) and scale == 2.0**15 and iterations == 1


def test_compile_scales_the_loss_of_a_float16_student_under_a_float32_policy(teacher):
    use_policy("mixed_float16")
    student = digits_mlp(seed=0)
    keras.mixed_precision.set_global_policy("float32")
    distiller = tfc.Distiller(teacher=teacher, student=student)
    distiller.compile("adam", hard_loss())
    assert isinstance(distiller.optimizer, keras.mixed_precision.LossScaleOptimizer)

    float32_distiller = tfc.Distiller(teacher=teacher, student=digits_mlp(seed=0))
    float32_distiller.compile("adam", hard_loss())
    assert not isinstance(float32_distiller.optimizer, keras.mixed_precision.LossScaleOptimizer)


@pytest.mark.parametrize("loss", ["kl_divergence", "mse"])
def test_logits_distillation_of_float16_logits_is_float32(loss):
    rng = np.random.default_rng(0)
    teacher_logits = (rng.normal(size=(64, 10)) * 6).astype(np.float16)
    student_logits = (rng.normal(size=(64, 10)) * 6).astype(np.float16)
    temperature = 4.0
    value = LogitsDistillation(loss=loss).compute_loss(
        tf.constant(teacher_logits), tf.constant(student_logits), temperature=temperature
    )
    t, s = teacher_logits.astype(np.float64) / temperature, student_logits.astype(np.float64) / temperature
    if loss == "mse":
        expected = np.mean((t - s) ** 2)
    else:
        kl = np.sum(softmax(t, -1) * (log_softmax(t, -1) - log_softmax(s, -1)), -1)
        expected = np.mean(kl) * temperature**2
    assert value.dtype == tf.float32
    # float16 arithmetic is off by about 7e-4 here.
    assert float(value) == pytest.approx(expected, rel=1e-5)
