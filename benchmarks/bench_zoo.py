"""The coverage matrix: every compression and export on the models users bring.

    python benchmarks/bench_zoo.py [--models MobileNetV2,KeywordNet] [--columns prune,int8]
                                   [--pretrain_steps 300] [--steps 40] [--merge] [--keras3]
    python benchmarks/bench_zoo.py --export_timing      # prune + QAT MobileNetV2 int8 export, timed
    python benchmarks/bench_zoo.py --table              # the matrix of every cell in zoo.json

Rows are tiny versions of tf_keras.applications nets (weights=None, 32x32x3), a
DS-CNN keyword spotter (Conv1D, SeparableConv1D), Embedding + LSTM/GRU text
classifiers and a Transformer encoder block; columns are tfc.prune, tfc.quantize,
both in one fit, tfc.cluster, tfc.Distiller, and tflite_export at fp32 / fp16 /
dynamic / int8 / edgetpu. Each row's float model is trained once (`--pretrain_steps`
on 1,400 digits upsampled, or synthetic signals or tokens; its accuracy on 200
held-back inputs is printed and recorded), and every cell of the row starts from a
copy of it: compressions fine-tune it `--steps` more, exports convert it as is,
the Distiller takes it as the teacher. `--pretrain_steps 0` gives the test suite's
cells instead (a fresh model trained `--steps` in each cell, 256 / 64 inputs).
A cell reports its figures (sparsity reached, values per clustered kernel, bytes,
fully integer, Keras and LiteRT test accuracy, LiteRT top-1 agreement and logit
cosine against Keras, Edge TPU ops predicted on the TPU, seconds) or the error it
raised. Prints a markdown table and writes benchmarks/results/zoo.json after every
cell; `--merge` keeps the cells of other rows and columns already in that file.
The cells are the same functions tests/test_zoo.py asserts. `--keras3` builds every
row from `import keras` (Keras 3: keras.applications and Keras 3 layers) instead of
tf_keras and writes benchmarks/results/zoo_keras3.json.

`--export_timing` times the issue's goal instead: `tflite_export.export` of the
prune + QAT MobileNetV2 (alpha 0.35, 32x32) at int8 with 256 calibration inputs and
the 397 held-back digits as validation data, end to end (strip, conversions,
verification on LiteRT), wall and CPU seconds, median of `--timing_runs`; writes
benchmarks/results/zoo_export_timing.json. `--profile` adds a cProfile of one more export.
"""

import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The matrix's models and cells live beside the tests that assert them.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from absl import app, flags  # noqa: E402

import zoo  # noqa: E402
from _common import run_record, write_json  # noqa: E402

flags.DEFINE_list("models", list(zoo.MODELS), "Matrix rows to run.")
flags.DEFINE_list("columns", list(zoo.COLUMNS), "Matrix columns to run.")
flags.DEFINE_string("output", None, "JSON output path (default benchmarks/results/zoo.json, "
                    "or zoo_export_timing.json with --export_timing).")
flags.DEFINE_integer("steps", zoo.TRAIN_STEPS, "Training steps (batches of 32) of each cell's compression fit "
                     "(of its whole training with --pretrain_steps 0); the tests use 4.")
flags.DEFINE_integer("pretrain_steps", 300, "Steps (batches of 32) training each row's float model once, before "
                     "its cells; 0: every cell trains a fresh model, as the tests do.")
flags.DEFINE_bool("merge", False, "Keep the cells of other rows/columns already in the output file.")
flags.DEFINE_bool("export_timing", False, "Time the prune + QAT MobileNetV2 int8 export instead of the matrix.")
flags.DEFINE_integer("timing_runs", 3, "Timed exports with --export_timing (the median is reported).")
flags.DEFINE_list("merge_from", [], "Merge the cells of these zoo JSON files (runs written elsewhere) into the "
                  "output file, replacing the same (row, column), and run nothing.")
flags.DEFINE_bool("table", False, "Print the matrix of every cell in the output file (docs/coverage.md's) and run nothing.")
flags.DEFINE_bool("keras3", False, "Build the rows with Keras 3 (import keras) instead of tf_keras; the default "
                  "output becomes benchmarks/results/zoo_keras3.json.")
flags.DEFINE_bool("profile", False, "With --export_timing: cProfile one more export and print its top costs.")
FLAGS = flags.FLAGS

# Inputs when rows are pretrained: all 1,400 training digits, 200 of the 397 held back.
PRETRAIN_TRAIN, PRETRAIN_TEST = 1400, 200


def default_output():
    """The matrix's JSON file: zoo.json for tf_keras rows, zoo_keras3.json for Keras 3 rows."""
    return FLAGS.output or ("benchmarks/results/zoo_keras3.json" if FLAGS.keras3 else "benchmarks/results/zoo.json")


def previous_cells(path):
    """Cells already in `path`, each with the settings of the run that measured it."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        record = json.load(f)
    defaults = {"steps": record.get("steps"), "pretrain_steps": 0, "date": record.get("date")}
    return [{**defaults, **cell} for cell in record.get("cells", [])]


def cell_text(cell):
    """One matrix cell for docs/coverage.md: its figures, or E and its error's type."""
    if not cell["works"]:
        return f"E ({cell['error'].split(':')[0]})"
    f = cell["figures"]
    parts = []
    if "sparsity" in f:
        parts.append(f"{f['sparsity']:.2f} zeros")
    if "clusters" in f:
        parts.append(f"{f['clusters']} values")
    if "loss" in f:
        parts.append(f"loss {f['loss']:.2f}")
    if "agreement" in f:
        if f.get("integer") and cell["column"] not in ("fp32", "fp16", "dynamic"):
            parts.append("full int8")
        parts.append(f"acc {f['keras_accuracy']:.3f} -> {f['tflite_accuracy']:.3f}" if "keras_accuracy" in f else "")
        parts.append(f"agr {f['agreement']:.3f}, cos {f['cosine']:.3f}")
    if "tpu_ops" in f:
        parts.append(f"{f['tpu_ops']} ops on the TPU")
    return "M " + ", ".join(p for p in parts if p)


def print_table(cells):
    """The matrix of `cells` (dicts as in zoo.json): rows in zoo.MODELS order, every column."""
    by_key = {(c["model"], c["column"]): c for c in cells}
    print("| model | float acc | " + " | ".join(zoo.COLUMNS) + " |")
    print("|---|---|" + "---|" * len(zoo.COLUMNS))
    for name in zoo.MODELS:
        row = [by_key.get((name, column)) for column in zoo.COLUMNS]
        if not any(row):
            continue
        accuracy = next((c["float_accuracy"] for c in row if c and c.get("float_accuracy") is not None), None)
        print(f"| {name} | {'-' if accuracy is None else f'{accuracy:.3f}'} | "
              + " | ".join(cell_text(c) if c else "—" for c in row) + " |")


def merge_files(sources, output):
    """Writes `output` with its cells and those of `sources`, a later file's cell replacing an earlier one's."""
    merged = {}
    for path in [output, *sources]:
        merged.update({(c["model"], c["column"]): c for c in previous_cells(path)})
    order = {(m, c): i for i, (m, c) in enumerate((m, c) for m in zoo.MODELS for c in zoo.COLUMNS)}
    cells = sorted(merged.values(), key=lambda c: order[(c["model"], c["column"])])
    write_json(output, run_record("zoo", cells=cells, merged_from=list(sources)))


def run_matrix():
    unknown = sorted(set(FLAGS.models) - set(zoo.MODELS)) + sorted(set(FLAGS.columns) - set(zoo.COLUMNS))
    if unknown:
        raise app.UsageError(f"unknown rows/columns {unknown}; rows: {list(zoo.MODELS)}, columns: {list(zoo.COLUMNS)}")
    output = default_output()
    generation = zoo.KERAS3 if FLAGS.keras3 else zoo.TF_KERAS
    zoo.TRAIN_STEPS = FLAGS.steps
    previous = previous_cells(output) if FLAGS.merge else []
    settings = {"steps": FLAGS.steps, "pretrain_steps": FLAGS.pretrain_steps, "date": time.strftime("%Y-%m-%d"),
                "generation": generation}
    cells, records, float_accuracy = [], [], {}
    total = len(FLAGS.models) * len(FLAGS.columns)
    for name in FLAGS.models:
        data, weights = None, None
        if FLAGS.pretrain_steps:
            data = zoo.data_for(name, PRETRAIN_TRAIN, PRETRAIN_TEST)
            start = time.perf_counter()
            weights, float_accuracy[name] = zoo.pretrain(name, FLAGS.pretrain_steps, data, generation)
            print(f"{name}: float model trained {FLAGS.pretrain_steps} steps, test accuracy "
                  f"{float_accuracy[name]:.3f} ({time.perf_counter() - start:.1f} s)", flush=True)
        for column in FLAGS.columns:
            model = zoo.trained_copy(name, weights, generation) if weights is not None else None
            cell = zoo.run_cell(name, column, model=model, data=data, generation=generation)
            cell.float_accuracy = float_accuracy.get(name)
            cells.append(cell)
            records.append({**vars(cell), **settings})
            status = cell.short() if cell.works else cell.error[:160]
            print(f"[{len(cells)}/{total}] {name} / {column}: {status} ({cell.seconds:.1f} s)", flush=True)
            # Written after every cell: a long run stopped halfway keeps what it measured.
            # A previous cell goes only when this run has measured it again.
            done = {(c.model, c.column) for c in cells}
            kept = [c for c in previous if (c["model"], c["column"]) not in done]
            write_json(output, run_record("zoo", cells=kept + records, **settings), announce=False)
    print(f"wrote {output}")
    print()
    print("| model | float acc | " + " | ".join(FLAGS.columns) + " |")
    print("|---|---|" + "---|" * len(FLAGS.columns))
    for name in FLAGS.models:
        row = [c for c in cells if c.model == name]
        accuracy = f"{float_accuracy[name]:.3f}" if name in float_accuracy else "-"
        print(f"| {name} | {accuracy} | " + " | ".join(c.short() if c.works else "error" for c in row) + " |")


def run_export_timing():
    import cProfile
    import pstats
    import tempfile

    import tflite_export

    output = FLAGS.output or "benchmarks/results/zoo_export_timing.json"
    data = zoo.data_for("MobileNetV2", PRETRAIN_TRAIN, 397)
    start = time.perf_counter()
    model = zoo.prune_and_quantize(zoo.build("MobileNetV2"), data, FLAGS.steps)
    print(f"prune + QAT MobileNetV2 trained {FLAGS.steps} steps ({time.perf_counter() - start:.1f} s)", flush=True)
    kwargs = dict(precision="int8", representative_data=data[0][:256], validation_data=(data[2], data[3]),
                  latency_runs=0)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "mobilenetv2_prune_qat_int8.tflite")
        for i in range(FLAGS.timing_runs):
            wall, cpu = time.perf_counter(), time.process_time()
            result = tflite_export.export(model, path, **kwargs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs.append({"wall_seconds": wall, "cpu_seconds": cpu, "conversion_seconds": result.conversion_seconds,
                         "other_seconds": wall - result.conversion_seconds, "bytes": result.bytes,
                         "fully_integer": bool(result.report.fully_integer),
                         "sparse_encoding": result.sparse_encoding,
                         "calibration_samples": result.calibration_samples,
                         "keras_accuracy": result.verification.keras_accuracy,
                         "tflite_accuracy": result.verification.tflite_accuracy})
            print(f"run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, conversion {result.conversion_seconds:.1f} s, "
                  f"rest {wall - result.conversion_seconds:.1f} s; sparse encoding {result.sparse_encoding}",
                  flush=True)
        profile = None
        if FLAGS.profile:
            profiler = cProfile.Profile()
            profiler.runcall(tflite_export.export, model, path, **kwargs)
            stats = pstats.Stats(profiler).sort_stats("cumulative")
            stats.print_stats(30)
            # The project's own functions too: where the time outside the converter goes.
            stats.print_stats(r"tflite_export|tfcompress", 30)
            ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])
            own = [kv for kv in ranked if "tflite_export" in kv[0][0] or "tfcompress" in kv[0][0]]
            profile = [{"function": f"{f[0]}:{f[1]}({f[2]})", "calls": s[1], "cumulative_seconds": s[3]}
                       for f, s in ranked[:30] + own[:30]]
    median = {key: statistics.median(r[key] for r in runs)
              for key in ("wall_seconds", "cpu_seconds", "conversion_seconds", "other_seconds")}
    print()
    print("| run | wall s | CPU s | conversion s | rest s |")
    print("|---|---:|---:|---:|---:|")
    for i, r in enumerate(runs, 1):
        print(f"| {i} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['conversion_seconds']:.1f} | "
              f"{r['other_seconds']:.1f} |")
    print(f"| median | {median['wall_seconds']:.1f} | {median['cpu_seconds']:.1f} | "
          f"{median['conversion_seconds']:.1f} | {median['other_seconds']:.1f} |")
    print(f"goal: at most 60 s -> {'met' if median['wall_seconds'] <= 60 else 'not met'}")
    write_json(output, run_record("zoo_export_timing", train_steps=FLAGS.steps, runs=runs, median=median,
                                  goal_seconds=60, profile=profile))


def main(argv):
    del argv
    if FLAGS.merge_from:
        merge_files(FLAGS.merge_from, default_output())
    elif FLAGS.table:
        print_table(previous_cells(default_output()))
    elif FLAGS.export_timing:
        run_export_timing()
    else:
        run_matrix()


if __name__ == "__main__":
    app.run(main)
