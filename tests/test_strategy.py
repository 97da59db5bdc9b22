"""tfc.prune, tfc.quantize and tfc.Distiller under tf.distribute.MirroredStrategy with 2 logical CPU devices.

Logical devices must be configured before TensorFlow initializes, and pytest's
process has initialized it already, so one fresh interpreter runs every fit here
(one teacher serves them all) and prints its measurements as JSON.
"""

import fresh_process
import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, TESTS_DIR)
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.demo import load_digits
from tfcompress.distillation import Distiller, FeatureDistillation, LinearSchedule, LogitsDistillation
from tfcompress.pruning.wrapper import find_pruning_wrappers

(x_train, y_train), (x_test, y_test) = load_digits()
hard = lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {"replicas": strategy.num_replicas_in_sync}

with strategy.scope():  # the teacher's variables must belong to the strategy the distiller trains under
    teacher = compile_classifier(dense_digits_model(seed=0, width=128), learning_rate=3e-3)
teacher.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)

# ---- tfc.prune + tfc.quantize (+ a Distiller): mirrored and single-device fits of the same model ----

x, y = x_train[:1024], y_train[:1024]


def compressed():
    pruned = tfc.prune(dense_digits_model(seed=3, width=32), 0.75, end=0.5)
    return compile_classifier(tfc.quantize(pruned, start=0.5), learning_rate=1e-2)


def run(model):
    callback = tfc.CompressionCallback(verbose=0)
    history = model.fit(x, y, epochs=4, batch_size=64, shuffle=False, verbose=0, callbacks=[callback]).history
    student = getattr(model, "student", model)
    tfc.strip(student)  # applies the masks, as before an export
    kernels = [(w.pruning_vars[0][0] * w.pruning_vars[0][1]).numpy() for w in find_pruning_wrappers(student)]
    return {
        "sparsity": history["sparsity"],
        "qat_phase": history["qat_phase"],
        "loss": history["loss"],
        "kernel_sparsity": [float(np.mean(k == 0)) for k in kernels],
        "plan": [{k: v for k, v in entry.items() if k not in ("description", "layers")} for entry in callback.plan],
    }


def distilled(teacher):
    distiller = Distiller(teacher=teacher, student=compressed(), distillation_losses=[LogitsDistillation()], temperature=2.0)
    return compile_classifier(distiller, learning_rate=1e-2)


with strategy.scope():
    mirrored_model = compressed()
    mirrored_distiller = distilled(teacher)
results["mirrored"] = run(mirrored_model)
results["single"] = run(compressed())
results["mirrored_distilled"] = run(mirrored_distiller)

# ---- tfc.Distiller with logits and feature losses and a temperature schedule ----


def distiller_for(student, cache):
    return Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[
            LogitsDistillation(),
            FeatureDistillation(teacher_layer_name="hidden2"),  # 128 teacher units vs 32: projection
        ],
        temperature=LinearSchedule(4.0, 2.0),
        teacher_cache=cache,
    )


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
def results():
    return fresh_process.run(SCRIPT)


def test_two_replicas_prune_and_quantize_on_the_single_device_schedule(results):
    assert results["replicas"] == 2
    mirrored, single = results["mirrored"], results["single"]
    assert mirrored["plan"] == single["plan"]
    assert mirrored["sparsity"] == pytest.approx(single["sparsity"], abs=1e-6)
    assert mirrored["qat_phase"] == single["qat_phase"] == [0.0, 0.0, 1.0, 1.0]
    assert mirrored["kernel_sparsity"] == pytest.approx([0.75] * 3, abs=0.01)
    assert mirrored["kernel_sparsity"] == pytest.approx(single["kernel_sparsity"], abs=1e-6)


def test_prune_qat_and_distillation_together_under_two_replicas(results):
    # The single-device fit of the same compressed model (without a teacher) has the same schedule.
    mirrored, single = results["mirrored_distilled"], results["single"]
    assert [entry for entry in mirrored["plan"] if entry["compression"] != "distillation"] == single["plan"]
    assert mirrored["sparsity"] == pytest.approx(single["sparsity"], abs=1e-6)
    assert mirrored["sparsity"][-1] == pytest.approx(0.75, abs=0.01)
    assert mirrored["qat_phase"] == single["qat_phase"] == [0.0, 0.0, 1.0, 1.0]
    assert mirrored["kernel_sparsity"] == pytest.approx([0.75] * 3, abs=0.01)
    assert mirrored["loss"][-1] < mirrored["loss"][0]


def test_mirrored_training_follows_the_single_device_loss(results):
    mirrored, single = results["mirrored"], results["single"]
    assert mirrored["loss"][-1] < 0.7 * mirrored["loss"][0]
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=0.05)


def test_two_replicas_match_a_single_device_distillation_step(results):
    assert results["replicas"] == 2
    step = results["one_step"]
    assert step["mirrored_loss"] == pytest.approx(step["single_loss"], rel=1e-4)
    assert step["max_weight_difference"] < 1e-4


@pytest.mark.parametrize("run", ["cached", "uncached"])
def test_mirrored_distillation_trains_prunes_and_schedules(results, run):
    result = results[run]
    assert result["cache_used"] is (run == "cached")
    assert result["loss"][-1] < 0.5 * result["loss"][0]
    assert result["feature_loss"][-1] < result["feature_loss"][0]
    assert 4.0 > result["temperature"][0] > result["temperature"][-1] >= 2.0
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["test_accuracy"] > 0.85


def test_mirrored_cache_on_and_off_train_identically(results):
    cached, uncached = results["cached"], results["uncached"]
    assert cached["loss"] == pytest.approx(uncached["loss"], rel=1e-4)
    assert cached["test_accuracy"] == pytest.approx(uncached["test_accuracy"], abs=0.01)
