"""End-to-end example on data that ships with scikit-learn: `python -m tfcompress.demo`.

Trains a small CNN on the 1,797 real 8x8 digits. Then, in one more `fit`, a
copy of it (the student) is pruned to 80% sparsity, quantization-aware
trained over the last 40% of the steps, and distilled from the float CNN (the
teacher), every schedule driven by `tfc.CompressionCallback`. The student is
stripped, summarized with `tfc.summary`, and exported to a full-INT8 TFLite
file that `tflite_export` verifies on the LiteRT interpreter.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
import tflite_export  # noqa: E402
from tfcompress._keras import keras  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The demo's flags; defined only when it runs, so importing it defines none."""
    flags.DEFINE_integer("epochs", 8, "Epochs for the dense model and again for pruning.")
    flags.DEFINE_float("sparsity", 0.8, "Target sparsity of every pruned kernel.")
    flags.DEFINE_float("qat_start", 0.6, "Fraction of the compression fit after which fake quantization is on.")
    flags.DEFINE_string("output_dir", "demo_output", "Where the INT8 .tflite file is written.")


def load_digits():
    """Digits split 1,400 / 397, scaled to [0, 1], shaped (8, 8, 1)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise SystemExit(
            "The demo uses scikit-learn's digits: pip install 'tfcompress[examples]'"
        ) from None
    data = sklearn_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def build_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv):
    del argv
    (x, y), (x_test, y_test) = load_digits()

    print(f"== 1. Dense baseline: {FLAGS.epochs} epochs on {len(x)} digits")
    dense = compile_model(build_model())
    # The baseline is the teacher, not the story: one line instead of an epoch log.
    dense.fit(x, y, epochs=FLAGS.epochs, batch_size=32, verbose=0)
    dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]
    print(f"float CNN test accuracy {dense_accuracy:.3f}")

    print(
        f"\n== 2. One fit: prune to {FLAGS.sparsity:.0%}, QAT from {FLAGS.qat_start:.0%} of the steps, "
        "distill from the float CNN"
    )
    student = tfc.prune(dense, final_sparsity=FLAGS.sparsity, end=0.5)
    student = tfc.quantize(student, start=FLAGS.qat_start)
    distiller = compile_model(tfc.Distiller(teacher=dense, student=student, temperature=4.0, alpha=0.5))
    distiller.fit(x, y, epochs=FLAGS.epochs, batch_size=32, verbose=2, callbacks=[tfc.CompressionCallback()])

    print("\n== 3. Strip and summarize")
    final = compile_model(tfc.strip(distiller.student))
    compressed_accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
    info = tfc.summary(final)

    print("\n== 4. Export full INT8 (the ranges learned in QAT) and verify it on LiteRT")
    output = pathlib.Path(FLAGS.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    fp32 = tflite_export.export(dense, str(output / "digits_fp32.tflite"), precision="fp32", latency_runs=0)
    int8 = tflite_export.export(
        final, str(output / "digits_int8.tflite"), precision="int8", validation_data=(x_test, y_test)
    )
    print(int8)
    print(
        f"\nTest accuracy: float {dense_accuracy:.3f}, compressed Keras {compressed_accuracy:.3f}, "
        f"INT8 on LiteRT {int8.verification.tflite_accuracy:.3f}\n"
        f"Flatbuffer gzip: FP32 {fp32.gzip_bytes:,} B -> INT8 pruned {int8.gzip_bytes:,} B "
        f"({fp32.gzip_bytes / int8.gzip_bytes:.1f}x smaller); kernels {info.total.sparsity:.0%} zeros\n"
        f"Wrote {int8.path}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
