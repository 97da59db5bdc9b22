"""tfc.Distiller under tf.distribute.MirroredStrategy with 2 logical CPU devices.

Logical devices must be configured before TensorFlow initializes, and pytest's
process has initialized it already, so the body runs in a fresh interpreter.
"""

import fresh_process
import pytest

SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, TESTS_DIR)
from helpers import dense_digits_model

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.demo import load_digits
from tfcompress.distillation import Distiller, FeatureDistillation, LinearSchedule, LogitsDistillation

(x_train, y_train), (x_test, y_test) = load_digits()
hard = lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

with strategy.scope():
    teacher = dense_digits_model(seed=0, width=128)
    teacher.compile(keras.optimizers.Adam(3e-3), hard(), metrics=["accuracy"])
teacher.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)


def distiller_for(student, cache):
    distiller = Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[
            LogitsDistillation(),
            FeatureDistillation(teacher_layer_name="hidden2"),  # 128 teacher units vs 32: projection
        ],
        temperature=LinearSchedule(4.0, 2.0),
        teacher_cache=cache,
    )
    return distiller


results = {"replicas": strategy.num_replicas_in_sync}

# One SGD step on one batch of 256: mirrored (2 x 128) must match a single device.
single_student = dense_digits_model(seed=1, width=32)
single = distiller_for(single_student, cache=False)
single.compile(keras.optimizers.SGD(0.1), hard())
with strategy.scope():
    mirrored_student = dense_digits_model(seed=1, width=32)
    mirrored = distiller_for(mirrored_student, cache=False)
    mirrored.compile(keras.optimizers.SGD(0.1), hard())
mirrored.projections[0].set_weights(single.projections[0].get_weights())
step = dict(epochs=1, batch_size=256, shuffle=False, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
single_logs = single.fit(x_train[:256], y_train[:256], **step).history
mirrored_logs = mirrored.fit(x_train[:256], y_train[:256], **step).history
results["one_step"] = {
    "single_loss": single_logs["loss"][0],
    "mirrored_loss": mirrored_logs["loss"][0],
    "max_weight_difference": max(
        float(np.abs(a - b).max()) for a, b in zip(single_student.get_weights(), mirrored_student.get_weights())
    ),
}

# Full fits, cached and uncached, with a pruned student.
for cache in (True, False):
    with strategy.scope():
        student = tfc.prune(dense_digits_model(seed=2, width=32), final_sparsity=0.5)
        distiller = distiller_for(student, cache)
        distiller.compile(keras.optimizers.Adam(3e-3), hard(), metrics=["accuracy"])
    history = distiller.fit(
        x_train, y_train, epochs=4, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)]
    ).history
    results["cached" if cache else "uncached"] = {
        "cache_used": distiller.teacher_cache_used,
        "loss": history["loss"],
        "feature_loss": history["feature_loss_hidden2"],
        "temperature": history["temperature"],
        "sparsity": history["sparsity"][-1],
        "test_accuracy": distiller.evaluate(x_test, y_test, verbose=0)[1],
    }
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def mirrored_results():
    return fresh_process.run(SCRIPT)


def test_two_replicas_match_a_single_device_step(mirrored_results):
    assert mirrored_results["replicas"] == 2
    step = mirrored_results["one_step"]
    assert step["mirrored_loss"] == pytest.approx(step["single_loss"], rel=1e-4)
    assert step["max_weight_difference"] < 1e-4


@pytest.mark.parametrize("run", ["cached", "uncached"])
def test_mirrored_distillation_trains_prunes_and_schedules(mirrored_results, run):
    result = mirrored_results[run]
    assert result["cache_used"] is (run == "cached")
    assert result["loss"][-1] < 0.5 * result["loss"][0]
    assert result["feature_loss"][-1] < result["feature_loss"][0]
    assert 4.0 > result["temperature"][0] > result["temperature"][-1] >= 2.0
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["test_accuracy"] > 0.85


def test_mirrored_cache_on_and_off_train_identically(mirrored_results):
    cached, uncached = mirrored_results["cached"], mirrored_results["uncached"]
    assert cached["loss"] == pytest.approx(uncached["loss"], rel=1e-4)
    assert cached["test_accuracy"] == pytest.approx(uncached["test_accuracy"], abs=0.01)
