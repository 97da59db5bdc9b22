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
# # Distillation with tfcompress: logits vs features, the teacher cache, accuracy vs student size
#
# `tfc.Distiller` trains a student on the hard labels and on a frozen teacher's outputs inside
# `fit`. We compare students trained alone with distilled ones across student sizes, add feature
# distillation, and look at what the teacher-output cache saves.
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
import time

import matplotlib.pyplot as plt
import tensorflow as tf
import keras  # Keras 3

import tfcompress as tfc
from tfcompress.distillation import FeatureDistillation, LogitsDistillation

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


# %% [markdown]
# Distillation helps most when the student has few labels to learn from. The teacher is trained on
# all 1,400 training digits; the students see only `LABELLED` of them, alone or with the teacher's
# softened logits as extra targets.

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


EPOCHS = 3 if FAST else 15
LABELLED = 150
teacher = compile_model(cnn(filters=32, units=128))
teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
print(f"teacher: {teacher.count_params():,} parameters, test accuracy {teacher_accuracy:.3f}")
x_few, y_few = x_train[:LABELLED], y_train[:LABELLED]
STUDENT_EPOCHS = 5 if FAST else 60  # the labelled set is small: more epochs, same number of steps


# %% [markdown]
# ## Accuracy vs student size: alone vs distilled (logits)

# %%
def student_alone(filters, units):
    model = compile_model(cnn(filters, units, seed=1))
    model.fit(x_few, y_few, epochs=STUDENT_EPOCHS, batch_size=32, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1], model.count_params()


def student_distilled(filters, units, losses=None, **kwargs):
    """Distils the teacher into a new student; returns its test accuracy and the seconds `fit` took."""
    distiller = tfc.Distiller(teacher=teacher, student=cnn(filters, units, seed=1), distillation_losses=losses,
                              temperature=2.0, alpha=0.3, **kwargs)
    distiller.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    start = time.perf_counter()
    distiller.fit(x_few, y_few, epochs=STUDENT_EPOCHS, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    return distiller.evaluate(x_test, y_test, verbose=0)[1], seconds


SIZES = [(4, 16)] if FAST else [(2, 8), (4, 16), (8, 32), (16, 64)]
alone, distilled, fit_seconds, params = [], [], [], []
for filters, units in SIZES:
    accuracy, count = student_alone(filters, units)
    alone.append(accuracy)
    params.append(count)
    accuracy, seconds = student_distilled(filters, units)
    distilled.append(accuracy)
    fit_seconds.append(seconds)
    print(f"student {count:6,} params: alone {alone[-1]:.3f}, distilled {distilled[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(params, np.array(alone) * 100, "o-", label=f"student alone ({LABELLED} labels)")
ax.plot(params, np.array(distilled) * 100, "o-", label="distilled from the teacher")
ax.axhline(teacher_accuracy * 100, color="grey", ls="--", label=f"teacher ({teacher.count_params():,} params)")
ax.set_xscale("log")
ax.set_xlabel("student parameters")
ax.set_ylabel("test accuracy (%)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Logits vs logits + features
#
# `FeatureDistillation` also matches an intermediate layer; when widths differ, a trainable
# projection (training-only) maps the student's features to the teacher's. The logits-only
# student is the one of the same size from the sweep above.

# %%
filters, units = 4, 16
logits_only = distilled[SIZES.index((filters, units))]
with_features, _ = student_distilled(
    filters, units,
    losses=[LogitsDistillation(), FeatureDistillation(teacher_layer_name="dense", student_layer_name="dense")],
)
print(f"student {filters}/{units}: logits {logits_only:.3f}, logits + dense features {with_features:.3f}")

# %% [markdown]
# ## The teacher cache
#
# When `fit` gets arrays, the teacher runs once over them before training and its outputs are
# shuffled with the inputs (`teacher_cache="auto"`, the default): an epoch costs about what the
# student alone costs. A `tf.data` pipeline may augment, so there the teacher runs on every batch
# unless you build the dataset with `distiller.cache_teacher_outputs`. The largest student of the
# sweep above used the cache; here the same student trains with the teacher on every batch. Times
# are from this machine, for illustration. This teacher is small next to the cost of a step, so
# here the two fits take about the same time (2.7 and 3.2 s with the cache, 3.2 and 2.5 s without,
# in two full runs); the cache saves the teacher's forward pass on every batch, which counts when the
# teacher is large.

# %%
accuracy_cached, cached = distilled[-1], fit_seconds[-1]
accuracy_uncached, uncached = student_distilled(*SIZES[-1], teacher_cache=False)
print(f"fit with the teacher cache: {cached:.1f} s (acc {accuracy_cached:.3f}); "
      f"teacher on every batch: {uncached:.1f} s (acc {accuracy_uncached:.3f})")

# %% [markdown]
# Distillation composes with compression: give `tfc.Distiller` a student pruned by `tfc.prune` or
# made quantization-aware by `tfc.quantize` and add `tfc.CompressionCallback()` (see `01_quickstart`).
