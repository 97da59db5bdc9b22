"""Runs every benchmark, then summarizes them in one table and a few plots.

    python benchmarks/run_all.py            # every benchmarks/bench_*.py, with its defaults
    python benchmarks/run_all.py --only=quantization,export
    python benchmarks/run_all.py --norun    # summarize the JSON already in benchmarks/results/

Each `bench_<name>.py` runs in its own process (one TensorFlow per benchmark, as a
user would run it) and writes `benchmarks/results/<name>.json`. This script then
writes `benchmarks/results/summary.json` and PNG plots next to it, and prints one
markdown table: the float baseline, the hand-written tfmot pipeline (tfmot's
pruning guide, strip, then its pruning-preserving QAT guide), the tfcompress
pipeline (prune + QAT + KD when a benchmark provides it, else prune + QAT in one
fit) and post-training INT8, each value also as a ratio to the baseline.
"""

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from _common import write_json

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

flags.DEFINE_list("only", [], "Benchmark names to run (e.g. quantization,export); default all but the hours-long ones (zoo).")
flags.DEFINE_bool("run", True, "Run the benchmarks; --norun only summarizes existing JSON.")
flags.DEFINE_string("results", str(RESULTS), "Directory of the per-benchmark JSON and of the outputs.")
FLAGS = flags.FLAGS

# Issue 5's goals, measured against the same run's baseline and tfmot pipeline.
MAX_ACCURACY_DROP = 0.005
MAX_GZIP_FRACTION = 1 / 15
MAX_FIT_VS_TFMOT = 1.05


# Hours on 2 cores: run only when named in --only.
LONG = {"zoo"}


def discover():
    return {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}


def run_benchmark(name, script):
    """Runs one benchmark with its defaults; its output streams through unchanged."""
    print(f"\n## {name}: python {script.relative_to(HERE.parent)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
    seconds = time.perf_counter() - start
    print(f"-- {name}: exit {code} after {seconds:.0f} s", flush=True)
    return {"exit_code": code, "seconds": round(seconds, 1)}


def load_results(directory):
    results = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            print(f"warning: skipping {path}: {error}")
    return results


def _row(rows, predicate):
    return next((r for r in rows if predicate(r.get("pipeline", r.get("run", "")).lower())), None)


def pipelines(results):
    """The four rows of the table, as {label: row or None}, with where each came from."""
    quantization = results.get("quantization", {}).get("rows", [])
    chosen = {
        "float baseline": _row(quantization, lambda n: n.startswith("float")),
        "tfmot, by hand": _row(quantization, lambda n: n.startswith("tfmot guides")),
        "tfcompress prune + QAT": _row(quantization, lambda n: n.startswith("prune") and "qat" in n),
        "PTQ only (int8)": _row(quantization, lambda n: n.startswith("post-training")),
    }
    # A benchmark that exports a prune + QAT + KD student replaces the prune + QAT row.
    for name, record in results.items():
        kd = _row(
            record.get("rows", []) if isinstance(record, dict) else [],
            lambda n: ("kd" in n or "distil" in n) and "qat" in n and "prune" in n,
        )
        if kd is not None and "tflite_accuracy" in kd:
            del chosen["tfcompress prune + QAT"]
            chosen = {
                k: v for k, v in [*chosen.items()][:2] + [("tfcompress prune + QAT + KD", kd)] + [*chosen.items()][2:]
            }
            break
    return chosen


COLUMNS = [
    ("keras_accuracy", "Keras acc", "{:.3f}"),
    ("tflite_accuracy", "TFLite acc", "{:.3f}"),
    ("bytes", "bytes", "{:,}"),
    ("gzip_bytes", "gzip bytes", "{:,}"),
    ("latency_ms", "latency ms", "{:.4f}"),
    ("fit_seconds", "fit s", "{:.1f}"),
]


def table(chosen):
    baseline = chosen.get("float baseline") or {}
    header = "| pipeline | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for label, row in chosen.items():
        cells = []
        for key, _, fmt in COLUMNS:
            value = None if row is None else row.get(key)
            if value is None:
                cells.append("-")
                continue
            cell = fmt.format(value)
            base = baseline.get(key)
            if base and row is not baseline:
                # A ratio of accuracies hides what matters (0.99x is a full point): show points instead.
                cell += f" ({(value - base) * 100:+.2f} pt)" if key.endswith("accuracy") else f" ({value / base:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sources = "; ".join(f"{label}: {row['pipeline']}" for label, row in chosen.items() if row and "pipeline" in row)
    return "\n".join(lines) + f"\n\nRows: {sources}."


def goals(chosen):
    baseline = chosen.get("float baseline")
    tfmot = chosen.get("tfmot, by hand")
    label = next((k for k in chosen if k.startswith("tfcompress")), None)
    ours = chosen.get(label)
    if not (baseline and ours):
        return []
    out = [
        {
            "goal": f"{label}: TFLite accuracy within {MAX_ACCURACY_DROP * 100:.1f} point of float",
            "met": ours["tflite_accuracy"] >= baseline["tflite_accuracy"] - MAX_ACCURACY_DROP,
            "detail": f"{(ours['tflite_accuracy'] - baseline['tflite_accuracy']) * 100:+.2f} points",
        },
        {
            "goal": f"{label}: gzip size <= 1/15 of the FP32 flatbuffer's",
            "met": ours["gzip_bytes"] <= baseline["gzip_bytes"] * MAX_GZIP_FRACTION,
            "detail": f"1/{baseline['gzip_bytes'] / ours['gzip_bytes']:.1f}",
        },
    ]
    if tfmot and tfmot.get("fit_seconds") and ours.get("fit_seconds"):
        ratio = ours["fit_seconds"] / tfmot["fit_seconds"]
        out.append(
            {
                "goal": f"{label}: fit time <= {MAX_FIT_VS_TFMOT}x the tfmot pipeline's",
                "met": ratio <= MAX_FIT_VS_TFMOT,
                "detail": f"{ratio:.2f}x",
            }
        )
    return out


def plot(results, directory):
    """PNGs: accuracy vs gzip size, latency per precision, sparsity over the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    quantization = results.get("quantization", {}).get("rows", [])
    if quantization:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # Several pipelines land on the same point: a legend with distinct markers stays readable.
        for r, marker in zip(quantization, "osD^vP*X"):
            ax.scatter(r["gzip_bytes"] / 1024, r["tflite_accuracy"] * 100, s=60, marker=marker,
                       alpha=0.7, label=r["pipeline"])
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("gzip size of the .tflite (KiB)")
        ax.set_ylabel("test accuracy on LiteRT (%)")
        ax.set_title("Digits, depthwise-separable net: accuracy vs size")
        ax.grid(alpha=0.3)
        written.append(_save(fig, directory / "accuracy_vs_size.png"))

    export = results.get("export", {}).get("rows", [])
    if export:
        models = sorted({r["model"] for r in export}, key=[r["model"] for r in export].index)
        precisions = sorted({r["precision"] for r in export}, key=[r["precision"] for r in export].index)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            values = [
                next((r["latency_ms"] for r in export if r["model"] == model and r["precision"] == p), None) or 0
                for p in precisions
            ]
            ax.bar([j + i * width for j in range(len(precisions))], values, width, label=model)
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(precisions))], precisions)
        ax.set_yscale("log")  # int16x8 runs on reference kernels, an order of magnitude slower
        ax.set_ylabel("median latency, 1 thread (ms, log)")
        cpu = results["export"].get("cpu", {})
        ax.set_title(f"LiteRT latency per precision on {cpu.get('name', 'this CPU')} (not a phone)")
        ax.legend(fontsize=8)
        written.append(_save(fig, directory / "latency_per_precision.png"))

    curve = next((r.get("sparsity_per_epoch") for r in quantization if r.get("sparsity_per_epoch")), None)
    if curve:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, len(curve) + 1), [v * 100 for v in curve], marker="o")
        ax.set_xlabel("epoch")
        ax.set_ylabel("kernel sparsity (%)")
        ax.set_title("tfc.prune + tfc.quantize: sparsity at the end of each epoch")
        ax.grid(alpha=0.3)
        written.append(_save(fig, directory / "sparsity_curve.png"))
    return written


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def main(argv):
    del argv
    directory = pathlib.Path(FLAGS.results)
    directory.mkdir(parents=True, exist_ok=True)
    scripts = discover()
    unknown = set(FLAGS.only) - set(scripts)
    if unknown:
        raise app.UsageError(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(scripts)}")
    runs = {}
    previous = directory / "summary.json"
    if not FLAGS.run and previous.exists():
        runs = json.loads(previous.read_text()).get("runs", {})  # --norun keeps the last run's record
    if FLAGS.run:
        for name, script in scripts.items():
            if name in FLAGS.only or (not FLAGS.only and name not in LONG):
                runs[name] = run_benchmark(name, script)

    results = load_results(directory)
    chosen = pipelines(results)
    markdown = table(chosen)
    checked = goals(chosen)
    pngs = plot(results, directory)
    quantization = results.get("quantization", {})
    cpu = quantization.get("cpu", {})
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/run_all.py",
        "cpu": cpu,
        "tensorflow": quantization.get("tensorflow"),
        "runs": runs,
        "benchmarks": {name: record.get("date") for name, record in results.items() if isinstance(record, dict)},
        "pipelines": chosen,
        "table": markdown,
        "goals": checked,
        "plots": pngs,
    }
    write_json(directory / "summary.json", summary, announce=False)

    settings = quantization.get("settings", {})
    print(
        f"\n# Summary ({summary['date']}; CPU {cpu.get('name', '?')}, TF {summary['tensorflow']})\n\n"
        f"Digits, depthwise-separable net; float {settings.get('epochs', '?')} epochs, compression fits "
        f"{settings.get('finetune_epochs', '?')}-{2 * settings.get('finetune_epochs', 0) or '?'} epochs, "
        f"{settings.get('sparsity', 0):.0%} sparsity. Latency: LiteRT, 1 thread, median single-example "
        "invoke on this CPU. Fit s: the compression fit(s); for the baseline, its float training. "
        "(x): ratio to the float baseline; (pt): accuracy difference in points.\n"
    )
    print(markdown)
    for goal in checked:
        print(f"- [{'x' if goal['met'] else ' '}] {goal['goal']} ({goal['detail']})")
    failed = [name for name, run in runs.items() if run["exit_code"] != 0] if FLAGS.run else []
    print(f"\nwrote {directory / 'summary.json'} and {', '.join(pngs) or 'no plots'}")
    if failed:
        print(f"FAILED benchmarks: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
