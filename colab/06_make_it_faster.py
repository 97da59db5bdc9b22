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
# # Make it faster: channel pruning
#
# Zeros do not make a model faster: a dense kernel full of zeros costs the same multiply-adds, and
# LiteRT's CPU kernels cannot skip them. **Fewer channels** do, on every device: CPU, GPU delegate,
# NPU and Edge TPU alike. `tfc.prune(model, 0.5, structure="channels")` masks whole filters inside
# `fit`, group by group (a convolution, its BatchNorm, the depthwise channel after it, the rows that
# read it, every channel a residual `Add` ties to it), and `tfc.strip` then rebuilds a physically
# smaller model with the surviving weights. This notebook prunes a MobileNet-style net on digits,
# measures what it buys on LiteRT, and adds quantization-aware training in a second fit.
#
# Models are built with `import keras` (Keras 3, what TensorFlow 2.16+ gives). The same code runs on
# tf_keras models (`import tf_keras as keras`), where tfcompress's pruning and QAT use tfmot.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import keras
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

import tfcompress as tfc
import tflite_export as tfe

print("tfcompress", tfc.__version__, "| TensorFlow", tf.__version__)

# %%
digits = load_digits()  # 1,797 real 8x8 handwritten digits that ship with scikit-learn
images = (digits.images / 16.0).astype("float32")[..., None]
x = tf.image.resize(images, (16, 16)).numpy()  # upsampled, so the convolutions have work to do
y = digits.target.astype("int64")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
print(f"train {x_train.shape}, test {x_test.shape}")


# %%
def compiled(model, learning_rate=2e-3):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def mobilenet_style():
    """Inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1, BatchNorm, ReLU6)."""
    keras.utils.set_random_seed(0)
    layers = keras.layers

    def bn_relu(h):
        return layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(h))

    def block(h, filters, stride):
        inputs = h
        h = bn_relu(layers.Conv2D(h.shape[-1] * 4, 1, use_bias=False)(h))
        h = bn_relu(layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h))
        h = layers.BatchNormalization(momentum=0.9)(layers.Conv2D(filters, 1, use_bias=False)(h))
        return layers.Add()([inputs, h]) if stride == 1 and inputs.shape[-1] == filters else h

    inputs = keras.Input((16, 16, 1))
    h = bn_relu(layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs))
    for filters, stride in ((24, 1), (24, 1)) + (() if FAST else ((48, 2), (48, 1), (64, 2))):
        h = block(h, filters, stride)
    h = bn_relu(layers.Conv2D(192, 1, use_bias=False)(h))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(h)))


dense = compiled(mobilenet_style())
if not FAST:  # the fast mode (CI) prunes the initial weights: one fit fewer
    dense.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
print(f"dense: {dense.count_params():,} params, {tfc.pruning.count_macs(dense):,} MACs, "
      f"test accuracy {dense.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# %% [markdown]
# ## Half of every group's channels, removed inside `fit`
#
# The callback prints the plan: which groups lose channels, over which steps, and what the stripped
# model will cost. `channel_sparsity` in the logs is the share of those channels masked so far.

# %%
FINETUNE_EPOCHS = 1 if FAST else 6
pruned = compiled(tfc.prune(dense, 0.5, structure="channels"), learning_rate=1e-3)
history = pruned.fit(x_train, y_train, epochs=FINETUNE_EPOCHS, batch_size=32, verbose=2,
                     callbacks=[tfc.CompressionCallback()])
info = tfc.pruning.channel_summary(pruned)
small = tfc.strip(pruned)  # the same layer types with fewer filters, surviving weights copied
print(f"pruned: {small.count_params():,} params, {tfc.pruning.count_macs(small):,} MACs, "
      f"test accuracy {compiled(small).evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# %% [markdown]
# ## What it buys on LiteRT
#
# Both models go to FP32 `.tflite` files, verified on LiteRT. The latencies are taken **in turns**
# (one invoke of each file per round, one thread) so that a burst of load on a shared machine lands
# on both alike; the figure is for this machine's CPU, not a phone's.

# %%
files = {}
for name, model in (("dense", dense), ("pruned", small)):
    result = tfe.export(model, f"{name}_fp32.tflite", precision="fp32", validation_data=(x_test, y_test),
                        latency_runs=0)
    files[name] = result
    print(f"{name:7s} {result.bytes:9,} B  LiteRT accuracy {result.verification.tflite_accuracy:.3f}")


def alternating_latency_ms(paths, example, rounds):
    interpreters = []
    for path in paths:
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], example[None])
        interpreters.append(interpreter)
    times = [[] for _ in paths]
    for round_index in range(rounds + 10):  # the first 10 rounds warm up
        for i, interpreter in enumerate(interpreters):
            start = time.perf_counter()
            interpreter.invoke()
            if round_index >= 10:
                times[i].append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


dense_ms, pruned_ms = alternating_latency_ms([files["dense"].path, files["pruned"].path], x_test[0],
                                             rounds=50 if FAST else 300)
print(f"FP32 latency: dense {dense_ms:.3f} ms -> pruned {pruned_ms:.3f} ms ({dense_ms / pruned_ms:.1f}x faster)")
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
axes[0].bar(["dense", "pruned"], [dense.count_params(), small.count_params()], color=["gray", "tab:green"])
axes[0].set_title("parameters")
axes[1].bar(["dense", "pruned"], [dense_ms, pruned_ms], color=["gray", "tab:green"])
axes[1].set_title("FP32 LiteRT latency (ms), 1 thread")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## INT8 on top: quantization-aware training in a second fit
#
# Quantization-aware training rebuilds every layer (folding each BatchNorm into its convolution), so
# it runs on the smaller model, in a second fit. `tfc.quantize(pruned)` is the one call
# between the two: it rebuilds the smaller model (what `tfc.strip` gives) and wraps it for QAT.

# %%
qat = compiled(tfc.quantize(pruned, start=0.3), learning_rate=5e-4)
qat.fit(x_train, y_train, epochs=1 if FAST else 3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback()])
int8 = tfe.export(tfc.strip(qat), "pruned_int8.tflite", precision="int8", validation_data=(x_test, y_test),
                  latency_runs=0)
print(f"pruned + QAT INT8: {int8.bytes:,} B (dense FP32 {files['dense'].bytes:,} B), "
      f"LiteRT accuracy {int8.verification.tflite_accuracy:.3f}, fully integer: {int8.report.fully_integer}")
