"""The coverage matrix: every compression and export on the models users bring.

    python benchmarks/bench_zoo.py [--models MobileNetV2,KeywordNet] [--columns prune,int8]

Rows are tiny versions of tf_keras.applications nets (weights=None, 32x32x3), a
DS-CNN keyword spotter (Conv1D, SeparableConv1D), Embedding + LSTM/GRU text
classifiers and a Transformer encoder block; columns are tfc.prune, tfc.quantize,
both in one fit, tfc.cluster, tfc.Distiller, and tflite_export at fp32 / fp16 /
dynamic / int8 / edgetpu. Each cell runs on a freshly built model trained for a
few steps on digits (upsampled), synthetic signals or synthetic tokens, and reports
its figures (sparsity reached, values per clustered kernel, bytes, fully integer,
LiteRT top-1 agreement and logit cosine against Keras, Edge TPU ops predicted on
the TPU, seconds) or the error it raised. Prints a markdown table and writes
benchmarks/results/zoo.json. The cells are the same functions tests/test_zoo.py asserts.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The matrix's models and cells live beside the tests that assert them.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from absl import app, flags  # noqa: E402

import zoo  # noqa: E402
from _common import run_record, write_json  # noqa: E402

flags.DEFINE_list("models", list(zoo.MODELS), "Matrix rows to run.")
flags.DEFINE_list("columns", list(zoo.COLUMNS), "Matrix columns to run.")
flags.DEFINE_string("output", "benchmarks/results/zoo.json", "JSON output path.")
flags.DEFINE_integer("steps", zoo.TRAIN_STEPS, "Training steps (batches of 32) per cell; the tests use 4.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.models) - set(zoo.MODELS)) + sorted(set(FLAGS.columns) - set(zoo.COLUMNS))
    if unknown:
        raise app.UsageError(f"unknown rows/columns {unknown}; rows: {list(zoo.MODELS)}, columns: {list(zoo.COLUMNS)}")
    zoo.TRAIN_STEPS = FLAGS.steps
    cells = []
    total = len(FLAGS.models) * len(FLAGS.columns)
    for name in FLAGS.models:
        for column in FLAGS.columns:
            cell = zoo.run_cell(name, column)
            cells.append(cell)
            status = cell.short() if cell.works else cell.error[:160]
            print(f"[{len(cells)}/{total}] {name} / {column}: {status} ({cell.seconds:.1f} s)", flush=True)
            # Written after every cell: a long run stopped halfway keeps what it measured.
            write_json(FLAGS.output, run_record("zoo", cells=[vars(c) for c in cells], steps=FLAGS.steps))
    print()
    print("| model | " + " | ".join(FLAGS.columns) + " |")
    print("|---|" + "---|" * len(FLAGS.columns))
    for name in FLAGS.models:
        row = [c for c in cells if c.model == name]
        print(f"| {name} | " + " | ".join(c.short() if c.works else "error" for c in row) + " |")


if __name__ == "__main__":
    app.run(main)
