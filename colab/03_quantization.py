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
# # Quantization with tfcompress: PTQ vs QAT, delayed start and freeze, Edge TPU
#
# A MobileNet-style net (Conv + BatchNorm + ReLU6, depthwise-separable blocks) on digits:
# post-training INT8 from calibration data, then quantization-aware training with `tfc.quantize`
# phases, latency per precision on LiteRT, and an Edge TPU export with tflite_export's offline
# mapping report.
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
import keras

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


def depthwise_net(seed=0):
    """Conv-BN-ReLU6 stem and two depthwise-separable blocks, as in MobileNet."""
    keras.utils.set_random_seed(seed)

    def conv_bn(h, filters, depthwise=False, kernel=3):
        if depthwise:
            h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
        else:
            h = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)  # 0.9: the moving statistics settle in a short fit
        return keras.layers.ReLU(6.0)(h)

    inputs = keras.Input((8, 8, 1))
    h = conv_bn(inputs, 32)
    h = conv_bn(h, None, depthwise=True)
    h = conv_bn(h, 64, kernel=1)
    h = conv_bn(h, None, depthwise=True)
    h = conv_bn(h, 128, kernel=1)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


EPOCHS = 3 if FAST else 12
float_model = compile_model(depthwise_net())
float_model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
print(f"float model: {float_model.count_params():,} parameters, "
      f"test accuracy {float_model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# %% [markdown]
# ## Post-training quantization (PTQ)
#
# No training: the converter calibrates activation ranges on a few hundred representative inputs.
# `export` verifies the file on LiteRT.

# %%
fp32 = tfe.export(float_model, "float_fp32.tflite", precision="fp32", validation_data=(x_test, y_test))
ptq = tfe.export(float_model, "ptq_int8.tflite", precision="int8", representative_data=x_train[:256],
                 validation_data=(x_test, y_test))
print(ptq)

# %% [markdown]
# ## Quantization-aware training, with a delayed start and a freeze
#
# `tfc.quantize(model, start=0.3, freeze=0.8)`: float for the first 30% of the fine-tune (ranges are
# learned meanwhile), fake-quantized INT8 from there, and from 80% the activation ranges and
# BatchNorm statistics stop moving. The phase is in the logs as `qat_phase` (0 float, 1 fake-quant,
# 2 frozen).

# %%
FINETUNE_EPOCHS = 2 if FAST else 5
qat = compile_model(tfc.quantize(float_model, start=0.3, freeze=0.8), learning_rate=3e-4)
history = qat.fit(x_train, y_train, epochs=FINETUNE_EPOCHS, batch_size=32, verbose=2,
                  callbacks=[tfc.CompressionCallback()])
print("qat_phase per epoch:", history.history["qat_phase"])
qat_final = tfc.strip(qat)
qat_int8 = tfe.export(qat_final, "qat_int8.tflite", precision="int8", validation_data=(x_test, y_test))
print(qat_int8)

# %%
rows = [("float FP32", fp32), ("PTQ INT8", ptq), ("QAT INT8", qat_int8)]
print(f"{'':12s} {'LiteRT acc':>10s} {'bytes':>9s} {'gzip bytes':>10s}")
for name, result in rows:
    print(f"{name:12s} {result.verification.tflite_accuracy:10.3f} {result.bytes:9,} {result.gzip_bytes:10,}")

# %% [markdown]
# ## Latency per precision
#
# Each export measures the median single-example latency on LiteRT with one thread, **on this
# machine's CPU**. On x86 without VNNI, INT8 is often *slower* than FP32; phones with int8
# dot-product instructions behave differently, so measure on the target device. `fp16` keeps
# float16 weights, `dynamic` int8 weights with float activations, `int16x8` 16-bit activations
# (in the fast mode only `fp16` is added to the three files above).

# %%
results = {"fp32": fp32}
for precision in ("fp16",) if FAST else ("fp16", "dynamic", "int16x8"):
    results[precision] = tfe.export(float_model, f"float_{precision}.tflite", precision=precision,
                                    representative_data=x_train[:256], validation_data=(x_test, y_test))
results["int8 (PTQ)"] = ptq
results["int8 (QAT)"] = qat_int8
cpu = fp32.verification.cpu.get("name", "this CPU")
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.bar(list(results), [r.verification.latency_ms for r in results.values()], color="tab:blue")
ax.set_yscale("log")  # int16x8 runs on LiteRT's reference kernels, far slower than the rest
ax.set_ylabel("median latency (ms), 1 thread, log")
ax.set_title(f"LiteRT on {cpu}")
plt.show()
for name, r in results.items():
    print(f"{name:11s} {r.verification.latency_ms:.4f} ms  {r.bytes:7,} B  acc {r.verification.tflite_accuracy:.3f}")

# %% [markdown]
# ## Edge TPU
#
# `precision="edgetpu"` writes what `edgetpu_compiler` accepts: full INT8, uint8 input and output,
# static shapes, supported ops. The compiler itself cannot run here (it is a Linux x86 binary from
# Coral); `edgetpu_report` predicts its mapping offline from Coral's published op table. Run
# `edgetpu_compiler model_edgetpu.tflite` on your machine to get the final `_edgetpu.tflite`.

# %%
edgetpu = tfe.export(qat_final, "model_edgetpu.tflite", precision="edgetpu", validation_data=(x_test, y_test))
print(edgetpu.edgetpu.summary())
report = tfe.edgetpu_report("model_edgetpu.tflite")
for op in report.ops:
    print(f"{op.index:3d} {op.op:22s} {'Edge TPU' if op.on_edgetpu else 'CPU':8s} {op.reason or ''}")

# %% [markdown]
# ## Mixed-precision training, then INT8
#
# GPU and TPU users train under a mixed policy: float32 variables, float16 (or bfloat16) compute.
# Keep the model's output in float32, as Keras advises. `tfc.quantize` keeps the model's policy: its
# quantization-aware layers (`QuantConv2D` with the BatchNorm after it folded in, `QuantDense`, the
# activation quantizers) compute in float16 with float32 variables (kernels, ranges, step counts),
# so QAT trains under the policy, with loss scaling. TFLite wants a float32 graph: `export` converts
# a float32 copy (same weights, same learned ranges), checks it against the float16 model, and
# `result.float32_copy` says so. The policy is global: set it back when done.

# %%
keras.mixed_precision.set_global_policy("mixed_float16")
try:
    body = depthwise_net(seed=1)  # its layers compute in float16
    mixed_model = compile_model(
        keras.Model(body.input, keras.layers.Activation("linear", dtype="float32")(body.output))
    )  # compile wraps the optimizer in a LossScaleOptimizer
    if FAST:  # the fast mode (CI) reuses the float model's trained weights: one fit fewer
        mixed_model.set_weights(float_model.get_weights())
    else:
        mixed_model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    print("mixed model computes in", mixed_model.layers[1].compute_dtype,
          "| optimizer:", type(mixed_model.optimizer).__name__)
    mixed_qat = compile_model(tfc.quantize(mixed_model, start=0.3), learning_rate=3e-4)
    mixed_qat.fit(x_train, y_train, epochs=1 if FAST else FINETUNE_EPOCHS, batch_size=32, verbose=0,
                  callbacks=[tfc.CompressionCallback()])
    mixed_int8 = tfe.export(tfc.strip(mixed_qat), "mixed_qat_int8.tflite", precision="int8",
                            validation_data=(x_test, y_test), latency_runs=0)
    qat_conv = mixed_qat.get_layer(mixed_model.layers[1].name)
    print(f"QAT: {type(qat_conv).__name__} computes in {qat_conv.compute_dtype}, kernel {qat_conv.kernel.dtype}"
          f" | optimizer: {type(mixed_qat.optimizer).__name__} | exported from a float32 copy: {mixed_int8.float32_copy}")
finally:
    keras.mixed_precision.set_global_policy("float32")
print(f"mixed_float16 training -> QAT INT8: Keras {mixed_model.evaluate(x_test, y_test, verbose=0)[1]:.3f}, "
      f"LiteRT INT8 {mixed_int8.verification.tflite_accuracy:.3f}, {mixed_int8.bytes:,} B")
