"""Writes the Colab tutorials in this folder from the cells below: `python colab/make_notebooks.py`.

The notebooks are committed without outputs; edit them here, regenerate, and
`python -m pytest tests/test_notebooks.py` runs each one top to bottom.
"""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
ORG_PLACEHOLDER = "YOUR_ORG"

WHY_TF_KERAS = (
    "**Why `tf_keras`:** tfcompress is built on the TensorFlow Model Optimization toolkit (tfmot), "
    "which wraps only Keras 2 models, and Colab's `import keras` is Keras 3, so every model here is "
    "built with `import tf_keras as keras` (Keras 2, installed with tfcompress)."
)


def setup_cell():
    return new_code_cell(
        f'''# Setup. In Colab this installs tfcompress from its repository; anywhere else, install it
# yourself first (from a clone: pip install -e ".[examples]").
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    # PLACEHOLDER: replace {ORG_PLACEHOLDER} with the GitHub organisation that hosts tfcompress.
    REPOSITORY = "git+https://github.com/{ORG_PLACEHOLDER}/tfcompress"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"tfcompress[examples] @ {{REPOSITORY}}"])
    # If this changed the TensorFlow version after TensorFlow was imported, restart the session and run again.

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TFCOMPRESS_TUTORIAL_FAST=1 (set by CI) runs the same code with fewer epochs.
FAST = os.environ.get("TFCOMPRESS_TUTORIAL_FAST") == "1"
print("fast mode" if FAST else "full mode")'''
    )


DIGITS = '''import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()  # 1,797 real 8x8 handwritten digits that ship with scikit-learn
x = (digits.images / 16.0).astype("float32")[..., None]  # pixels 0..16 -> [0, 1], shape (8, 8, 1)
y = digits.target.astype("int64")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
print(f"train {x_train.shape}, test {x_test.shape}")'''

IMPORTS = '''import tensorflow as tf
import tf_keras as keras  # Keras 2: the generation tfmot works with
import tfcompress as tfc
import tflite_export as tfe
import matplotlib.pyplot as plt

tf.get_logger().setLevel("ERROR")  # the converter's "Assets written to ..." lines are noise here
print("tfcompress", tfc.__version__, "| TensorFlow", tf.__version__)'''

COMPILE = '''def compile_model(model, learning_rate=3e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model'''

CNN = '''def cnn(filters=16, units=64, seed=0):
    """Two convolutions, a pooling layer and two dense layers; outputs logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(x_train.shape[1:])
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(units, activation="relu", name="dense")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))'''


def header(title, intro):
    return [new_markdown_cell(f"# {title}\n\n{intro}\n\n{WHY_TF_KERAS}"), setup_cell()]


def quickstart():
    return header(
        "tfcompress quickstart: prune + QAT + distillation in one fit",
        "A small student CNN learns from a larger teacher while it is pruned to 80% sparsity and "
        "trained quantization-aware, all in **one** `fit` driven by one callback. Then it is "
        "stripped, exported to full-INT8 TFLite, verified on the LiteRT interpreter, and compared "
        "with the float teacher. Data: scikit-learn's digits (nothing is downloaded), or MNIST if "
        "you flip `USE_MNIST` in Colab.",
    ) + [
        new_code_cell(IMPORTS),
        new_markdown_cell("## Data"),
        new_code_cell(
            DIGITS
            + '''

USE_MNIST = False  # True downloads MNIST (11 MB; needs internet, e.g. Colab) and takes a few minutes
if USE_MNIST:
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    x_train = (x_train / 255.0).astype("float32")[..., None]
    x_test = (x_test / 255.0).astype("float32")[..., None]
    print(f"MNIST: train {x_train.shape}, test {x_test.shape}")'''
        ),
        new_markdown_cell("## A float teacher\n\nThe model we would ship without compression."),
        new_code_cell(
            COMPILE
            + "\n\n\n"
            + CNN
            + '''


EPOCHS = 3 if FAST else 12
teacher = compile_model(cnn(filters=32, units=128))
teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=2)
teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
print(f"teacher: {teacher.count_params():,} parameters, test accuracy {teacher_accuracy:.3f}")'''
        ),
        new_markdown_cell(
            "## Prune + QAT + distill, one fit\n\n"
            "* `tfc.prune`: magnitude pruning to 80% over the first 60% of the fit (fractions of the fit, "
            "not step numbers);\n"
            "* `tfc.quantize`: the model stays float until 70% of the fit, then weights and activations "
            "are fake-quantized to INT8;\n"
            "* `Distiller`: the loss mixes the hard labels with the teacher's softened logits;\n"
            "* `tfc.CompressionCallback()` lays every schedule over this fit and drives it. "
            "`sparsity` and `qat_phase` appear in the logs."
        ),
        new_code_cell(
            '''Distiller = getattr(tfc, "Distiller", None)
if Distiller is None:  # older tfcompress: the class lives in its subpackage
    from tfcompress.distillation import Distiller

student = tfc.prune(cnn(filters=16, units=64, seed=1), final_sparsity=0.8, begin=0.1, end=0.6)
student = tfc.quantize(student, start=0.7)
distiller = Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.3)
distiller.compile(
    optimizer=keras.optimizers.Adam(3e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
STUDENT_EPOCHS = 4 if FAST else 20
history = distiller.fit(x_train, y_train, epochs=STUDENT_EPOCHS, batch_size=64, verbose=2,
                        callbacks=[tfc.CompressionCallback()])'''
        ),
        new_markdown_cell("## Strip and summarize\n\n`tfc.strip` leaves a plain tf_keras model (tfmot's quantization layers carry the learned ranges); `tfc.summary` shows what compression did."),
        new_code_cell(
            '''final = compile_model(tfc.strip(distiller.student))
student_accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
info = tfc.summary(final)'''
        ),
        new_markdown_cell(
            "## Export and verify\n\nThe teacher as an FP32 flatbuffer, the student as full INT8 "
            "(the ranges learned during QAT: no calibration data needed). `export` runs both on LiteRT."
        ),
        new_code_cell(
            '''fp32 = tfe.export(teacher, "teacher_fp32.tflite", precision="fp32", validation_data=(x_test, y_test))
int8 = tfe.export(final, "student_int8.tflite", precision="int8", validation_data=(x_test, y_test))
print(int8)'''
        ),
        new_code_cell(
            '''labels = ["teacher FP32", "student INT8\\npruned + QAT + KD"]
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
    f"student INT8 {int8.verification.tflite_accuracy:.3f} (Keras {student_accuracy:.3f})\\n"
    f"Size (gzip): teacher FP32 {fp32.gzip_bytes:,} B -> student INT8 {int8.gzip_bytes:,} B "
    f"({fp32.gzip_bytes / int8.gzip_bytes:.1f}x smaller); student kernels {info.total.sparsity:.0%} zeros"
)'''
        ),
        new_markdown_cell(
            "Next: `02_pruning` (schedules, 2:4, per-layer targets), `03_quantization` (PTQ vs QAT, "
            "Edge TPU), `04_distillation`, `05_android`."
        ),
    ]


def pruning():
    return header(
        "Pruning with tfcompress: schedules, 2:4 sparsity, per-layer targets",
        "`tfc.prune` wraps kernels with tfmot's magnitude-pruning layers and lays the schedule over "
        "the fit that trains them. This notebook plots how sparsity grows, makes 2:4 structured "
        "sparsity, and gives layers their own targets.",
    ) + [
        new_code_cell(IMPORTS),
        new_code_cell(DIGITS),
        new_code_cell(
            COMPILE
            + "\n\n\n"
            + CNN
            + '''


EPOCHS = 2 if FAST else 8
dense = compile_model(cnn())
dense.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]
print(f"dense model: test accuracy {dense_accuracy:.3f}")'''
        ),
        new_markdown_cell(
            "## Schedules, plotted\n\n"
            "`begin` and `end` are fractions of the fit. The polynomial schedule (tfmot's "
            "`PolynomialDecay`, power 3) prunes fast early and gently near the end; `\"constant\"` "
            "jumps to the target at `begin`. tfcompress reports the model's current `sparsity` as a "
            "metric, so `History` holds it per epoch; a one-line callback records it per step."
        ),
        new_code_cell(
            '''def prune_and_record(**kwargs):
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    model = compile_model(tfc.prune(model, **kwargs), learning_rate=1e-3)
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
plt.show()'''
        ),
        new_markdown_cell(
            "tfmot's own `PolynomialDecay` updates masks every 100 steps by default, so a fit this "
            "short would never prune; `CompressionCallback` picks a frequency that reaches the target "
            "(about 20 updates over the span, and always one at `end`)."
        ),
        new_markdown_cell(
            "## 2:4 structured sparsity\n\n`m_by_n=(2, 4)` zeroes 2 weights in every 4 consecutive input "
            "weights (the pattern sparse tensor cores and some NPUs accelerate). We check the pattern "
            "on the stripped kernels."
        ),
        new_code_cell(
            '''model = keras.models.clone_model(dense)
model.set_weights(dense.get_weights())
model = compile_model(tfc.prune(model, m_by_n=(2, 4)), learning_rate=1e-3)
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
two_four = compile_model(tfc.strip(model))
print(f"2:4 model: test accuracy {two_four.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

for layer in two_four.layers:
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        kernel = layer.kernel.numpy()
        zeros = 1 - np.count_nonzero(kernel) / kernel.size
        if kernel.shape[-2] % 4:
            print(f"{layer.name:7s} {kernel.shape!s:16s} {kernel.shape[-2]} input channel(s), no groups of 4: "
                  f"{zeros:.0%} zeros")
            continue
        # Groups of 4 consecutive weights along the input axis (axis -2), for every output unit.
        groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
        share = np.mean(np.count_nonzero(groups, axis=1) <= 2)
        print(f"{layer.name:7s} {kernel.shape!s:16s} groups of 4 with <= 2 non-zeros: {share:.0%} ({zeros:.0%} zeros)")'''
        ),
        new_markdown_cell(
            "## Per-layer targets\n\nThe first convolution and the logits layer are small and "
            "sensitive; give them lighter targets with `layer_sparsity`, or leave layers out with "
            "`layers=`. `tfc.summary` shows the result per layer."
        ),
        new_code_cell(
            '''model = keras.models.clone_model(dense)
model.set_weights(dense.get_weights())
model = compile_model(
    tfc.prune(model, final_sparsity=0.9, layer_sparsity={"conv1": 0.3, "logits": 0.5}), learning_rate=1e-3
)
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
per_layer = compile_model(tfc.strip(model))
print(f"per-layer targets: test accuracy {per_layer.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
info = tfc.summary(per_layer)'''
        ),
        new_markdown_cell(
            "The zeros only shrink the file once it is compressed (gzip, or TFLite's sparse encoding): "
            "see `03_quantization` for INT8 on top, and `tflite_export.export(..., sparse=\"auto\")`."
        ),
    ]


def quantization():
    return header(
        "Quantization with tfcompress: PTQ vs QAT, delayed start and freeze, Edge TPU",
        "A MobileNet-style net (Conv + BatchNorm + ReLU6, depthwise-separable blocks) on digits: "
        "post-training INT8 from calibration data, then quantization-aware training with "
        "`tfc.quantize` phases, latency per precision on LiteRT, and an Edge TPU export with "
        "tflite_export's offline mapping report.",
    ) + [
        new_code_cell(IMPORTS),
        new_code_cell(DIGITS),
        new_code_cell(
            COMPILE
            + '''


def depthwise_net(seed=0):
    """Conv-BN-ReLU6 stem and two depthwise-separable blocks, as in MobileNet."""
    keras.utils.set_random_seed(seed)

    def conv_bn(h, filters, depthwise=False, kernel=3):
        if depthwise:
            h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
        else:
            h = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)  # 0.9: short fits (see the GUIDE)
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
      f"test accuracy {float_model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")'''
        ),
        new_markdown_cell(
            "## Post-training quantization (PTQ)\n\nNo training: the converter calibrates activation "
            "ranges on a few hundred representative inputs. `export` verifies the file on LiteRT."
        ),
        new_code_cell(
            '''fp32 = tfe.export(float_model, "float_fp32.tflite", precision="fp32", validation_data=(x_test, y_test))
ptq = tfe.export(float_model, "ptq_int8.tflite", precision="int8", representative_data=x_train[:256],
                 validation_data=(x_test, y_test))
print(ptq)'''
        ),
        new_markdown_cell(
            "## Quantization-aware training, with a delayed start and a freeze\n\n"
            "`tfc.quantize(model, start=0.3, freeze=0.8)`: float for the first 30% of the fine-tune "
            "(ranges are learned meanwhile), fake-quantized INT8 from there, and from 80% the "
            "activation ranges and BatchNorm statistics stop moving. The phase is in the logs as "
            "`qat_phase` (0 float, 1 fake-quant, 2 frozen)."
        ),
        new_code_cell(
            '''FINETUNE_EPOCHS = 2 if FAST else 5
qat = compile_model(tfc.quantize(float_model, start=0.3, freeze=0.8), learning_rate=3e-4)
history = qat.fit(x_train, y_train, epochs=FINETUNE_EPOCHS, batch_size=32, verbose=2,
                  callbacks=[tfc.CompressionCallback()])
print("qat_phase per epoch:", history.history["qat_phase"])
qat_final = tfc.strip(qat)
qat_int8 = tfe.export(qat_final, "qat_int8.tflite", precision="int8", validation_data=(x_test, y_test))
print(qat_int8)'''
        ),
        new_code_cell(
            '''rows = [("float FP32", fp32), ("PTQ INT8", ptq), ("QAT INT8", qat_int8)]
print(f"{'':12s} {'LiteRT acc':>10s} {'bytes':>9s} {'gzip bytes':>10s}")
for name, result in rows:
    print(f"{name:12s} {result.verification.tflite_accuracy:10.3f} {result.bytes:9,} {result.gzip_bytes:10,}")'''
        ),
        new_markdown_cell(
            "## Latency per precision\n\nEach export measures the median single-example latency on "
            "LiteRT with one thread, **on this machine's CPU**. On x86 without VNNI, INT8 is often "
            "*slower* than FP32; phones with int8 dot-product instructions behave differently, so "
            "measure on the target device."
        ),
        new_code_cell(
            '''results = {"fp32": fp32}
for precision in ("fp16", "dynamic", "int16x8"):
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
    print(f"{name:11s} {r.verification.latency_ms:.4f} ms  {r.bytes:7,} B  acc {r.verification.tflite_accuracy:.3f}")'''
        ),
        new_markdown_cell(
            "## Edge TPU\n\n`precision=\"edgetpu\"` writes what `edgetpu_compiler` accepts: full INT8, "
            "uint8 input and output, static shapes, supported ops. The compiler itself cannot run here "
            "(it is a Linux x86 binary from Coral); `edgetpu_report` predicts its mapping offline from "
            "Coral's published op table. Run `edgetpu_compiler model_edgetpu.tflite` on your machine to "
            "get the final `_edgetpu.tflite`."
        ),
        new_code_cell(
            '''edgetpu = tfe.export(qat_final, "model_edgetpu.tflite", precision="edgetpu", validation_data=(x_test, y_test))
print(edgetpu.edgetpu.summary())
report = tfe.edgetpu_report("model_edgetpu.tflite")
for op in report.ops:
    print(f"{op.index:3d} {op.op:22s} {'Edge TPU' if op.on_edgetpu else 'CPU':8s} {op.reason or ''}")'''
        ),
    ]


def distillation():
    return header(
        "Distillation with tfcompress: logits vs features, the teacher cache, accuracy vs student size",
        "`Distiller` trains a student on the hard labels and on a frozen teacher's outputs inside "
        "`fit`. We compare students trained alone with distilled ones across student sizes, add "
        "feature distillation, and look at what the teacher-output cache saves.",
    ) + [
        new_code_cell(
            IMPORTS
            + '''
import time

Distiller = getattr(tfc, "Distiller", None)
if Distiller is None:  # older tfcompress: the classes live in its subpackage
    from tfcompress.distillation import Distiller
from tfcompress.distillation import FeatureDistillation, LogitsDistillation'''
        ),
        new_code_cell(DIGITS),
        new_markdown_cell(
            "Distillation helps most when the student has few labels to learn from. The teacher "
            "is trained on all 1,400 training digits; the students see only `LABELLED` of them, "
            "alone or with the teacher's softened logits as extra targets."
        ),
        new_code_cell(
            COMPILE
            + "\n\n\n"
            + CNN
            + '''


EPOCHS = 3 if FAST else 15
LABELLED = 150
teacher = compile_model(cnn(filters=32, units=128))
teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
print(f"teacher: {teacher.count_params():,} parameters, test accuracy {teacher.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
x_few, y_few = x_train[:LABELLED], y_train[:LABELLED]
STUDENT_EPOCHS = 5 if FAST else 60  # the labelled set is small: more epochs, same number of steps'''
        ),
        new_markdown_cell("## Accuracy vs student size: alone vs distilled (logits)"),
        new_code_cell(
            '''def student_alone(filters, units):
    model = compile_model(cnn(filters, units, seed=1))
    model.fit(x_few, y_few, epochs=STUDENT_EPOCHS, batch_size=32, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1], model.count_params()


def student_distilled(filters, units, losses=None, **kwargs):
    distiller = Distiller(teacher=teacher, student=cnn(filters, units, seed=1), distillation_losses=losses,
                          temperature=kwargs.pop("temperature", 2.0), alpha=0.3, **kwargs)
    distiller.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    start = time.perf_counter()
    distiller.fit(x_few, y_few, epochs=STUDENT_EPOCHS, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    return distiller.evaluate(x_test, y_test, verbose=0)[1], seconds


SIZES = [(2, 8), (4, 16)] if FAST else [(2, 8), (4, 16), (8, 32), (16, 64)]
alone, distilled, params = [], [], []
for filters, units in SIZES:
    accuracy, count = student_alone(filters, units)
    alone.append(accuracy)
    params.append(count)
    distilled.append(student_distilled(filters, units)[0])
    print(f"student {count:6,} params: alone {alone[-1]:.3f}, distilled {distilled[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(params, np.array(alone) * 100, "o-", label=f"student alone ({LABELLED} labels)")
ax.plot(params, np.array(distilled) * 100, "o-", label="distilled from the teacher")
ax.axhline(teacher.evaluate(x_test, y_test, verbose=0)[1] * 100, color="grey", ls="--",
           label=f"teacher ({teacher.count_params():,} params)")
ax.set_xscale("log")
ax.set_xlabel("student parameters")
ax.set_ylabel("test accuracy (%)")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()'''
        ),
        new_markdown_cell(
            "## Logits vs logits + features\n\n`FeatureDistillation` also matches an intermediate "
            "layer; when widths differ, a trainable projection (training-only) maps the student's "
            "features to the teacher's."
        ),
        new_code_cell(
            '''filters, units = SIZES[1]
logits_only, _ = student_distilled(filters, units)
with_features, _ = student_distilled(
    filters, units,
    losses=[LogitsDistillation(), FeatureDistillation(teacher_layer_name="dense", student_layer_name="dense")],
)
print(f"student {filters}/{units}: logits {logits_only:.3f}, logits + dense features {with_features:.3f}")'''
        ),
        new_markdown_cell(
            "## The teacher cache\n\nWhen `fit` gets arrays, the teacher runs once over them before "
            "training and its outputs are shuffled with the inputs (`teacher_cache=\"auto\"`, the "
            "default): an epoch costs about what the student alone costs. A `tf.data` pipeline may "
            "augment, so there the teacher runs on every batch unless you build the dataset with "
            "`distiller.cache_teacher_outputs`. Times below are from this machine, for illustration."
        ),
        new_code_cell(
            '''accuracy_cached, cached = student_distilled(*SIZES[-1])
accuracy_uncached, uncached = student_distilled(*SIZES[-1], teacher_cache=False)
print(f"fit with the teacher cache: {cached:.1f} s (acc {accuracy_cached:.3f}); "
      f"teacher on every batch: {uncached:.1f} s (acc {accuracy_uncached:.3f})")'''
        ),
        new_markdown_cell(
            "Distillation composes with compression: give `Distiller` a student wrapped by "
            "`tfc.prune` / `tfc.quantize` and add `tfc.CompressionCallback()` (see `01_quickstart`)."
        ),
    ]


def android():
    return header(
        "From Keras to an Android-ready .tflite: metadata, inspection, LiteRT like an app",
        "Export a compressed digits classifier to full INT8 with Android metadata (name, labels, "
        "input normalization), look inside the file, and run it with the LiteRT interpreter the way "
        "an app does: raw pixels in, normalized and quantized by the caller, a label out.",
    ) + [
        new_code_cell(IMPORTS),
        new_code_cell(DIGITS),
        new_code_cell(
            COMPILE
            + "\n\n\n"
            + CNN
            + '''


EPOCHS = 2 if FAST else 8
model = compile_model(cnn())
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
compressed = compile_model(tfc.quantize(tfc.prune(model, final_sparsity=0.8, end=0.5), start=0.6), 1e-3)
compressed.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
final = tfc.strip(compressed)'''
        ),
        new_markdown_cell(
            "## Export with metadata\n\nThe app will feed raw sklearn pixel values (0..16); the "
            "model was trained on `pixels / 16`. The metadata says so (`mean=0`, `std=16`), "
            "and carries the labels as an associated `labels.txt`, as Android's metadata tooling "
            "expects."
        ),
        new_code_cell(
            '''result = tfe.export(
    final, "digits_int8.tflite", precision="int8", validation_data=(x_test, y_test),
    metadata=dict(name="Digits classifier", description="8x8 handwritten digits (scikit-learn)",
                  version="1.0", author="tfcompress tutorial", license="Apache-2.0",
                  labels=[str(d) for d in range(10)], mean=0.0, std=16.0),
)
print(result)'''
        ),
        new_markdown_cell("## Inspect the file\n\nWhat a reviewer or an app developer sees without the Keras model."),
        new_code_cell(
            '''print(tfe.inspect("digits_int8.tflite"))
metadata = tfe.read_metadata("digits_int8.tflite")
print({k: metadata[k] for k in ("name", "description", "version", "associated_files", "labels")})
print("input:", metadata["inputs"][0])'''
        ),
        new_markdown_cell(
            "## Run it like an app\n\nAn app loads the file, reads normalization and labels from "
            "the metadata, normalizes the raw input, quantizes it with the input tensor's scale and "
            "zero point, invokes, and dequantizes the output. In Kotlin that is "
            "`Interpreter(file).run(input, output)`; here it is the same LiteRT runtime in Python."
        ),
        new_code_cell(
            '''import zipfile
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
      f"(export's own check: {result.verification.tflite_accuracy:.3f})")'''
        ),
        new_code_cell(
            '''fig, axes = plt.subplots(1, 8, figsize=(10, 1.8))
for ax, image, prediction, truth in zip(axes, raw_test, predictions, y_test):
    ax.imshow(image, cmap="gray_r")
    ax.set_title(f"{prediction} ({truth})", color="black" if prediction == str(truth) else "red", fontsize=9)
    ax.axis("off")
fig.suptitle("prediction (label)")
plt.show()'''
        ),
        new_markdown_cell(
            "Copy `digits_int8.tflite` into your app's `assets/`; Android Studio's ML model binding "
            "reads the name, description, normalization and labels from the metadata."
        ),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_pruning.ipynb": pruning,
    "03_quantization.ipynb": quantization,
    "04_distillation.ipynb": distillation,
    "05_android.ipynb": android,
}


def build(name):
    notebook = new_notebook(cells=NOTEBOOKS[name]())
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating changes only what was edited
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.metadata["colab"] = {"provenance": []}
    nbformat.validate(notebook)
    return notebook


def main():
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(f"wrote colab/{name}")


if __name__ == "__main__":
    main()
