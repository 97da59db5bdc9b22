"""tfc.strip: a plain tf_keras model that keeps the zeros and saves/loads anywhere."""

import numpy as np
import pytest
import tf_keras
from helpers import compile_classifier

import tfcompress as tfc
from tfcompress.pruning import PruneLowMagnitude


def test_strip_removes_wrappers_and_keeps_outputs_and_zeros(pruned_cnn, digits):
    x_test = digits[2]
    final = tfc.strip(pruned_cnn)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in final.layers)
    assert [layer.name for layer in final.layers] == ["conv1", "conv2", "pool", "flatten", "dense", "logits"]
    np.testing.assert_allclose(final.predict(x_test, verbose=0), pruned_cnn.predict(x_test, verbose=0), atol=1e-5)
    kernel = final.get_layer("dense").kernel.numpy()
    assert 1 - np.count_nonzero(kernel) / kernel.size == pytest.approx(0.8, abs=0.01)


def test_stripped_model_is_independent(pruned_cnn, digits):
    x, y, _, _ = digits
    final = compile_classifier(tfc.strip(pruned_cnn))
    before = pruned_cnn.get_layer("prune_low_magnitude_dense").layer.kernel.numpy().copy()
    final.fit(x[:128], y[:128], epochs=1, verbose=0)
    np.testing.assert_array_equal(before, pruned_cnn.get_layer("prune_low_magnitude_dense").layer.kernel.numpy())


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_load_with_plain_tf_keras(pruned_cnn, digits, tmp_path, suffix):
    x_test = digits[2]
    final = tfc.strip(pruned_cnn)
    path = str(tmp_path / f"model{suffix}")
    final.save(path)
    loaded = tf_keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x_test, verbose=0), final.predict(x_test, verbose=0), atol=1e-6)
    kernel = loaded.get_layer("conv2").kernel.numpy()
    assert 1 - np.count_nonzero(kernel) / kernel.size == pytest.approx(0.8, abs=0.01)


def test_strip_copies_an_uncompressed_keras3_model():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(1)])
    final = tfc.strip(model)
    assert final is not model and type(final) is keras3.Sequential
    np.testing.assert_array_equal(final.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
