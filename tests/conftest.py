"""Shared fixtures: real shipped data (scikit-learn's digits) and models trained once per session.

Model builders live in tests/helpers.py. A session fixture that trains returns a
factory or a model that tests only read; a test that trains on it works on a copy.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

# TensorFlow is imported by the fixtures that use it, not here: pytest-xdist's controller process
# loads this file too and runs no test, and importing TensorFlow there cost 7 CPU s a run.

# Test files import these from helpers; the names stay here for files not yet switched.
__all__ = ["EXPORT_PRECISIONS", "cnn_digits_model", "compile_classifier", "dense_digits_model"]


def __getattr__(name):
    """`from conftest import compile_classifier` (and the rest of `__all__`), loaded on first use."""
    if name in __all__:
        import helpers

        return getattr(helpers, name)
    raise AttributeError(f"module 'conftest' has no attribute {name!r}")


@pytest.fixture(scope="session")
def digits():
    """Digits as (x_train, y_train, x_test, y_test); images 8x8x1 scaled to [0, 1] (the demo's split)."""
    from tfcompress.demo import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits()
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def breast_cancer():
    """Breast cancer as standardized (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = data.data.astype("float32")
    x = (x - x.mean(0)) / x.std(0)
    y = data.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:450], y[:450], x[450:], y[450:]


# ---- tflite_export fixtures: train one digits CNN, export it once per precision ----


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """The conftest digits CNN, trained for 6 epochs (about 93% test accuracy)."""
    from helpers import cnn_digits_model, compile_classifier, fit

    x_train, y_train, _, _ = digits
    model = compile_classifier(cnn_digits_model(seed=0))
    fit(model, x_train, y_train, epochs=6, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def exported_digits(digits_cnn, digits, tmp_path_factory):
    """`{precision: ExportResult}`: the digits CNN exported at all six precisions, verified."""
    import tflite_export
    from helpers import EXPORT_PRECISIONS

    x_train, _, x_test, y_test = digits
    directory = tmp_path_factory.mktemp("exported_digits")
    return {
        precision: tflite_export.export(
            digits_cnn, directory / f"digits_{precision}.tflite", precision=precision,
            representative_data=x_train[:256], validation_data=(x_test, y_test), latency_runs=20,
        )
        for precision in EXPORT_PRECISIONS
    }


# ---- digits models trained once per session; each call returns a fresh copy to train or freeze ----


def _copies(build, weights):
    from helpers import compile_classifier

    def copy():
        model = build()
        model.set_weights(weights)
        return compile_classifier(model)

    return copy


@pytest.fixture(scope="session")
def trained_mlp(digits):
    """`trained_mlp()`: a compiled copy of the 128-wide digits MLP (seed 2) after 6 epochs (about 98%)."""
    from helpers import compile_classifier, dense_digits_model, fit

    x, y, _, _ = digits
    model = compile_classifier(dense_digits_model(seed=2), learning_rate=3e-3)
    fit(model, x, y, epochs=6, batch_size=32, verbose=0)
    return _copies(lambda: dense_digits_model(seed=2), model.get_weights())


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """`trained_cnn()`: a compiled copy of the digits CNN after 15 epochs at 3e-3 (about 99%; `digits_cnn` is the 93% one)."""
    from helpers import cnn_digits_model, compile_classifier, fit

    x, y, _, _ = digits
    model = compile_classifier(cnn_digits_model(seed=0), learning_rate=3e-3)
    fit(model, x, y, epochs=15, batch_size=64, verbose=0)
    return _copies(lambda: cnn_digits_model(seed=0), model.get_weights())


@pytest.fixture(scope="session")
def pruned_cnn(digits):
    """The digits CNN pruned to 0.8 in a 2-epoch fit (44 steps), wrappers in place. Read it; never train it."""
    import tfcompress as tfc
    from helpers import cnn_digits_model, compile_classifier

    x, y, _, _ = digits
    model = compile_classifier(tfc.prune(cnn_digits_model(), 0.8))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback()])
    return model


# ---- pytest-xdist: one worker per group of tests that share a trained fixture ----

UNGROUPED_FIXTURES = {"digits", "breast_cancer", "tmp_path_factory", "worker_id", "testrun_uid"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Puts tests that share a module- or session-scoped fixture in one `xdist_group`.

    xdist builds such a fixture once per worker that runs a test needing it; with
    `--dist loadgroup` (pytest.ini) the tests sharing it run on one worker, so the
    model behind it is trained (or the notebook executed) once per run.
    """
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {}
    for item in items:
        definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        keys = [
            f"{definitions[name][-1].baseid}::{name}"
            for name in item.fixturenames
            if name in definitions and name not in UNGROUPED_FIXTURES
            and definitions[name][-1].scope in ("session", "package", "module", "class")
        ]
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
        shared[item] = keys
    for item, keys in shared.items():
        if keys:
            item.add_marker(pytest.mark.xdist_group(root(keys[0])))
