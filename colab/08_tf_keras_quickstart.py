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
# # tfcompress quickstart for tf_keras (Keras 2): prune + QAT + distillation in one fit
#
# A small student CNN learns from a larger teacher while it is pruned to 80% sparsity and trained
# quantization-aware, all in **one** `fit` driven by one callback. Then it is stripped, exported to
# full-INT8 TFLite, verified on the LiteRT interpreter, and compared with the float teacher. Data:
# scikit-learn's digits (nothing is downloaded), or MNIST if you flip `USE_MNIST` in Colab.
#
# **tf_keras:** this is `01_quickstart` for tf_keras (Keras 2) models, the generation the TensorFlow
# Model Optimization toolkit (tfmot) wraps: tfcompress builds on tfmot's pruning, clustering and
# quantization wrappers here, so tfmot users keep the layers they know. Colab's `import keras` is
# Keras 3 (see `01_quickstart`); tf_keras is installed with tfcompress.

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
import tf_keras as keras  # Keras 2: the generation tfmot works with

import tfcompress as tfc
import tflite_export as tfe

print("tfcompress", tfc.__version__, "| TensorFlow", tf.__version__)

# %% [markdown]
# ## Data

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

USE_MNIST = False  # True downloads MNIST (11 MB; needs internet, e.g. Colab) and takes a few minutes
if USE_MNIST:
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    x_train = (x_train / 255.0).astype("float32")[..., None]
    x_test = (x_test / 255.0).astype("float32")[..., None]
    print(f"MNIST: train {x_train.shape}, test {x_test.shape}")


# %% [markdown]
# ## A float teacher
#
# The model we would ship without compression.

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


EPOCHS = 2 if FAST else 12
teacher = compile_model(cnn(filters=32, units=128))
teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=2)
teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
print(f"teacher: {teacher.count_params():,} parameters, test accuracy {teacher_accuracy:.3f}")

# %% [markdown]
# ## Prune + QAT + distill, one fit
#
# * `tfc.prune`: magnitude pruning to 80% over the first 60% of the fit (fractions of the fit, not
#   step numbers);
# * `tfc.quantize`: the model stays float until 70% of the fit, then weights and activations are
#   fake-quantized to INT8;
# * `tfc.Distiller`: the loss mixes the hard labels with the teacher's softened logits;
# * `tfc.CompressionCallback()` lays every schedule over this fit and drives it. `sparsity` and
#   `qat_phase` appear in the logs.

# %%
student = tfc.prune(cnn(filters=16, units=64, seed=1), final_sparsity=0.8, begin=0.1, end=0.6)
student = tfc.quantize(student, start=0.7)
distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.3)
distiller.compile(
    optimizer=keras.optimizers.Adam(3e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
STUDENT_EPOCHS = 3 if FAST else 20
history = distiller.fit(x_train, y_train, epochs=STUDENT_EPOCHS, batch_size=64, verbose=2,
                        callbacks=[tfc.CompressionCallback()])

# %% [markdown]
# ## Strip and summarize
#
# `tfc.strip` leaves a plain tf_keras model (tfmot's quantization layers carry the learned ranges);
# `tfc.summary` shows what compression did.

# %%
final = compile_model(tfc.strip(distiller.student))
student_accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
info = tfc.summary(final)

# %% [markdown]
# ## Export and verify
#
# The teacher as an FP32 flatbuffer, the student as full INT8 (the ranges learned during QAT: no
# calibration data needed). `export` runs both on LiteRT.

# %%
fp32 = tfe.export(teacher, "teacher_fp32.tflite", precision="fp32", validation_data=(x_test, y_test))
int8 = tfe.export(final, "student_int8.tflite", precision="int8", validation_data=(x_test, y_test))
print(int8)

# %%
labels = ["teacher FP32", "student INT8\npruned + QAT + KD"]
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
left.bar(labels, [fp32.gzip_bytes / 1024, int8.gzip_bytes / 1024], color=["grey", "tab:blue"])
left.set_ylabel("gzip size of the .tflite (KiB)")
right.bar(labels, [fp32.verification.tflite_accuracy * 100, int8.verification.tflite_accuracy * 100],
          color=["grey", "tab:blue"])
right.set_ylim(80, 100)
right.set_ylabel("test accuracy on LiteRT (%)")
fig.tight_layout()
plt.show()

print(
    f"Test accuracy on LiteRT: teacher FP32 {fp32.verification.tflite_accuracy:.3f}, "
    f"student INT8 {int8.verification.tflite_accuracy:.3f} (Keras {student_accuracy:.3f})\n"
    f"Size (gzip): teacher FP32 {fp32.gzip_bytes:,} B -> student INT8 {int8.gzip_bytes:,} B "
    f"({fp32.gzip_bytes / int8.gzip_bytes:.1f}x smaller); student kernels {info.total.sparsity:.0%} zeros"
)

# %% [markdown]
# Next: `02_pruning` (schedules, 2:4, per-layer targets), `03_quantization` (PTQ vs QAT, Edge TPU),
# `04_distillation` (student size, feature losses, the teacher cache), `05_android` (metadata,
# LiteRT as an app runs it).
