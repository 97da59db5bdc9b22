"""Reproducibility: identical flatbuffers from identical exports, identical masks from a fixed seed."""

import hashlib

import fresh_process
import pytest

import tfcompress as tfc
import tflite_export

MASKS_SCRIPT = r"""
import hashlib, json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf

# Process-wide and irreversible, so it runs here and not in pytest's process.
tf.config.experimental.enable_op_determinism()
sys.path.insert(0, TESTS_DIR)
import numpy as np
from helpers import compile_classifier, dense_digits_model
from sklearn.datasets import load_digits

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.pruning.wrapper import find_pruning_wrappers

data = load_digits()
x = (data.images / 16.0).astype("float32")[..., None]
y = data.target.astype("int64")
runs = []
for seed in SEEDS:
    keras.utils.set_random_seed(seed)  # also seeds fit's shuffling and dropout
    model = compile_classifier(tfc.prune(dense_digits_model(seed=seed, width=32), 0.7, end=0.6))
    history = model.fit(x[:512], y[:512], epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    masks = {w.layer.name: hashlib.sha256(w.pruning_vars[0][1].numpy().tobytes()).hexdigest() for w in find_pruning_wrappers(model)}
    runs.append({"masks": masks, "sparsity": history.history["sparsity"], "loss": history.history["loss"]})
print("RESULT " + json.dumps(runs))
"""


@pytest.mark.slow
def test_fixed_seed_with_op_determinism_gives_the_same_masks_run_to_run():
    # Two interpreters side by side; the second seed trains after the first in one of them.
    processes = [fresh_process.start(MASKS_SCRIPT, SEEDS=seeds) for seeds in ([0, 1], [0])]
    (first, other_seed), (second,) = [fresh_process.result(process, timeout=300) for process in processes]
    assert set(first["masks"]) == {"hidden1", "hidden2", "logits"}
    assert first["masks"] == second["masks"]
    assert first["loss"] == second["loss"] and first["sparsity"] == second["sparsity"]
    assert first["sparsity"][-1] == pytest.approx(0.7, abs=0.01)
    # The masks depend on the training, so a different seed gives different ones.
    assert other_seed["masks"] != first["masks"]


@pytest.fixture(scope="module")
def stripped(pruned_cnn):
    return tfc.strip(pruned_cnn)


@pytest.mark.parametrize("precision", ["fp32", "int8", "edgetpu"])
def test_exporting_the_same_model_twice_gives_identical_bytes(precision, stripped, digits, tmp_path):
    calibration = digits[0][:128] if precision != "fp32" else None
    digests = []
    for name in ("first.tflite", "second.tflite"):
        result = tflite_export.export(stripped, tmp_path / name, precision, representative_data=calibration, latency_runs=0)
        digests.append(hashlib.sha256(open(result.path, "rb").read()).hexdigest())
    assert digests[0] == digests[1]
