"""Pruning benchmark on digits: dense vs tfcompress vs tfmot's guide pipeline.

    python benchmarks/bench_pruning.py [--epochs 8] [--repeats 3]

Prints a markdown table and writes benchmarks/results/pruning.json. All runs
train the same CNN from the same dense weights for the same epochs; fit time
is the median wall time of `model.fit` over `--repeats` runs.
"""

import gzip
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import tfcompress as tfc  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tflite_export._cpu import cpu_description  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import build_model, compile_model, load_digits  # noqa: E402
from tfcompress.summary import kernel_sparsity  # noqa: E402

flags.DEFINE_integer("epochs", 8, "Pruning epochs (the dense model is pretrained for as many).")
flags.DEFINE_integer("short_epochs", 2, "Epochs of the short-fit comparison (tfmot's frequency=100 trap).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_float("sparsity", 0.8, "Target sparsity.")
flags.DEFINE_integer("repeats", 3, "Timed runs per pipeline (median reported).")
flags.DEFINE_string("output", "benchmarks/results/pruning.json", "JSON output path.")
FLAGS = flags.FLAGS




def gzip_bytes(model):
    raw = b"".join(w.tobytes() for w in model.get_weights())
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def timed_fit(model, x, y, callbacks, epochs):
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def dense_pipeline(dense, x, y, epochs):
    model = compile_model(keras.models.clone_model(dense))
    model.set_weights(dense.get_weights())
    return model, timed_fit(model, x, y, [], epochs)


def tfcompress_pipeline(dense, x, y, epochs):
    model = compile_model(tfc.prune(dense, final_sparsity=FLAGS.sparsity))
    seconds = timed_fit(model, x, y, [tfc.CompressionCallback(verbose=0)], epochs)
    return tfc.strip(model), seconds


def tfmot_guide_pipeline(dense, x, y, epochs):
    """tfmot's pruning guide, verbatim: hand-computed end_step, default frequency (100)."""
    base = keras.models.clone_model(dense)
    base.set_weights(dense.get_weights())
    end_step = np.ceil(len(x) / FLAGS.batch_size).astype(np.int32) * epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.50, final_sparsity=FLAGS.sparsity, begin_step=0, end_step=end_step
    )
    model = compile_model(tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule))
    seconds = timed_fit(model, x, y, [tfmot.sparsity.keras.UpdatePruningStep()], epochs)
    return tfmot.sparsity.keras.strip_pruning(model), seconds


PIPELINES = {
    "dense baseline": dense_pipeline,
    "tfmot guide pipeline": tfmot_guide_pipeline,
    "tfcompress prune": tfcompress_pipeline,
}
SHORT_FIT = ("tfmot guide pipeline", "tfcompress prune")


def main(argv):
    del argv
    (x, y), (x_test, y_test) = load_digits()
    dense = compile_model(build_model())
    dense.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0)

    plan = [(name, FLAGS.epochs) for name in PIPELINES]
    plan += [(name, FLAGS.short_epochs) for name in SHORT_FIT]
    rows = []
    for name, epochs in plan:
        runs = []
        for repeat in range(FLAGS.repeats):
            keras.backend.clear_session()
            keras.utils.set_random_seed(repeat)
            runs.append(PIPELINES[name](dense, x, y, epochs))
        final = compile_model(runs[-1][0])
        rows.append(
            {
                "pipeline": name,
                "epochs": epochs,
                "accuracy": float(final.evaluate(x_test, y_test, verbose=0)[1]),
                "sparsity": kernel_sparsity(final.get_weights()),
                "gzip_bytes": gzip_bytes(final),
                "fit_seconds": statistics.median(seconds for _, seconds in runs),
            }
        )
    baseline = rows[0]
    for row in rows:
        tfmot_row = next(r for r in rows if r["pipeline"] == "tfmot guide pipeline" and r["epochs"] == row["epochs"])
        row["gzip_ratio"] = row["gzip_bytes"] / baseline["gzip_bytes"]
        row["fit_time_vs_tfmot"] = row["fit_seconds"] / tfmot_row["fit_seconds"]

    header = (
        f"Pruning on digits (CNN, {FLAGS.epochs} epochs, batch {FLAGS.batch_size}, "
        f"target {FLAGS.sparsity:.0%}); CPU: {cpu_description()['name']}; TF {tf.__version__}"
    )
    print(header + "\n")
    print("| pipeline | epochs | accuracy | kernel sparsity | gzip bytes | vs dense | fit s | fit vs tfmot |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['pipeline']} | {r['epochs']} | {r['accuracy']:.3f} | {r['sparsity']:.1%} | {r['gzip_bytes']:,} | "
            f"{r['gzip_ratio']:.2f}x | {r['fit_seconds']:.2f} | {r['fit_time_vs_tfmot']:.2f}x |"
        )
    print()
    write_json(FLAGS.output, run_record(
        "pruning",
        settings={k: FLAGS[k].value for k in ("epochs", "short_epochs", "batch_size", "sparsity", "repeats")},
        rows=rows,
    ))

if __name__ == "__main__":
    app.run(main)
