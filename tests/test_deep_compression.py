"""Deep Compression in one fit: prune, then sparsity-preserving clustering, then QAT, on LiteRT tensors."""

import numpy as np
import pytest
from helpers import compile_classifier
from litert_helpers import int8_kernels, litert_predict

import tfcompress as tfc
import tflite_export
from tfcompress._keras import keras

CLUSTERS = 8


@pytest.fixture(scope="module")
def mlp(trained_mlp):
    """The session's trained digits MLP; tests compress clones of it, never it."""
    return trained_mlp()


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, -1) == labels))


def _distinct(kernel):
    return np.unique(np.asarray(kernel)).size


def _zeros(kernel):
    return 1.0 - np.count_nonzero(kernel) / np.size(kernel)


def test_prune_then_cluster_in_one_fit_strips_to_plain_layers(mlp, digits):
    x, y, x_test, y_test = digits
    model = compile_classifier(tfc.cluster(tfc.prune(mlp, 0.8, end=0.5), CLUSTERS, begin=0.5))
    callback = tfc.CompressionCallback()
    history = model.fit(x[:640], y[:640], epochs=2, batch_size=64, verbose=0, callbacks=[callback])
    phases = {entry["compression"]: entry for entry in callback.plan}
    assert phases["pruning"]["end_step"] == phases["clustering"]["begin_step"] == 10
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    final = tfc.strip(model)
    assert [type(layer).__name__ for layer in final.layers[1:]] == ["Flatten", "Dense", "Dense", "Dense"]
    for name in ("hidden1", "hidden2", "logits"):
        kernel = final.get_layer(name).kernel.numpy()
        # The pruned zeros stay, and zero is one of the shared values.
        assert _zeros(kernel) >= 0.79 and 0.0 in kernel and _distinct(kernel) <= CLUSTERS, name
    logits = final.predict(x_test, verbose=0)
    np.testing.assert_allclose(logits, model.predict(x_test, verbose=0), atol=1e-5)
    assert _accuracy(logits, y_test) >= _accuracy(mlp.predict(x_test, verbose=0), y_test) - 0.05


def test_prune_cluster_quantize_in_one_fit_keeps_zeros_and_clusters_in_int8(mlp, digits, tmp_path):
    x, y, x_test, y_test = digits
    model = compile_classifier(
        tfc.quantize(tfc.cluster(tfc.prune(mlp, 0.8, end=0.4), CLUSTERS, begin=0.4), start=0.7, freeze=0.9)
    )
    names = [weight.name for weight in model.weights]
    assert len(set(names)) == len(names), "an .h5 file needs unique weight names"
    # Before any phase begins, the three-times-wrapped model computes what the float model computes.
    float_logits = mlp.predict(x_test, verbose=0)
    np.testing.assert_allclose(model.predict(x_test, verbose=0), float_logits, atol=1e-5)
    history = model.fit(x[:960], y[:960], epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])
    assert history.history["qat_phase"] == [0.0, 0.0, 2.0]
    final = tfc.strip(model)
    assert {type(layer.layer).__name__ for layer in final.layers if hasattr(layer, "layer")} == {"Flatten", "Dense"}
    result = tflite_export.export(final, tmp_path / "dc.tflite", precision="int8", sparse=False, latency_runs=0)
    assert result.report.fully_integer
    flatbuffer = (tmp_path / "dc.tflite").read_bytes()
    kernels = int8_kernels(flatbuffer)
    assert len(kernels) == 3
    for kernel in kernels:
        assert _zeros(kernel) >= 0.79 and 0 in kernel and _distinct(kernel) <= CLUSTERS
    assert _accuracy(litert_predict(flatbuffer, x_test), y_test) >= _accuracy(float_logits, y_test) - 0.05


def _tiny():
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs)))


def test_phases_in_an_impossible_order_name_the_fix(digits):
    pruned = tfc.prune(_tiny(), 0.8, end=0.5)
    with pytest.raises(ValueError, match=r"before its pruning ends.*begin=0.5\)"):
        tfc.cluster(pruned, CLUSTERS, begin=0.3)
    clustered = tfc.cluster(pruned, CLUSTERS, begin=0.6)
    with pytest.raises(ValueError, match=r"frozen its ranges.*freeze later"):
        tfc.quantize(clustered, start=0.2, freeze=0.5)
    # Steps against fractions are compared when the fit's length is known.
    x, y = digits[0][:128], digits[1][:128]
    late = compile_classifier(tfc.cluster(tfc.prune(_tiny(), 0.8, end=1.0), CLUSTERS, begin=1))
    with pytest.raises(ValueError, match="begins at step 1, before its pruning ends at step 4"):
        late.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])
    frozen = compile_classifier(tfc.quantize(tfc.cluster(_tiny(), CLUSTERS, begin=0.75), start=0, freeze=2))
    with pytest.raises(ValueError, match="begins at step 3, once quantization has frozen its ranges at step 2"):
        frozen.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])


def test_recurrent_pruned_layer_is_refused_with_the_two_fit_path():
    inputs = keras.Input((8, 8))
    outputs = keras.layers.Dense(10)(keras.layers.LSTM(8, name="lstm")(inputs))
    pruned = tfc.prune(keras.Model(inputs, outputs), 0.5, end=0.2, layers=["lstm"])
    with pytest.raises(ValueError, match=r"tfc.cluster\(tfc.strip\(pruned\), preserve_sparsity=True\)"):
        tfc.cluster(pruned, CLUSTERS, begin=0.5)


def test_keras3_model_prunes_clusters_and_quantizes_in_one_fit(digits, tmp_path):
    """Keras 3 (`import keras`): the same one fit with constraints; a full-int8 file keeps zeros and clusters."""
    import keras as keras3

    x, y, x_test, y_test = digits
    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((8, 8, 1))
    h = keras3.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras3.layers.BatchNormalization(name="bn")(h)
    h = keras3.layers.ReLU()(keras3.layers.MaxPooling2D()(h))
    h = keras3.layers.Dense(64, activation="relu", name="hidden")(keras3.layers.Flatten()(h))
    model = keras3.Model(inputs, keras3.layers.Dense(10, name="logits")(h))

    pruned = tfc.prune(model, 0.8, end=0.4, layers=[keras3.layers.Dense])
    with pytest.raises(ValueError, match=r"before its pruning ends.*begin=0.4\)"):
        tfc.cluster(pruned, CLUSTERS, begin=0.3)
    late = tfc.cluster(tfc.prune(model, 0.8, end=1.0, layers=["logits"]), CLUSTERS, begin=1, layers=["logits"])
    late.compile("adam", keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="begins at step 1, before its pruning ends at step 4"):  # known in fit
        late.fit(x[:128], y[:128], epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    with pytest.raises(ValueError, match=r"once quantization has frozen its ranges.*freeze later"):
        tfc.quantize(tfc.cluster(pruned, CLUSTERS, begin=0.6), start=0.2, freeze=0.5)
    qat = tfc.quantize(tfc.cluster(pruned, CLUSTERS, begin=0.4), start=0.7)
    qat.compile(keras3.optimizers.Adam(3e-3), keras3.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    callback = tfc.CompressionCallback(verbose=0)
    history = qat.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[callback])
    phases = {entry["compression"]: entry for entry in callback.plan}
    assert phases["pruning"]["end_step"] == phases["clustering"]["begin_step"] == 44
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    assert history.history["qat_phase"][-1] == 1.0
    for name in ("hidden", "logits"):
        kernel = qat.get_layer(name).kernel.numpy()
        # The pruned zeros and at most CLUSTERS shared values (a centroid can lose all its weights).
        assert _zeros(kernel) == pytest.approx(0.8, abs=0.01) and 4 < _distinct(kernel) <= CLUSTERS, name
    assert _distinct(qat.get_layer("conv").kernel.numpy()) <= CLUSTERS  # clustered, not pruned

    path = tmp_path / "dc.keras"
    qat.save(path)
    assert np.array_equal(tfc.load_model(path).get_layer("hidden").kernel.numpy(), qat.get_layer("hidden").kernel.numpy())
    result = tflite_export.export(qat, tmp_path / "dc.tflite", precision="int8", validation_data=(x_test, y_test))
    assert result.report.fully_integer
    kernels = [k for k in int8_kernels((tmp_path / "dc.tflite").read_bytes()) if k.ndim == 2]
    assert len(kernels) == 2
    for kernel in kernels:
        assert _zeros(kernel) >= 0.79 and _distinct(kernel) <= CLUSTERS
    assert result.verification.tflite_accuracy > 0.85
    assert result.verification.tflite_accuracy == pytest.approx(result.verification.keras_accuracy, abs=0.005)
