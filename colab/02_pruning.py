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
# # Pruning with tfcompress: schedules, 2:4 sparsity, per-layer targets
#
# `tfc.prune` puts a magnitude-pruning mask on each kernel (a kernel constraint: the model keeps its
# own layers) and lays the schedule over the fit that trains them. This notebook plots how sparsity
# grows, makes 2:4 structured sparsity, and gives layers their own targets.
#
# Models are built with `import keras` (Keras 3, what TensorFlow 2.16+ gives). The same code runs on
# tf_keras models (`import tf_keras as keras`), where tfcompress's pruning uses tfmot's wrappers.

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
import tensorflow as tf
import keras

import tfcompress as tfc

print("tfcompress", tfc.__version__, "| TensorFlow", tf.__version__)

# %%
import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()  # 1,797 real 8x8 handwritten digits that ship with scikit-learn
x = (digits.images / 16.0).astype("float32")[..., None]  # pixels 0..16 -> [0, 1], shape (8, 8, 1)
y = digits.target.astype("int64")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
print(f"train {x_train.shape}, test {x_test.shape}")


# %%
def compile_model(model, learning_rate=3e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def cnn(filters=16, units=64, seed=0):
    """Two convolutions, a pooling layer and two dense layers; outputs logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(x_train.shape[1:])
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(units, activation="relu", name="dense")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


EPOCHS = 2 if FAST else 8
dense = compile_model(cnn())
dense.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]
print(f"dense model: test accuracy {dense_accuracy:.3f}")


def copy_of_dense():
    """A fresh copy of the trained dense model, so every experiment starts from the same weights."""
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    return model


# %% [markdown]
# ## Schedules, plotted
#
# `begin` and `end` are fractions of the fit. The polynomial schedule (the curve of tfmot's
# `PolynomialDecay`, power 3) prunes fast early and gently near the end; `"constant"` jumps to the
# target at `begin`. tfcompress reports the model's current `sparsity` as a metric, so `History`
# holds it per epoch; a one-line callback records it per step.

# %%
def prune_and_record(**kwargs):
    model = compile_model(tfc.prune(copy_of_dense(), **kwargs), learning_rate=1e-3)
    steps = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(logs["sparsity"]))
    history = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0,
                        callbacks=[tfc.CompressionCallback(verbose=0), record])
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    return model, history, steps, accuracy


runs = {
    "polynomial, end=0.75": prune_and_record(final_sparsity=0.8),
    "polynomial, begin=0.25, end=0.5": prune_and_record(final_sparsity=0.8, begin=0.25, end=0.5),
    "constant from 0.25": prune_and_record(final_sparsity=0.8, schedule="constant", begin=0.25),
}
steps_per_epoch = len(runs["polynomial, end=0.75"][2]) // EPOCHS
fig, ax = plt.subplots(figsize=(7, 3.5))
for label, (_, history, steps, accuracy) in runs.items():
    line, = ax.plot(np.arange(1, len(steps) + 1), np.array(steps) * 100, label=f"{label} (acc {accuracy:.3f})")
    epoch_ends = steps_per_epoch * np.arange(1, EPOCHS + 1)
    ax.plot(epoch_ends, np.array(history.history["sparsity"]) * 100, "o", color=line.get_color())
ax.set_xlabel("optimizer step")
ax.set_ylabel("kernel sparsity (%)")
ax.set_title("Sparsity per step (lines) and in History per epoch (dots)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()
for label, (_, history, _, accuracy) in runs.items():
    print(f"{label:32s} final sparsity {history.history['sparsity'][-1]:.0%}, test accuracy {accuracy:.3f}")

# %% [markdown]
# tfmot's own `PolynomialDecay` updates masks every 100 steps by default, so a fit this short would
# never prune; `CompressionCallback` picks a frequency that reaches the target (about 20 updates
# over the span, and always one at `end`).

# %% [markdown]
# ## 2:4 structured sparsity
#
# `m_by_n=(2, 4)` zeroes 2 weights in every 4 consecutive input weights (the pattern sparse tensor
# cores and some NPUs accelerate). `conv1` reads one input channel: as with tfmot, a group short of
# 4 inputs is padded with zeros that count among its 2, so its one weight per group is kept (leave
# it out with `layers=` to say so explicitly). We check the pattern on the stripped kernels.

# %%
model = compile_model(tfc.prune(copy_of_dense(), m_by_n=(2, 4)), learning_rate=1e-3)
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
two_four = compile_model(tfc.strip(model))
print(f"2:4 model: test accuracy {two_four.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

for layer in two_four.layers:
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        kernel = layer.kernel.numpy()
        zeros = 1 - np.count_nonzero(kernel) / kernel.size
        if kernel.shape[-2] % 4:
            print(f"{layer.name:7s} {kernel.shape!s:16s} {kernel.shape[-2]} input channel(s), a padded group: "
                  f"{zeros:.0%} zeros")
            continue
        # Groups of 4 consecutive weights along the input axis (axis -2), for every output unit.
        groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
        share = np.mean(np.count_nonzero(groups, axis=1) <= 2)
        print(f"{layer.name:7s} {kernel.shape!s:16s} groups of 4 with <= 2 non-zeros: {share:.0%} ({zeros:.0%} zeros)")

# %% [markdown]
# ## Per-layer targets
#
# The first convolution and the logits layer are small and sensitive; give them lighter targets with
# `layer_sparsity`, or leave layers out with `layers=`. `tfc.summary` shows the result per layer.

# %%
model = compile_model(
    tfc.prune(copy_of_dense(), final_sparsity=0.9, layer_sparsity={"conv1": 0.3, "logits": 0.5}),
    learning_rate=1e-3,
)
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
per_layer = compile_model(tfc.strip(model))
print(f"per-layer targets: test accuracy {per_layer.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
info = tfc.summary(per_layer)

# %% [markdown]
# The zeros only shrink the file once it is compressed (gzip, or TFLite's sparse encoding): see
# `03_quantization` for INT8 on top, and `tflite_export.export(..., sparse="auto")`.
