# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Deep Compression in one fit: prune, share weights, quantize
#
# Han et al.'s Deep Compression (ICLR 2016) makes a network 35-49x smaller in three stages:
# prune the small weights, share the rest among a few values (clustering), then quantize; the
# file is then entropy-coded. With tfcompress the three stages are phases of **one** `fit`,
# driven by one callback:
#
# ```python
# model = tfc.quantize(tfc.cluster(tfc.prune(model, 0.95, end=0.5), 16, begin=0.5), start=0.8)
# ```
#
# prunes to 95% during the first half, clusters each kernel into 16 shared values from the middle
# (zero is one of them, so the pruned zeros stay), and trains quantization-aware from 80% of the
# fit. The stripped model exports to a full-INT8 `.tflite` whose kernels hold the zeros and at most
# 15 other values, which gzip (what a download or an APK carries) shrinks far. Data: scikit-learn's
# digits.
#
# Models are built with `import keras` (Keras 3, what TensorFlow 2.16+ gives). The same code runs on
# tf_keras models (`import tf_keras as keras`), where tfcompress uses tfmot's wrappers.

# %%
# Setup. Outside Colab nothing is installed here: install tfcompress first (from a clone of its
# repository: pip install -e ".[examples]"). In Colab, when tfcompress is not importable yet, this
# cell installs it from REPOSITORY; if pip replaced a package the session had already imported,
# restart the session (Runtime > Restart session) and run again: nothing is installed twice.
import importlib.util
import os
import subprocess
import sys

# The repository this notebook was opened from, as pip spells it. Colab's address shows it:
# colab.research.google.com/github/OWNER/tfcompress/blob/... -> "git+https://github.com/OWNER/tfcompress"
# (append "@BRANCH" for a branch). Change it here, and only here.
REPOSITORY = ""

if "google.colab" in sys.modules and importlib.util.find_spec("tfcompress") is None:
    if not REPOSITORY:
        raise RuntimeError(
            'Set REPOSITORY in this cell to the repository this notebook was opened from, e.g. '
            '"git+https://github.com/OWNER/tfcompress" for colab.research.google.com/github/OWNER/tfcompress/...'
        )
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"tfcompress[examples] @ {REPOSITORY}"])

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TFCOMPRESS_TUTORIAL_FAST=1 (set by CI) runs the same code with fewer epochs and exports.
FAST = os.environ.get("TFCOMPRESS_TUTORIAL_FAST") == "1"
print("fast mode" if FAST else "full mode")

# %%
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import keras
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

import tfcompress as tfc
import tflite_export as tfe

print("tfcompress", tfc.__version__, "| TensorFlow", tf.__version__)

digits = load_digits()  # 1,797 real 8x8 handwritten digits that ship with scikit-learn
x = (digits.images / 16.0).astype("float32")[..., None]
y = digits.target.astype("int64")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
print(f"train {x_train.shape}, test {x_test.shape}")

# %% [markdown]
# ## The float model: LeNet-300-100 on 8x8 digits

# %%
EPOCHS = 4 if FAST else 60
FINETUNE_EPOCHS = 4 if FAST else 40


def compile_model(model, epochs):
    """Adam with a cosine-decaying rate over a fit of `epochs`."""
    rate = keras.optimizers.schedules.CosineDecay(1e-3, epochs * len(x_train) // 32, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 1))
h = keras.layers.Flatten()(inputs)
h = keras.layers.Dense(300, activation="relu", name="fc1")(h)
h = keras.layers.Dense(100, activation="relu", name="fc2")(h)
float_model = keras.Model(inputs, keras.layers.Dense(10, name="fc3")(h))
compile_model(float_model, EPOCHS).fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
fp32 = tfe.export(float_model, "float_fp32.tflite", precision="fp32", validation_data=(x_test, y_test))
print(f"float model: {fp32.report.bytes:,} B FP32 .tflite, LiteRT accuracy {fp32.verification.tflite_accuracy:.3f}")

# %% [markdown]
# ## Three phases, one fit
#
# `CompressionCallback` prints the plan: pruning over steps 0 to the middle, clustering from the
# middle, fake quantization from 80%. Clustering must not begin before pruning ends (its centroids
# are fitted to the pruned kernel) nor once quantization has frozen its ranges: both are errors
# that name the fix.

# %%
model = tfc.quantize(tfc.cluster(tfc.prune(float_model, 0.95, end=0.5), 16, begin=0.5), start=0.8)
compile_model(model, FINETUNE_EPOCHS)
history = model.fit(x_train, y_train, epochs=FINETUNE_EPOCHS, batch_size=32, verbose=0,
                    validation_data=(x_test, y_test), callbacks=[tfc.CompressionCallback()])

fig, ax = plt.subplots(figsize=(7, 3.5))
epochs = np.arange(1, FINETUNE_EPOCHS + 1)
ax.plot(epochs, np.array(history.history["sparsity"]) * 100, label="kernel sparsity (%)")
ax.plot(epochs, np.array(history.history["val_accuracy"]) * 100, label="test accuracy (%)")
ax.plot(epochs, np.array(history.history["qat_phase"]) * 50, label="QAT phase (0 float, 50 fake-quant)")
ax.axvline(FINETUNE_EPOCHS * 0.5, color="gray", linestyle=":", label="clustering begins")
ax.set_xlabel("epoch")
ax.set_ylim(0, 105)
ax.set_title("Prune, then cluster, then quantize, in one fit")
ax.legend(fontsize=8, loc="lower left")
ax.grid(alpha=0.3)
plt.show()

# %%
try:
    tfc.cluster(tfc.prune(float_model, 0.95, end=0.5), 16, begin=0.3)
except ValueError as error:
    print("impossible order:", error)

# %% [markdown]
# ## Strip, export, and look inside the INT8 file
#
# On a Keras 3 model there are no wrapper layers: `tfc.prune` and `tfc.cluster` put constraints on
# the kernels of the model's own layers (each kernel's `ClusterCentroids` wraps its `PruningMask`),
# which the optimizer applies inside every training step, and `tfc.quantize` replaced each `Dense`
# with a `QuantDense` that carries the same kernel and its learned ranges. `tfc.strip` removes the
# constraints and keeps the `QuantDense` layers; the export turns them into a full-INT8 flatbuffer
# without calibration data.
#
# The zero is one of the 16 clusters, as in tfmot's sparsity-preserving clustering: one centroid is
# held at zero (the pruning mask keeps the pruned weights there, and a weight that comes nearest
# zero becomes one), so each kernel keeps its zeros and at most 15 other values (printed below):
# 4-bit indices. The LiteRT interpreter then reads the kernels back from the file as int8: the same
# zeros, and no more values (two close ones can round to one int8 value).

# %%
final = tfc.strip(model)
tfc.summary(final)
for layer in final.layers:
    if hasattr(layer, "kernel"):  # the stripped kernel, and the constraint it was trained under
        kernel, constraint = layer.kernel.numpy(), model.get_layer(layer.name).kernel.constraint
        print(f"{layer.name} ({type(layer).__name__}, trained with {type(constraint).__name__}): "
              f"{np.mean(kernel == 0):.1%} zeros and {np.unique(kernel[kernel != 0]).size} other values")
int8 = tfe.export(final, "deep_compression_int8.tflite", precision="int8", validation_data=(x_test, y_test),
                  latency_runs=0)  # size and accuracy are the point here, not latency
print(int8)

interpreter = Interpreter(model_path="deep_compression_int8.tflite")
interpreter.allocate_tensors()
for tensor in interpreter.get_tensor_details():
    # The kernels: 2-D int8 constants (the 2-D activations have a batch of 1 in this file).
    if tensor["dtype"] == np.int8 and len(tensor["shape"]) == 2 and tensor["shape"][0] > 1:
        kernel = interpreter.get_tensor(tensor["index"])
        print(f"{tensor['name'][:48]:48s} {str(kernel.shape):10s} {np.mean(kernel == 0):.1%} zeros, "
              f"{np.unique(kernel).size} distinct values")

factor = fp32.report.bytes / int8.report.gzip_bytes
print(f"Deep Compression in one fit: FP32 {fp32.report.bytes:,} B -> INT8 {int8.report.gzip_bytes:,} B gzip "
      f"({factor:.1f}x smaller), LiteRT accuracy {fp32.verification.tflite_accuracy:.3f} -> "
      f"{int8.verification.tflite_accuracy:.3f}, fully integer: {int8.report.fully_integer}")

# %% [markdown]
# ## Which layers can give more? `tfc.sensitivity`
#
# The same budget, 95% of all kernel weights, can be spread unevenly: `tfc.sensitivity` prunes
# each layer alone (no training) and measures the loss; `layer_sparsity(target=0.95)` gives each
# layer a target so that the overall sparsity is 95% and the sensitive layers keep more. The scan
# looks at a slice of the training set, never at the test set.

# %%
scan = tfc.sensitivity(float_model, (x_train[-300:], y_train[-300:]), metric="loss", print_fn=None)
targets = scan.layer_sparsity(target=0.95)
print("per-layer targets:", {name: f"{value:.1%}" for name, value in targets.items()})
guided = tfc.quantize(
    tfc.cluster(tfc.prune(float_model, 0.95, end=0.5, layer_sparsity=targets), 16, begin=0.5), start=0.8
)
compile_model(guided, FINETUNE_EPOCHS).fit(x_train, y_train, epochs=FINETUNE_EPOCHS, batch_size=32, verbose=0,
                                           callbacks=[tfc.CompressionCallback(verbose=0)])
guided_int8 = tfe.export(tfc.strip(guided), "guided_int8.tflite", precision="int8",
                         validation_data=(x_test, y_test), latency_runs=0)
print(f"uniform 95%: {int8.report.gzip_bytes:,} B gzip, accuracy {int8.verification.tflite_accuracy:.3f}; "
      f"sensitivity-guided: {guided_int8.report.gzip_bytes:,} B gzip, "
      f"accuracy {guided_int8.verification.tflite_accuracy:.3f}")

# %% [markdown]
# The same pipeline against each stage alone and against the three-fit path, on this MLP and on a
# LeNet-5-style CNN, measured on tf_keras models: `benchmarks/bench_deep_compression.py` and
# `docs/deep_compression.md`.
