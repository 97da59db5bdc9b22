"""What every benchmark script shares: the machine a result came from, and how results are written."""

import json
import os
import pathlib
import time


def run_record(benchmark, **fields):
    """The header of a results file: which benchmark, when, on which CPU and TensorFlow."""
    import tensorflow as tf  # here, so that run_all.py --norun starts without TensorFlow

    from tflite_export._cpu import cpu_description

    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_description(),
        "tensorflow": tf.__version__,
        **fields,
    }


def write_json(path, record, announce=True):
    """Writes `record` to `path` as JSON atomically (a failed run never leaves half a file)."""
    output = pathlib.Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, output)
    if announce:
        print(f"wrote {output}")
