"""Keras 2 and Keras 3: one compression pipeline on tf_keras, Keras 3 (TensorFlow) and Keras 3 (JAX).

    python benchmarks/bench_keras3.py [--epochs 12] [--repeats 5] [--steps_per_execution 8] [--no_jax]

The pipeline, the same on every path: a digits CNN with BatchNorm, pruned to
80% (`tfc.prune`), quantization-aware from 70% of the fit (`tfc.quantize`) and
distilled from a CNN teacher (`tfc.Distiller`, temperature 4, alpha 0.3), in
one fit driven by `tfc.CompressionCallback`, then stripped and exported to a
full-INT8 .tflite verified on LiteRT. Every path starts from the same weights:
the teacher is trained once in Keras 3 and the student's initial weights are
drawn once; each path builds the same layers in its Keras and copies them in.

**Each fit runs in a fresh process**, as a user's script does: one process
per path and repeat, the paths taking turns (the order reversed every other
repeat, so a drift of the machine's load favours no path). Each repeat's
tf_keras fit and the others of the same repeat form pairs, and the ratios
reported are the medians of those paired ratios, of wall time and of the
process's CPU time (`fit ratio`, `CPU ratio`), with their range: on a shared
machine a ratio of alternating runs is steadier than a ratio of medians.
The JAX path trains all its repeats in one fresh process (a process has one
backend) and hands its stripped student back as a `.keras` file, which this
TensorFlow-backend process exports; its ratios are of medians.

Each repeat also fits the student alone (no compression, no teacher) in both
generations: what Keras 3 itself costs against tf_keras, which no pipeline on
top of it can go below. Both generations run one more row with
`compile(steps_per_execution=N)` (the JAX path uses the same N).

Fit time is the wall time of the Distiller's `fit` (the first epoch's tracing
included); "first epoch s" and "later epoch s" are the median first epoch
(the step is traced there) and median later epoch, so tracing and steps can
be told apart. Keras accuracy is the median over the repeats of the stripped
student's test accuracy (one run on the 397 test digits moves in 0.25-point
steps, and a path's runs differ by a point); LiteRT accuracy is that of the
first repeat's INT8 file. Prints a markdown
table and writes benchmarks/results/keras3.json. Goals (issue 13): Keras 3
within 0.5 point of tf_keras, Keras 3 TF fit time at most 1.1x tf_keras.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A worker chooses its backend before Keras is imported.
if "--jax_worker" in sys.argv:
    os.environ["KERAS_BACKEND"] = "jax"

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from _common import epoch_timer  # noqa: E402

flags.DEFINE_integer("epochs", 12, "Student epochs over the 1,400 training digits.")
flags.DEFINE_integer("teacher_epochs", 12, "Teacher epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Fits per path, each in a fresh process (median; accuracy from the first).")
flags.DEFINE_integer("steps_per_execution", 8, "Steps per call of the extra rows and of the JAX path.")
flags.DEFINE_bool("no_jax", False, "Skip the Keras 3 JAX path.")
flags.DEFINE_string("worker", None, "Internal: run this TensorFlow-backend path once in this (fresh) process.")
flags.DEFINE_bool("export", False, "Internal: the worker also exports its student and measures accuracy.")
flags.DEFINE_bool("jax_worker", False, "Internal: run the JAX path in this (fresh) process.")
flags.DEFINE_string("work_dir", None, "Internal: where the workers read and write their files.")
flags.DEFINE_string("output", "benchmarks/results/keras3.json", "JSON output path.")
FLAGS = flags.FLAGS

TEMPERATURE = 4.0
ALPHA = 0.3
SPARSITY = 0.8
QAT_START = 0.7


def cnn(K, filters, units, batchnorm):
    """The digits CNN in Keras `K` (tf_keras or keras): conv-BN-ReLU twice, pool, dense, logits."""
    inputs = K.Input((8, 8, 1))
    h = inputs
    for index, width in enumerate((filters, 2 * filters), start=1):
        h = K.layers.Conv2D(width, 3, padding="same", use_bias=not batchnorm, name=f"conv{index}")(h)
        if batchnorm:
            h = K.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(h)
        h = K.layers.ReLU(name=f"relu{index}")(h)
    h = K.layers.MaxPooling2D(name="pool")(h)
    h = K.layers.Flatten(name="flatten")(h)
    h = K.layers.Dense(units, activation="relu", name="dense")(h)
    return K.Model(inputs, K.layers.Dense(10, name="logits")(h))


def teacher_cnn(K):
    return cnn(K, 32, 128, batchnorm=False)


def student_cnn(K):
    return cnn(K, 16, 64, batchnorm=True)


def compile_model(K, model, learning_rate=3e-3):
    model.compile(
        optimizer=K.optimizers.Adam(learning_rate),
        loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def cpu_seconds():
    times = os.times()
    return times.user + times.system


def run_pipeline(K, teacher, student_weights, data, steps_per_execution=1):
    """Prune + QAT + distill in one fit under Keras `K`.

    Returns (stripped student, fit s, fit CPU s, last logs, each epoch's s)."""
    import tfcompress as tfc

    x, y, _, _ = data
    student = student_cnn(K)
    student.set_weights(student_weights)
    student = tfc.quantize(tfc.prune(student, final_sparsity=SPARSITY), start=QAT_START)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=TEMPERATURE, alpha=ALPHA)
    distiller.compile(
        optimizer=K.optimizers.Adam(3e-3),
        loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    timer = epoch_timer(K)
    wall, cpu = time.perf_counter(), cpu_seconds()
    history = distiller.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0,
                            callbacks=[tfc.CompressionCallback(verbose=0), timer])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    return tfc.strip(distiller.student), wall, cpu, logs, timer.seconds


def run_plain(K, student_weights, data):
    """The same student fit with no compression and no teacher: each Keras's own per-step cost.

    Returns (student, fit s, fit CPU s, last logs, each epoch's s)."""
    x, y, _, _ = data
    student = compile_model(K, student_cnn(K))
    student.set_weights(student_weights)
    timer = epoch_timer(K)
    wall, cpu = time.perf_counter(), cpu_seconds()
    history = student.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=[timer])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return student, wall, cpu, {key: float(values[-1]) for key, values in history.history.items()}, timer.seconds


def keras_accuracy(model, x, y):
    import keras

    outputs = model(x, training=False)
    values = outputs.numpy() if hasattr(outputs, "numpy") else keras.ops.convert_to_numpy(outputs)
    return float(np.mean(values.argmax(-1) == y))


def export_int8(model, path, data):
    import tflite_export

    x, _, x_test, y_test = data
    result = tflite_export.export(model, path, precision="int8", representative_data=x[:256],
                                  validation_data=(x_test, y_test))
    return {
        "int8_bytes": int(result.bytes),
        "int8_gzip_bytes": int(result.gzip_bytes),
        "litert_accuracy": float(result.verification.tflite_accuracy),
    }


def load_start(K):
    """The digits, the teacher in Keras `K` and the student's initial weights, from the main process's files."""
    from tfcompress.demo import load_digits

    (x, y), (x_test, y_test) = load_digits()
    teacher = teacher_cnn(K)
    teacher.set_weights(list(np.load(os.path.join(FLAGS.work_dir, "teacher.npz")).values()))
    weights = list(np.load(os.path.join(FLAGS.work_dir, "student_init.npz")).values())
    return (x, y, x_test, y_test), teacher, weights


def report(result):
    print("RESULT " + json.dumps(result), flush=True)


def worker():
    """One TensorFlow-backend path, once, in this fresh process (`--worker=PATH`)."""
    import keras
    import tf_keras

    name = FLAGS.worker
    K = tf_keras if name.startswith("tf_keras") else keras
    data, teacher, weights = load_start(K)
    if name.endswith("no compression"):
        final, wall, cpu, logs, epochs = run_plain(K, weights, data)
    else:
        steps = FLAGS.steps_per_execution if "steps/call" in name else 1
        final, wall, cpu, logs, epochs = run_pipeline(K, teacher, weights, data, steps)
    result = {"fit_seconds": wall, "fit_cpu_seconds": cpu, "logs": logs, "epoch_seconds": epochs}
    if not name.endswith("no compression"):
        result["keras_accuracy"] = keras_accuracy(final, data[2], data[3])
    if FLAGS.export:
        file_name = "".join(c if c.isalnum() else "_" for c in name) + ".tflite"
        result["export"] = export_int8(final, os.path.join(FLAGS.work_dir, file_name), data)
    report(result)


def jax_worker():
    """The JAX path, all repeats in this fresh process: saves the stripped student, reports the fits."""
    import keras

    data, teacher, weights = load_start(keras)
    runs = []
    for repeat in range(FLAGS.repeats):
        final, wall, cpu, logs, epochs = run_pipeline(keras, teacher, weights, data, FLAGS.steps_per_execution)
        runs.append({"fit_seconds": wall, "fit_cpu_seconds": cpu, "logs": logs, "epoch_seconds": epochs,
                     "keras_accuracy": keras_accuracy(final, data[2], data[3])})
        if repeat == 0:
            final.save(os.path.join(FLAGS.work_dir, "jax_student.keras"))
    report({"backend": keras.backend.backend(), "runs": runs})


def run_worker(arguments, backend):
    """Runs this script as a worker in a fresh process; returns its RESULT."""
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *arguments, f"--work_dir={FLAGS.work_dir}",
         f"--epochs={FLAGS.epochs}", f"--repeats={FLAGS.repeats}", f"--batch_size={FLAGS.batch_size}",
         f"--steps_per_execution={FLAGS.steps_per_execution}"],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": backend},
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        raise RuntimeError(f"The worker {arguments} failed:\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def epoch_split(runs):
    """(median first epoch s, median later epoch s) over `runs`: tracing apart from the steps."""
    first = [r["epoch_seconds"][0] for r in runs]
    later = [np.median(r["epoch_seconds"][1:]) for r in runs if len(r["epoch_seconds"]) > 1]
    return float(np.median(first)), float(np.median(later)) if later else float("nan")


def paired(runs, base, key):
    """Each repeat's `key` over the base path's in the same repeat: (median, min, max)."""
    ratios = [r[key] / b[key] for r, b in zip(runs, base)]
    return float(np.median(ratios)), float(min(ratios)), float(max(ratios))


def median_accuracy(runs):
    """The median Keras test accuracy over the repeats (one run on 397 digits moves in 0.25-point steps),
    and each repeat's, as row fields."""
    each = [r["keras_accuracy"] for r in runs]
    return {"keras_accuracy": float(np.median(each)), "keras_accuracy_each": [round(a, 4) for a in each]}


def row(name, runs, base):
    first, later = epoch_split(runs)
    entry = {
        "path": name,
        "fit_seconds": float(np.median([r["fit_seconds"] for r in runs])),
        "fit_cpu_seconds": float(np.median([r["fit_cpu_seconds"] for r in runs])),
        "fit_seconds_each": [round(r["fit_seconds"], 2) for r in runs],
        "fit_cpu_seconds_each": [round(r["fit_cpu_seconds"], 2) for r in runs],
        "first_epoch_seconds": first,
        "later_epoch_seconds": later,
        "final_logs": runs[0]["logs"],
    }
    if base is not None:
        # Fits in the same repeat ran back to back: their ratio is the steady measure.
        entry["fit_ratio"], entry["fit_ratio_min"], entry["fit_ratio_max"] = paired(runs, base, "fit_seconds")
        entry["cpu_ratio"], entry["cpu_ratio_min"], entry["cpu_ratio_max"] = paired(runs, base, "fit_cpu_seconds")
    return entry


def main(argv):
    del argv
    if FLAGS.worker:
        return worker()
    if FLAGS.jax_worker:
        return jax_worker()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import run_record, write_json

    import keras

    import tfcompress as tfc
    from tfcompress.demo import load_digits

    (x, y), (x_test, y_test) = load_digits()
    data = (x, y, x_test, y_test)
    FLAGS.work_dir = tempfile.mkdtemp(prefix="bench_keras3_")

    keras.utils.set_random_seed(0)
    teacher = compile_model(keras, teacher_cnn(keras))
    teacher.fit(x, y, epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size, verbose=0)
    teacher_accuracy = keras_accuracy(teacher, x_test, y_test)
    print(f"teacher: test accuracy {teacher_accuracy:.4f}")
    np.savez(os.path.join(FLAGS.work_dir, "teacher.npz"), *teacher.get_weights())
    keras.utils.set_random_seed(1)
    np.savez(os.path.join(FLAGS.work_dir, "student_init.npz"), *student_cnn(keras).get_weights())

    spe = FLAGS.steps_per_execution
    paths = ["tf_keras", "keras3 TF", f"tf_keras, {spe} steps/call", f"keras3 TF, {spe} steps/call",
             "tf_keras, no compression", "keras3 TF, no compression"]
    results = {name: [] for name in paths}
    exports = {}
    for repeat in range(FLAGS.repeats):
        for name in paths if repeat % 2 == 0 else paths[::-1]:
            result = run_worker([f"--worker={name}"] + (["--export"] if repeat == 0 else []), "tensorflow")
            results[name].append(result)
            if repeat == 0 and "export" in result:
                exports[name] = result["export"]
            print(f"  {name} run {repeat + 1}: fit {result['fit_seconds']:.1f} s, "
                  f"CPU {result['fit_cpu_seconds']:.1f} s", flush=True)

    base = results["tf_keras"]
    rows = []
    for name in paths:
        compressed = not name.endswith("no compression")
        entry = row(name, results[name], base if compressed else results["tf_keras, no compression"])
        if compressed:
            entry.update(**median_accuracy(results[name]), **exports[name])
        rows.append(entry)

    if not FLAGS.no_jax:
        # Run after the TensorFlow-backend fits so that no two processes share the cores during a fit.
        jax = run_worker(["--jax_worker"], "jax")
        # Exported after a TensorFlow-backend reload of the JAX-trained student.
        reloaded = tfc.load_model(os.path.join(FLAGS.work_dir, "jax_student.keras"))
        entry = row(f"keras3 JAX, {spe} steps/call", jax["runs"], None)
        entry.update(**median_accuracy(jax["runs"]),
                     **export_int8(reloaded, os.path.join(FLAGS.work_dir, "keras3_jax.tflite"), data))
        # Its fits ran in another process, not in turns with tf_keras's: a ratio of medians.
        tf_keras_row = rows[0]
        entry["fit_ratio"] = entry["fit_seconds"] / tf_keras_row["fit_seconds"]
        entry["cpu_ratio"] = entry["fit_cpu_seconds"] / tf_keras_row["fit_cpu_seconds"]
        rows.insert(4, entry)

    pipeline_rows = [e for e in rows if "keras_accuracy" in e]
    plain_rows = [e for e in rows if "keras_accuracy" not in e]
    for entry in pipeline_rows:
        entry["accuracy_points_vs_tf_keras"] = 100 * (entry["keras_accuracy"] - rows[0]["keras_accuracy"])
    base_later = rows[0]["later_epoch_seconds"]
    for entry in rows:
        entry["later_epoch_vs_tf_keras"] = entry["later_epoch_seconds"] / base_later
    by_path = {entry["path"]: entry for entry in rows}
    # What compression adds to each generation's own fit, in the same repeats.
    compression_cost = {
        "tf_keras": paired(results["tf_keras"], results["tf_keras, no compression"], "fit_seconds")[0],
        "keras3 TF": paired(results["keras3 TF"], results["keras3 TF, no compression"], "fit_seconds")[0],
    }
    same_calls = paired(results[f"keras3 TF, {spe} steps/call"], results[f"tf_keras, {spe} steps/call"],
                        "fit_seconds")

    def ratio(entry, key):
        if key not in entry:
            return ""
        low, high = entry.get(f"{key}_min"), entry.get(f"{key}_max")
        spread = f" ({low:.2f}-{high:.2f})" if low is not None else ""
        return f"{entry[key]:.2f}x{spread}"

    print()
    print(f"Prune {SPARSITY:.0%} + QAT (from {QAT_START:.0%}) + distillation, digits CNN with BatchNorm, "
          f"{FLAGS.epochs} epochs, {FLAGS.repeats} fits per path, each in a fresh process")
    print()
    print("| path | Keras accuracy | LiteRT INT8 accuracy | INT8 bytes | fit s | fit CPU s | "
          "fit vs tf_keras (paired) | CPU vs tf_keras (paired) | first epoch s | later epoch s | "
          "later epochs vs tf_keras |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for entry in pipeline_rows:
        print(f"| {entry['path']} | {entry['keras_accuracy']:.4f} | {entry['litert_accuracy']:.4f} | "
              f"{entry['int8_bytes']:,} | {entry['fit_seconds']:.1f} | {entry['fit_cpu_seconds']:.1f} | "
              f"{ratio(entry, 'fit_ratio')} | {ratio(entry, 'cpu_ratio')} | "
              f"{entry['first_epoch_seconds']:.2f} | {entry['later_epoch_seconds']:.3f} | "
              f"{entry['later_epoch_vs_tf_keras']:.2f}x |")
    print()
    print("The same student without compression or teacher (each Keras's own cost; Keras 3 paired with tf_keras):")
    print()
    print("| fit | fit s | fit CPU s | fit vs tf_keras | CPU vs tf_keras | first epoch s | later epoch s | "
          "later epochs vs compressed tf_keras |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in plain_rows:
        print(f"| {entry['path']} | {entry['fit_seconds']:.1f} | {entry['fit_cpu_seconds']:.1f} | "
              f"{ratio(entry, 'fit_ratio')} | {ratio(entry, 'cpu_ratio')} | {entry['first_epoch_seconds']:.2f} | "
              f"{entry['later_epoch_seconds']:.3f} | {entry['later_epoch_vs_tf_keras']:.2f}x |")
    print()
    print(f"compression's cost (pipeline fit over the plain fit, paired): tf_keras {compression_cost['tf_keras']:.2f}x, "
          f"Keras 3 TF {compression_cost['keras3 TF']:.2f}x")
    print(f"Keras 3 TF against tf_keras, both at {spe} steps per call (paired): {same_calls[0]:.2f}x "
          f"({same_calls[1]:.2f}-{same_calls[2]:.2f})")
    keras3_tf = by_path["keras3 TF"]
    goals = {
        # Within half a point means no more than half a point worse: a Keras 3 path that ends better passes.
        "keras3_within_half_a_point": all(e["accuracy_points_vs_tf_keras"] >= -0.5
                                          for e in pipeline_rows if e["path"].startswith("keras3")),
        "keras3_tf_fit_time_at_most_1.1x": keras3_tf["fit_ratio"] <= 1.1,
        "keras3_tf_fit_cpu_time_at_most_1.1x": keras3_tf["cpu_ratio"] <= 1.1,
        f"keras3_tf_fit_time_at_most_1.1x_tf_keras_both_at_{spe}": same_calls[0] <= 1.1,
    }
    print()
    print("goals:", goals)
    record = run_record(
        "keras3", epochs=FLAGS.epochs, teacher_epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size,
        repeats=FLAGS.repeats, steps_per_execution=spe, temperature=TEMPERATURE, alpha=ALPHA, sparsity=SPARSITY,
        qat_start=QAT_START, teacher_accuracy=teacher_accuracy, keras=keras.__version__, rows=pipeline_rows,
        plain_rows=plain_rows, compression_cost=compression_cost, same_steps_per_call_ratio=same_calls[0],
        goals=goals,
    )
    write_json(FLAGS.output, record)


if __name__ == "__main__":
    app.run(main)
