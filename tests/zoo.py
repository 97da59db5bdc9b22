"""The models users bring, in tiny sizes, and the coverage matrix's cells run on them.

Shared by `tests/test_zoo.py` (asserts every cell) and `benchmarks/bench_zoo.py`
(prints the matrix with figures). Every model is built offline (`weights=None`)
and trained on shipped or synthetic data:

* images: scikit-learn's digits, upsampled to 32x32x3;
* keyword spotting: synthetic (49 frames x 10 features) signals, one tone pattern per class;
* text: synthetic token sequences whose class is the token band they draw from.

Every row builds in either Keras: `build(name, generation="keras3")` gives the
same layers from `import keras` (Keras 3) instead of tf_keras, and the cells
run on whichever Keras their model belongs to.

A cell either works, with its figures, or raises one error; `run_cell` returns
which, so a test can assert both kinds of cell.
"""

import dataclasses
import os
import tempfile
import time

import numpy as np

import tfcompress as tfc
from tfcompress._keras import KERAS3, TF_KERAS, is_keras3_object, keras, keras3
from tfcompress.demo import load_digits

CLASSES = 10
VOCABULARY = 200
SEQUENCE = 24

# Training steps (batches of 32) each cell gives its model; benchmarks/bench_zoo.py --steps raises it,
# since a few steps leave an applications net answering near-constant logits.
TRAIN_STEPS = 4

GENERATIONS = (TF_KERAS, KERAS3)

COLUMNS = (
    "prune", "quantize", "prune+quantize", "cluster", "distill",
    "fp32", "fp16", "dynamic", "int8", "edgetpu",
)


# ---- data ----------------------------------------------------------------------------------------


def images(n_train=256, n_test=64):
    """Digits upsampled to 32x32x3 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    (x_train, y_train), (x_test, y_test) = load_digits()

    def grow(x):
        x = np.kron(x[..., 0], np.ones((4, 4), np.float32))
        return np.repeat(x[..., None], 3, axis=-1).astype("float32")

    return grow(x_train[:n_train]), y_train[:n_train], grow(x_test[:n_test]), y_test[:n_test]


def signals(n_train=256, n_test=64, seed=0):
    """Keyword-spotting-like inputs (49 frames x 10 features): a class is a frequency and a band."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, CLASSES, n)
    t = np.arange(49)[None, :, None]
    band = np.arange(10)[None, None, :]
    x = np.sin(2 * np.pi * (1 + y[:, None, None]) * t / 49.0) * np.exp(-((band - y[:, None, None]) ** 2) / 4.0)
    x = (x + 0.3 * rng.standard_normal(x.shape)).astype("float32")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def tokens(n_train=256, n_test=64, seed=0):
    """Token sequences (int32): class k draws most tokens from its own band of the vocabulary."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, CLASSES, n)
    band = (VOCABULARY - 1) // CLASSES
    own = 1 + y[:, None] * band + rng.integers(0, band, (n, SEQUENCE))
    noise = rng.integers(1, VOCABULARY, (n, SEQUENCE))
    x = np.where(rng.random((n, SEQUENCE)) < 0.6, own, noise).astype("int32")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# ---- models --------------------------------------------------------------------------------------


def keras_of(generation):
    """The Keras module of a generation: tf_keras for `"tf_keras"`, Keras 3 for `"keras3"`."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}; got {generation!r}")
    return keras3 if generation == KERAS3 else keras


def _keras_of_model(model):
    return keras3 if is_keras3_object(model) else keras


def _applications(keras, name):
    apps = keras.applications
    # Logits out (no softmax): the matrix compares logits between Keras and LiteRT.
    common = dict(input_shape=(32, 32, 3), weights=None, classes=CLASSES, classifier_activation=None)
    build = {
        "MobileNetV2": lambda: apps.MobileNetV2(alpha=0.35, **common),
        "MobileNetV3Small": lambda: apps.MobileNetV3Small(alpha=0.75, **common),
        "MobileNetV3Large": lambda: apps.MobileNetV3Large(alpha=0.75, **common),
        "EfficientNetB0": lambda: apps.EfficientNetB0(**common),
        "ResNet50V2": lambda: apps.ResNet50V2(**common),
        "DenseNet121": lambda: apps.DenseNet121(**common),
    }[name]
    model = build()
    # The applications' BatchNorm momentum (0.99) leaves the moving statistics at their initial values
    # after a short fit: inference would answer near-constant logits. 0.9 settles within a few dozen steps.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def keyword_net(keras):
    """A DS-CNN-style keyword spotter: Conv1D, SeparableConv1D, BatchNorm, ReLU."""
    inputs = keras.Input((49, 10))
    x = keras.layers.Conv1D(32, 5, padding="same", use_bias=False, name="c1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    for i in (2, 3):
        x = keras.layers.SeparableConv1D(32, 3, padding="same", use_bias=False, name=f"sep{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="keyword_net")


def text_rnn(keras, cell):
    """Embedding + LSTM/GRU text classifier on int32 tokens."""
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 16, name="embedding")(inputs)
    x = cell(32, name=cell.__name__.lower())(x)
    outputs = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"text_{cell.__name__.lower()}")


def transformer_block(keras):
    """A one-block Transformer encoder: MultiHeadAttention, LayerNormalization, GELU."""
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 32, name="embedding")(inputs)
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm1")(keras.layers.Add(name="residual1")([x, attention]))
    hidden = keras.layers.Dense(64, activation="gelu", name="ffn1")(x)
    hidden = keras.layers.Dense(32, name="ffn2")(hidden)
    x = keras.layers.LayerNormalization(name="norm2")(keras.layers.Add(name="residual2")([x, hidden]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="transformer")


APPLICATIONS = ("MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "ResNet50V2", "DenseNet121")
MODELS = APPLICATIONS + ("KeywordNet", "TextLSTM", "TextGRU", "Transformer")


def build(name, seed=0, generation=TF_KERAS):
    """A fresh, untrained model by matrix row name, in tf_keras or Keras 3 (`generation`)."""
    keras = keras_of(generation)
    keras.utils.set_random_seed(seed)
    if name in APPLICATIONS:
        return _applications(keras, name)
    return {
        "KeywordNet": lambda: keyword_net(keras),
        "TextLSTM": lambda: text_rnn(keras, keras.layers.LSTM),
        "TextGRU": lambda: text_rnn(keras, keras.layers.GRU),
        "Transformer": lambda: transformer_block(keras),
    }[name]()


# Nets that rescale their input themselves (a Rescaling layer first) and so expect pixels in [0, 255]:
# fed [0, 1], MobileNetV3's Rescaling(1/127.5, offset=-1) squeezes a digit into [-1, -0.98], which
# an int8 input scale spanning [-1, 0] resolves in four steps.
RESCALE_INSIDE = ("MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0")


def data_for(name, n_train=256, n_test=64):
    """The matrix row's (x_train, y_train, x_test, y_test); digits hold at most 1,400 / 397."""
    if name in APPLICATIONS:
        x_train, y_train, x_test, y_test = images(n_train, n_test)
        if name in RESCALE_INSIDE:
            x_train, x_test = 255.0 * x_train, 255.0 * x_test
        return x_train, y_train, x_test, y_test
    if name == "KeywordNet":
        return signals(n_train, n_test)
    return tokens(n_train, n_test)


def accuracy(model, data):
    """Top-1 accuracy of `model`'s logits on the held-back part of `data`."""
    return float(np.mean(model.predict(data[2], verbose=0).argmax(1) == data[3]))


def pretrain(name, steps, data, generation=TF_KERAS):
    """Trains the row's float model once for `steps` batches of 32.

    Arguments:
        name: matrix row.
        steps: training steps; several epochs when they outnumber one pass over `data`.
        data: `(x_train, y_train, x_test, y_test)`.
        generation: `"tf_keras"` or `"keras3"`.

    Returns:
        `(weights, test_accuracy)`: the trained weights for `trained_copy`, and the accuracy
        the float model reaches on the held-back inputs.

    Example:
        weights, float_accuracy = pretrain("MobileNetV2", 300, data_for("MobileNetV2", 1400, 200))
    """
    model = _fit(build(name, generation=generation), data, steps=steps, compressed=False)
    return model.get_weights(), accuracy(model, data)


def trained_copy(name, weights, generation=TF_KERAS):
    """A fresh model of the row holding `pretrain`'s weights: each cell compresses its own copy."""
    model = build(name, generation=generation)
    model.set_weights(weights)
    return model


# ---- cells ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One cell: `works` with `figures`, or the `error` it raised (type and first line)."""

    model: str
    column: str
    works: bool
    figures: dict
    error: str = ""
    generation: str = TF_KERAS
    seconds: float = 0.0
    # Test accuracy of the float model a cell started from (None: fresh, trained in the cell).
    float_accuracy: float = None

    def short(self):
        if not self.works:
            return "error"
        keys = ("sparsity", "clusters", "loss", "tflite_accuracy", "agreement", "cosine", "bytes", "integer", "tpu_ops")
        return ", ".join(f"{k}={_fmt(self.figures[k])}" for k in keys if k in self.figures) or "works"


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _compile(model):
    keras = _keras_of_model(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _fit(model, data, epochs=1, batch_size=32, steps=None, compressed=True):
    x, y = data[0], data[1]
    if steps:
        # More steps than one pass holds: several epochs over the training set.
        epochs = max(epochs, -(-steps * batch_size // len(x)))
        x, y = x[: steps * batch_size], y[: steps * batch_size]
    callbacks = [tfc.CompressionCallback(verbose=0)] if compressed else []
    _compile(model).fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks)
    return model


def _pruned_kernel_sparsity(model):
    """The share of zeros over every pruned kernel (tfmot's wrappers, or Keras 3's masked kernels)."""
    if is_keras3_object(model):
        from tfcompress.pruning.constraints import pruned_kernels

        arrays = [keras3.ops.convert_to_numpy(k.variable) for k in pruned_kernels(model)]
    else:
        from tfcompress.pruning.wrapper import find_pruning_wrappers

        arrays = [(w.pruning_vars[0][0] * w.pruning_vars[0][1]).numpy() for w in find_pruning_wrappers(model)]
    return float(sum((a == 0).sum() for a in arrays) / sum(a.size for a in arrays))


def _max_values_per_kernel(model):
    """The most distinct values in one clustered kernel (a wrapper's, or Keras 3's), after `tfc.strip`."""
    stripped = tfc.strip(model)
    if is_keras3_object(model):
        from tfcompress.clustering.constraints import ClusterCentroids
        from tfcompress.pruning.constraints import compression_constraints

        clustered = {v.path for _, v, c in compression_constraints(model) if isinstance(c, ClusterCentroids)}
        counts = [np.unique(keras3.ops.convert_to_numpy(w)).size for w in stripped.weights if w.path in clustered]
        return max(counts)
    from tfcompress._keras import weight_name
    from tfcompress.clustering.wrapper import find_cluster_wrappers

    clustered = {w.layer.name: set(w.original_clusterable_weights) for w in find_cluster_wrappers(model)}
    counts = [
        np.unique(w.numpy()).size
        for layer in stripped.layers if layer.name in clustered
        for w in layer.weights if weight_name(w) in clustered[layer.name]
    ]
    return max(counts)


def export_figures(model, precision, data, directory):
    """Exports `model` at `precision`, verifies it on LiteRT; returns the cell's figures."""
    import tflite_export
    from tflite_export.verification import run_flatbuffer

    x_train, _, x_test, y_test = data
    path = os.path.join(directory, f"{model.name}_{precision}.tflite")
    result = tflite_export.export(
        model, path, precision=precision, representative_data=x_train[:64], latency_runs=0,
    )
    keras_logits = np.asarray(model.predict(x_test, verbose=0), np.float64)
    with open(path, "rb") as f:
        tflite_logits = np.asarray(run_flatbuffer(f.read(), x_test)[0], np.float64)
    cosine = np.sum(keras_logits * tflite_logits, 1) / (
        np.linalg.norm(keras_logits, axis=1) * np.linalg.norm(tflite_logits, axis=1) + 1e-12
    )
    figures = {
        "bytes": result.bytes,
        "agreement": float(np.mean(keras_logits.argmax(1) == tflite_logits.argmax(1))),
        "cosine": float(np.mean(cosine)),
        "keras_accuracy": float(np.mean(keras_logits.argmax(1) == y_test)),
        "tflite_accuracy": float(np.mean(tflite_logits.argmax(1) == y_test)),
        "integer": bool(result.report.fully_integer),
    }
    if result.edgetpu is not None:
        figures["tpu_ops"] = f"{result.edgetpu.mapped}/{len(result.edgetpu.ops)}"
    return figures


def run_cell(name, column, model=None, data=None, directory=None, generation=TF_KERAS):
    """Runs one cell of the matrix on a fresh (or given, trained) model; never raises.

    `generation` ("tf_keras" or "keras3") is the Keras a fresh model is built in;
    a given model runs in its own.

    Returns:
        A `Cell`.
    """
    data = data if data is not None else data_for(name)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            figures = _run(name, column, model, data, directory or scratch, generation)
        return Cell(name, column, True, figures, seconds=time.perf_counter() - start, generation=generation)
    except Exception as error:  # a cell reports its error; the test asserts it is the clear one
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        return Cell(name, column, False, {}, error=message, seconds=time.perf_counter() - start,
                    generation=generation)


def prune_and_quantize(model, data, steps):
    """The prune + quantize cell's model: 50% pruning and QAT from halfway, in one fit of `steps` batches.

    Returns:
        The trained model, still wrapped (`tfc.strip` or `tflite_export.export` unwraps it).
    """
    return _fit(tfc.quantize(tfc.prune(model, final_sparsity=0.5, end=0.5), start=0.5), data, steps=steps)


def _run(name, column, model, data, directory, generation):
    fresh = model is None
    model = build(name, generation=generation) if fresh else model
    generation = KERAS3 if is_keras3_object(model) else TF_KERAS
    keras = keras_of(generation)
    if column == "prune":
        pruned = _fit(tfc.prune(model, final_sparsity=0.5, end=0.5), data, steps=TRAIN_STEPS)
        return {"sparsity": _pruned_kernel_sparsity(pruned)}
    if column == "quantize":
        qat = _fit(tfc.quantize(model), data, steps=TRAIN_STEPS)
        return export_figures(tfc.strip(qat), "int8", data, directory)
    if column == "prune+quantize":
        both = prune_and_quantize(model, data, TRAIN_STEPS)
        figures = {"sparsity": _pruned_kernel_sparsity(both)}
        figures.update(export_figures(tfc.strip(both), "int8", data, directory))
        return figures
    if column == "cluster":
        clustered = _fit(tfc.cluster(model, 16), data, steps=TRAIN_STEPS)
        return {"clusters": _max_values_per_kernel(clustered)}
    if column == "distill":
        teacher = model if not fresh else _fit(build(name, seed=1, generation=generation), data, steps=TRAIN_STEPS)
        student = build(name, seed=2, generation=generation)
        distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0)
        distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
        history = distiller.fit(data[0][:128], data[1][:128], epochs=1, batch_size=32, verbose=0,
                                callbacks=[tfc.CompressionCallback(verbose=0)])
        loss = float(history.history["loss"][-1])
        if not np.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {loss}")
        return {"loss": loss}
    if fresh:
        _fit(model, data, steps=TRAIN_STEPS)
    return export_figures(model, column, data, directory)
