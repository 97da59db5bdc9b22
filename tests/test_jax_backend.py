"""Keras 3 on JAX: (channel) pruning, clustering, distillation and QAT in one fresh interpreter; others refused.

A process has one Keras backend and pytest's runs TensorFlow, so these run in a
fresh interpreter with KERAS_BACKEND=jax. Starting one costs seconds of
TensorFlow and JAX imports, so one interpreter runs every part once per session
and prints a section per part; each test asserts on its own section. The part
that fails records its traceback and fails only its own test. Last, the same
interpreter imports Keras again on the numpy backend (`keras.config.set_backend`)
and tfcompress after it, and asks tfcompress to prune there.
"""

import importlib.util

import numpy as np
import pytest

from fresh_process import run
from litert_helpers import int8_kernels, litert_predict
from test_keras3_quantization import litert_tensors

HAS_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (pip install 'jax[cpu]')")

_SCRIPT = """
import json, os, sys, threading, traceback, warnings
os.environ["KERAS_BACKEND"] = "jax" if RUN_JAX else "numpy"
# One XLA thread: models this small gain nothing from more, and the suite shares two cores.
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# JAX's non-partitionable threefry (its default before 0.5) compiles each initializer's random draw
# 2.5x faster on CPU (4 kernels: 1.6 CPU s against 4.1); the values differ, not what they are for.
os.environ["JAX_THREEFRY_PARTITIONABLE"] = "0"
sys.path.insert(0, TESTS_DIR)
import numpy as np
import keras
import tfcompress as tfc
from tfcompress.demo import load_digits
(x, y), (x_test, y_test) = load_digits()
# JAX compiles the train step again for a last, smaller batch (1-3 CPU s per fit here): the batch
# sizes divide the 1,400 training digits, and evaluation takes the test set in one batch.
BATCH_SIZE, LARGE_BATCH_SIZE = 35, 56
assert len(x) % BATCH_SIZE == 0 and len(x) % LARGE_BATCH_SIZE == 0


def prune_and_cluster():
    from test_keras3 import cnn, compiled, kernels, sparsity
    result = {"backend": keras.backend.backend()}
    pruned = compiled(tfc.prune(cnn(), 0.8))
    checkpoint = os.path.join(WORK_DIR, "mid_epoch.keras")
    history = pruned.fit(
        x, y, epochs=3, batch_size=BATCH_SIZE, verbose=0,
        callbacks=[keras.callbacks.ModelCheckpoint(checkpoint, save_freq=50), tfc.CompressionCallback(verbose=0)],
    )
    result["sparsity"] = {name: sparsity(k) for name, k in kernels(pruned).items()}
    result["history"] = history.history["sparsity"]
    result["pruned_accuracy"] = float(pruned.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0)[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = tfc.load_model(checkpoint)
    result["checkpoint_step"] = int(loaded.optimizer.iterations.numpy())
    result["load_warnings"] = [str(w.message) for w in caught if "optimizer" in str(w.message)]
    clustered = compiled(tfc.cluster(cnn(), clusters=16, begin=0.3))

    class BatchEndThreads(keras.callbacks.Callback):
        async_safe = True  # lets Keras dispatch batch ends to a worker thread, if every callback allows it
        on_main = []

        def on_train_batch_end(self, batch, logs=None):
            self.on_main.append(threading.current_thread() is threading.main_thread())

    clustered.fit(x, y, epochs=3, batch_size=BATCH_SIZE, verbose=0,
                  callbacks=[tfc.CompressionCallback(verbose=0), BatchEndThreads()])
    result["batch_ends_on_main_thread"] = sorted(set(BatchEndThreads.on_main))
    result["values"] = {name: int(np.unique(k.numpy()).size) for name, k in kernels(clustered).items()}
    result["clustered_accuracy"] = float(clustered.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0)[1])
    return result


def prune_channels():
    from test_keras3_channels import cnn, compiled, dead_channels
    pruned = compiled(tfc.prune(cnn(), 0.5, structure="channels"))
    history = pruned.fit(x, y, epochs=3, batch_size=BATCH_SIZE, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    small = tfc.strip(pruned)
    return {
        "backend": keras.backend.backend(),
        "history": [float(v) for v in history.history["channel_sparsity"]],
        "dead": [len(dead_channels(pruned.get_layer(n).kernel.numpy(), -1)) for n in ("conv1", "conv2", "dense")],
        "widths": [int(small.get_layer(n).kernel.shape[-1]) for n in ("conv1", "conv2", "dense")],
        "difference": float(np.abs(np.asarray(small.predict(x_test, verbose=0))
                                   - np.asarray(pruned.predict(x_test, verbose=0))).max()),
    }


def distill():
    from test_distillation_keras3 import accuracy, compiled, mlp, pruned_student, sparsity
    # The teacher of test_distillation_keras3, trained here on JAX: cheaper than saving and loading one.
    teacher = compiled(mlp(seed=0, width=64))
    teacher.fit(x, y, epochs=8, batch_size=LARGE_BATCH_SIZE, verbose=0)
    student = pruned_student()
    distiller = compiled(tfc.Distiller(teacher=teacher, student=student, alpha=0.3,
                                       temperature=tfc.distillation.LinearSchedule(3.0, 1.5)), learning_rate=1e-2)
    history = distiller.fit(x, y, epochs=3, batch_size=LARGE_BATCH_SIZE, verbose=0,
                            callbacks=[tfc.CompressionCallback(verbose=0)])
    return {
        "backend": keras.backend.backend(),
        "class": type(distiller).__name__,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "sparsity": {name: sparsity(student.get_layer(name).kernel) for name in ("hidden1", "hidden2", "logits")},
        "accuracy": accuracy(student, x_test, y_test),
    }


def quantize_cluster_and_export():
    import tflite_export
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="preact_bn")(h)  # nothing to fold into
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    # Deep Compression in one fit: the logits pruned to 50% by mid-fit, then 8 shared values, then QAT.
    pruned = tfc.prune(model, 0.5, end=0.5, layers=[keras.layers.Dense])
    qat = tfc.quantize(tfc.cluster(pruned, clusters=8, begin=0.5, layers=[keras.layers.Dense]), start=0.5)
    qat.compile(keras.optimizers.Adam(5e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=1, batch_size=LARGE_BATCH_SIZE, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    path = os.path.join(WORK_DIR, "jax.tflite")
    exported = tflite_export.export(qat, path, precision="int8", latency_runs=0)
    return {
        "backend": keras.backend.backend(),
        "path": path,
        "steps": [float(layer.qat_step.numpy()) for layer in qat.layers if hasattr(layer, "qat_step")],
        "values": len(np.unique(qat.get_layer("logits").kernel.numpy())),
        "sparsity": float(np.mean(qat.get_layer("logits").kernel.numpy() == 0)),
        "keras": float(np.mean(np.argmax(np.asarray(qat(x_test)), -1) == y_test)),
        "quantization_aware": exported.quantization_aware,
        # A BatchNormalization before start: its statistics moved inside the jitted step.
        "preact_mean_moved": float(np.abs(np.asarray(qat.get_layer("preact_bn").moving_mean)).max()),
    }


def fake_quant_like_tensorflow():
    import tensorflow as tf
    from tfcompress.quantization.keras3_layers import fake_quant, fake_quant_weights
    # Digits pixels are k / 16: on a [0, 1] range many fall on a rounding tie (8 / 16 * 255 = 127.5).
    pixels = x_test.reshape(-1).astype("float32")
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype("float32")
    kernel[0, 0, 0] = 0.5 * np.abs(kernel).max(axis=(0, 1, 2))  # ties in every channel's int8 grid
    bound = np.abs(kernel).max(axis=(0, 1, 2))
    return {
        "backend": keras.backend.backend(),
        "pixels_differing": int(np.sum(np.asarray(fake_quant(pixels, 0.0, 1.0))
                                       != tf.quantization.fake_quant_with_min_max_vars(pixels, 0.0, 1.0).numpy())),
        "kernel_differing": int(np.sum(np.asarray(fake_quant_weights(kernel, -1)) != tf.quantization.
                                       fake_quant_with_min_max_vars_per_channel(kernel, -bound, bound,
                                                                                narrow_range=True).numpy())),
    }


def prune_on_numpy():
    import keras
    import tfcompress as tfc
    from test_keras3 import cnn
    try:
        tfc.prune(cnn(), 0.8)
    except RuntimeError as error:
        return {"backend": keras.backend.backend(), "error": str(error)}
    return {"backend": keras.backend.backend(), "error": ""}


sections = {}


def record(name, part):
    try:
        sections[name] = part()
    except Exception:
        sections[name] = {"traceback": traceback.format_exc()}


if RUN_JAX:
    record("prune_and_cluster", prune_and_cluster)
    record("distill", distill)
    record("prune_channels", prune_channels)
    record("quantize_cluster_and_export", quantize_cluster_and_export)
    record("fake_quant", fake_quant_like_tensorflow)
    # Keras imports itself again on numpy; tfcompress and the test modules follow, as in a numpy process.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.config.set_backend("numpy")
    for name in [name for name in sys.modules if name.split(".")[0] in ("tfcompress", "tflite_export", "test_keras3")]:
        del sys.modules[name]
record("numpy", prune_on_numpy)
print("RESULT " + json.dumps(sections))
"""


@pytest.fixture(scope="module")
def sections(tmp_path_factory):
    """`{part: result}` from the one fresh interpreter; a part that raised holds its `traceback`."""
    directory = tmp_path_factory.mktemp("jax_backend")
    return run(_SCRIPT, timeout=600, RUN_JAX=HAS_JAX, WORK_DIR=repr(str(directory)))


def section(sections, name):
    """The part's result; fails the test with the part's traceback if it raised."""
    result = sections[name]
    assert "traceback" not in result, result.get("traceback")
    return result


@pytest.mark.slow  # a fresh interpreter
@needs_jax
def test_jax_backend_prunes_and_clusters(sections):
    result = section(sections, "prune_and_cluster")
    assert result["backend"] == "jax"
    # A mask frozen into the jitted step would stall well below the target.
    for name, value in result["sparsity"].items():
        assert value == pytest.approx(0.8, abs=0.01), name
    assert result["history"][-1] == pytest.approx(0.8, abs=0.005)
    assert result["values"] == {"conv1": 16, "conv2": 16, "dense": 16, "logits": 16}
    # CompressionCallback lets Keras run batch ends off the main thread: no wait for each step's results.
    assert result["batch_ends_on_main_thread"] == [False]
    assert result["pruned_accuracy"] > 0.85 and result["clustered_accuracy"] > 0.85
    # A mid-epoch checkpoint (masks listed with the optimizer's variables) keeps its optimizer state.
    assert result["checkpoint_step"] == 100 and result["load_warnings"] == []


@pytest.mark.slow  # a fresh interpreter
@needs_jax
def test_jax_backend_prunes_channels(sections):
    result = section(sections, "prune_channels")
    assert result["backend"] == "jax"
    assert result["history"][-1] == pytest.approx(0.5)
    # Masks frozen into the jitted step would let the masked channels grow back between updates.
    assert result["dead"] == [8, 16, 32]
    assert result["widths"] == [8, 16, 32]
    assert result["difference"] < 1e-5


@pytest.mark.slow  # a fresh interpreter
@needs_jax
def test_jax_backend_distills_a_pruned_student_with_a_schedule(sections):
    result = section(sections, "distill")
    assert result["backend"] == "jax" and result["class"] == "Keras3Distiller"
    history = result["history"]
    # Values computed inside the jitted step from its own step count: the schedule moves on JAX too.
    assert history["temperature"] == pytest.approx([3.0 - 1.5 * (25 * e - 1) / 75 for e in range(1, 4)], abs=1e-4)
    # A mask frozen into the jitted step would stall below the target.
    for name, value in result["sparsity"].items():
        assert value == pytest.approx(0.8, abs=0.01), name
    assert history["sparsity"][-1] == pytest.approx(0.8, abs=0.005)
    assert history["distillation_loss"][-1] < 0.5 * history["distillation_loss"][0]
    assert result["accuracy"] > 0.9


@pytest.mark.slow  # a fresh interpreter
@needs_jax
def test_jax_backend_fake_quant_computes_what_tensorflow_computes(sections):
    # TensorFlow's FakeQuant ops are what the converter turns into int8: a model trained on JAX must round
    # as they do (Keras's own JAX fake quant differs on ties: 3% of the digits pixels).
    result = section(sections, "fake_quant")
    assert result["backend"] == "jax"
    assert result["pixels_differing"] == 0 and result["kernel_differing"] == 0


@pytest.mark.slow  # two fresh interpreters: JAX for training, TensorFlow for the export
@needs_jax
def test_jax_backend_deep_compression_in_one_fit_exports_through_a_tensorflow_reload(sections, digits):
    _, _, x_test, y_test = digits
    found = section(sections, "quantize_cluster_and_export")
    assert found["backend"] == "jax" and found["quantization_aware"]
    assert found["steps"] and all(step == 25 for step in found["steps"])  # counted inside the jitted step
    assert 4 < found["values"] <= 8  # at most 8 values, the pruned zero among them
    assert found["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert found["preact_mean_moved"] > 0
    with open(found["path"], "rb") as file:
        content = file.read()
    floats = [t["name"] for t in litert_tensors(content) if t["dtype"] == np.float32]
    assert len(floats) == 2  # the float input and output only
    litert = np.mean(np.argmax(litert_predict(content, x_test), -1) == y_test)
    assert found["keras"] > 0.8 and abs(litert - found["keras"]) <= 0.005
    (logits,) = [k for k in int8_kernels(content) if k.shape == (10, 288)]
    assert len(np.unique(logits)) <= 8  # the 8 shared values, zero among them, as int8 on LiteRT
    assert np.mean(logits == 0) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow  # a fresh interpreter
def test_other_backends_get_a_clear_error(sections):
    result = section(sections, "numpy")
    assert result["backend"] == "numpy"
    assert "TensorFlow and JAX backends" in result["error"] and "KERAS_BACKEND" in result["error"]
