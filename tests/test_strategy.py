"""tfc.prune + tfc.quantize (+ tfc.Distiller) under tf.distribute.MirroredStrategy with 2 logical CPU devices.

Logical devices must be configured before TensorFlow initializes, and pytest's
process has initialized it already, so the body runs in a fresh interpreter
and prints its measurements as JSON.
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
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
from tfcompress.demo import load_digits
from tfcompress.distillation import Distiller, LogitsDistillation
from tfcompress.pruning.wrapper import find_pruning_wrappers

(x, y), _ = load_digits()
x, y = x[:1024], y[:1024]


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


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():  # the teacher's variables must belong to the strategy the distiller trains under
    teacher = compile_classifier(dense_digits_model(seed=1, width=64), learning_rate=3e-3)
teacher.fit(x, y, epochs=3, batch_size=64, verbose=0)
with strategy.scope():
    mirrored_model = compressed()
    mirrored_distiller = distilled(teacher)
results = {
    "replicas": strategy.num_replicas_in_sync,
    "mirrored": run(mirrored_model),
    "single": run(compressed()),
    "mirrored_distilled": run(mirrored_distiller),
    "single_distilled": run(distilled(teacher)),
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
    mirrored, single = results["mirrored_distilled"], results["single_distilled"]
    assert mirrored["sparsity"] == pytest.approx(single["sparsity"], abs=1e-6)
    assert mirrored["sparsity"][-1] == pytest.approx(0.75, abs=0.01)
    assert mirrored["qat_phase"] == single["qat_phase"] == [0.0, 0.0, 1.0, 1.0]
    assert mirrored["kernel_sparsity"] == pytest.approx([0.75] * 3, abs=0.01)
    assert mirrored["loss"][-1] < mirrored["loss"][0]


def test_mirrored_training_follows_the_single_device_loss(results):
    mirrored, single = results["mirrored"], results["single"]
    assert mirrored["loss"][-1] < 0.7 * mirrored["loss"][0]
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=0.05)
