"""Uniform sparsity vs sensitivity-guided per-layer targets, at the same overall budget, on digits.

    python benchmarks/bench_sensitivity.py [--epochs 10] [--repeats 3] [--budgets 0.9,0.95]

For an MLP (LeNet-300-100 shape) and a LeNet-5-style CNN, a dense model is
trained once. For each budget, three pipelines prune it with `tfc.prune` and
fine-tune for the same epochs: one sparsity for every layer; and per-layer
targets from `tfc.sensitivity` (scanned on a validation split, never on the
test split) turned into `layer_sparsity=` with the same overall sparsity over
the pruned kernels, once from the accuracy curves and once from the loss
curves. Rows report the test accuracy before fine-tuning (the targets applied
at once) and after it (mean and spread over `--repeats` fine-tuning seeds),
the measured overall sparsity, and the gzip size of the stripped weights.

A second table is the download size of the loss-guided models: each is
converted at fp32, fp16, dynamic and int8 with and without TFLite's sparse
encoding, and reports the gzip sizes, the kernels' bits per kept weight after
deflate (the sparse index apart), whether LiteRT's default runtime invokes
the sparse file, and which one `tflite_export.export` keeps.
Prints markdown tables and writes benchmarks/results/sensitivity.json, and
the loss curves of each scan as benchmarks/results/sensitivity_<model>.png.
"""

import gzip
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import load_digits  # noqa: E402
from tfcompress.pruning.constraints import magnitude_mask  # noqa: E402
from tfcompress.sensitivity import prunable_kernels  # noqa: E402
from tflite_export.convert import convert_to_bytes  # noqa: E402
from tflite_export.inspection import gzip_size, report_from_bytes, runs_on_litert  # noqa: E402

flags.DEFINE_list("budgets", ["0.9", "0.95"], "Overall sparsities over the pruned kernels.")
flags.DEFINE_integer("dense_epochs", 30, "Epochs of the dense model's training.")
flags.DEFINE_integer("epochs", 10, "Fine-tuning epochs of every pruning pipeline.")
flags.DEFINE_integer("repeats", 3, "Fine-tuning seeds per pipeline.")
flags.DEFINE_integer("validation", 280, "Training examples held out for the sensitivity scan.")
flags.DEFINE_list("precisions", ["fp32", "fp16", "dynamic", "int8"], "Precisions of the encoding table.")
flags.DEFINE_string("output", "benchmarks/results/sensitivity.json", "JSON output path.")
FLAGS = flags.FLAGS


def mlp():
    """LeNet-300-100 on 8x8 digits."""
    return keras.Sequential([
        keras.layers.Flatten(input_shape=(8, 8, 1), name="flatten"),
        keras.layers.Dense(300, activation="relu", name="fc1"),
        keras.layers.Dense(100, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="logits"),
    ])


def lenet5():
    """LeNet-5's layers (6 and 16 filters, 120-84-10), with 3x3 kernels for 8x8 inputs."""
    return keras.Sequential([
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(120, activation="relu", name="fc1"),
        keras.layers.Dense(84, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="logits"),
    ])


MODELS = {"MLP 300-100": mlp, "LeNet-5 CNN": lenet5}


def compiled(model, learning_rate=1e-3):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0, batch_size=512).argmax(1) == y))


def copy_of(build, dense):
    model = build()
    model.set_weights(dense.get_weights())
    return model


def one_shot(build, dense, targets, x, y):
    """Test accuracy with every kernel pruned at once to its target, no training."""
    model = copy_of(build, dense)
    for layer, kernels in prunable_kernels(model):
        for kernel in kernels:
            values = kernel.numpy()
            kernel.assign(values * magnitude_mask(values, targets[layer.name]))
    return accuracy(model, x, y)


def fine_tune(build, dense, targets, data, seed):
    """`tfc.prune` with these per-layer targets, fine-tuned for `--epochs`; the stripped model and fit seconds."""
    x_fit, y_fit = data
    keras.utils.set_random_seed(seed)
    pruned = compiled(tfc.prune(copy_of(build, dense), layer_sparsity=targets, end=0.7))
    start = time.perf_counter()
    pruned.fit(x_fit, y_fit, epochs=FLAGS.epochs, batch_size=32, verbose=0,
               callbacks=[tfc.CompressionCallback(verbose=0)])
    return tfc.strip(pruned), time.perf_counter() - start


def weight_gzip_bytes(model):
    raw = b"".join(w.tobytes() for w in model.get_weights())
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def run_model(name, build, splits):
    (x_fit, y_fit), (x_val, y_val), (x_test, y_test) = splits
    keras.utils.set_random_seed(0)
    dense = compiled(build(), 3e-3)
    dense.fit(x_fit, y_fit, epochs=FLAGS.dense_epochs, batch_size=32, verbose=0)
    dense_accuracy = accuracy(dense, x_test, y_test)
    print(f"\n{name}: dense test accuracy {dense_accuracy:.4f}, {dense.count_params():,} params")
    scans = {metric: tfc.sensitivity(dense, (x_val, y_val), metric=metric) for metric in ("accuracy", "loss")}
    params = {row.name: row.params for row in scans["loss"].layers}
    rows = [{"model": name, "pipeline": "dense", "budget": 0.0, "test_accuracy": dense_accuracy,
             "weights_gzip_bytes": weight_gzip_bytes(dense)}]
    encodings = []
    for budget in (float(b) for b in FLAGS.budgets):
        plans = {"uniform": {layer: budget for layer in params}}
        plans.update({f"sensitivity ({metric})": scan.layer_sparsity(budget) for metric, scan in scans.items()})
        for pipeline, targets in plans.items():
            accuracies, seconds, final = [], [], None
            for seed in range(FLAGS.repeats):
                final, fit_seconds = fine_tune(build, dense, targets, (x_fit, y_fit), seed)
                accuracies.append(accuracy(final, x_test, y_test))
                seconds.append(fit_seconds)
            summary = tfc.summary(final, print_fn=None)
            sparsity = {row.name: row.sparsity for row in summary.rows if row.name in params}
            overall = sum(params[n] * s for n, s in sparsity.items()) / sum(params.values())
            rows.append({
                "model": name, "pipeline": pipeline, "budget": budget,
                "targets": {n: round(s, 4) for n, s in targets.items()},
                "measured_sparsity": round(overall, 4),
                "one_shot_accuracy": one_shot(build, dense, targets, x_test, y_test),
                "test_accuracy": statistics.mean(accuracies),
                "test_accuracy_runs": accuracies,
                "test_accuracy_spread": max(accuracies) - min(accuracies),
                "weights_gzip_bytes": weight_gzip_bytes(final),
                "fit_seconds": statistics.median(seconds),
            })
            print(f"  {budget:.0%} {pipeline}: {rows[-1]['test_accuracy']:.4f} "
                  f"(one-shot {rows[-1]['one_shot_accuracy']:.4f}) targets {rows[-1]['targets']}", flush=True)
            if pipeline == "sensitivity (loss)":
                encodings += encoding_rows(name, budget, final, x_fit)
    return rows, encodings, {metric: scan.to_dict() for metric, scan in scans.items()}


def encoding_rows(name, budget, model, x_fit):
    """Dense vs sparse encoding of one pruned model at each precision, after gzip, and whether LiteRT runs it."""
    rows = []
    for precision in FLAGS.precisions:
        samples = x_fit[:256] if precision == "int8" else None
        dense = convert_to_bytes(model, precision, samples)
        sparse = convert_to_bytes(model, precision, samples, sparse=True)
        dense_report, sparse_report = report_from_bytes(dense), report_from_bytes(sparse)
        runs = runs_on_litert(sparse)
        smaller = gzip_size(sparse) < gzip_size(dense)
        rows.append({
            "model": name, "budget": budget, "precision": precision,
            "dense_bytes": len(dense), "dense_gzip_bytes": gzip_size(dense),
            "sparse_bytes": len(sparse), "sparse_gzip_bytes": gzip_size(sparse),
            "dense_bits_per_nonzero": dense_report.bits_per_nonzero,
            "sparse_bits_per_nonzero": sparse_report.bits_per_nonzero,
            "sparse_index_bits_per_nonzero": sparse_report.index_bits_per_nonzero,
            "sparse_runs_on_litert": runs,
            # export's rule with sparse="auto": smaller after gzip, and invoked by LiteRT's default runtime.
            "export_keeps": "sparse" if runs and smaller else "dense",
        })
    return rows


def encoding_table(rows):
    lines = ["| model | budget | precision | dense B (gzip) | sparse B (gzip) | bits/nonzero dense | "
             "bits/nonzero sparse + index | sparse runs on LiteRT | export keeps |",
             "|---|---:|---|---:|---:|---:|---:|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['budget']:.0%} | {row['precision']} | {row['dense_bytes']:,} "
            f"({row['dense_gzip_bytes']:,}) | {row['sparse_bytes']:,} ({row['sparse_gzip_bytes']:,}) | "
            f"{row['dense_bits_per_nonzero']:.2f} | {row['sparse_bits_per_nonzero']:.2f} + "
            f"{row['sparse_index_bits_per_nonzero']:.2f} | {'yes' if row['sparse_runs_on_litert'] else 'no'} | "
            f"{row['export_keeps']} |")
    return "\n".join(lines)


def table(rows):
    lines = ["| model | budget | pipeline | per-layer sparsity | one-shot acc | fine-tuned acc (spread) | weights gzip B |",
             "|---|---:|---|---|---:|---:|---:|"]
    for row in rows:
        targets = ", ".join(f"{n} {s:.2f}" for n, s in row.get("targets", {}).items()) or "-"
        one_shot_cell = f"{row['one_shot_accuracy']:.4f}" if "one_shot_accuracy" in row else "-"
        tuned = f"{row['test_accuracy']:.4f}" + (f" ({row['test_accuracy_spread']:.4f})" if "test_accuracy_spread" in row else "")
        budget = f"{row['budget']:.0%}" if row["budget"] else "-"
        lines.append(f"| {row['model']} | {budget} | {row['pipeline']} | {targets} | {one_shot_cell} | {tuned} | "
                     f"{row['weights_gzip_bytes']:,} |")
    return "\n".join(lines)


def write_plots(scans, directory):
    """One PNG per model: its loss curves, as `SensitivityResult.plot` draws them."""
    for name, by_metric in scans.items():
        figure = tfc.SensitivityResult.from_dict(by_metric["loss"]).plot()
        figure.axes[0].set_title(f"{name}: validation loss with one layer pruned")
        path = os.path.join(directory, f"sensitivity_{name.split()[0].lower().replace('-', '')}.png")
        figure.savefig(path, dpi=110, bbox_inches="tight")
        print(f"wrote {path}")


def main(_):
    (x_train, y_train), (x_test, y_test) = load_digits()
    cut = len(x_train) - FLAGS.validation
    splits = ((x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:]), (x_test, y_test))
    rows, encodings, scans = [], [], {}
    for name, build in MODELS.items():
        model_rows, model_encodings, scans[name] = run_model(name, build, splits)
        rows.extend(model_rows)
        encodings.extend(model_encodings)
    print()
    print(table(rows))
    print()
    print(encoding_table(encodings))
    write_json(FLAGS.output, run_record(
        "sensitivity", epochs=FLAGS.epochs, dense_epochs=FLAGS.dense_epochs, repeats=FLAGS.repeats,
        fit_examples=cut, scan_examples=FLAGS.validation, test_examples=len(x_test), rows=rows,
        encodings=encodings, scans=scans,
    ))
    write_plots(scans, os.path.dirname(FLAGS.output) or ".")


if __name__ == "__main__":
    app.run(main)
