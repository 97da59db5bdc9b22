"""The size users pay: gzip of the .tflite, bits per kept weight, and the sparse index apart."""

import json
import zlib

import numpy as np
import pytest

import tfcompress as tfc
import tflite_export
from helpers import compile_classifier
from tflite_export.flatbuffer import weight_tensors


def _deflate(data):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(compressor.compress(data) + compressor.flush())


@pytest.fixture(scope="module")
def pruned_90(trained_mlp, digits):
    """The trained digits MLP held at 90% sparsity for one epoch of fine-tuning; stripped."""
    x, y, _, _ = digits
    pruned = compile_classifier(tfc.prune(trained_mlp(), 0.9, schedule="constant"))
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    return tfc.strip(pruned)


def test_summary_prices_kept_weights_and_their_positions_apart(pruned_90):
    info = tfc.summary(pruned_90, print_fn=None)
    kernel = pruned_90.get_layer("hidden2").get_weights()[0]
    row = next(r for r in info.rows if r.name == "hidden2")
    kept = np.count_nonzero(kernel)
    assert row.bits_per_nonzero == 8 * _deflate(kernel[kernel != 0].tobytes()) / kept
    assert row.index_bits_per_nonzero == 8 * _deflate(np.packbits(kernel.ravel() != 0).tobytes()) / kept
    # Trained float32 values barely deflate; a 10%-dense bitmap costs a few bits per kept weight.
    assert 26 < row.bits_per_nonzero <= 33 and 2 < row.index_bits_per_nonzero < 8
    assert "bits/nonzero" in str(info) and json.dumps(info.as_dict())
    # Few distinct values left after pruning is not clustering (logits keeps 128 of 1,280 weights).
    assert [row.clusters for row in info.rows] == [0, 0, 0]


def test_export_uses_the_sparse_encoding_only_when_smaller_after_gzip_and_it_runs(pruned_90, digits, tmp_path):
    x, _, _, _ = digits
    kernels = [w for w in pruned_90.get_weights() if w.ndim == 2]
    nonzero = sum(np.count_nonzero(k) for k in kernels)

    fp32 = tflite_export.export(pruned_90, tmp_path / "fp32.tflite", "fp32", latency_runs=0)
    assert fp32.sparse_encoding == "used" and fp32.report.sparse_tensors == 3  # every kernel
    assert fp32.gzip_bytes == fp32.sparse_gzip_bytes < fp32.dense_gzip_bytes
    report = tflite_export.inspect(tmp_path / "fp32.tflite")
    assert report.nonzero_weights == nonzero and report.weights == sum(k.size for k in kernels)
    assert report.index_deflate_bytes > 0 and report.to_dict() == fp32.report.to_dict() | {"path": report.path}
    stored = weight_tensors((tmp_path / "fp32.tflite").read_bytes())
    assert report.bits_per_nonzero == 8 * _deflate(b"".join(t.values.tobytes() for t in stored)) / nonzero
    assert "index bits (sparse encoding)" in str(fp32)

    dense = tflite_export.export(pruned_90, tmp_path / "dense.tflite", "fp32", sparse=False, latency_runs=0)
    assert dense.report.sparse_tensors == 0 and dense.index_bits_per_nonzero == 0.0
    assert dense.report.nonzero_weights == nonzero and dense.gzip_bytes == fp32.dense_gzip_bytes
    # Dense storage pays for the zeros inside the values; sparse pays for them in the index.
    assert dense.bits_per_nonzero > fp32.bits_per_nonzero + fp32.index_bits_per_nonzero

    int8 = tflite_export.export(pruned_90, tmp_path / "int8.tflite", "int8", x[:64], latency_runs=0)
    assert int8.report.sparse_tensors == 0 and int8.gzip_bytes == int8.dense_gzip_bytes
    assert "XNNPACK" in int8.sparse_encoding and int8.sparse_gzip_bytes is not None
    assert int8.report.nonzero_weights <= nonzero and int8.bits_per_nonzero < 0.5 * dense.bits_per_nonzero
    data = json.loads(int8.to_json())
    assert data["dense_gzip_bytes"] == int8.dense_gzip_bytes and data["bits_per_nonzero"] == int8.bits_per_nonzero


def test_strip_names_drops_intermediate_tensor_names_and_keeps_what_apps_read(pruned_90, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from tflite_export.flatbuffer import parse_flatbuffer

    x, _, x_test, y_test = digits
    kwargs = dict(precision="int8", representative_data=x[:64], sparse=False, latency_runs=0)
    named = tflite_export.export(pruned_90, tmp_path / "named.tflite", **kwargs)
    stripped = tflite_export.export(pruned_90, tmp_path / "stripped.tflite", strip_names=True,
                                    validation_data=(x_test, y_test), **kwargs)
    before = parse_flatbuffer((tmp_path / "named.tflite").read_bytes())
    after = parse_flatbuffer((tmp_path / "stripped.tflite").read_bytes())
    boundary = set(before.inputs) | set(before.outputs)
    assert [t.name for t in after.tensors if t.index in boundary] == [
        t.name for t in before.tensors if t.index in boundary] != [""]
    assert all(t.name == "" for t in after.tensors if t.index not in boundary)
    dropped = sum(len(t.name) for t in before.tensors if t.index not in boundary)
    assert stripped.names_dropped == dropped > 0 and stripped.bytes < named.bytes
    assert stripped.gzip_bytes < named.gzip_bytes and any("tensor names" in note for note in stripped.notes)
    assert f"{dropped:,} B of intermediate names dropped" in str(stripped)
    assert after.op_counts() == before.op_counts() and stripped.verification.samples == len(x_test)

    # Apps find the model's signature by its keys; it computes exactly what the named file does.
    outputs = []
    for name in ("named", "stripped"):
        interpreter = Interpreter(model_path=str(tmp_path / f"{name}.tflite"))
        runner = interpreter.get_signature_runner()
        (input_key,) = interpreter.get_signature_list()["serving_default"]["inputs"]
        outputs.append(np.concatenate([next(iter(runner(**{input_key: x_test[i:i + 1]}).values()))
                                       for i in range(32)]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
