"""The `tfcompress` CLI: export, inspect and verify subcommands, with script-friendly exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
from fresh_process import run as run_fresh
from tfcompress._keras import keras
from tflite_export import cli


@pytest.fixture(scope="module")
def files(digits_cnn, digits, tmp_path_factory):
    x_train, _, x_test, y_test = digits
    d = tmp_path_factory.mktemp("cli")
    digits_cnn.save(d / "digits.keras")
    np.savez(d / "calibration.npz", x=x_train[:200])
    np.savez(d / "validation.npz", x=x_test, y=y_test)
    np.savez(d / "positional.npz", x_test, y_test)  # arr_0, arr_1
    (d / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    bad = x_train[:50].copy()
    bad[7] = np.nan
    np.savez(d / "nan.npz", x=bad)
    return d


def run(capsys, *args):
    code = cli.execute(["tfcompress", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_int8_from_a_saved_model_with_validation(files, capsys):
    out_path = files / "int8.tflite"
    code, out, err = run(capsys, "export", files / "digits.keras", "--precision", "int8",
                         "--calibration", files / "calibration.npz", "--validation", files / "validation.npz",
                         "--output", out_path, "--latency_runs", "5")
    assert code == 0, err
    assert "tflite accuracy" in out and "int8" in out
    assert tflite_export.inspect(out_path).fully_integer


def test_export_edgetpu_with_android_metadata_as_json(files, capsys):
    out_path = files / "edgetpu.tflite"
    code, out, err = run(capsys, "export", files / "digits.keras", "--precision=edgetpu",
                         "--calibration", files / "calibration.npz", "--output", out_path, "--json",
                         "--name", "digits", "--labels", files / "labels.txt", "--mean", "0", "--std", "16")
    assert code == 0, err
    data = json.loads(out)
    assert data["precision"] == "edgetpu" and data["edgetpu"]["fully_mapped"] is True
    assert data["model"]["inputs"][0]["dtype"] == "uint8"
    meta = tflite_export.read_metadata(out_path)
    assert meta["name"] == "digits" and meta["labels"][3] == "digit 3" and meta["inputs"][0]["std"] == [16.0]


def test_inspect_table_json_and_edgetpu_report(files, capsys):
    path = files / "fp32.tflite"
    assert run(capsys, "export", files / "digits.keras", "--output", path)[0] == 0
    code, out, _ = run(capsys, "inspect", path)
    assert code == 0 and "CONV_2D x2" in out and "float32[1, 8, 8, 1]" in out
    code, out, _ = run(capsys, "inspect", path, "--json")
    assert code == 0 and json.loads(out)["op_counts"]["FULLY_CONNECTED"] == 2
    code, out, _ = run(capsys, "inspect", path, "--edgetpu")
    assert code == 0 and "Edge TPU offline mapping report" in out and "0/6 ops" in out


def test_verify_passes_and_fails_on_thresholds(files, capsys):
    path, reference = files / "verify_int8.tflite", files / "verify_fp32.tflite"
    assert run(capsys, "export", files / "digits.keras", "--output", reference)[0] == 0
    assert run(capsys, "export", files / "digits.keras", "--precision", "int8", "--calibration",
               files / "calibration.npz", "--output", path)[0] == 0
    code, out, _ = run(capsys, "verify", path, "--data", files / "validation.npz", "--reference", reference,
                       "--latency_runs", "5")
    assert code == 0 and "fp32 flatbuffer" in out and "median latency" in out
    code, out, _ = run(capsys, "verify", path, "--data", files / "positional.npz", "--json", "--latency_runs", "0",
                       "--keras", files / "digits.keras")
    data = json.loads(out)
    assert code == 0 and data["tflite_accuracy"] > 0.85 and data["agreement_with"] == "keras"
    assert abs(data["accuracy_drop"]) <= 0.015
    code, _, err = run(capsys, "verify", path, "--data", files / "validation.npz", "--min_accuracy", "0.9999",
                       "--latency_runs", "0")
    assert code == 1 and "FAILED" in err and "min_accuracy" in err


def test_bad_input_exits_2_with_a_clear_message(files, capsys, tmp_path):
    (tmp_path / "corrupt.tflite").write_bytes(b"\x00" * 100)
    cases = [
        (["export", tmp_path / "missing.keras"], "does not exist"),
        (["export", files / "digits.keras", "--precision", "int8", "--output", tmp_path / "x.tflite"],
         "representative_data"),
        (["export", files / "digits.keras", "--precision", "int8", "--calibration", files / "nan.npz",
          "--output", tmp_path / "x.tflite"], "NaN"),
        (["export", files / "digits.keras", "--calibration", tmp_path / "nope.npz"], "does not exist"),
        (["export", files / "digits.keras", "--precision", "int8", "--calibration", files / "labels.txt",
          "--output", tmp_path / "x.tflite"], "np.savez"),
        (["inspect", tmp_path / "corrupt.tflite"], "not a valid TFLite flatbuffer"),
        (["inspect"], "exactly one"),
        (["verify", files / "fp32.tflite"], "--data"),
        (["frobnicate"], "unknown command"),
        (["inspect", tmp_path / "corrupt.tflite", "--no_such_flag"], "no_such_flag"),
        (["export", files / "digits.keras", "--precision", "int4"], "int16x8"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
    assert sorted(os.listdir(tmp_path)) == ["corrupt.tflite"]  # nothing partial written


def test_unwritable_output_exits_2_naming_the_path_and_writes_nothing(files, capsys, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "adir.tflite").mkdir()
    for output, message in [
        (tmp_path / "afile" / "out.tflite", f"{tmp_path / 'afile'} is a file, not a directory"),
        (tmp_path / "adir.tflite", "it is a directory"),
    ]:
        code, _, err = run(capsys, "export", files / "digits.keras", "--output", output)
        assert code == 2, err
        assert f"Cannot write {output}" in err and message in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["adir.tflite", "afile"] and os.listdir(tmp_path / "adir.tflite") == []


def test_keras3_model_files_export_and_verify(files, digits, capsys, tmp_path):
    import keras as keras3

    x_train, y_train, x_test, y_test = digits
    keras3.utils.set_random_seed(0)
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(), keras3.layers.Dense(10)])
    model.compile("adam", keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    keras_accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    for name in ("keras3.keras", "keras3.h5"):
        model.save(tmp_path / name)
        output = tmp_path / f"{name}.tflite"
        code, out, err = run(capsys, "export", tmp_path / name, "--precision", "int8", "--calibration",
                             files / "calibration.npz", "--validation", files / "validation.npz",
                             "--output", output, "--latency_runs", "0", "--json")
        assert code == 0, err
        data = json.loads(out)  # nothing else on stdout
        assert data["model"]["fully_integer"] and any("Keras 3" in note for note in data["notes"])
        assert data["verification"]["keras_accuracy"] == pytest.approx(keras_accuracy)
        code, out, err = run(capsys, "verify", output, "--data", files / "validation.npz", "--keras",
                             tmp_path / name, "--latency_runs", "0", "--json")
        assert code == 0, err
        data = json.loads(out)
        assert data["agreement_with"] == "keras" and data["keras_accuracy"] == pytest.approx(keras_accuracy)
        assert data["agreement"] >= 0.95


def test_keras3_file_with_an_unknown_custom_layer_exits_2_naming_the_fix(capsys, tmp_path):
    import keras as keras3

    @keras3.saving.register_keras_serializable(package="cli_test")
    class Doubling(keras3.layers.Layer):
        def call(self, x):
            return 2.0 * x

    keras3.Sequential([keras3.Input((4,)), Doubling(), keras3.layers.Dense(2)]).save(tmp_path / "custom.keras")
    keras3.saving.get_custom_objects().pop("cli_test>Doubling")  # as in a process that never defined it
    code, _, err = run(capsys, "export", tmp_path / "custom.keras", "--output", tmp_path / "custom.tflite")
    assert code == 2 and "which Keras 3 wrote" in err and "custom_objects=" in err
    assert sorted(os.listdir(tmp_path)) == ["custom.keras"]


def test_op_failure_and_missed_threshold_exit_1(files, digits, tmp_path, capsys):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.sin(t))(keras.layers.Dense(16)(x))
    # A SavedModel directory keeps the traced Lambda; SIN has no int8 kernel.
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(tmp_path / "sin_savedmodel", save_format="tf")
    code, _, err = run(capsys, "export", tmp_path / "sin_savedmodel", "--precision", "edgetpu",
                       "--calibration", files / "calibration.npz", "--output", tmp_path / "sin.tflite")
    assert code == 1 and "FAILED" in err and "SIN" in err
    code, _, err = run(capsys, "export", files / "digits.keras", "--precision", "int8",
                       "--calibration", files / "calibration.npz", "--validation", files / "validation.npz",
                       "--min_accuracy", "0.9999", "--output", tmp_path / "strict.tflite", "--latency_runs", "0")
    assert code == 1 and "min_accuracy" in err
    assert sorted(os.listdir(tmp_path)) == ["sin_savedmodel"]


def test_console_entry_point_exit_codes(files):
    """The real process, as scripts see it; the installed `tfcompress` script runs the same `run`."""
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["tfcompress"] == "tflite_export.cli:run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    path = files / "entry_point_int8.tflite"
    tflite_export.export(str(files / "digits.keras"), path, "int8",
                         representative_data=np.load(files / "calibration.npz")["x"])
    ok = subprocess.run([sys.executable, "-m", "tflite_export.cli", "inspect", str(path), "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["fully_integer"] is True
    bad = subprocess.run([sys.executable, "-m", "tflite_export.cli", "export", "m.keras", "--precision", "int4"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "int16x8" in bad.stderr


def test_each_subcommand_takes_only_its_own_flags(files, capsys):
    path = files / "flags_fp32.tflite"
    assert run(capsys, "export", files / "digits.keras", "--output", path, "--latency-runs", "0")[0] == 0
    code, out, err = run(capsys, "inspect", path, "--precision", "edgetpu", "--labels", "nope.txt",
                         "--min_accuracy", "0.99")
    assert code == 2 and out == ""
    assert "usage: tfcompress inspect FILE.tflite" in err
    assert "--precision edgetpu --labels nope.txt --min_accuracy 0.99" in err
    for args, flag in [
        (["export", files / "digits.keras", "--data", files / "validation.npz"], "--data"),
        (["export", files / "digits.keras", "--edgetpu"], "--edgetpu"),
        (["verify", path, "--data", files / "validation.npz", "--precision", "int8"], "--precision"),
        (["inspect", path, "--verbose"], "--verbose"),
    ]:
        code, _, err = run(capsys, *args)
        assert code == 2 and f"usage: tfcompress {args[0]}" in err and flag in err, (args, err)
    # Both spellings of a multi-word flag, and no abbreviations.
    code, _, err = run(capsys, "verify", path, "--data", files / "validation.npz", "--min-accuracy", "0.9999",
                       "--latency-runs", "0")
    assert code == 1 and "min_accuracy" in err
    code, _, err = run(capsys, "verify", path, "--data", files / "validation.npz", "--min_acc", "0.5")
    assert code == 2 and "--min_acc" in err
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0 and "--calibration" in out and "--reference" not in out and "--edgetpu" not in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("tfcompress ")


def test_inspect_imports_neither_tensorflow_nor_tfcompress_and_registers_no_flags(files):
    """What keeps `tfcompress inspect` fast: a fresh process never imports TensorFlow for it."""
    path = files / "fresh_fp32.tflite"
    tflite_export.export(str(files / "digits.keras"), path, "fp32")
    result = run_fresh("""
import json, sys
import tflite_export.cli as cli
code = cli.execute(["tfcompress", "inspect", PATH, "--json"])
from absl import flags
print("RESULT " + json.dumps({"code": code, "flags": list(flags.FLAGS),
                              "tensorflow": "tensorflow" in sys.modules, "tfcompress": "tfcompress" in sys.modules}))
""", timeout=120, PATH=repr(str(path)))
    assert result == {"code": 0, "flags": [], "tensorflow": False, "tfcompress": False}


@pytest.mark.slow  # a fresh interpreter
def test_export_prints_only_its_result_unless_verbose(files):
    """In a real process the converter's C++ log and LiteRT's lines stay hidden; --verbose shows them."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # TensorFlow's default: everything would be logged
    processes = {
        verbose: subprocess.Popen(
            [sys.executable, "-m", "tflite_export.cli", "export", str(files / "digits.keras"), "--precision", "int8",
             "--calibration", str(files / "calibration.npz"), "--validation", str(files / "validation.npz"),
             "--output", str(files / f"quiet_{verbose}.tflite"), "--latency_runs", "3", "--json"]
            + (["--verbose"] if verbose else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for verbose in (False, True)
    }
    output = {verbose: process.communicate(timeout=300) for verbose, process in processes.items()}
    markers = ("Reading SavedModel from", "tf_tfl_flatbuffer_helpers.cc", "fully_quantize:",
               "XNNPACK delegate", "cuda")
    for verbose, (stdout, stderr) in output.items():
        assert processes[verbose].returncode == 0, stderr[-3000:]
        assert json.loads(stdout)["model"]["fully_integer"]  # stdout holds the result and nothing else
    quiet_stdout, quiet_stderr = output[False]
    assert quiet_stderr == ""
    for marker in markers:
        assert marker not in quiet_stdout + quiet_stderr, marker
        assert marker in output[True][1], marker
