"""The `tfcompress` command line tool (absl flags, like TensorFlow's own tools).

    tfcompress export MODEL --precision int8 --calibration data.npz --output out.tflite [--validation data.npz]
    tfcompress inspect FILE.tflite [--json] [--edgetpu]
    tfcompress verify FILE.tflite --data data.npz [--reference fp32.tflite] [--keras MODEL] [--min_accuracy 0.9]

Exit codes: 0 success, 1 a verification threshold was missed or the model cannot be
converted as asked (an op failure), 2 a usage error or bad input (missing or corrupt
file, an output path that cannot be written, bad flag, unusable data).
"""

import json
import os
import sys

from absl import app, flags

from tfcompress.version import __version__

FLAGS = flags.FLAGS
flags.DEFINE_bool("version", False, "Print the tfcompress version and exit.")
flags.DEFINE_enum("precision", "fp32", ["fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu"],
                  "export: flatbuffer precision.")
flags.DEFINE_string("output", None, "export: destination .tflite (default: MODEL name + _PRECISION.tflite).")
flags.DEFINE_string("calibration", None, "export: .npz/.npy of representative inputs (key 'x', or the first array).")
flags.DEFINE_integer("max_calibration_samples", 256, "export: at most this many calibration samples.")
flags.DEFINE_string("validation", None, "export: .npz with 'x' and 'y' to verify the flatbuffer on LiteRT.")
flags.DEFINE_enum("io_dtype", None, ["float32", "int8", "uint8", "int16"], "export: input/output type.")
flags.DEFINE_enum("sparse", "auto", ["auto", "on", "off"], "export: sparse encoding of pruned weights.")
flags.DEFINE_string("name", None, "export: Android metadata model name (enables metadata).")
flags.DEFINE_string("description", "", "export: Android metadata description.")
flags.DEFINE_string("labels", None, "export: text file with one class label per line (Android metadata).")
flags.DEFINE_list("mean", None, "export: input normalization mean(s) for Android metadata.")
flags.DEFINE_list("std", None, "export: input normalization std(s) for Android metadata.")
flags.DEFINE_string("data", None, "verify: .npz with 'x' and 'y' (or the first two arrays).")
flags.DEFINE_string("reference", None, "verify: the FP32 .tflite twin, for agreement and latency.")
flags.DEFINE_string("keras", None, "verify: the saved Keras model, for Keras accuracy and agreement.")
flags.DEFINE_float("min_accuracy", None, "export/verify: exit 1 when TFLite accuracy is below this.")
flags.DEFINE_float("max_accuracy_drop", None, "export: exit 1 when Keras minus TFLite accuracy exceeds this.")
flags.DEFINE_integer("threads", 1, "export/verify: LiteRT threads for the latency measurement.")
flags.DEFINE_integer("latency_runs", 100, "export/verify: timed single-example invokes (0 skips).")
flags.DEFINE_bool("json", False, "Print the result as JSON instead of a table.")
flags.DEFINE_bool("edgetpu", False, "inspect: add the offline Edge TPU mapping report.")

USAGE = f"""tfcompress {__version__}: compress tf_keras models and export them to TFLite.

Usage:
  tfcompress export MODEL --precision int8 --calibration data.npz [--output out.tflite] [--validation data.npz]
  tfcompress inspect FILE.tflite [--json] [--edgetpu]
  tfcompress verify FILE.tflite --data data.npz [--reference fp32.tflite] [--keras MODEL] [--min_accuracy 0.9]
  tfcompress --version
  tfcompress --help

MODEL is a model saved with model.save("model.keras") (or .h5 / SavedModel), by tf_keras
or by Keras 3 (.keras / .h5, converted as is).
Data files are .npz archives: np.savez("data.npz", x=x, y=y).
Precisions: fp32 fp16 dynamic int8 int16x8 edgetpu.
Exit codes: 0 ok, 1 verification or conversion failure, 2 usage error or bad input.
"""


class UsageError(Exception):
    """Bad command line or unusable input file: exit code 2."""


def _load_arrays(path, flag, need_labels):
    import numpy as np

    if not os.path.exists(path):
        raise UsageError(f"--{flag} {path}: file does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"--{flag} {path}: not a readable .npz/.npy file ({e}). "
                         "Write it with np.savez(path, x=x, y=y).") from e
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        arrays = {key: loaded[key] for key in loaded.files}
    if "x" in arrays:
        x, y = arrays["x"], arrays.get("y")
    else:
        values = list(arrays.values())
        if not values:
            raise UsageError(f"--{flag} {path}: the archive holds no arrays.")
        x, y = values[0], values[1] if len(values) > 1 else None
    if need_labels and y is None:
        raise UsageError(f"--{flag} {path} has no labels: save it with np.savez(path, x=x, y=y).")
    return x, y


def _print(result):
    print(result.to_json(indent=2) if FLAGS.json else result)


def _export(args):
    import tflite_export

    if len(args) != 1:
        raise UsageError("export takes exactly one MODEL path (a .keras/.h5 file or SavedModel directory).")
    model = args[0]
    if not os.path.exists(model):
        raise UsageError(f"MODEL {model} does not exist. Save it with model.save('model.keras').")
    output = FLAGS.output or os.path.splitext(model.rstrip("/"))[0] + f"_{FLAGS.precision}.tflite"
    calibration = _load_arrays(FLAGS.calibration, "calibration", False)[0] if FLAGS.calibration else None
    validation = _load_arrays(FLAGS.validation, "validation", True) if FLAGS.validation else None
    metadata = None
    if FLAGS.name or FLAGS.labels or FLAGS.mean or FLAGS.std:
        if not FLAGS.name:
            raise UsageError("Android metadata needs --name (with --labels/--mean/--std).")
        metadata = {"name": FLAGS.name, "description": FLAGS.description}
        if FLAGS.labels:
            if not os.path.exists(FLAGS.labels):
                raise UsageError(f"--labels {FLAGS.labels}: file does not exist.")
            with open(FLAGS.labels) as f:
                metadata["labels"] = [line.rstrip("\n") for line in f if line.strip()]
        try:
            if FLAGS.mean is not None:
                metadata["mean"] = [float(v) for v in FLAGS.mean]
            if FLAGS.std is not None:
                metadata["std"] = [float(v) for v in FLAGS.std]
        except ValueError as e:
            raise UsageError(f"--mean/--std must be numbers: {e}") from e
    result = tflite_export.export(
        model, output, precision=FLAGS.precision, representative_data=calibration,
        validation_data=validation, max_calibration_samples=FLAGS.max_calibration_samples,
        io_dtype=FLAGS.io_dtype, sparse={"auto": "auto", "on": True, "off": False}[FLAGS.sparse],
        metadata=metadata, num_threads=FLAGS.threads, latency_runs=FLAGS.latency_runs,
        min_accuracy=FLAGS.min_accuracy, max_accuracy_drop=FLAGS.max_accuracy_drop,
    )
    _print(result)
    if result.edgetpu is not None and not FLAGS.json:
        print()
        print(result.edgetpu)
    return 0


def _inspect(args):
    import tflite_export

    if len(args) != 1:
        raise UsageError("inspect takes exactly one FILE.tflite.")
    report = tflite_export.inspect(args[0])
    if FLAGS.edgetpu:
        mapping = tflite_export.edgetpu_report(args[0])
        if FLAGS.json:
            print(json.dumps({"model": report.to_dict(), "edgetpu": mapping.to_dict()}, indent=2))
        else:
            print(report)
            print()
            print(mapping)
        return 0
    _print(report)
    return 0


def _verify(args):
    import tflite_export

    if len(args) != 1:
        raise UsageError("verify takes exactly one FILE.tflite.")
    if not FLAGS.data:
        raise UsageError("verify needs --data data.npz with the validation inputs x (and labels y).")
    x, y = _load_arrays(FLAGS.data, "data", False)
    keras_model = None
    if FLAGS.keras:
        if not os.path.exists(FLAGS.keras):
            raise UsageError(f"--keras {FLAGS.keras}: file does not exist.")
        keras_model = tflite_export.load_keras_model(FLAGS.keras)
    result = tflite_export.verify(args[0], x, y, keras_model=keras_model, reference=FLAGS.reference,
                                  num_threads=FLAGS.threads, latency_runs=FLAGS.latency_runs)
    _print(result)
    result.check(min_accuracy=FLAGS.min_accuracy)
    return 0


COMMANDS = {"export": _export, "inspect": _inspect, "verify": _verify}


def main(argv):
    """Dispatches `argv[1]` (after absl parsed the flags) and returns the exit code."""
    if FLAGS.version:
        print(f"tfcompress {__version__}")
        return 0
    if len(argv) < 2:
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[1])
    if command is None:
        print(f"tfcompress: unknown command {argv[1]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    import tflite_export

    try:
        return command(argv[2:])
    except UsageError as e:
        print(f"tfcompress {argv[1]}: {e}", file=sys.stderr)
        return 2
    except (tflite_export.VerificationError, tflite_export.EdgeTPUCompatibilityError,
            tflite_export.ConversionError) as e:
        print(f"tfcompress {argv[1]}: FAILED: {e}", file=sys.stderr)
        return 1
    except (tflite_export.InvalidModelFileError, tflite_export.RepresentativeDataError,
            OSError, TypeError) as e:  # OSError: a missing input or an unwritable --output
        print(f"tfcompress {argv[1]}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # argument problems: bad shapes, labels, thresholds
        print(f"tfcompress {argv[1]}: {e}", file=sys.stderr)
        return 2


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"tfcompress: {e}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


def execute(argv):
    """Parses `argv` (program name first) and runs the command; returns the exit code.

    Arguments:
        argv: e.g. `["tfcompress", "inspect", "model.tflite", "--json"]`.

    Returns:
        0 ok, 1 verification/conversion failure, 2 usage error or bad input.

    Example:

    >>> execute(["tfcompress", "inspect", "digits_int8.tflite"])
    0
    """
    FLAGS.unparse_flags()
    try:
        args = FLAGS(list(argv))
    except flags.Error as e:
        print(f"tfcompress: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
    return main(args)


def run():
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
