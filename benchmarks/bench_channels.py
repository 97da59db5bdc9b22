"""Channel pruning benchmark: fewer channels, smaller and faster LiteRT models, on digits upsampled to 32x32.

    python benchmarks/bench_channels.py [--epochs 10] [--finetune_epochs 6] [--ratios 0.25,0.5,0.75]
    python benchmarks/bench_channels.py --keras3    # the same nets built with Keras 3 (`import keras`)
    python benchmarks/bench_channels.py --norun     # table and plot again from the JSON

For a MobileNet-style net (inverted residuals) and a ResNet-style net (basic
residual blocks), each trained dense first, then from the same weights:

* `tfc.prune(model, ratio, structure="channels")` for each ratio of channels
  removed, fine-tuned `--finetune_epochs`, stripped to the smaller model;
* `tfc.prune(model, sparsity)` (unstructured) at the sparsity that leaves the
  same number of nonzero parameters, fine-tuned the same epochs.

The dense net fine-tuned as many more epochs is the accuracy reference.
Reported per row: params (nonzero for unstructured), MACs, Keras and LiteRT
accuracy, and LiteRT FP32 and INT8 latency (1 thread, one example, the median
of `--latency_runs` invokes taken in turns across all of a net's flatbuffers,
so load on the machine hits every model alike). Prints a markdown table,
writes benchmarks/results/channels.json and a plot of accuracy vs latency.
"""

import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfcompress as tfc  # noqa: E402
import tflite_export  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tflite_export._cpu import cpu_description  # noqa: E402
from tflite_export.verification import load_interpreter  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import load_digits  # noqa: E402
from tfcompress.pruning import count_macs  # noqa: E402
from tfcompress.pruning.constraints import compression_constraints  # noqa: E402
from tfcompress.summary import kernel_sparsity  # noqa: E402

flags.DEFINE_integer("epochs", 10, "Dense training epochs.")
flags.DEFINE_integer("finetune_epochs", 6, "Epochs of every pruning fit (channels and unstructured alike).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_list("ratios", ["0.25", "0.5", "0.75"], "Shares of channels removed.")
flags.DEFINE_list("nets", ["mobilenet", "resnet"], "Which nets to run.")
flags.DEFINE_integer("latency_runs", 200, "Timed invokes per flatbuffer (median reported).")
flags.DEFINE_bool("keras3", False, "Build, prune and strip the nets with Keras 3 (TensorFlow backend), not tf_keras.")
flags.DEFINE_string("output", None, "JSON output path (default: benchmarks/results/channels[_keras3].json).")
flags.DEFINE_string("plot", None, "Plot path ('' for none; default: channels[_keras3]_accuracy_vs_latency.png).")
flags.DEFINE_bool("run", True, "Train and measure; --norun prints the table and plot of the JSON at --output.")
FLAGS = flags.FLAGS

L = keras.layers
GOAL_SPEEDUP = 1.8
GOAL_ACCURACY_POINTS = 1.0
GOAL_RATIO = 0.5


def digits_32():
    (x, y), (x_test, y_test) = load_digits()
    resize = lambda images: tf.image.resize(images, (32, 32), method="bilinear").numpy()  # noqa: E731
    return resize(x), y, resize(x_test), y_test


def mobilenet_style():
    """Inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1, BatchNorm, ReLU6) like MobileNetV2."""
    keras.utils.set_random_seed(0)

    def bn_relu(x):
        return L.ReLU(6.0)(L.BatchNormalization(momentum=0.9)(x))

    def block(x, filters, stride, expansion=4):
        inputs = x
        x = bn_relu(L.Conv2D(x.shape[-1] * expansion, 1, use_bias=False)(x))
        x = bn_relu(L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x))
        x = L.BatchNormalization(momentum=0.9)(L.Conv2D(filters, 1, use_bias=False)(x))
        return L.Add()([inputs, x]) if stride == 1 and inputs.shape[-1] == filters else x

    inputs = keras.Input((32, 32, 1))
    x = bn_relu(L.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inputs))
    for filters, stride in ((24, 1), (24, 1), (32, 2), (32, 1), (64, 2), (64, 1), (96, 1)):
        x = block(x, filters, stride)
    x = bn_relu(L.Conv2D(384, 1, use_bias=False)(x))
    outputs = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="mobilenet_style")


def resnet_style():
    """Basic residual blocks (two 3x3 convs, BatchNorm, ReLU), three stages, like ResNet-18 at 32x32."""
    keras.utils.set_random_seed(0)

    def conv_bn(x, filters, stride=1):
        return L.BatchNormalization(momentum=0.9)(L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x))

    def block(x, filters, stride):
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = L.BatchNormalization(momentum=0.9)(L.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        x = L.ReLU()(conv_bn(x, filters, stride))
        x = conv_bn(x, filters)
        return L.ReLU()(L.Add()([shortcut, x]))

    inputs = keras.Input((32, 32, 1))
    x = L.ReLU()(conv_bn(inputs, 32))
    for filters, stride in ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = block(x, filters, stride)
    outputs = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="resnet_style")


NETS = {"mobilenet": mobilenet_style, "resnet": resnet_style}


def compiled(model, learning_rate=1e-3):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def copy_of(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fit(model, data, epochs, callbacks=()):
    x, y, _, _ = data
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def unstructured_sparsity(dense, params):
    """The kernel sparsity at which tfc.prune leaves `params` nonzero parameters in `dense`."""
    probe = tfc.prune(dense, 0.5)
    if FLAGS.keras3:
        pruned_kernels = sum(int(np.prod(v.shape)) for _, v, _ in compression_constraints(probe))
    else:
        pruned_kernels = sum(
            int(np.prod(w.layer.kernel.shape)) for w in tfc.pruning.wrapper.find_pruning_wrappers(probe)
        )
    fixed = dense.count_params() - pruned_kernels
    return float(min(max(1.0 - (params - fixed) / pruned_kernels, 0.0), 0.99))


def export(model, data, directory, label, precision):
    x, _, x_test, y_test = data
    path = pathlib.Path(directory) / f"{label}_{precision}.tflite"
    result = tflite_export.export(
        model, path, precision=precision, representative_data=x[:256] if precision == "int8" else None,
        validation_data=(x_test, y_test), latency_runs=0, sparse=False,
    )
    return path.read_bytes(), result.verification.tflite_accuracy


def alternating_latency_ms(contents, example, runs, warmup=20):
    """Median single-example LiteRT latency of each flatbuffer, 1 thread, invokes taken in turns.

    Each round invokes every model once, starting from a different model each
    round, so a burst of load on the machine lands on all of them alike.
    """
    interpreters = []
    for content in contents:
        interpreter, _ = load_interpreter(content, num_threads=1)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], example[None].astype(detail["dtype"]))
        interpreters.append(interpreter)
    times = [[] for _ in interpreters]
    for round_index in range(warmup + runs):
        for offset in range(len(interpreters)):
            i = (round_index + offset) % len(interpreters)
            start = time.perf_counter()
            interpreters[i].invoke()
            if round_index >= warmup:
                times[i].append(time.perf_counter() - start)
    return [float(np.median(t) * 1000.0) for t in times]


def evaluate(model, data):
    _, _, x_test, y_test = data
    return float(compiled(model).evaluate(x_test, y_test, verbose=0)[1])


def run_net(name, data, directory):
    dense = compiled(NETS[name](), 3e-3)
    dense_seconds = fit(dense, data, FLAGS.epochs)
    rows = [{
        "net": name, "method": "dense", "ratio": 0.0, "params": dense.count_params(), "macs": count_macs(dense),
        "keras_accuracy": evaluate(dense, data), "fit_seconds": dense_seconds, "model": dense,
    }]
    # The accuracy reference: the dense net trained for as many more epochs as every pruning fit gets.
    longer = compiled(copy_of(dense))
    seconds = fit(longer, data, FLAGS.finetune_epochs)
    rows.append({
        "net": name, "method": "dense fine-tuned", "ratio": 0.0, "params": longer.count_params(),
        "macs": count_macs(longer), "keras_accuracy": evaluate(longer, data), "fit_seconds": seconds, "model": longer,
    })
    for ratio in (float(r) for r in FLAGS.ratios):
        keras.backend.clear_session()
        pruned = compiled(tfc.prune(dense, ratio, structure="channels", end=0.5))
        seconds = fit(pruned, data, FLAGS.finetune_epochs, [tfc.CompressionCallback(verbose=0)])
        small = tfc.strip(pruned)
        rows.append({
            "net": name, "method": "channels", "ratio": ratio, "params": small.count_params(),
            "macs": count_macs(small), "keras_accuracy": evaluate(small, data), "fit_seconds": seconds, "model": small,
        })
        sparsity = unstructured_sparsity(dense, small.count_params())
        zeros = compiled(tfc.prune(dense, sparsity, end=0.5))
        seconds = fit(zeros, data, FLAGS.finetune_epochs, [tfc.CompressionCallback(verbose=0)])
        stripped = tfc.strip(zeros)
        weights = stripped.get_weights()
        nonzero = int(sum(np.count_nonzero(w) for w in weights))
        rows.append({
            "net": name, "method": "unstructured", "ratio": ratio, "sparsity": sparsity, "params": nonzero,
            # Biases, BatchNorm and depthwise weights stay: past some ratio no sparsity reaches the count.
            "same_params": nonzero <= 1.01 * small.count_params(), "kernel_sparsity": kernel_sparsity(weights),
            "macs": count_macs(stripped), "keras_accuracy": evaluate(stripped, data), "fit_seconds": seconds,
            "model": stripped,
        })

    contents = {}
    for row in rows:
        label = f"{name}_{row['method']}_{row['ratio']}"
        for precision in ("fp32", "int8"):
            contents[(label, precision)], row[f"litert_{precision}_accuracy"] = export(
                row["model"], data, directory, label, precision)
        row["label"] = label
    keys = list(contents)
    latencies = dict(zip(keys, alternating_latency_ms([contents[k] for k in keys], data[2][0], FLAGS.latency_runs)))
    base, reference = rows[0], rows[1]
    for row in rows:
        for precision in ("fp32", "int8"):
            row[f"{precision}_ms"] = latencies[(row["label"], precision)]
            row[f"{precision}_speedup"] = latencies[(base["label"], precision)] / row[f"{precision}_ms"]
        row["accuracy_points_vs_dense"] = 100.0 * (row["keras_accuracy"] - reference["keras_accuracy"])
    for row in rows:
        del row["model"], row["label"]
    for row in rows:
        if row["method"] == "channels":
            twin = next(r for r in rows if r["method"] == "unstructured" and r["ratio"] == row["ratio"])
            if twin["same_params"]:
                row["accuracy_points_vs_unstructured"] = 100.0 * (row["keras_accuracy"] - twin["keras_accuracy"])
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({row["net"] for row in rows})
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], nets):
        mine = [r for r in rows if r["net"] == net]
        for method, marker in (("dense fine-tuned", "*"), ("channels", "o"), ("unstructured", "s")):
            points = sorted((r["fp32_ms"], 100 * r["keras_accuracy"], r["ratio"]) for r in mine
                            if r["method"] == method and r.get("same_params", True))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=method,
                    markersize=12 if method.startswith("dense") else 6)
            for latency, accuracy, ratio in points:
                if ratio:
                    ax.annotate(f"{ratio:.0%}", (latency, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("LiteRT FP32 latency, ms (1 thread)")
        ax.set_ylabel("test accuracy, %")
        ax.set_title(f"{net}-style net, digits 32x32")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Channel vs unstructured pruning at equal parameter counts ({cpu_description()['name']})", fontsize=10)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv):
    del argv
    global keras, L
    suffix = "_keras3" if FLAGS.keras3 else ""
    if FLAGS.output is None:
        FLAGS.output = f"benchmarks/results/channels{suffix}.json"
    if FLAGS.plot is None:
        FLAGS.plot = f"benchmarks/results/channels{suffix}_accuracy_vs_latency.png"
    if FLAGS.keras3:
        import keras as keras3

        keras, L = keras3, keras3.layers
    if not FLAGS.run:
        record = json.loads(pathlib.Path(FLAGS.output).read_text())
        report(record["rows"], record["settings"], record["cpu"], record["tensorflow"])
        if FLAGS.plot:
            plot(record["rows"], FLAGS.plot)
        return
    data = digits_32()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in FLAGS.nets:
            rows += run_net(name, data, directory)
    settings = {k: FLAGS[k].value for k in ("epochs", "finetune_epochs", "batch_size", "ratios", "nets", "latency_runs",
                                            "keras3")}
    goals = report(rows, settings, cpu_description(), tf.__version__)
    write_json(FLAGS.output, run_record("channels", settings=settings, rows=rows, goals=goals))
    if FLAGS.plot:
        plot(rows, FLAGS.plot)


def report(rows, settings, cpu, tf_version):
    """Prints the markdown table and the goal lines; returns the goals."""
    keras_name = "Keras 3" if settings.get("keras3") else "tf_keras"
    print(f"\nChannel pruning ({keras_name}) on digits 32x32 ({settings['epochs']} dense epochs, {settings['finetune_epochs']} "
          f"more epochs for every other row); LiteRT 1 thread, median of {settings['latency_runs']} alternating "
          f"invokes; CPU: {cpu['name']} [{' '.join(cpu['simd'])}]; TF {tf_version}. 'vs dense' compares with the "
          f"dense net fine-tuned as long; the test set has 397 digits (1 pt = 4 digits).\n")
    print("| net | method | removed | params | MACs | Keras acc | vs dense | vs unstructured | LiteRT int8 acc | "
          "FP32 ms | FP32 speed-up | INT8 ms | INT8 speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        versus = f"{r['accuracy_points_vs_unstructured']:+.2f} pt" if "accuracy_points_vs_unstructured" in r else "-"
        if r["method"] == "unstructured" and not r.get("same_params", True):
            versus = "n/a: cannot reach the same params"
        removed = "-" if r["method"].startswith("dense") else (
            f"{r['ratio']:.0%} ch" if r["method"] == "channels" else f"{r['sparsity']:.0%} w")
        print(f"| {r['net']} | {r['method']} | {removed} | {r['params']:,} | {r['macs']:,} | "
              f"{r['keras_accuracy']:.3f} | {r['accuracy_points_vs_dense']:+.2f} pt | {versus} | "
              f"{r['litert_int8_accuracy']:.3f} | {r['fp32_ms']:.3f} | {r['fp32_speedup']:.2f}x | "
              f"{r['int8_ms']:.3f} | {r['int8_speedup']:.2f}x |")
    goals = []
    for net in dict.fromkeys(r["net"] for r in rows):
        row = next((r for r in rows if r["net"] == net and r["method"] == "channels" and r["ratio"] == GOAL_RATIO), None)
        if row is None:
            continue
        met = row["fp32_speedup"] >= GOAL_SPEEDUP and row["accuracy_points_vs_dense"] >= -GOAL_ACCURACY_POINTS
        goals.append({"net": net, "fp32_speedup": row["fp32_speedup"],
                      "accuracy_points_vs_dense": row["accuracy_points_vs_dense"], "met": met})
        print(f"\ngoal ({net}, {GOAL_RATIO:.0%} of channels): >= {GOAL_SPEEDUP}x FP32 and <= {GOAL_ACCURACY_POINTS} pt "
              f"loss: {row['fp32_speedup']:.2f}x, {row['accuracy_points_vs_dense']:+.2f} pt -> {'met' if met else 'NOT met'}")
    print()
    return goals


if __name__ == "__main__":
    app.run(main)
