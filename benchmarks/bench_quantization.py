"""Quantization benchmark on digits with a depthwise-separable (MobileNet-style) net.

    python benchmarks/bench_quantization.py [--epochs 12] [--finetune_epochs 4] [--repeats 5]

Rows: the float model; post-training INT8; QAT with tfmot's `quantize_model`;
QAT with `tfc.quantize`; tfmot's guides by hand (prune_low_magnitude, strip, then
pruning-preserving QAT); prune + QAT in one fit with tfcompress; cluster, then
cluster-preserving QAT. Every INT8 row is exported with `tflite_export.export(precision="int8")` and
verified on LiteRT, with its median 1-thread latency. Fit time is the median wall time of the fine-tuning fit over
`--repeats` runs, tfc.quantize and tfmot's quantize_model taking turns (and
their median process CPU time, steadier when other work shares the cores). Prints a markdown
table and writes benchmarks/results/quantization.json.
"""

import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import tfcompress as tfc  # noqa: E402
import tflite_export  # noqa: E402
from _common import run_record, write_json  # noqa: E402
from tflite_export._cpu import cpu_description  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import load_digits  # noqa: E402

flags.DEFINE_integer("epochs", 12, "Float training epochs.")
flags.DEFINE_integer("finetune_epochs", 4, "Epochs of every compression fine-tune.")
flags.DEFINE_integer("repeats", 5, "Timed runs of the QAT fine-tune (median reported).")
flags.DEFINE_float("sparsity", 0.6, "Target sparsity of the prune + QAT row.")
flags.DEFINE_integer("clusters", 16, "Shared values per kernel of the cluster rows.")
flags.DEFINE_integer("latency_runs", 200, "Timed single-example LiteRT invokes per flatbuffer.")
flags.DEFINE_string("output", "benchmarks/results/quantization.json", "JSON output path.")
FLAGS = flags.FLAGS


def depthwise_net():
    """Conv-BN-ReLU6 stem and two depthwise-separable blocks, as in MobileNet."""
    keras.utils.set_random_seed(0)

    def conv_bn(x, filters, kernel, depthwise=False):
        if depthwise:
            x = keras.layers.DepthwiseConv2D(kernel, padding="same", use_bias=False)(x)
        else:
            x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        return keras.layers.ReLU(6.0)(x)

    inputs = keras.Input((8, 8, 1))
    x = conv_bn(inputs, 32, 3)
    x = conv_bn(x, None, 3, depthwise=True)
    x = conv_bn(x, 64, 1)
    x = conv_bn(x, None, 3, depthwise=True)
    x = conv_bn(x, 128, 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def timed_fit(model, x, y, callbacks):
    start = time.perf_counter()
    model.fit(x, y, epochs=FLAGS.finetune_epochs, batch_size=32, verbose=0, callbacks=callbacks)
    return time.perf_counter() - start


def main(argv):
    del argv
    (x, y), (x_test, y_test) = load_digits()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench_quantization_"))
    float_model = compile_model(depthwise_net(), 3e-3)
    float_seconds = time.perf_counter()
    float_model.fit(x, y, epochs=FLAGS.epochs, batch_size=32, verbose=0)
    float_seconds = time.perf_counter() - float_seconds
    finetune_rate = 3e-4

    def export(model, name, **kwargs):
        result = tflite_export.export(
            model, str(workdir / f"{name}.tflite"), validation_data=(x_test, y_test), latency_runs=FLAGS.latency_runs, **kwargs
        )
        return result

    def qat_pair(runs):
        """Times each QAT setup `--repeats` times, taking turns, so load and warm-up hit them alike."""
        seconds = {name: [] for name in runs}
        cpu = {name: [] for name in runs}
        models = {}
        for _ in range(FLAGS.repeats):
            for name, (quantize_fn, callbacks) in runs.items():
                keras.backend.clear_session()
                model = compile_model(quantize_fn(), finetune_rate)
                cpu_start = time.process_time()
                seconds[name].append(timed_fit(model, x, y, callbacks()))
                cpu[name].append(time.process_time() - cpu_start)
                models[name] = model
        return models, {n: statistics.median(v) for n, v in seconds.items()}, {n: statistics.median(v) for n, v in cpu.items()}

    rows = []

    def add(name, keras_model, result, fit_seconds=None, **extra):
        rows.append(
            {
                "pipeline": name,
                "keras_accuracy": float(keras_model.evaluate(x_test, y_test, verbose=0)[1]),
                "tflite_accuracy": result.verification.tflite_accuracy,
                "bytes": result.bytes,
                "gzip_bytes": result.gzip_bytes,
                "fit_seconds": fit_seconds,
                "latency_ms": result.verification.latency_ms,
                **extra,
            }
        )

    add("float (fp32 flatbuffer)", float_model, export(float_model, "fp32", precision="fp32"), float_seconds)
    add("post-training int8", float_model, export(float_model, "ptq", precision="int8", representative_data=x[:256]))

    models, qat_seconds, qat_cpu = qat_pair(
        {
            "tfmot": (lambda: tfmot.quantization.keras.quantize_model(float_model), lambda: []),
            "tfc": (lambda: tfc.quantize(float_model, start=0.0), lambda: [tfc.CompressionCallback(verbose=0)]),
        }
    )
    tfmot_qat, tfc_qat = models["tfmot"], models["tfc"]
    tfmot_seconds, tfc_seconds = qat_seconds["tfmot"], qat_seconds["tfc"]
    add("QAT int8 (tfmot quantize_model)", tfmot_qat, export(tfmot_qat, "tfmot_qat", precision="int8"), tfmot_seconds,
        fit_cpu_seconds=qat_cpu["tfmot"])
    add("QAT int8 (tfc.quantize)", tfc_qat, export(tfc.strip(tfc_qat), "tfc_qat", precision="int8"), tfc_seconds,
        fit_cpu_seconds=qat_cpu["tfc"])

    # tfmot's pruning guide, then its pruning-preserving QAT guide: two fits of finetune_epochs each.
    keras.backend.clear_session()
    sparsity = tfmot.sparsity.keras
    end_step = -(-len(x) // 32) * FLAGS.finetune_epochs
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=FLAGS.sparsity, begin_step=0, end_step=end_step)
    base = keras.models.clone_model(float_model)  # prune_low_magnitude wraps the given layers themselves
    base.set_weights(float_model.get_weights())
    tfmot_pruned = compile_model(sparsity.prune_low_magnitude(base, pruning_schedule=schedule), finetune_rate)
    seconds = timed_fit(tfmot_pruned, x, y, [sparsity.UpdatePruningStep()])
    annotated = tfmot.quantization.keras.quantize_annotate_model(sparsity.strip_pruning(tfmot_pruned))
    tfmot_pqat = compile_model(
        tfmot.quantization.keras.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        ),
        finetune_rate,
    )
    seconds += timed_fit(tfmot_pqat, x, y, [])
    add(f"tfmot guides: prune {FLAGS.sparsity:.0%}, strip, PQAT int8", tfmot_pqat,
        export(tfmot_pqat, "tfmot_prune_pqat", precision="int8"), seconds)

    keras.backend.clear_session()
    pruned = compile_model(
        tfc.quantize(tfc.prune(float_model, FLAGS.sparsity, end=0.5), start=0.6), finetune_rate
    )
    start = time.perf_counter()
    history = pruned.fit(x, y, epochs=2 * FLAGS.finetune_epochs, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    seconds = time.perf_counter() - start
    final = compile_model(tfc.strip(pruned), finetune_rate)
    add(f"prune {FLAGS.sparsity:.0%} + QAT int8, one fit", final, export(final, "prune_qat", precision="int8"), seconds,
        sparsity_per_epoch=[float(v) for v in history.history.get("sparsity", [])])

    one_fit = compile_model(tfc.quantize(tfc.cluster(float_model, FLAGS.clusters), start=0.5), finetune_rate)
    one_fit.fit(x, y, epochs=2 * FLAGS.finetune_epochs, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    final = compile_model(tfc.strip(one_fit), finetune_rate)
    add(f"cluster {FLAGS.clusters} + QAT int8, one fit", final, export(final, "cluster_qat_one_fit", precision="int8"))

    clustered = compile_model(tfc.cluster(float_model, FLAGS.clusters), finetune_rate)
    clustered.fit(x, y, epochs=FLAGS.finetune_epochs, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    cqat = compile_model(tfc.quantize(tfc.strip(clustered), preserve="clusters"), finetune_rate)
    cqat.fit(x, y, epochs=FLAGS.finetune_epochs, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    final = compile_model(tfc.strip(cqat), finetune_rate)
    add(f"cluster {FLAGS.clusters}, strip, cluster-preserving QAT int8", final, export(final, "cluster_qat", precision="int8"))

    cpu = cpu_description()
    print(
        f"Quantization on digits (depthwise-separable net, {float_model.count_params():,} params; float "
        f"{FLAGS.epochs} epochs, fine-tunes {FLAGS.finetune_epochs} epochs); CPU: {cpu['name']}; TF {tf.__version__}\n"
    )
    print("| pipeline | Keras acc | TFLite acc | bytes | gzip bytes | latency ms | fit s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fit = f"{r['fit_seconds']:.2f}" if r["fit_seconds"] else "-"
        print(
            f"| {r['pipeline']} | {r['keras_accuracy']:.3f} | {r['tflite_accuracy']:.3f} | {r['bytes']:,} | "
            f"{r['gzip_bytes']:,} | {r['latency_ms']:.4f} | {fit} |"
        )
    ratio = tfc_seconds / tfmot_seconds
    cpu_ratio = qat_cpu["tfc"] / qat_cpu["tfmot"]
    print(
        f"\ntfc.quantize fit time / tfmot quantize_model fit time: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
        f"(goal <= 1.05x; median of {FLAGS.repeats} runs each, taking turns)"
    )
    write_json(FLAGS.output, run_record(
        "quantization",
        settings={k: FLAGS[k].value for k in ("epochs", "finetune_epochs", "repeats", "sparsity", "clusters", "latency_runs")},
        rows=rows,
        fit_time_ratio_tfc_vs_tfmot=ratio,
        fit_cpu_ratio_tfc_vs_tfmot=cpu_ratio,
    ))

if __name__ == "__main__":
    app.run(main)
