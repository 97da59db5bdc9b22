"""The `tfcompress` command: export, inspect and verify, each with its own flags.

    tfcompress export MODEL --precision int8 --calibration data.npz [--output out.tflite] [--validation data.npz]
    tfcompress inspect FILE.tflite [--json] [--edgetpu]
    tfcompress verify FILE.tflite --data data.npz [--reference fp32.tflite] [--keras MODEL] [--min_accuracy 0.9]
    tfcompress --version

Exit codes: 0 success, 1 a verification threshold was missed or the model cannot be
converted as asked (an op failure), 2 a usage error or bad input (missing or corrupt
file, an output path that cannot be written, a flag the subcommand does not take,
unusable data).

`inspect` imports neither TensorFlow nor tfcompress, so it answers in well under a
second; `export` (and `verify --keras`) import them when they run. TensorFlow's and
the converter's logs are hidden unless `--verbose` is given.
"""

import argparse
import importlib.util
import json
import os
import re
import sys

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu")

DESCRIPTION = """Compress tf_keras models and export them to TFLite.

MODEL is a model saved with model.save("model.keras") (or .h5 / SavedModel), by tf_keras
or by Keras 3 (.keras / .h5, converted as is).
Data files are .npz archives: np.savez("data.npz", x=x, y=y).
Precisions: fp32 fp16 dynamic int8 int16x8 edgetpu.
Exit codes: 0 ok, 1 verification or conversion failure, 2 usage error or bad input.
Run `tfcompress COMMAND --help` for a command's flags."""


class UsageError(Exception):
    """Bad command line or unusable input file: exit code 2."""


def _version():
    """tfcompress's version, read from its version.py without importing the package (and TensorFlow)."""
    spec = importlib.util.find_spec("tfcompress")
    if spec is None or not spec.submodule_search_locations:
        return "unknown"
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    with open(path) as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    return match.group(1) if match else "unknown"


class _VersionAction(argparse.Action):
    """`--version`, computed only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"tfcompress {_version()}")
        parser.exit()


def _flag(parser, name, **kwargs):
    """Adds `--name`; a name with underscores also answers to its dashed spelling (`--min-accuracy`)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*names, dest=name, **kwargs)


def _common(parser, latency=True):
    if latency:
        _flag(parser, "threads", type=int, default=1, help="LiteRT threads for the latency measurement.")
        _flag(parser, "latency_runs", type=int, default=100, help="timed single-example invokes (0 skips).")
    _flag(parser, "json", action="store_true", help="print the result as JSON instead of a table.")


def _verbose(parser):
    _flag(parser, "verbose", action="store_true",
          help="show TensorFlow's, the converter's and LiteRT's own logs (hidden by default).")


def build_parser():
    """The `tfcompress` argument parser: one subparser per command, each with only its flags.

    Returns:
        `(parser, {command: subparser})`.
    """
    parser = argparse.ArgumentParser(prog="tfcompress", description=DESCRIPTION, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the tfcompress version and exit.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    export = commands.add_parser(
        "export", help="convert a saved Keras model to a verified .tflite file.", allow_abbrev=False,
        usage="tfcompress export MODEL [--precision P] [--calibration data.npz] [--output out.tflite] "
              "[--validation data.npz] [more flags: tfcompress export --help]",
        description="Convert MODEL (.keras / .h5 / SavedModel directory) to a .tflite file.")
    export.add_argument("model", nargs="?", metavar="MODEL", help="the saved model.")
    _flag(export, "precision", choices=PRECISIONS, default="fp32", help="flatbuffer precision.")
    _flag(export, "output", help="destination .tflite (default: MODEL name + _PRECISION.tflite).")
    _flag(export, "calibration", help=".npz/.npy of representative inputs (key 'x', or the first array).")
    _flag(export, "max_calibration_samples", type=int, default=256, help="at most this many calibration samples.")
    _flag(export, "validation", help=".npz with 'x' and 'y' to verify the flatbuffer on LiteRT.")
    _flag(export, "io_dtype", choices=("float32", "int8", "uint8", "int16"), help="input/output type.")
    _flag(export, "sparse", choices=("auto", "on", "off"), default="auto",
          help="sparse encoding of pruned weights.")
    _flag(export, "strip_names", action="store_true",
          help="drop intermediate tensor names (a smaller download; inputs, outputs and signatures keep theirs).")
    _flag(export, "name", help="Android metadata model name (enables metadata).")
    _flag(export, "description", default="", help="Android metadata description.")
    _flag(export, "labels", help="text file with one class label per line (Android metadata).")
    _flag(export, "mean", help="input normalization mean(s) for Android metadata, comma-separated.")
    _flag(export, "std", help="input normalization std(s) for Android metadata, comma-separated.")
    _flag(export, "min_accuracy", type=float, help="exit 1 when TFLite accuracy is below this.")
    _flag(export, "max_accuracy_drop", type=float, help="exit 1 when Keras minus TFLite accuracy exceeds this.")
    _common(export)
    _verbose(export)

    inspect = commands.add_parser(
        "inspect", help="describe a .tflite file: size, IO, ops, integer-ness.", allow_abbrev=False,
        usage="tfcompress inspect FILE.tflite [--json] [--edgetpu]",
        description="Describe FILE.tflite without running it.")
    inspect.add_argument("file", nargs="?", metavar="FILE.tflite", help="the .tflite file.")
    _flag(inspect, "edgetpu", action="store_true", help="add the offline Edge TPU mapping report.")
    _common(inspect, latency=False)

    verify = commands.add_parser(
        "verify", help="run a .tflite file on LiteRT: accuracy, agreement, latency.", allow_abbrev=False,
        usage="tfcompress verify FILE.tflite --data data.npz [--reference fp32.tflite] [--keras MODEL] "
              "[--min_accuracy A] [more flags: tfcompress verify --help]",
        description="Run FILE.tflite on LiteRT with validation data.")
    verify.add_argument("file", nargs="?", metavar="FILE.tflite", help="the .tflite file.")
    _flag(verify, "data", help=".npz with 'x' and 'y' (or the first two arrays).")
    _flag(verify, "reference", help="the FP32 .tflite twin, for agreement and latency.")
    _flag(verify, "keras", help="the saved Keras model, for Keras accuracy and agreement.")
    _flag(verify, "min_accuracy", type=float, help="exit 1 when TFLite accuracy is below this.")
    _flag(verify, "max_accuracy_drop", type=float,
          help="exit 1 when Keras minus TFLite accuracy exceeds this (needs --keras).")
    _common(verify)
    _verbose(verify)
    return parser, {"export": export, "inspect": inspect, "verify": verify}


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


def _numbers(text, flag):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise UsageError(f"--{flag} must be comma-separated numbers: {e}") from e


def _shown(result, args):
    return result.to_json(indent=2) if args.json else str(result)


def _export(args):
    from tflite_export.convert import export

    model = args.model
    if not os.path.exists(model):
        raise UsageError(f"MODEL {model} does not exist. Save it with model.save('model.keras').")
    output = args.output or os.path.splitext(model.rstrip("/"))[0] + f"_{args.precision}.tflite"
    calibration = _load_arrays(args.calibration, "calibration", False)[0] if args.calibration else None
    validation = _load_arrays(args.validation, "validation", True) if args.validation else None
    metadata = None
    if args.name or args.labels or args.mean is not None or args.std is not None:
        if not args.name:
            raise UsageError("Android metadata needs --name (with --labels/--mean/--std).")
        metadata = {"name": args.name, "description": args.description}
        if args.labels:
            if not os.path.exists(args.labels):
                raise UsageError(f"--labels {args.labels}: file does not exist.")
            with open(args.labels) as f:
                metadata["labels"] = [line.rstrip("\n") for line in f if line.strip()]
        if args.mean is not None:
            metadata["mean"] = _numbers(args.mean, "mean")
        if args.std is not None:
            metadata["std"] = _numbers(args.std, "std")
    result = export(
        model, output, precision=args.precision, representative_data=calibration,
        validation_data=validation, max_calibration_samples=args.max_calibration_samples,
        io_dtype=args.io_dtype, sparse={"auto": "auto", "on": True, "off": False}[args.sparse],
        strip_names=args.strip_names, metadata=metadata, num_threads=args.threads, latency_runs=args.latency_runs,
        min_accuracy=args.min_accuracy, max_accuracy_drop=args.max_accuracy_drop,
    )
    if result.edgetpu is not None and not args.json:
        return f"{result}\n\n{result.edgetpu}", None
    return _shown(result, args), None


def _inspect(args):
    from tflite_export.inspection import inspect

    report = inspect(args.file)
    if not args.edgetpu:
        return _shown(report, args), None
    from tflite_export.edgetpu import mapping_report

    mapping = mapping_report(args.file)
    if args.json:
        return json.dumps({"model": report.to_dict(), "edgetpu": mapping.to_dict()}, indent=2), None
    return f"{report}\n\n{mapping}", None


def _verify(args):
    from tflite_export.verification import verify

    if not args.data:
        raise UsageError("verify needs --data data.npz with the validation inputs x (and labels y).")
    x, y = _load_arrays(args.data, "data", False)
    keras_model = None
    if args.keras:
        if not os.path.exists(args.keras):
            raise UsageError(f"--keras {args.keras}: file does not exist.")
        from tflite_export.convert import load_keras_model

        keras_model = load_keras_model(args.keras)
    result = verify(args.file, x, y, keras_model=keras_model, reference=args.reference,
                    num_threads=args.threads, latency_runs=args.latency_runs)
    # Checked after printing: the measurements are shown even when a threshold is missed.
    return _shown(result, args), lambda: result.check(min_accuracy=args.min_accuracy,
                                                      max_accuracy_drop=args.max_accuracy_drop)


# Each command returns (text to print, a check to run after printing or None); printing
# waits until the quiet block is over, or it would land in the captured log.
COMMANDS = {"export": _export, "inspect": _inspect, "verify": _verify}
_TAKES = {"export": ("model", "MODEL path (a .keras/.h5 file or SavedModel directory)"),
          "inspect": ("file", "FILE.tflite"), "verify": ("file", "FILE.tflite")}


def _run(command, args):
    """Runs one parsed command with the library's logs hidden unless --verbose; returns the exit code."""
    from tflite_export._quiet import quiet
    from tflite_export.errors import (
        ConversionError,
        EdgeTPUCompatibilityError,
        InvalidModelFileError,
        RepresentativeDataError,
        VerificationError,
    )

    try:
        with quiet(getattr(args, "verbose", False)):
            text, check = COMMANDS[command](args)
        print(text)
        if check is not None:
            check()
    except UsageError as e:
        print(f"tfcompress {command}: {e}", file=sys.stderr)
        return 2
    except (VerificationError, EdgeTPUCompatibilityError, ConversionError) as e:
        print(f"tfcompress {command}: FAILED: {e}", file=sys.stderr)
        return 1
    except (InvalidModelFileError, RepresentativeDataError, OSError, TypeError, ValueError) as e:
        # OSError: a missing input or an unwritable --output; ValueError: bad shapes, labels, thresholds.
        print(f"tfcompress {command}: {e}", file=sys.stderr)
        return 2
    return 0


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
    parser, subparsers = build_parser()
    argv = [str(a) for a in argv[1:]]
    if not argv:
        parser.print_help()
        return 0
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and not any(a in ("-h", "--help", "--version") for a in argv):
        print(f"tfcompress: unknown command {first!r}; use one of {', '.join(COMMANDS)}.\n", file=sys.stderr)
        parser.print_usage(sys.stderr)
        return 2
    try:
        args, unknown = parser.parse_known_args(argv)
        if args.command is None:
            parser.error("a command is required: export, inspect or verify.")
        subparser = subparsers[args.command]
        if unknown:  # reported with the subcommand's usage, not the top-level one
            subparser.error(f"{args.command} does not take {' '.join(unknown)}")
        attribute, what = _TAKES[args.command]
        if getattr(args, attribute) is None:
            subparser.error(f"{args.command} takes exactly one {what}.")
    except SystemExit as e:  # argparse's way out: 0 after --help/--version, 2 for a usage error
        return e.code if isinstance(e.code, int) else 2
    return _run(args.command, args)


def run():
    """Console-script entry point (`tfcompress`)."""
    sys.exit(execute(sys.argv))


if __name__ == "__main__":
    run()
