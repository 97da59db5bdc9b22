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


def epoch_timer(K):
    """A Keras `K` (tf_keras or keras) callback whose `seconds` lists each epoch's wall time.

    The first epoch traces the train step (and fills caches), so the later ones
    show the per-step cost apart from the fixed costs.
    """

    class EpochTimer(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()
