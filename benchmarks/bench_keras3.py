"""Keras 2 and Keras 3: one compression pipeline on tf_keras, Keras 3 (TensorFlow) and Keras 3 (JAX).

    python benchmarks/bench_keras3.py [--epochs 12] [--repeats 2] [--steps_per_execution 8] [--no_jax]

The pipeline, the same on every path: a digits CNN with BatchNorm, pruned to
80% (`tfc.prune`), quantization-aware from 70% of the fit (`tfc.quantize`) and
distilled from a CNN teacher (`tfc.Distiller`, temperature 4, alpha 0.3), in
one fit driven by `tfc.CompressionCallback`, then stripped and exported to a
full-INT8 .tflite verified on LiteRT. Every path starts from the same weights:
the teacher is trained once in Keras 3 and the student's initial weights are
drawn once, and both are copied into the tf_keras models (same layers, same
order). The JAX path trains in a fresh interpreter (a process has one
backend) and hands its stripped student back as a `.keras` file, which this
TensorFlow-backend process loads and exports.

Each repeat also fits the student alone (no compression, no teacher) in both
generations: the "no compression" table is what Keras 3 itself costs per step
against tf_keras, which no pipeline on top of it can go below, and
"compression's cost" is each pipeline's fit over its own generation's plain fit.

Both generations run one more row with `compile(steps_per_execution=N)`: on a model
this small, Keras 3's own per-step host work is a large part of a step, and
several steps per call remove most of it (the Distiller's schedules count
steps inside the step on Keras 3; pruning masks and tf_keras's phases move at
call boundaries). The JAX path uses the same N.

Fit time is the median wall time of the Distiller's `fit` over `--repeats`
runs (the in-process rows take turns; the first epoch's tracing included),
"first epoch s" and "later epoch s" the median first epoch (the step is traced there) and
median later epoch of the same fits, so tracing and steps can be told apart,
fit CPU s the process CPU time of the same fits; accuracy is the Keras test
accuracy of the stripped student of the first run, LiteRT accuracy that of its
INT8 file. Prints a markdown table and writes benchmarks/results/keras3.json.
Goals (issue 13): Keras 3 within 0.5 point of tf_keras, Keras 3 TF fit time at
most 1.1x tf_keras.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The JAX worker chooses its backend before Keras is imported.
if "--jax_worker" in sys.argv:
    os.environ["KERAS_BACKEND"] = "jax"

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from _common import epoch_timer  # noqa: E402

flags.DEFINE_integer("epochs", 12, "Student epochs over the 1,400 training digits.")
flags.DEFINE_integer("teacher_epochs", 12, "Teacher epochs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("repeats", 2, "Fits per path (median time; accuracy from the first).")
flags.DEFINE_integer("steps_per_execution", 8, "Steps per call of the extra Keras 3 TF row and of the JAX path.")
flags.DEFINE_bool("no_jax", False, "Skip the Keras 3 JAX path.")
flags.DEFINE_bool("jax_worker", False, "Internal: run the JAX path in this (fresh) process.")
flags.DEFINE_string("work_dir", None, "Internal: where the JAX worker reads and writes its files.")
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
    student = cnn(K, 16, 64, batchnorm=True)
    student.set_weights(student_weights)
    student = tfc.quantize(tfc.prune(student, final_sparsity=SPARSITY), start=QAT_START)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=TEMPERATURE, alpha=ALPHA)
    compile_model(K, distiller)
    if steps_per_execution > 1:
        distiller.compile(optimizer=distiller.optimizer, loss=distiller.loss, metrics=["accuracy"],
                          steps_per_execution=steps_per_execution)
    timer = epoch_timer(K)
    wall, cpu = time.perf_counter(), cpu_seconds()
    history = distiller.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0,
                            callbacks=[tfc.CompressionCallback(verbose=0), timer])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    return tfc.strip(distiller.student), wall, cpu, logs, timer.seconds


def run_plain(K, student_weights, data):
    """The same student fit with no compression and no teacher: each Keras's own per-step cost."""
    x, y, _, _ = data
    student = compile_model(K, cnn(K, 16, 64, batchnorm=True))
    student.set_weights(student_weights)
    timer = epoch_timer(K)
    wall, cpu = time.perf_counter(), cpu_seconds()
    history = student.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=[timer])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return wall, cpu, {key: float(values[-1]) for key, values in history.history.items()}, timer.seconds


def keras_accuracy(model, x, y):
    import keras

    outputs = model(x, training=False)
    values = outputs.numpy() if hasattr(outputs, "numpy") else keras.ops.convert_to_numpy(outputs)
    return float(np.mean(values.argmax(-1) == y))


def jax_worker():
    """The JAX path, in this fresh process: trains, saves the stripped student, prints RESULT json."""
    import keras

    from tfcompress.demo import load_digits

    (x, y), (x_test, y_test) = load_digits()
    data = (x, y, x_test, y_test)
    teacher = keras.models.load_model(os.path.join(FLAGS.work_dir, "teacher.keras"))
    weights = list(np.load(os.path.join(FLAGS.work_dir, "student_init.npz")).values())
    runs = []
    for repeat in range(FLAGS.repeats):
        final, wall, cpu, logs, epochs = run_pipeline(keras, teacher, weights, data, FLAGS.steps_per_execution)
        runs.append({"fit_seconds": wall, "fit_cpu_seconds": cpu, "logs": logs, "epoch_seconds": epochs})
        if repeat == 0:
            accuracy = keras_accuracy(final, x_test, y_test)
            final.save(os.path.join(FLAGS.work_dir, "jax_student.keras"))
    print("RESULT " + json.dumps({"backend": keras.backend.backend(), "runs": runs, "keras_accuracy": accuracy}))


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


def epoch_split(runs):
    """(median first epoch s, median later epoch s) over `runs`: tracing apart from the steps."""
    first = [r["epoch_seconds"][0] for r in runs]
    later = [np.median(r["epoch_seconds"][1:]) for r in runs if len(r["epoch_seconds"]) > 1]
    return float(np.median(first)), float(np.median(later)) if later else float("nan")


def row(name, runs, keras_acc, export):
    first, later = epoch_split(runs)
    return {
        "path": name,
        "keras_accuracy": keras_acc,
        **export,
        "fit_seconds": float(np.median([r["fit_seconds"] for r in runs])),
        "fit_cpu_seconds": float(np.median([r["fit_cpu_seconds"] for r in runs])),
        "fit_seconds_each": [round(r["fit_seconds"], 2) for r in runs],
        "first_epoch_seconds": first,
        "later_epoch_seconds": later,
        "final_logs": runs[0]["logs"],
    }


def main(argv):
    del argv
    if FLAGS.jax_worker:
        return jax_worker()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import run_record, write_json

    import keras
    import tf_keras

    import tfcompress as tfc
    from tfcompress.demo import load_digits

    (x, y), (x_test, y_test) = load_digits()
    data = (x, y, x_test, y_test)
    work = tempfile.mkdtemp(prefix="bench_keras3_")

    keras.utils.set_random_seed(0)
    teacher3 = compile_model(keras, cnn(keras, 32, 128, batchnorm=False))
    teacher3.fit(x, y, epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size, verbose=0)
    teacher2 = cnn(tf_keras, 32, 128, batchnorm=False)
    teacher2.set_weights(teacher3.get_weights())
    teacher_accuracy = keras_accuracy(teacher3, x_test, y_test)
    print(f"teacher: test accuracy {teacher_accuracy:.4f} (Keras 3; the tf_keras copy: "
          f"{keras_accuracy(teacher2, x_test, y_test):.4f})")
    keras.utils.set_random_seed(1)
    student_init = cnn(keras, 16, 64, batchnorm=True).get_weights()

    if not FLAGS.no_jax:
        teacher3.save(os.path.join(work, "teacher.keras"))
        np.savez(os.path.join(work, "student_init.npz"), *student_init)

    spe = FLAGS.steps_per_execution
    paths = [("tf_keras", tf_keras, teacher2, 1), ("keras3 TF", keras, teacher3, 1),
             (f"tf_keras, {spe} steps/call", tf_keras, teacher2, spe),
             (f"keras3 TF, {spe} steps/call", keras, teacher3, spe)]
    results = {name: [] for name, _, _, _ in paths}
    plain = {"tf_keras": [], "keras3 TF": []}
    finals = {}
    for repeat in range(FLAGS.repeats):
        for name, K, teacher, steps in paths:
            final, wall, cpu, logs, epochs = run_pipeline(K, teacher, student_init, data, steps)
            results[name].append({"fit_seconds": wall, "fit_cpu_seconds": cpu, "logs": logs, "epoch_seconds": epochs})
            finals.setdefault(name, final)
            print(f"  {name} run {repeat + 1}: fit {wall:.1f} s, sparsity {logs.get('sparsity', 0):.3f}", flush=True)
        for name, K in (("tf_keras", tf_keras), ("keras3 TF", keras)):
            wall, cpu, logs, epochs = run_plain(K, student_init, data)
            plain[name].append({"fit_seconds": wall, "fit_cpu_seconds": cpu, "logs": logs, "epoch_seconds": epochs})
            print(f"  {name} without compression run {repeat + 1}: fit {wall:.1f} s", flush=True)

    rows = []
    for index, name in enumerate(results):
        export = export_int8(finals[name], os.path.join(work, f"path{index}.tflite"), data)
        rows.append(row(name, results[name], keras_accuracy(finals[name], x_test, y_test), export))

    if not FLAGS.no_jax:
        # Run after the in-process fits so the two processes never share the cores during a timed fit.
        jax_process = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--jax_worker", f"--work_dir={work}",
             f"--epochs={FLAGS.epochs}", f"--repeats={FLAGS.repeats}", f"--batch_size={FLAGS.batch_size}",
             f"--steps_per_execution={spe}"],
            capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "jax"},
        )
        lines = [line for line in jax_process.stdout.splitlines() if line.startswith("RESULT ")]
        if jax_process.returncode or not lines:
            raise RuntimeError(f"The JAX path failed:\n{jax_process.stderr[-3000:]}")
        jax = json.loads(lines[-1][len("RESULT "):])
        # Exported after a TensorFlow-backend reload of the JAX-trained student.
        reloaded = tfc.load_model(os.path.join(work, "jax_student.keras"))
        export = export_int8(reloaded, os.path.join(work, "keras3_jax.tflite"), data)
        rows.append(row(f"keras3 JAX, {spe} steps/call", jax["runs"], jax["keras_accuracy"], export))

    base = rows[0]
    for entry in rows:
        entry["fit_time_vs_tf_keras"] = entry["fit_seconds"] / base["fit_seconds"]
        entry["accuracy_points_vs_tf_keras"] = 100 * (entry["keras_accuracy"] - base["keras_accuracy"])
    plain_seconds = {name: float(np.median([r["fit_seconds"] for r in runs])) for name, runs in plain.items()}
    plain_rows = [
        {"path": f"{name}, no compression", "fit_seconds": seconds,
         "fit_seconds_each": [round(r["fit_seconds"], 2) for r in plain[name]],
         "fit_time_vs_tf_keras": seconds / plain_seconds["tf_keras"],
         **dict(zip(("first_epoch_seconds", "later_epoch_seconds"), epoch_split(plain[name])))}
        for name, seconds in plain_seconds.items()
    ]
    base_later = rows[0]["later_epoch_seconds"]
    for entry in rows + plain_rows:
        entry["later_epoch_vs_tf_keras"] = entry["later_epoch_seconds"] / base_later
    # What compression adds to each generation's own fit.
    rows[0]["compression_cost"] = rows[0]["fit_seconds"] / plain_seconds["tf_keras"]
    rows[1]["compression_cost"] = rows[1]["fit_seconds"] / plain_seconds["keras3 TF"]

    print()
    print(f"Prune {SPARSITY:.0%} + QAT (from {QAT_START:.0%}) + distillation, digits CNN with BatchNorm, "
          f"{FLAGS.epochs} epochs, median of {FLAGS.repeats} fits")
    print()
    print("| path | Keras accuracy | LiteRT INT8 accuracy | INT8 bytes | INT8 gzip bytes | fit s | fit CPU s | "
          "fit time vs tf_keras | first epoch s | later epoch s | later epochs vs tf_keras |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for entry in rows:
        print(f"| {entry['path']} | {entry['keras_accuracy']:.4f} | {entry['litert_accuracy']:.4f} | "
              f"{entry['int8_bytes']:,} | {entry['int8_gzip_bytes']:,} | {entry['fit_seconds']:.1f} | "
              f"{entry['fit_cpu_seconds']:.1f} | {entry['fit_time_vs_tf_keras']:.2f}x | "
              f"{entry['first_epoch_seconds']:.2f} | {entry['later_epoch_seconds']:.3f} | "
              f"{entry['later_epoch_vs_tf_keras']:.2f}x |")
    print()
    print("The same student without compression or teacher (each Keras's own per-step cost):")
    print()
    print("| fit | fit s | fit time vs tf_keras | first epoch s | later epoch s | later epochs vs tf_keras |")
    print("|---|---|---|---|---|---|")
    for entry in plain_rows:
        print(f"| {entry['path']} | {entry['fit_seconds']:.1f} | {entry['fit_time_vs_tf_keras']:.2f}x | "
              f"{entry['first_epoch_seconds']:.2f} | {entry['later_epoch_seconds']:.3f} | "
              f"{entry['later_epoch_vs_tf_keras']:.2f}x |")
    print()
    print(f"compression's cost (pipeline fit over the plain fit): tf_keras {rows[0]['compression_cost']:.2f}x, "
          f"Keras 3 TF {rows[1]['compression_cost']:.2f}x")
    by_path = {entry["path"]: entry for entry in rows}
    same_calls = by_path[f"keras3 TF, {spe} steps/call"]["fit_seconds"] / by_path[f"tf_keras, {spe} steps/call"]["fit_seconds"]
    print(f"Keras 3 TF against tf_keras, both at {spe} steps per call: {same_calls:.2f}x")
    goals = {
        # Within half a point means no more than half a point worse: a Keras 3 path that ends better passes.
        "keras3_within_half_a_point": all(e["accuracy_points_vs_tf_keras"] >= -0.5
                                          for e in rows if e["path"].startswith("keras3")),
        "keras3_tf_fit_time_at_most_1.1x": by_path["keras3 TF"]["fit_time_vs_tf_keras"] <= 1.1,
        f"keras3_tf_{spe}_steps_per_call_fit_time_at_most_1.1x_tf_keras_at_one":
            by_path[f"keras3 TF, {spe} steps/call"]["fit_time_vs_tf_keras"] <= 1.1,
        f"keras3_tf_fit_time_at_most_1.1x_tf_keras_both_at_{spe}": same_calls <= 1.1,
    }
    print()
    print("goals:", goals)
    record = run_record(
        "keras3", epochs=FLAGS.epochs, teacher_epochs=FLAGS.teacher_epochs, batch_size=FLAGS.batch_size,
        repeats=FLAGS.repeats, steps_per_execution=spe, temperature=TEMPERATURE, alpha=ALPHA, sparsity=SPARSITY, qat_start=QAT_START,
        teacher_accuracy=teacher_accuracy, keras=keras.__version__, rows=rows, plain_rows=plain_rows, goals=goals,
    )
    write_json(FLAGS.output, record)


if __name__ == "__main__":
    app.run(main)
