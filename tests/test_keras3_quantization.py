"""Keras 3 quantization-aware training: tfc.quantize on `import keras` models, and their fully int8 export.

Real Keras 3 models on scikit-learn's digits, the real TFLite converter and
LiteRT. The JAX backend is tested in test_jax_backend.py (a fresh interpreter:
a process has one backend).
"""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import tfcompress as tfc
import tflite_export
from litert_helpers import int8_kernels, litert_predict
from tfcompress.demo import load_digits
from tfcompress.quantization.keras3_layers import (
    ActivationQuantizer,
    QuantBatchNormalization,
    QuantConv1D,
    QuantConv2D,
    QuantConv2DTranspose,
    QuantDense,
    QuantDepthwiseConv1D,
    QuantDepthwiseConv2D,
)


@pytest.fixture(scope="module")
def data():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test, y_test


def cnn(seed=0):
    """Conv + BatchNorm + ReLU, DepthwiseConv + BatchNorm + ReLU6, pooling, Dense: a MobileNet-style digits net."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="conv_bn")(x)
    x = keras.layers.ReLU(name="conv_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name="depthwise_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def compiled(model):
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def litert_tensors(content):
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return interpreter.get_tensor_details()


@pytest.fixture(scope="module")
def resumed(data, tmp_path_factory):
    """Pruned + QAT digits CNN: one epoch, saved to `.keras`, loaded, and trained on with `initial_epoch=1`."""
    x, y, _, _ = data
    qat = compiled(tfc.quantize(tfc.prune(cnn(), 0.5, end=0.5), start=0.25, freeze=0.75))
    first = tfc.CompressionCallback(verbose=0)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[first])
    path = tmp_path_factory.mktemp("qat") / "mid.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    # The ranges travel in the file: each layer saves its own.
    for layer in qat.layers:
        if isinstance(layer, ActivationQuantizer):
            saved = [float(v.numpy()) for v in (layer.output_range.min, layer.output_range.max)]
            assert saved[1] > 0 and saved == [float(v.numpy()) for v in (
                loaded.get_layer(layer.name).output_range.min, loaded.get_layer(layer.name).output_range.max)]
    second = tfc.CompressionCallback(verbose=0)
    second.history = loaded.fit(x, y, epochs=2, initial_epoch=1, batch_size=64, verbose=0, callbacks=[second]).history
    return qat, loaded, first, second


def test_the_rewrite_folds_batchnorm_and_keeps_the_float_model_until_start(data):
    _, _, x_test, _ = data
    model = cnn()
    rng = np.random.default_rng(0)
    for name in ("conv_bn", "depthwise_bn"):  # a trained BatchNorm's scale and shift, not 1 and 0
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if i == 0 else rng.normal(0, 0.3, w.shape) if i == 1 else w
                           for i, w in enumerate(layer.get_weights())])
    qat = tfc.quantize(model, start=10)
    kinds = {layer.name: type(layer) for layer in qat.layers}
    assert kinds["conv"] is QuantConv2D and kinds["depthwise"] is QuantDepthwiseConv2D
    assert kinds["dense"] is QuantDense and kinds["logits"] is QuantDense
    assert "conv_bn" not in kinds and "depthwise_bn" not in kinds  # folded into the convolutions
    assert kinds["image_quant"] is ActivationQuantizer and kinds["conv_relu_quant"] is ActivationQuantizer
    assert not qat.get_layer("conv").quantize_output  # the ReLU after it quantizes (TFLite fuses it)
    # Step 0 < start: the float model's outputs, BatchNorm folded.
    np.testing.assert_allclose(qat(x_test), model(x_test), atol=1e-4)
    # In training too: Conv + BatchNorm on the batch's statistics (what CompressionCallback would resolve first).
    for layer in qat.layers:
        if hasattr(layer, "resolve_schedule"):
            layer.resolve_schedule(100)
    np.testing.assert_allclose(qat(x_test, training=True), model(x_test, training=True), atol=1e-4)
    # After a Conv with its own ReLU a BatchNorm cannot fold (it would normalize before the ReLU): its affine.
    inputs = keras.Input((8, 8, 1))
    activated = keras.layers.Conv2D(8, 3, activation="relu", name="relu_conv")(inputs)
    activated = keras.Model(inputs, keras.layers.BatchNormalization(name="relu_conv_bn")(activated))
    norm = activated.get_layer("relu_conv_bn")
    norm.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
                      for i, w in enumerate(norm.get_weights())])
    rewritten = tfc.quantize(activated, start=10)
    assert isinstance(rewritten.get_layer("relu_conv_bn"), QuantBatchNormalization)
    np.testing.assert_allclose(rewritten(x_test), activated(x_test), atol=1e-4)


def test_resumed_fit_follows_the_schedule_and_keeps_the_zeros(resumed):
    qat, loaded, first, second = resumed
    steps = 2 * 22
    entry = next(e for e in second.plan if e["compression"] == "quantization")
    assert (entry["start_step"], entry["freeze_step"], entry["total_steps"]) == (round(0.25 * steps), round(0.75 * steps), steps)
    assert {"conv", "depthwise", "dense", "logits", "image_quant"} <= set(entry["layers"])
    for layer in loaded.layers:
        if hasattr(layer, "qat_step"):
            assert float(layer.qat_step.numpy()) == steps, layer.name  # counted on from the saved step
            assert layer.phase == 2, layer.name
    assert second.history["qat_phase"] == [2] and second.history["sparsity"] == [pytest.approx(0.5, abs=0.01)]
    # Ranges were saved and frozen: the ReLU6 range lies inside [0, 6].
    relu6 = loaded.get_layer("depthwise_relu_quant")
    assert 0.0 == float(relu6.output_range.min.numpy()) < float(relu6.output_range.max.numpy()) <= 6.0
    for name in ("conv", "dense", "logits"):
        kernel = loaded.get_layer(name).kernel.numpy()
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01), name


def test_int8_export_is_fully_integer_keeps_zeros_and_matches_keras(resumed, data, tmp_path):
    _, loaded, _, _ = resumed
    _, _, x_test, y_test = data
    result = tflite_export.export(loaded, tmp_path / "qat.tflite", precision="int8", latency_runs=0, sparse=False)
    assert result.quantization_aware and result.calibration_samples == 0
    content = (tmp_path / "qat.tflite").read_bytes()
    floats = [t["name"] for t in litert_tensors(content) if t["dtype"] == np.float32]
    assert len(floats) == 2  # every activation and weight int8: only the float input and output
    keras_accuracy = np.mean(np.argmax(loaded(x_test), -1) == y_test)
    litert_accuracy = np.mean(np.argmax(litert_predict(content, x_test), -1) == y_test)
    assert keras_accuracy > 0.85 and abs(litert_accuracy - keras_accuracy) <= 0.005
    (dense,) = [k for k in int8_kernels(content) if k.shape == (32, 256)]
    assert np.mean(dense == 0) == pytest.approx(0.5, abs=0.01)  # the pruned zeros, int8 zeros on LiteRT


def test_applications_blocks_export_fully_int8(data, tmp_path):
    """keras.applications' layers: input scaling, zero padding before a VALID conv (ResNet50, MobileNetV2,
    EfficientNet), hard-swish / swish, squeeze-excite (MobileNetV3's hard sigmoid is tensor arithmetic),
    DenseNet's concatenation, pre-activation BatchNorm (ResNet50V2's too) and average pooling, Xception's
    and NASNet's SeparableConv2D, and Keras's hard_sigmoid activation. The standalone BatchNorm trains as a
    BatchNorm until `start`, then on its moving statistics (gamma and beta still learn), and saves, loads and
    exports as its MUL and ADD."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(2.0, offset=-1.0, name="rescaling")(inputs)  # MobileNetV3's [-1, 1]
    h = keras.layers.Normalization(mean=0.1, variance=0.5, name="normalization")(h)  # EfficientNet's
    h = keras.layers.ZeroPadding2D(1, name="conv_pad")(h)
    h = keras.layers.Conv2D(16, 3, use_bias=False, name="conv")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="conv_bn")(h)
    h = keras.layers.Activation("hard_silu", name="conv_hard_swish")(h)
    squeezed = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(h)
    squeezed = keras.layers.Conv2D(8, 1, activation="relu", name="se_reduce")(squeezed)
    squeezed = keras.layers.Conv2D(16, 1, name="se_expand")(squeezed)
    squeezed = keras.layers.ReLU(6.0, name="se_relu6")(squeezed + 3.0) * (1.0 / 6.0)
    h = keras.layers.Multiply(name="se_excite")([h, squeezed])
    # An activation argument: the Conv stays linear and relu6(x + 3) / 6 follows.
    grown = keras.layers.Conv2D(8, 1, activation="hard_sigmoid", name="dense_grow")(h)
    h = keras.layers.Concatenate(name="dense_concat")([h, grown])  # DenseNet's
    h = keras.layers.BatchNormalization(momentum=0.9, name="preact_bn")(h)  # nothing to fold into
    h = keras.layers.ReLU(name="preact_relu")(h)
    h = keras.layers.SeparableConv2D(24, 3, padding="same", use_bias=False, name="separable")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="separable_bn")(h)
    h = keras.layers.Activation("hard_sigmoid", name="hard_sigmoid")(h)
    h = keras.layers.AveragePooling2D(2, name="transition_pool")(h)  # DenseNet's: int8 with its input's scale
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu", name="project")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    rng = np.random.default_rng(0)  # a trained BatchNorm's statistics, scale and shift
    preact = model.get_layer("preact_bn")
    preact.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
                        for i, w in enumerate(preact.get_weights())])
    qat = compiled(tfc.quantize(model, start=0.3, freeze=0.8))
    assert isinstance(qat.get_layer("project"), QuantConv2D)
    assert isinstance(qat.get_layer("normalization_quant"), ActivationQuantizer)
    assert type(qat.get_layer("conv_pad")) is keras.layers.ZeroPadding2D  # zeros keep the input's range
    assert "transition_pool_quant" not in {layer.name for layer in qat.layers}
    # The standalone BatchNorm trains: a multiply (ranged) and an add (the fused ReLU's range), in one layer.
    names = {layer.name for layer in qat.layers}
    norm = qat.get_layer("preact_bn")
    assert isinstance(norm, QuantBatchNormalization) and not norm.quantize_output and "preact_relu_quant" in names
    np.testing.assert_allclose(norm.get_weights()[:4], preact.get_weights())
    # SeparableConv2D: a depthwise (output ranged) and a 1x1 convolution with the BatchNorm folded in.
    assert isinstance(qat.get_layer("separable_depthwise"), QuantDepthwiseConv2D)
    pointwise = qat.get_layer("separable")
    assert isinstance(pointwise, QuantConv2D) and pointwise.kernel.shape == (1, 1, 24, 24) and pointwise.fold
    assert {"hard_sigmoid_relu6_quant", "hard_sigmoid_quant", "dense_grow_relu6_quant"} <= names
    # Before start, the rewritten model computes what the float one did (the standalone BatchNorm at inference).
    np.testing.assert_allclose(qat(x_test), model(x_test), atol=1e-4)
    # A scale without offset (EfficientNet's Rescaling(1 / 255)) is one multiply with one range.
    scaled_input = keras.Input((8, 8, 1))
    scaled = keras.layers.Rescaling(0.5, name="scale_only")(scaled_input)
    scaled = keras.Model(scaled_input, keras.layers.Dense(10)(keras.layers.Flatten()(scaled)))
    names = [layer.name for layer in tfc.quantize(scaled).layers]
    assert "scale_only_quant" in names and "scale_only_scale_quant" not in names
    # Before start it is a BatchNormalization in training too (batch statistics; moving ones updated).
    float_norm = keras.layers.BatchNormalization.from_config(preact.get_config())
    twin = QuantBatchNormalization.from_config({**norm.get_config(), "name": "twin", "start": 5})
    batch = rng.normal(0.5, 2.0, (16, 4, 4, 24)).astype("float32")
    for layer in (float_norm, twin):
        layer.build(batch.shape)
        layer.set_weights(preact.get_weights() + layer.get_weights()[4:])
    twin.resolve_schedule(10)
    np.testing.assert_allclose(twin(batch, training=True), float_norm(batch, training=True), atol=1e-4)
    np.testing.assert_allclose(twin.moving_variance.numpy(), float_norm.moving_variance.numpy(), rtol=1e-5)
    steps = []  # preact_bn's gamma, beta and moving mean after every step
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(
        [norm.gamma.numpy().copy(), norm.beta.numpy().copy(), norm.moving_mean.numpy().copy()]))
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0), record])
    start = round(0.3 * len(steps))  # 20 of 66
    assert np.abs(steps[start - 1][2] - steps[0][2]).max() > 1e-3  # float phase: the statistics move
    gammas, betas, _ = zip(*steps[start:])
    for learned in (gammas, betas):  # fake-quant phase: gamma and beta learn
        assert np.abs(learned[-1] - learned[0]).max() > 1e-3
    np.testing.assert_array_equal(steps[-1][2], steps[start - 1][2])  # on the moving statistics, fixed at start
    path = tmp_path / "blocks.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    saved = {w.name: w.numpy() for w in loaded.get_layer("preact_bn").weights}  # statistics, ranges, phase
    assert saved["scaled_max"] > 0 and saved["qat_step"] == len(steps)
    for weight in norm.weights:
        np.testing.assert_array_equal(saved[weight.name], weight.numpy())
    np.testing.assert_allclose(loaded(x_test), qat(x_test), atol=1e-5)
    np.testing.assert_allclose(tfc.strip(loaded)(x_test), qat(x_test), atol=1e-5)
    result = tflite_export.export(loaded, tmp_path / "blocks.tflite", precision="int8", latency_runs=0)
    assert result.quantization_aware and result.calibration_samples == 0
    ops = result.op_counts
    # The separable pair; six CONV_2D with the pointwise one.
    assert ops["DEPTHWISE_CONV_2D"] == 1 and ops["CONV_2D"] == 6
    # MUL: Rescaling, Normalization, SE's * (1 / 6) and excite, silu, preact_bn, both hard sigmoids;
    # ADD: Rescaling, Normalization, SE's + 3, preact_bn, both hard sigmoids (their RELU6 fused in).
    assert ops["MUL"] == 8 and ops["ADD"] == 6 and "RELU6" not in ops
    content = (tmp_path / "blocks.tflite").read_bytes()
    assert len([t for t in litert_tensors(content) if t["dtype"] == np.float32]) == 2
    keras_accuracy = np.mean(np.argmax(qat(x_test), -1) == y_test)
    litert_accuracy = np.mean(np.argmax(litert_predict(content, x_test), -1) == y_test)
    assert keras_accuracy > 0.8 and abs(litert_accuracy - keras_accuracy) <= 0.005


def test_keyword_net_with_separable_and_depthwise_conv1d_exports_fully_int8(data, tmp_path):
    """A Conv1D keyword net (each digit's 8 rows as 8 time steps of 8 features): SeparableConv1D becomes a
    depthwise and a 1x1 Conv1D with its BatchNorm folded in, DepthwiseConv1D its twin; both kernels per
    tensor (a 1-D convolution runs on an expanded kernel, where the converter refuses a channel axis)."""
    x, y, x_test, y_test = (a.reshape(-1, 8, 8) if a.ndim == 4 else a for a in data)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8))
    h = keras.layers.Conv1D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, name="conv_bn")(h)
    h = keras.layers.ReLU(name="conv_relu")(h)
    h = keras.layers.SeparableConv1D(24, 3, padding="same", use_bias=False, name="separable")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="separable_bn")(h)
    h = keras.layers.ReLU(name="separable_relu")(h)
    h = keras.layers.DepthwiseConv1D(3, padding="same", activation="relu", name="depthwise")(h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    qat = compiled(tfc.quantize(model, start=0.3))
    depthwise, pointwise = qat.get_layer("separable_depthwise"), qat.get_layer("separable")
    assert isinstance(depthwise, QuantDepthwiseConv1D) and isinstance(pointwise, QuantConv1D) and pointwise.fold
    assert pointwise.kernel.shape == (1, 16, 24) and not depthwise.per_channel
    assert isinstance(qat.get_layer("depthwise"), QuantDepthwiseConv1D)
    np.testing.assert_allclose(qat(x_test), model(x_test), atol=1e-4)  # before start: the float model
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(qat, tmp_path / "keyword.tflite", precision="int8", latency_runs=0)
    assert result.quantization_aware and result.calibration_samples == 0
    assert result.op_counts["DEPTHWISE_CONV_2D"] == 2 and result.op_counts["CONV_2D"] == 2
    content = (tmp_path / "keyword.tflite").read_bytes()
    assert len([t for t in litert_tensors(content) if t["dtype"] == np.float32]) == 2
    keras_accuracy = np.mean(np.argmax(qat(x_test), -1) == y_test)
    litert_accuracy = np.mean(np.argmax(litert_predict(content, x_test), -1) == y_test)
    assert keras_accuracy > 0.7 and abs(litert_accuracy - keras_accuracy) <= 0.005  # 66 steps from scratch


def test_decoder_with_transposed_convolution_and_upsampling_exports_fully_int8(data, tmp_path):
    """A U-Net-style autoencoder of the digits: Conv2DTranspose (+ BatchNorm, folded; kernel per tensor, its
    output channels are not the last axis) and UpSampling2D (keeps its input's range) are quantized too."""
    x, _, x_test, _ = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    skip = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="down")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="mid")(keras.layers.MaxPooling2D()(skip))
    up = keras.layers.Conv2DTranspose(8, 2, strides=2, padding="same", use_bias=False, name="up")(h)
    up = keras.layers.ReLU(name="up_relu")(keras.layers.BatchNormalization(momentum=0.9, name="up_bn")(up))
    resized = keras.layers.Conv2D(8, 1, name="resize_proj")(keras.layers.UpSampling2D(name="resize")(h))
    h = keras.layers.Concatenate(name="merge")([skip, up, resized])
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, name="out")(h))
    qat = tfc.quantize(model, start=0.3)
    up = qat.get_layer("up")
    assert isinstance(up, QuantConv2DTranspose) and up.fold and not up.per_channel
    assert type(qat.get_layer("resize")) is keras.layers.UpSampling2D and "resize_quant" not in [layer.name for layer in qat.layers]
    np.testing.assert_allclose(qat(x_test), model(x_test), atol=1e-4)  # before start: the float model
    qat.compile(keras.optimizers.Adam(3e-3), "mse")
    qat.fit(x, x, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(qat, tmp_path / "decoder.tflite", precision="int8", latency_runs=0)
    assert result.quantization_aware and result.calibration_samples == 0
    assert result.op_counts["TRANSPOSE_CONV"] == 1
    content = (tmp_path / "decoder.tflite").read_bytes()
    assert len([t for t in litert_tensors(content) if t["dtype"] == np.float32]) == 2
    keras_images, litert_images = np.asarray(qat(x_test)), litert_predict(content, x_test)
    keras_error = np.mean((keras_images - x_test) ** 2)
    assert keras_error < 0.5 * np.mean((x_test - x_test.mean()) ** 2)  # it learned to reconstruct
    assert np.mean(np.abs(litert_images - keras_images)) < 0.02  # pixels in [0, 1]
    assert np.mean((litert_images - x_test) ** 2) <= 1.1 * keras_error


def test_strip_keeps_the_ranges_and_drops_the_constraints(resumed, data):
    _, loaded, _, _ = resumed
    _, _, x_test, _ = data
    final = tfc.strip(loaded)
    assert "PruningMask" not in final.to_json()
    assert isinstance(final.get_layer("conv"), QuantConv2D)
    np.testing.assert_allclose(final(x_test), loaded(x_test), atol=1e-5)


def test_activation_layers_and_layers_that_keep_a_range_export_fully_int8(data, tmp_path):
    """LeakyReLU and Softmax get a range (int8 LEAKY_RELU, SOFTMAX); Permute and RepeatVector move values and
    keep their input's range, as the training-only noise and regularization layers (the identity in inference) do."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.LeakyReLU(0.1, name="leaky")(keras.layers.Conv2D(8, 3, name="conv")(inputs))
    kept = [keras.layers.SpatialDropout2D(0.1), keras.layers.GaussianNoise(0.05), keras.layers.GaussianDropout(0.1),
            keras.layers.ActivityRegularization(l2=1e-4), keras.layers.Permute((2, 1, 3)), keras.layers.Identity(),
            keras.layers.Flatten(), keras.layers.RepeatVector(2), keras.layers.Flatten()]
    for layer in kept:
        h = layer(h)
    h = keras.layers.Dense(10, name="logits")(h)
    model = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(h))
    qat = tfc.quantize(model, start=0.3)
    names = {layer.name for layer in qat.layers}
    assert {"leaky_quant", "probabilities_quant"} <= names
    assert not any(f"{layer.name}_quant" in names for layer in kept)
    qat.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(qat, tmp_path / "activations.tflite", precision="int8",
                                  validation_data=(x_test, y_test), latency_runs=0)
    assert result.report.fully_integer and result.calibration_samples == 0
    ops = result.op_counts
    assert ops["LEAKY_RELU"] == 1 and ops["SOFTMAX"] == 1 and ops["TRANSPOSE"] == 1 and ops["TILE"] == 1
    keras_accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]
    assert keras_accuracy > 0.8 and abs(result.verification.tflite_accuracy - keras_accuracy) <= 0.005
    # No int8 kernel: TFLite's SOFTMAX takes the last axis only, and ELU converts to a float ELU.
    other = keras.Sequential([keras.Input((4, 3)), keras.layers.Softmax(axis=1, name="over_rows"),
                              keras.layers.ELU(name="elu")])
    with pytest.raises(ValueError, match=r"over_rows': softmax over an axis other than the last.*ELU \('elu'"):
        tfc.quantize(other)


def test_export_before_the_fake_quant_phase(data, tmp_path):
    """Never trained: no ranges, a clear error and no file. Stopped before `start` (an early stop): the ranges
    its float training learned, a warning, as tf_keras does."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(10, name="logits")])
    path = tmp_path / "qat.tflite"
    with pytest.raises(tflite_export.RepresentativeDataError,
                       match=r"not reached its fake-quant phase \(.*conv, logits\): it has never been trained.*"
                             r"CompressionCallback.*or pass representative_data"):
        tflite_export.export(tfc.quantize(model, start=0.3), path, precision="int8")
    assert not path.exists()
    qat = compiled(tfc.quantize(model, start=500))  # a step this 22-step fit never reaches
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(qat, path, precision="int8", validation_data=(x_test, y_test), latency_runs=0)
    assert any("never started" in note and "step 22, before its start at step 500" in note for note in result.notes)
    assert result.report.fully_integer and result.calibration_samples == 0
    assert result.verification.agreement >= 0.95  # against the float model it still is
    assert float(qat.get_layer("conv").qat_start.numpy()) == 500  # the user's model is unchanged


def test_layers_qat_cannot_rewrite_are_listed_at_once_and_float_keeps_them(data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="gelu", name="gelu_dense")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    with pytest.raises(ValueError, match=r"LayerNormalization \('norm'.*Dense \('gelu_dense'.*layers=lambda l"):
        tfc.quantize(model)
    kept = tfc.quantize(model, unsupported="float")
    assert type(kept.get_layer("norm")) is keras.layers.LayerNormalization
    assert type(kept.get_layer("gelu_dense")) is keras.layers.Dense
    only_conv = tfc.quantize(model, layers=["conv"])
    assert isinstance(only_conv.get_layer("conv"), QuantConv2D) and type(only_conv.get_layer("logits")) is keras.layers.Dense

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 64)))

    subclassed = Subclassed()
    subclassed(data[0][:1])
    with pytest.raises(TypeError, match="subclassed.*functional.*tfc.prune"):
        tfc.quantize(subclassed)
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        compiled(tfc.quantize(model, layers=["conv"])).fit(data[0][:64], data[1][:64], epochs=1, verbose=0)

