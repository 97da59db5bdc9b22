"""tfc.summary: per-layer numbers that match the weights."""

import gzip
import json

import numpy as np
import pytest
from helpers import cnn_digits_model, dense_digits_model

import tfcompress as tfc


def test_summary_of_dense_model_counts_everything():
    model = dense_digits_model()
    info = tfc.summary(model, print_fn=None)
    assert [row.name for row in info.rows] == ["hidden1", "hidden2", "logits"]
    assert info.total.params == model.count_params()
    assert info.total.bytes == 4 * model.count_params()
    assert info.total.bits == 32
    assert info.total.sparsity < 0.01
    raw = b"".join(w.tobytes() for w in model.get_layer("logits").get_weights())
    assert info.rows[2].gzip_bytes == len(gzip.compress(raw, compresslevel=9, mtime=0))


def test_summary_shows_pruning_on_wrapped_and_stripped_models(pruned_cnn, capsys):
    dense_gzip = tfc.summary(tfc.prune(cnn_digits_model(), 0.8), print_fn=None).total.gzip_bytes  # masks all ones before fit
    wrapped = tfc.summary(pruned_cnn, print_fn=None)
    stripped = tfc.summary(tfc.strip(pruned_cnn))
    printed = capsys.readouterr().out
    assert "conv2" in printed and "total" in printed and "80.0%" in printed and "32.0" in printed
    assert wrapped.as_dict() == stripped.as_dict()
    for row in stripped.rows:
        assert row.sparsity == pytest.approx(0.8, abs=0.01)
    final = tfc.strip(pruned_cnn)
    assert stripped.total.nonzero == sum(np.count_nonzero(w) for w in final.get_weights())
    assert stripped.total.gzip_bytes < 0.5 * dense_gzip
    json.dumps(stripped.as_dict())


def test_keras3_qat_summary_counts_the_models_weights_not_its_ranges():
    """A Keras 3 QAT model holds learned ranges and phase variables; summary counts what the float model had."""
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Dense(16, activation="relu", name="dense")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    quantized = tfc.quantize(model, start=0.5)
    info = tfc.summary(quantized, print_fn=None)
    # The BatchNorm folded into the conv's row; the input and ReLU quantizers hold only ranges: no rows.
    assert [row.name for row in info.rows] == ["conv", "dense", "logits"]
    assert info.total.params == model.count_params()
    conv = info.rows[0]
    assert conv.params == 3 * 3 * 8 + 4 * 8
    assert conv.bytes == 3 * 3 * 8 + 4 * 4 * 8  # the kernel as int8, the BatchNorm's four vectors as float32
