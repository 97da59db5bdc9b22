"""tfc.sensitivity: per-layer pruning curves measured on real digits, and per-layer targets from them."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress._keras import keras


@pytest.fixture(scope="module")
def mlp_scan(trained_mlp, digits):
    """The trained digits MLP, its scan on the test split, and the lines the scan printed."""
    _, _, x_test, y_test = digits
    model = trained_mlp()
    before = [w.copy() for w in model.get_weights()]
    lines = []
    result = tfc.sensitivity(model, (x_test, y_test), print_fn=lines.append)
    return model, before, result, lines


def test_scan_measures_each_prunable_layer_and_restores_weights(mlp_scan, digits):
    model, before, result, lines = mlp_scan
    _, _, x_test, y_test = digits
    assert [row.name for row in result.layers] == ["hidden1", "hidden2", "logits"]
    assert [row.params for row in result.layers] == [64 * 128, 128 * 128, 128 * 10]
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    assert result.baseline == pytest.approx(accuracy)
    for row in result.layers:
        assert len(row.scores) == len(result.sparsities) and row.scores[0] == result.baseline
        assert row.scores[-1] < result.baseline - 0.02  # 98% of one layer's weights gone hurts
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(lines) == 1 + len(result.layers) and lines[2].startswith("[2/3] hidden2 (Dense, 16,384 weights)")
    data = json.loads(result.to_json())
    assert data["layers"][2]["scores"] == result["logits"].scores
    assert tfc.SensitivityResult.from_dict(data) == result
    figure = result.plot()
    assert len(figure.axes[0].lines) == len(result.layers) + 1


def test_layer_sparsity_meets_the_budget_and_spares_the_sensitive_layer(mlp_scan, digits):
    model, _, result, _ = mlp_scan
    params = {row.name: row.params for row in result.layers}
    for target in (0.8, 0.9, 0.95):
        targets = result.layer_sparsity(target)
        overall = sum(params[name] * s for name, s in targets.items()) / sum(params.values())
        assert overall == pytest.approx(target, abs=1e-5)
        assert all(0.0 <= s <= result.sparsities[-1] for s in targets.values())
    targets = result.layer_sparsity(0.9)
    # The layer hurt most at 90% keeps the most weights.
    worst = max(result.layers, key=lambda row: result.drops(row)[result.sparsities.index(0.9)]).name
    assert targets[worst] == min(targets.values()) < 0.9
    assert result.layer_sparsity(max_nonzero=round(0.1 * sum(params.values()))) == pytest.approx(targets, abs=1e-4)
    assert result.layer_sparsity(max_bytes=4 * 0.1 * sum(params.values())) == pytest.approx(targets, abs=1e-4)  # float32
    # tfc.prune takes the mapping as it is, and a constant schedule reaches every target.
    x, y, _, _ = digits
    pruned = tfc.prune(model, layer_sparsity=targets, schedule="constant")
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    rows = {row.name: row.sparsity for row in tfc.summary(tfc.strip(pruned), print_fn=None).rows}
    for name, target in targets.items():
        assert rows[name] == pytest.approx(target, abs=0.002)
    with pytest.raises(ValueError, match="sparsities=.*0.99"):
        result.layer_sparsity(0.99)
    with pytest.raises(ValueError, match="exactly one budget"):
        result.layer_sparsity(0.9, max_nonzero=100)


def test_keras3_model_scanned_on_a_dataset_with_the_loss(digits):
    import keras as keras3

    x, y, x_test, y_test = digits
    keras3.utils.set_random_seed(1)
    model = keras3.Sequential([
        keras3.Input((8, 8, 1)), keras3.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras3.layers.Flatten(), keras3.layers.Dense(10, name="logits"),
    ])
    model.compile("adam", keras3.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    data = tf.data.Dataset.from_tensor_slices((x_test, y_test))  # unbatched
    result = tfc.sensitivity(model, data, metric="loss", sparsities=[0.5, 0.9], print_fn=None)
    assert [row.name for row in result.layers] == ["conv", "logits"] and not result.higher_is_better
    assert result.sparsities == [0.0, 0.5, 0.9]
    assert result.baseline == pytest.approx(model.evaluate(x_test, y_test, verbose=0), rel=1e-4)
    assert all(row.scores[2] > result.baseline for row in result.layers)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    only = tfc.sensitivity(model, data.batch(128), sparsities=[0.5], layers=["logits"], print_fn=None)
    assert [row.name for row in only.layers] == ["logits"]


def test_data_without_labels_and_a_failing_scan(trained_mlp, digits):
    _, _, x_test, y_test = digits
    model = trained_mlp()
    for data in (x_test, (x_test, None), tf.data.Dataset.from_tensor_slices(x_test).batch(32)):
        with pytest.raises(ValueError, match=r"needs labels: pass `\(x, y\)`"):
            tfc.sensitivity(model, data, print_fn=None)
    before = [w.copy() for w in model.get_weights()]
    calls = []

    def failing(y_true, y_pred):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        tfc.sensitivity(model, (x_test, y_test), metric=failing, print_fn=None)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match="not compiled"):
        tfc.sensitivity(tfc.strip(tfc.prune(model)), (x_test, y_test), metric="loss", print_fn=None)
