"""Deep Compression benchmark: prune, share weights, quantize, on digits, measured on LiteRT.

    python benchmarks/bench_deep_compression.py [--models mlp,lenet5] [--epochs 60] [--finetune_epochs 160] [--seeds 3]

Models (Han et al., ICLR 2016, Table 1, scaled to 8x8 digits): an MLP in the
LeNet-300-100 shape (64-300-100-10) and a LeNet-5-style CNN (conv 20@5x5,
pool, conv 50@5x5, pool, dense 500, dense 10). Rows per model: the float
model (FP32 .tflite); each stage alone (pruning and clustering exported as
FP32, QAT as INT8); the three-fit pipeline (prune, strip, sparsity-preserving
clustering, strip, cluster- and sparsity-preserving QAT, strip); the one-fit
pipeline `tfc.quantize(tfc.cluster(tfc.prune(m, s, end=0.4), N, begin=0.5),
start=0.8)` (the three-fit pipeline's points) with the same target in every
layer, and with per-layer targets from `tfc.sensitivity` (loss on 300
training examples) at the same overall sparsity. Every compressed row is
fine-tuned for the same number of epochs in total and exported with
`tflite_export.export` (its sparse-encoding choice as the export makes it),
and with `strip_names=True` (no runtime reads the intermediate tensor names; the
float reference loses them too), then verified on LiteRT. The pipeline rows run under `--seeds` fine-tuning
seeds (one run's accuracy moves by a point or more between seeds on 397 test
digits) and report their mean and range. The factor is the FP32 .tflite's bytes over the
row's gzip bytes (what a download carries). Prints a markdown table, writes
benchmarks/results/deep_compression.json and a plot of accuracy against size.
"""

import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
import tflite_export  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import load_digits  # noqa: E402

flags.DEFINE_list("models", ["mlp", "lenet5"], "Models to compress: mlp, lenet5.")
flags.DEFINE_integer("epochs", 60, "Float training epochs.")
flags.DEFINE_integer("finetune_epochs", 160, "Fine-tuning epochs of every compressed row (split 50/30/20 in the three-fit one).")
flags.DEFINE_float("mlp_sparsity", 0.95, "Overall kernel sparsity of the MLP's pruned rows.")
flags.DEFINE_float("lenet5_sparsity", 0.93, "Overall kernel sparsity of the CNN's pruned rows.")
flags.DEFINE_integer("mlp_clusters", 8, "Shared values per MLP kernel, zero included.")
flags.DEFINE_integer("lenet5_clusters", 16, "Shared values per LeNet-5 kernel, zero included.")
flags.DEFINE_integer("seeds", 3, "Fine-tuning seeds of each pipeline row (three fits, one fit): its accuracy and size are their mean.")
flags.DEFINE_bool("strip_names", True, "Export every row with strip_names=True (intermediate tensor names dropped, as a shipped file would be).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's rate at the start of every fit (cosine decay to 1% of it).")
flags.DEFINE_string("output", "benchmarks/results/deep_compression.json", "JSON output path.")
flags.DEFINE_string("plot", "benchmarks/results/deep_compression.png", "Accuracy-against-size plot path.")
FLAGS = flags.FLAGS

BATCH = 32


def mlp():
    """LeNet-300-100 on 8x8 digits: 64-300-100-10."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(300, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc3")(x), name="lenet_300_100")


def lenet5():
    """LeNet-5 as Han et al. size it (20 and 50 filters of 5x5, 500 hidden), on 8x8 digits."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(20, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(50, 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(500, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc2")(x), name="lenet5")


MODELS = {"mlp": mlp, "lenet5": lenet5}


def compiled(model, epochs, steps_per_epoch):
    """`model` compiled with Adam on a cosine-decaying rate over a fit of `epochs`."""
    rate = keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, epochs * steps_per_epoch, alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit(model, data, epochs):
    """Compiles and trains `model` with `tfc.CompressionCallback`; returns `(model, wall seconds)`."""
    x, y = data
    steps = -(-len(x) // BATCH)
    compiled(model, epochs, steps)
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    return model, time.perf_counter() - start


def three_fits(float_model, data, epochs, sparsity, clusters):
    """tfmot's documented path: prune, strip, cluster keeping zeros, strip, QAT keeping both, strip.

    The fits take 50%, 30% and 20% of the epochs; pruning ends at 80% of the
    first, as the one-fit schedule's pruning ends at 40% of its fit.
    """
    split = [max(1, round(epochs * share)) for share in (0.5, 0.3)]
    split.append(max(1, epochs - sum(split)))
    pruned, first = fit(tfc.prune(float_model, sparsity, end=0.8), data, split[0])
    clustered, second = fit(tfc.cluster(tfc.strip(pruned), clusters, preserve_sparsity=True), data, split[1])
    qat, third = fit(tfc.quantize(tfc.strip(clustered), preserve="clusters+sparsity"), data, split[2])
    return tfc.strip(qat), first + second + third


def one_fit(float_model, data, epochs, sparsity, clusters, layer_sparsity=None):
    """The same three phases in one fit, driven by tfc.CompressionCallback, at the three-fit points."""
    model = tfc.quantize(
        tfc.cluster(
            tfc.prune(float_model, sparsity, end=0.4, layer_sparsity=layer_sparsity),
            clusters, begin=0.5,
        ),
        start=0.8,
    )
    model, seconds = fit(model, data, epochs)
    return tfc.strip(model), seconds


def copy_of(model):
    """A fresh copy of the trained float model: each row starts from the same weights."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def run_model(name, train, validation, test, directory):
    """Every row for one model: `[row dicts]`."""
    x, y = train
    sparsity = {"mlp": FLAGS.mlp_sparsity, "lenet5": FLAGS.lenet5_sparsity}[name]
    clusters = {"mlp": FLAGS.mlp_clusters, "lenet5": FLAGS.lenet5_clusters}[name]
    float_model, float_seconds = fit(MODELS[name](), train, FLAGS.epochs)
    epochs = FLAGS.finetune_epochs
    rows = []

    def measure(model, precision, seconds):
        result = tflite_export.export(
            model, directory / f"{name}_{len(rows)}.tflite", precision=precision,
            representative_data=x[:256] if precision == "int8" else None,
            validation_data=test, latency_runs=0, strip_names=FLAGS.strip_names,
        )
        report = result.report
        return {
            "litert_accuracy": result.verification.tflite_accuracy,
            "bytes": report.bytes, "gzip_bytes": report.gzip_bytes,
            "fully_integer": report.fully_integer, "sparse_encoding": result.sparse_encoding,
            "kernel_sparsity": tflite_export.weight_sparsity(model) if precision == "fp32" else
            1.0 - report.nonzero_weights / max(report.weights, 1),
            "fit_seconds": round(seconds, 1),
        }

    def record(label, precision, runs, **extra):
        """One row from one run or several seeds' (accuracy, sizes, sparsity and fit time: their mean)."""
        row = {"model": name, "row": label, "precision": precision, **runs[0], **extra}
        for key in ("litert_accuracy", "bytes", "gzip_bytes", "kernel_sparsity", "fit_seconds"):
            row[key] = float(np.mean([run[key] for run in runs]))
        row["seeds"] = len(runs)
        accuracies = [run["litert_accuracy"] for run in runs]
        row["litert_accuracy_each"] = accuracies
        rows.append(row)
        spread = f" (seeds {min(accuracies):.4f}-{max(accuracies):.4f})" if len(runs) > 1 else ""
        print(f"  {label}: {row['litert_accuracy']:.4f} LiteRT{spread}, {row['gzip_bytes']:,.0f} gzip bytes", flush=True)
        return row

    def export(model, label, precision, seconds, **extra):
        return record(label, precision, [measure(model, precision, seconds)], **extra)

    def seeded(label, pipeline, **extra):
        """`pipeline()` -> (int8-ready model, seconds), fine-tuned under each seed."""
        runs = []
        for seed in range(FLAGS.seeds):
            keras.utils.set_random_seed(100 + seed)
            model, seconds = pipeline()
            runs.append(measure(model, "int8", seconds))
        return record(label, "int8", runs, **extra)

    print(f"{name}: float model trained in {float_seconds:.0f} s", flush=True)
    export(float_model, "float", "fp32", float_seconds)
    pruned, seconds = fit(tfc.prune(copy_of(float_model), sparsity, end=0.4), train, epochs)
    export(tfc.strip(pruned), f"prune {sparsity:.0%} alone", "fp32", seconds)
    clustered, seconds = fit(tfc.cluster(copy_of(float_model), clusters), train, epochs)
    export(tfc.strip(clustered), f"cluster {clusters} alone", "fp32", seconds)
    qat, seconds = fit(tfc.quantize(copy_of(float_model)), train, epochs)
    export(tfc.strip(qat), "QAT int8 alone", "int8", seconds)
    seeded("three fits (prune, cluster, QAT), uniform",
           lambda: three_fits(copy_of(float_model), train, epochs, sparsity, clusters))
    seeded("one fit, uniform", lambda: one_fit(copy_of(float_model), train, epochs, sparsity, clusters))
    scan = tfc.sensitivity(float_model, validation, metric="loss", print_fn=None)
    targets = scan.layer_sparsity(target=sparsity)
    seeded("one fit, sensitivity-guided",
           lambda: one_fit(copy_of(float_model), train, epochs, sparsity, clusters, targets), layer_sparsity=targets)
    reference = rows[0]["bytes"]
    for row in rows:
        row["factor"] = round(reference / row["gzip_bytes"], 1)
        row["accuracy_change_pt"] = round(100 * (row["litert_accuracy"] - rows[0]["litert_accuracy"]), 2)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5))
    for name, marker in zip(FLAGS.models, "os^"):
        mine = [row for row in rows if row["model"] == name]
        ax.scatter([r["gzip_bytes"] for r in mine], [100 * r["litert_accuracy"] for r in mine], marker=marker, label=name)
        for row in mine:
            ax.annotate(row["row"].split(" (")[0], (row["gzip_bytes"], 100 * row["litert_accuracy"]),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("gzip bytes of the .tflite (log)")
    ax.set_ylabel("LiteRT test accuracy (%)")
    ax.set_title("Deep Compression on digits: accuracy against download size")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models takes {', '.join(MODELS)}; got {', '.join(unknown)}.")
    (x, y), test = load_digits()
    # The sensitivity scan looks at a held-out slice of the training set, never at the test set.
    train, validation = (x, y), (x[-300:], y[-300:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FLAGS.models:
            rows += run_model(name, train, validation, test, pathlib.Path(tmp))
    print(
        f"\nDeep Compression on digits (1,400 train / 397 test): MLP {FLAGS.mlp_sparsity:.0%} and LeNet-5 "
        f"{FLAGS.lenet5_sparsity:.0%} sparsity, {FLAGS.mlp_clusters} and {FLAGS.lenet5_clusters} values per kernel, "
        f"{FLAGS.finetune_epochs} fine-tuning epochs per row\n"
    )
    print(f"Pipeline rows: the mean of {FLAGS.seeds} fine-tuning seeds, with the range of their accuracy.\n")
    print("| model | row | LiteRT acc | seeds' range | change (pt) | bytes | gzip bytes | factor vs FP32 | sparsity | fit s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        each = row["litert_accuracy_each"]
        spread = f"{min(each):.4f}-{max(each):.4f}" if len(each) > 1 else ""
        print(
            f"| {row['model']} | {row['row']} | {row['litert_accuracy']:.4f} | {spread} | {row['accuracy_change_pt']:+.2f} | "
            f"{row['bytes']:,.0f} | {row['gzip_bytes']:,.0f} | {row['factor']:.1f}x | {row['kernel_sparsity']:.1%} | "
            f"{row['fit_seconds']:.1f} |"
        )
    goal = [row for row in rows if row["factor"] >= 35 and row["accuracy_change_pt"] >= -0.5]
    print("\ngoal (at least 35x, at most 0.5 pt lost, seeds' mean):",
          ", ".join(f"{row['model']} {row['row']}" for row in goal) or "not met by any row")
    record = run_record(
        "deep_compression", epochs=FLAGS.epochs, finetune_epochs=FLAGS.finetune_epochs,
        sparsity={"mlp": FLAGS.mlp_sparsity, "lenet5": FLAGS.lenet5_sparsity},
        clusters={"mlp": FLAGS.mlp_clusters, "lenet5": FLAGS.lenet5_clusters}, learning_rate=FLAGS.learning_rate, seeds=FLAGS.seeds, rows=rows,
        goal_met_by=[f"{row['model']}: {row['row']}" for row in goal],
    )
    write_json(FLAGS.output, record)
    plot(rows, FLAGS.plot)


if __name__ == "__main__":
    app.run(main)
