"""tfc.cluster: weight sharing started by the fit, stripped, summarized, kept through QAT."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from helpers import compile_classifier
from litert_helpers import int8_flatbuffer, int8_kernels

import tfcompress as tfc
from tfcompress.clustering import cluster
from tfcompress.quantization import quantize
from tfcompress._keras import keras


@pytest.fixture(scope="module")
def mlp(trained_mlp):
    """The session's trained digits MLP; tests cluster, prune and quantize clones of it, never it."""
    return trained_mlp()


def test_kernels_have_at_most_k_values_after_strip(mlp, digits):
    x, y, x_test, y_test = digits
    clustered = compile_classifier(cluster(mlp, clusters=16, begin=0.5), learning_rate=1e-4)
    np.testing.assert_array_equal(clustered.predict(x_test, verbose=0), mlp.predict(x_test, verbose=0))
    callback = tfc.CompressionCallback()
    clustered.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[callback])
    assert callback.plan[0]["begin_step"] == 22 and callback.plan[0]["clusters"] == 16
    final = compile_classifier(tfc.strip(clustered))
    for name in ("hidden1", "hidden2", "logits"):
        assert np.unique(final.get_layer(name).kernel.numpy()).size <= 16, name
    info = tfc.summary(final, print_fn=None)
    dense_info = tfc.summary(mlp, print_fn=None)
    assert {row.clusters for row in info.rows} <= set(range(2, 17))
    assert {row.clusters for row in dense_info.rows} == {0}
    assert info.total.gzip_bytes < 0.5 * dense_info.total.gzip_bytes
    dense_accuracy = mlp.evaluate(x_test, y_test, verbose=0)[1]
    assert final.evaluate(x_test, y_test, verbose=0)[1] >= dense_accuracy - 0.03


def test_before_begin_kernels_train_as_floats(mlp, digits):
    x, y, _, _ = digits
    clustered = compile_classifier(cluster(mlp, clusters=8, begin=1.0, init="linear"))
    clustered.fit(x[:256], y[:256], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])
    kernel = clustered.get_layer("cluster_hidden2").original_clusterable_weights["kernel"].numpy()
    assert np.unique(kernel).size > 1000


def test_clustering_from_the_first_step_starts_before_the_first_batch(mlp, digits):
    # tf_keras times the batch hooks against the step; k-means in the first batch read as a slow callback.
    x, y, _, _ = digits
    clustered = compile_classifier(cluster(mlp, clusters=8))
    seen = {}

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not seen:
                seen.update({w.name: int(w.clustering_on.numpy()) for w in self.model.layers
                             if hasattr(w, "clustering_on")})

    clustered.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[FirstBatch(), tfc.CompressionCallback()])
    assert seen and set(seen.values()) == {1}, seen


@pytest.mark.slow
def test_cluster_preserving_qat_keeps_shared_values_in_int8(mlp, digits):
    x, y, x_test, y_test = digits
    clustered = compile_classifier(cluster(mlp, clusters=16), learning_rate=1e-4)
    clustered.fit(x[:512], y[:512], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback()])
    qat = compile_classifier(quantize(tfc.strip(clustered), preserve="clusters"), learning_rate=1e-4)
    # The kernels train through their centroids and get no gradient of their own, by design: TensorFlow's
    # warning about them (which asks whether compile() had a loss) is dropped; others still get through.
    warnings, logger = [], tf.get_logger()
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())

    class OtherVariable(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                logger.warning("Gradients do not exist for variables %s when minimizing the loss.", ["other:0"])

    logger.addHandler(handler)
    try:
        qat.fit(x[:512], y[:512], epochs=1, verbose=0, callbacks=[tfc.CompressionCallback(), OtherVariable()])
    finally:
        logger.removeHandler(handler)
    assert [w for w in warnings if "Gradients do not exist" in w] == [
        "Gradients do not exist for variables ['other:0'] when minimizing the loss."
    ]
    kernels = int8_kernels(int8_flatbuffer(tfc.strip(qat)))
    assert len(kernels) == 3
    assert all(np.unique(kernel).size <= 16 for kernel in kernels)


@pytest.mark.slow
def test_cluster_then_quantize_in_one_fit(mlp, digits):
    x, y, x_test, y_test = digits
    model = compile_classifier(quantize(cluster(mlp, clusters=16, begin=0.2), start=0.5), learning_rate=1e-4)
    # Before clustering and quantization begin, the wrapped model is the float model, weights included.
    np.testing.assert_allclose(model.predict(x_test, verbose=0), mlp.predict(x_test, verbose=0), atol=1e-5)
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])
    assert history.history["qat_phase"] == [0.0, 1.0]
    final = compile_classifier(tfc.strip(model))
    np.testing.assert_allclose(final.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-5)
    kernels = int8_kernels(int8_flatbuffer(final))
    assert len(kernels) == 3
    assert all(np.unique(kernel).size <= 16 for kernel in kernels)
    assert final.evaluate(x_test, y_test, verbose=0)[1] >= mlp.evaluate(x_test, y_test, verbose=0)[1] - 0.03


def test_errors_name_the_fix(mlp):
    with pytest.raises(ValueError, match="clusters"):
        cluster(mlp, clusters=1)
    with pytest.raises(ValueError, match="init"):
        cluster(mlp, init="median")
    with pytest.raises(ValueError, match="before its pruning ends"):
        cluster(tfc.prune(mlp, 0.5))
    with pytest.raises(ValueError, match="Drop `preserve=`"):
        quantize(cluster(mlp), preserve="clusters")
    flatten = mlp.layers[1].name
    with pytest.raises(ValueError, match=f"'{flatten}'.*cannot be clustered"):
        cluster(mlp, layers=[flatten])
    unclustered = compile_classifier(cluster(mlp))
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        unclustered.fit(np.zeros((8, 8, 8, 1), "float32"), np.zeros(8, "int64"), verbose=0)
    import keras as keras3

    # Keras 3 models cluster with constraints (tests/test_keras3.py), once built.
    with pytest.raises(ValueError, match="not built"):
        cluster(keras3.Sequential([keras3.layers.Dense(4)]))


def test_strip_after_cluster_preserving_qat_when_a_cluster_emptied(digits):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs)))
    values = np.array([-0.2, -0.1, 0.0, 0.1, 0.2], "float32")
    kernel = model.get_layer("logits").kernel
    kernel.assign(np.random.default_rng(0).choice(values, kernel.shape))
    qat = quantize(model, preserve="clusters+sparsity")
    # What a QAT fit can do: every weight of one cluster moves to another, so the kernel holds one value less.
    trained_kernel = next(weight for weight, _, _ in qat.get_layer("quant_logits")._weight_vars)
    trained_kernel.assign(np.where(trained_kernel.numpy() == -0.2, -0.1, trained_kernel.numpy()))
    final = tfc.strip(qat)
    x_test = digits[2]
    np.testing.assert_allclose(final.predict(x_test, verbose=0), qat.predict(x_test, verbose=0), atol=1e-5)
