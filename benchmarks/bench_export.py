"""Export benchmark: every tflite_export precision on a digits CNN and a depthwise net.

    python benchmarks/bench_export.py [--epochs 10] [--latency_runs 300]

Prints a markdown table and writes benchmarks/results/export.json: bytes, gzip bytes,
Keras vs LiteRT accuracy, top-1 agreement, whether the graph is fully integer, and
the median single-example latency (1 thread) next to the FP32 flatbuffer's. The
header names the CPU and its SIMD features: an x86 latency says nothing about a
phone's ARM dot-product cores or the Edge TPU, where INT8 is meant to pay off.
"""

import os
import pathlib
import platform
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import tflite_export  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tflite_export._cpu import cpu_description  # noqa: E402
from tfcompress._keras import keras  # noqa: E402

flags.DEFINE_integer("epochs", 10, "Training epochs for each model.")
flags.DEFINE_integer("latency_runs", 300, "Timed single-example invokes per flatbuffer.")
flags.DEFINE_integer("calibration_samples", 256, "Representative samples for int8/int16x8/edgetpu.")
flags.DEFINE_float("sparsity", 0.8, "Sparsity of the pruned-CNN rows (sparse encoding).")
flags.DEFINE_string("output", "benchmarks/results/export.json", "JSON output path.")
FLAGS = flags.FLAGS

GOAL_INT8_RATIO = 0.3
GOAL_ACCURACY_POINTS = 1.0


def digits_data(size=8):
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    if size != 8:
        x = tf.image.resize(x, (size, size), method="bilinear").numpy()
    y = data.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def digits_cnn():
    """A CNN over 100k parameters (the INT8 size goal is stated for such models)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name="digits_cnn")


def depthwise_net():
    """MobileNet-style: Conv/DepthwiseConv2D + BatchNorm(momentum=0.9) + ReLU6 on 32x32 digits."""
    keras.utils.set_random_seed(0)

    def block(x, filters, stride):
        x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
        x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
        return keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(momentum=0.9)(x))
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = block(x, filters, stride)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="depthwise_net")


def train(model, data):
    x_train, y_train, _, _ = data
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=32, verbose=0)
    return model


def pruned(model, data):
    """The digits CNN pruned to --sparsity with tfmot (constant schedule, updated every step)."""
    schedule = tfmot.sparsity.keras.ConstantSparsity(FLAGS.sparsity, begin_step=0, frequency=1)
    # A copy with the trained weights: tfmot wraps the layer objects it is given.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(copy, pruning_schedule=schedule)
    x_train, y_train, _, _ = data
    wrapped.compile(keras.optimizers.Adam(5e-4),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    wrapped.fit(x_train, y_train, epochs=max(2, FLAGS.epochs // 2), batch_size=32, verbose=0,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    wrapped._name = "digits_cnn_pruned"
    return wrapped  # still wrapped: export strips it


def run(model, data, precision, directory, label):
    x_train, _, x_test, y_test = data
    result = tflite_export.export(
        model, directory / f"{label}_{precision}.tflite", precision,
        representative_data=x_train if precision in ("int8", "int16x8", "edgetpu") else None,
        validation_data=(x_test, y_test), max_calibration_samples=FLAGS.calibration_samples,
        latency_runs=FLAGS.latency_runs,
    )
    v = result.verification
    return {
        "model": label, "params": int(tfmot.sparsity.keras.strip_pruning(model).count_params()),
        "precision": precision,
        "bytes": result.bytes, "gzip_bytes": result.gzip_bytes,
        "sparse_encoding": result.sparse_encoding, "dense_bytes": result.dense_bytes,
        "sparse_bytes": result.sparse_bytes,
        "keras_accuracy": v.keras_accuracy, "tflite_accuracy": v.tflite_accuracy,
        "agreement": v.agreement, "max_abs_diff": v.max_abs_diff,
        "fully_integer": result.report.fully_integer,
        "io": f"{result.inputs[0]['dtype']}/{result.outputs[0]['dtype']}",
        "latency_ms": v.latency_ms, "fp32_latency_ms": v.fp32_latency_ms,
        "edgetpu_mapped": None if result.edgetpu is None else f"{result.edgetpu.mapped}/{len(result.edgetpu.ops)}",
    }


def main(argv):
    del argv
    cpu = cpu_description()
    small, large = digits_data(8), digits_data(32)
    models = [("digits_cnn", train(digits_cnn(), small), small),
              ("depthwise_net", train(depthwise_net(), large), large)]
    models.append(("digits_cnn_pruned", pruned(models[0][1], small), small))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        for label, model, data in models:
            precisions = tflite_export.PRECISIONS if label != "digits_cnn_pruned" else ("fp32", "fp16", "int8")
            for precision in precisions:
                row = run(model, data, precision, directory, label)
                # The pruned rows compare with the dense CNN's FP32 file they came from.
                base = label.replace("_pruned", "")
                fp32_bytes = next(r["bytes"] for r in rows + [row]
                                  if r["model"] == base and r["precision"] == "fp32")
                row["ratio_to_fp32"] = row["bytes"] / fp32_bytes
                rows.append(row)
                print(f"  {label} {precision}: {row['bytes']:,} B, acc {row['tflite_accuracy']:.4f}", flush=True)

    header = (f"CPU: {cpu['name']} ({cpu['machine']}); SIMD: {' '.join(cpu['simd']) or 'none found'}; "
              f"LiteRT 1 thread, median of {FLAGS.latency_runs} single-example invokes; "
              f"TF {tf.__version__}, Python {platform.python_version()}")
    print()
    print(header)
    print()
    print("| model | params | precision | IO | bytes | x fp32 | gzip bytes | keras acc | tflite acc | agreement "
          "| fully int | latency ms | fp32 ms | sparse encoding |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['precision']} | {r['io']} | {r['bytes']:,} | "
              f"{r['ratio_to_fp32']:.2f} | {r['gzip_bytes']:,} | {100 * r['keras_accuracy']:.2f} | "
              f"{100 * r['tflite_accuracy']:.2f} | {100 * r['agreement']:.2f} | "
              f"{'yes' if r['fully_integer'] else 'no'} | {r['latency_ms']:.4f} | {r['fp32_latency_ms']:.4f} | "
              f"{r['sparse_encoding']}" + (f" ({r['sparse_bytes']:,} vs {r['dense_bytes']:,} B)"
                                          if r['sparse_bytes'] else "") + " |")

    goals = []
    for r in rows:
        if r["precision"] in ("int8", "edgetpu"):
            if r["params"] > 100_000 and r["precision"] == "int8" and r["sparse_bytes"] is None:
                goals.append((f"{r['model']} int8 bytes <= {GOAL_INT8_RATIO}x fp32",
                              r["ratio_to_fp32"] <= GOAL_INT8_RATIO, f"({r['ratio_to_fp32']:.3f}x)"))
            goals.append((f"{r['model']} {r['precision']} fully integer", r["fully_integer"], ""))
        if r["model"] != "digits_cnn_pruned":
            delta = 100 * (r["tflite_accuracy"] - r["keras_accuracy"])
            goals.append((f"{r['model']} {r['precision']} accuracy within {GOAL_ACCURACY_POINTS} point of Keras",
                          abs(delta) <= GOAL_ACCURACY_POINTS, f"(tflite {delta:+.2f} points)"))
    print()
    print("Goals:")
    for name, ok, detail in goals:
        print(f"- [{'x' if ok else ' '}] {name} {detail}".rstrip())
    print()
    print("Latency is measured on the CPU above and is not a goal here: without AVX-VNNI, LiteRT's "
          "INT8 kernels are not expected to beat FP32 on x86; the INT8 speed-up belongs to ARM "
          "dot-product cores and the Edge TPU.")

    print()
    write_json(FLAGS.output, run_record(
        "export", latency_runs=FLAGS.latency_runs, epochs=FLAGS.epochs, rows=rows,
        goals=[{"goal": n, "met": bool(ok), "detail": d} for n, ok, d in goals],
    ))


if __name__ == "__main__":
    app.run(main)
