"""Distillation benchmark on digits: student alone vs tfc.Distiller (cached, uncached).

    python benchmarks/bench_distillation.py [--epochs 40] [--repeats 5]

Prints a markdown table and writes benchmarks/results/distillation.json. A CNN
teacher is trained once on the 1,400 training digits; every run then trains
the same MLP student from the same initial weights for the same number of
optimizer steps. Fit time is the median wall time of `fit` over `--repeats`
runs, the rows taking turns in each repeat (the cached runs include the one
teacher pass that fills the cache, and every run its first epoch's tracing);
fit CPU s is the process CPU time of the same fits (steadier than wall time
when other processes share the cores); ms/step is the median time per step of
the epochs after the first, the cost that grows with the fit;
accuracy is the mean test accuracy over the repeats (seeds 0, 1, ...).
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _common import epoch_timer, run_record, write_json  # noqa: E402
from tflite_export._cpu import cpu_description  # noqa: E402
from tfcompress._keras import keras  # noqa: E402
from tfcompress.demo import load_digits  # noqa: E402
from tfcompress.distillation import Distiller, FeatureDistillation, LogitsDistillation  # noqa: E402

flags.DEFINE_integer("epochs", 40, "Student epochs over the 1,400 training digits.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("labelled", 150, "Labelled examples of the few-labels comparison.")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature.")
flags.DEFINE_float("alpha", 0.3, "Weight of the hard-label loss.")
flags.DEFINE_integer("repeats", 5, "Runs per row (median time, mean accuracy).")
flags.DEFINE_string("output", "benchmarks/results/distillation.json", "JSON output path.")
FLAGS = flags.FLAGS




def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_teacher():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def build_student(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(32, activation="relu", name="hidden1")(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden2")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="student")


def steady_step_seconds(timer, steps_per_epoch):
    """Median seconds per optimizer step over the epochs after the first (no tracing)."""
    return statistics.median(timer.seconds[1:]) / steps_per_epoch


def student_alone(teacher, x, y, seed, labelled):
    del teacher
    model = build_student(seed)
    model.compile(keras.optimizers.Adam(1e-3), hard_loss(), metrics=["accuracy"])
    steps = FLAGS.epochs * int(np.ceil(len(x) / FLAGS.batch_size))
    x, y = x[:labelled], y[:labelled]
    epochs = max(1, round(steps / np.ceil(len(x) / FLAGS.batch_size)))
    timer = epoch_timer(keras)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(x, y, epochs=epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=[timer])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return model, seconds, cpu_seconds, steady_step_seconds(timer, np.ceil(len(x) / FLAGS.batch_size))


def distilled(cache, features=False):
    def run(teacher, x, y, seed, labelled):
        losses = [LogitsDistillation()]
        if features:
            losses.append(FeatureDistillation(teacher_layer_name="dense", student_layer_name="hidden2"))
        distiller = Distiller(
            teacher=teacher,
            student=build_student(seed),
            distillation_losses=losses,
            temperature=FLAGS.temperature,
            alpha=FLAGS.alpha,
            teacher_cache=cache,
        )
        distiller.compile(keras.optimizers.Adam(1e-3), hard_loss(), metrics=["accuracy"])
        # Examples past `labelled` keep their images but lose their labels: only the teacher teaches them.
        has_label = (np.arange(len(x)) < labelled).astype("float32") if labelled < len(x) else None
        timer = epoch_timer(keras)
        start, cpu_start = time.perf_counter(), time.process_time()
        distiller.fit(
            x, y, sample_weight=has_label, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0,
            callbacks=[timer],
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return distiller.student, seconds, cpu_seconds, steady_step_seconds(timer, np.ceil(len(x) / FLAGS.batch_size))

    return run


def main(argv):
    del argv
    (x, y), (x_test, y_test) = load_digits()
    teacher = build_teacher()
    teacher.compile(keras.optimizers.Adam(3e-3), hard_loss(), metrics=["accuracy"])
    teacher.fit(x, y, epochs=15, batch_size=64, verbose=0)
    teacher_accuracy = float(teacher.evaluate(x_test, y_test, verbose=0)[1])

    everyone = len(x)
    plan = [
        ("student alone", everyone, student_alone),
        ("distilled, cached", everyone, distilled(cache=True)),
        ("distilled, uncached", everyone, distilled(cache=False)),
        ("distilled + features, cached", everyone, distilled(cache=True, features=True)),
        ("distilled + features, uncached", everyone, distilled(cache=False, features=True)),
        ("student alone", FLAGS.labelled, student_alone),
        ("distilled, cached", FLAGS.labelled, distilled(cache=True)),
    ]
    # Rows take turns within each repeat, so load from other processes hits every row alike.
    results = [[] for _ in plan]
    for repeat in range(FLAGS.repeats):
        for row, (name, labelled, run) in enumerate(plan):
            keras.backend.clear_session()
            model, seconds, cpu_seconds, step_seconds = run(teacher, x, y, seed=repeat, labelled=labelled)
            predictions = model.predict(x_test, verbose=0).argmax(-1)
            results[row].append((float(np.mean(predictions == y_test)), seconds, cpu_seconds, step_seconds))
    rows = [
        {
            "run": name,
            "labels": labelled,
            "accuracy": statistics.mean(r[0] for r in runs),
            "accuracies": [r[0] for r in runs],
            "fit_seconds": statistics.median(r[1] for r in runs),
            "fit_cpu_seconds": statistics.median(r[2] for r in runs),
            "step_ms": 1000 * statistics.median(r[3] for r in runs),
        }
        for (name, labelled, _), runs in zip(plan, results)
    ]
    plain, plain_cpu, plain_step = rows[0]["fit_seconds"], rows[0]["fit_cpu_seconds"], rows[0]["step_ms"]
    for row in rows:
        row["fit_time_vs_plain"] = row["fit_seconds"] / plain
        row["fit_cpu_vs_plain"] = row["fit_cpu_seconds"] / plain_cpu
        row["step_time_vs_plain"] = row["step_ms"] / plain_step

    steps = FLAGS.epochs * int(np.ceil(len(x) / FLAGS.batch_size))
    print(
        f"Distillation on digits: CNN teacher ({teacher.count_params():,} params, test accuracy "
        f"{teacher_accuracy:.3f}) -> MLP student ({build_student(0).count_params():,} params); "
        f"{steps} optimizer steps per run, batch {FLAGS.batch_size}, T={FLAGS.temperature:g}, "
        f"alpha={FLAGS.alpha:g}; CPU: {cpu_description()['name']}; TF {tf.__version__}\n"
    )
    print(
        "| run | labelled examples | test accuracy | fit s | fit vs plain | fit CPU s | CPU vs plain "
        "| ms/step (steady) | step vs plain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['labels']:,} | {r['accuracy']:.3f} | {r['fit_seconds']:.2f} | "
            f"{r['fit_time_vs_plain']:.2f}x | {r['fit_cpu_seconds']:.2f} | {r['fit_cpu_vs_plain']:.2f}x | "
            f"{r['step_ms']:.2f} | {r['step_time_vs_plain']:.2f}x |"
        )
    print()
    write_json(FLAGS.output, run_record(
        "distillation",
        teacher_accuracy=teacher_accuracy,
        settings={k: FLAGS[k].value for k in ("epochs", "batch_size", "labelled", "temperature", "alpha", "repeats")},
        rows=rows,
    ))

if __name__ == "__main__":
    app.run(main)
