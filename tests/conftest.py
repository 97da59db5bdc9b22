"""Shared fixtures: real shipped data (scikit-learn's digits) and small tf_keras models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tfcompress._keras import keras
from tfcompress.demo import load_digits


@pytest.fixture(scope="session")
def digits():
    """Digits as (x_train, y_train, x_test, y_test); images 8x8x1 scaled to [0, 1] (the demo's split)."""
    (x_train, y_train), (x_test, y_test) = load_digits()
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def breast_cancer():
    """Breast cancer as standardized (x_train, y_train, x_test, y_test)."""
    data = load_breast_cancer()
    x = data.data.astype("float32")
    x = (x - x.mean(0)) / x.std(0)
    y = data.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:450], y[:450], x[450:], y[450:]


def dense_digits_model(seed=0, width=128):
    """A functional MLP for 8x8x1 digits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu", name="hidden1")(x)
    x = keras.layers.Dense(width, activation="relu", name="hidden2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def cnn_digits_model(seed=0):
    """A Sequential CNN for 8x8x1 digits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def compile_classifier(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


# ---- tflite_export fixtures: train one digits CNN, export it once per precision ----

EXPORT_PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu")


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """The conftest digits CNN, trained for 6 epochs (about 93% test accuracy)."""
    x_train, y_train, _, _ = digits
    model = compile_classifier(cnn_digits_model(seed=0))
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def exported_digits(digits_cnn, digits, tmp_path_factory):
    """`{precision: ExportResult}`: the digits CNN exported at all six precisions, verified."""
    import tflite_export

    x_train, _, x_test, y_test = digits
    directory = tmp_path_factory.mktemp("exported_digits")
    return {
        precision: tflite_export.export(
            digits_cnn, directory / f"digits_{precision}.tflite", precision=precision,
            representative_data=x_train[:256], validation_data=(x_test, y_test), latency_runs=20,
        )
        for precision in EXPORT_PRECISIONS
    }
