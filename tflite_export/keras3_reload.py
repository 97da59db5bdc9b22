"""Export of a Keras 3 model trained on JAX: a TensorFlow-backend reload, done for the user.

The TFLite converter reads TensorFlow graphs, and a process runs Keras 3 on
one backend. So `export` saves a JAX model to a temporary `.keras` file and
runs the same `export` in a fresh Python process with `KERAS_BACKEND=tensorflow`,
which loads the file (tfcompress's layers and constraints included) and
converts it. The arguments and the `ExportResult` travel by pickle.
"""

import os
import pickle
import subprocess
import sys
import tempfile

from tflite_export.errors import ConversionError

_SCRIPT = """
import os, pickle, sys
with open(sys.argv[1], "rb") as f:
    job = pickle.load(f)
import tfcompress  # registers tfcompress's Keras 3 layers and constraints for loading
import tflite_export
result = tflite_export.export(job["model"], job["path"], **job["kwargs"])
with open(sys.argv[2], "wb") as f:
    pickle.dump(result, f)
"""


def on_jax(model):
    """True when `model` is a Keras 3 model and this process runs Keras 3 on JAX."""
    if isinstance(model, (str, os.PathLike)):
        return False
    from tfcompress._keras import is_keras3_object

    if not is_keras3_object(model):
        return False
    import keras

    return keras.backend.backend() == "jax"


def export_through_tensorflow(model, path, kwargs):
    """`tflite_export.export(model, path, **kwargs)` run on the TensorFlow backend in a fresh process.

    Arguments:
        model: a Keras 3 model of this (JAX) process, with defined inputs.
        path: the `.tflite` destination.
        kwargs: `export`'s other arguments; data must be numpy arrays or
            `(x, y)` tuples of them (a `tf.data.Dataset` or generator cannot
            cross processes).

    Returns:
        The `ExportResult` of the TensorFlow-backend export.
    """
    for name in ("representative_data", "validation_data"):
        value = kwargs.get(name)
        if value is not None and not _picklable(value):
            raise TypeError(
                f"Exporting from the JAX backend runs the converter in a TensorFlow-backend process, so "
                f"{name} must be numpy arrays (or an (x, y) tuple of them); got {type(value).__name__}."
            )
    with tempfile.TemporaryDirectory(prefix="tflite_export_jax_") as folder:
        model_path = os.path.join(folder, "model.keras")
        job_path, result_path = os.path.join(folder, "job.pkl"), os.path.join(folder, "result.pkl")
        model.save(model_path)
        with open(job_path, "wb") as f:
            pickle.dump({"model": model_path, "path": os.fspath(path), "kwargs": kwargs}, f)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        process = subprocess.run(
            [sys.executable, "-c", _SCRIPT, job_path, result_path], env=env, capture_output=True, text=True,
        )
        if process.returncode != 0 or not os.path.exists(result_path):
            raise ConversionError(
                "Exporting this JAX-backend Keras 3 model needs a TensorFlow-backend reload, which failed. "
                "Do it by hand to see why: model.save('model.keras'), then in a process with "
                "KERAS_BACKEND=tensorflow: tflite_export.export('model.keras', ...). Its error: "
                + process.stderr.strip()[-1500:]
            )
        with open(result_path, "rb") as f:
            return pickle.load(f)


def _picklable(value):
    import numpy as np

    if isinstance(value, tuple):
        return all(_picklable(item) for item in value)
    return isinstance(value, (np.ndarray, list))
