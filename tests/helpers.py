"""Small tf_keras models the tests build, and the precisions an export test covers.

Imported by test files (`from helpers import ...`) and by the scripts that run
in a fresh interpreter (tests/fresh_process.py), which cannot use fixtures.
"""

import numpy as np

from tfcompress._keras import keras

EXPORT_PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu")


def dense_digits_model(seed=0, width=128):
    """A functional MLP for 8x8x1 digits: Flatten, hidden1, hidden2, logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu", name="hidden1")(x)
    x = keras.layers.Dense(width, activation="relu", name="hidden2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def cnn_digits_model(seed=0):
    """A Sequential CNN for 8x8x1 digits: conv1, conv2, pool, flatten, dense, logits."""
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
    """Compiles `model` (logits out) with Adam, sparse cross-entropy and accuracy; returns it."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit(model, x, y, **kwargs):
    """`model.fit(x, y, **kwargs)` for a compiled one-output tf_keras model, its train step traced once.

    tf_keras creates the optimizer's slots and the compiled loss and metrics' variables inside
    the first train step, and a `tf.function` that creates variables is traced a second time.
    Created here first, from the data's spec, by what `tfc.CompressionCallback` runs before a
    compression fit's first step: the same fit, the same weights, one trace.
    """
    import tensorflow as tf

    from tfcompress.callbacks import _create_training_variables

    spec = tuple(tf.TensorSpec([None, *np.shape(a)[1:]], tf.as_dtype(np.asarray(a).dtype)) for a in (x, y))
    _create_training_variables(model, spec)
    return model.fit(x, y, **kwargs)
