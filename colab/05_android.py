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
# # From Keras to an Android-ready .tflite: metadata, inspection, LiteRT like an app
#
# Export a compressed digits classifier to full INT8 with Android metadata (name, labels, input
# normalization), look inside the file, and run it with the LiteRT interpreter the way an app does:
# raw pixels in, normalized and quantized by the caller, a label out.
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
import tensorflow as tf
import keras  # Keras 3

import tfcompress as tfc
import tflite_export as tfe

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
model = compile_model(cnn())
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
compressed = compile_model(tfc.quantize(tfc.prune(model, final_sparsity=0.8, end=0.5), start=0.6), 1e-3)
compressed.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0,
               callbacks=[tfc.CompressionCallback(verbose=0)])
final = tfc.strip(compressed)

# %% [markdown]
# ## Export with metadata
#
# The app will feed raw sklearn pixel values (0..16); the model was trained on `pixels / 16`. The
# metadata says so (`mean=0`, `std=16`), and carries the labels as an associated `labels.txt`, as
# Android's metadata tooling expects. Latency is left out (`latency_runs=0`): the number that
# matters is measured on the phone, not on this CPU.

# %%
result = tfe.export(
    final, "digits_int8.tflite", precision="int8", validation_data=(x_test, y_test), latency_runs=0,
    metadata=dict(name="Digits classifier", description="8x8 handwritten digits (scikit-learn)",
                  version="1.0", author="tfcompress tutorial", license="Apache-2.0",
                  labels=[str(d) for d in range(10)], mean=0.0, std=16.0),
)
print(result)

# %% [markdown]
# ## Inspect the file
#
# What a reviewer or an app developer sees without the Keras model.

# %%
print(tfe.inspect("digits_int8.tflite"))
metadata = tfe.read_metadata("digits_int8.tflite")
print({k: metadata[k] for k in ("name", "description", "version", "associated_files", "labels")})
print("input:", metadata["inputs"][0])

# %% [markdown]
# ## Run it like an app
#
# An app loads the file, reads normalization and labels from the metadata, normalizes the raw
# input, quantizes it with the input tensor's scale and zero point, invokes, and dequantizes the
# output. Those two steps apply only to integer input and output: this file keeps float32 ones
# (`io_dtype`'s default) and quantizes inside, so its scales print as 0. In Kotlin that is
# `Interpreter(file).run(input, output)`; here it is the same LiteRT runtime in Python.

# %%
import zipfile
from ai_edge_litert.interpreter import Interpreter

interpreter = Interpreter(model_path="digits_int8.tflite", num_threads=1)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
with zipfile.ZipFile("digits_int8.tflite") as archive:  # associated files ride in a zip after the flatbuffer
    labels = archive.read("labels.txt").decode().split()
mean, std = metadata["inputs"][0]["mean"][0], metadata["inputs"][0]["std"][0]
print("input", inp["dtype"].__name__, inp["shape"], "quantization", inp["quantization"])
print("output", out["dtype"].__name__, out["shape"], "quantization", out["quantization"])


def classify(raw_pixels):
    """raw_pixels: an 8x8 array of sklearn digit values 0..16, as the app would capture them."""
    x = (raw_pixels.astype("float32") - mean) / std
    scale, zero_point = inp["quantization"]
    if scale:  # integer input: quantize like the app must
        x = np.clip(np.round(x / scale + zero_point), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
    interpreter.set_tensor(inp["index"], x.reshape(inp["shape"]).astype(inp["dtype"]))
    interpreter.invoke()
    logits = interpreter.get_tensor(out["index"])[0].astype("float32")
    scale, zero_point = out["quantization"]
    if scale:
        logits = (logits - zero_point) * scale
    return labels[int(np.argmax(logits))]


raw_test = (x_test[..., 0] * 16).round()  # back to raw 0..16 pixel values
predictions = [classify(image) for image in raw_test]
app_accuracy = np.mean([p == str(t) for p, t in zip(predictions, y_test)])
print(f"app-style accuracy on {len(raw_test)} test digits: {app_accuracy:.3f} "
      f"(export's own check: {result.verification.tflite_accuracy:.3f})")

# %%
fig, axes = plt.subplots(1, 8, figsize=(10, 1.8))
for ax, image, prediction, truth in zip(axes, raw_test, predictions, y_test):
    ax.imshow(image, cmap="gray_r")
    ax.set_title(f"{prediction} ({truth})", color="black" if prediction == str(truth) else "red", fontsize=9)
    ax.axis("off")
fig.suptitle("prediction (label)")
plt.show()

# %% [markdown]
# Copy `digits_int8.tflite` into your app's `assets/`; Android Studio's ML model binding reads the
# name, description, normalization and labels from the metadata.
