"""tfc.prune(structure="channels"): channels masked inside fit, removed by tfc.strip, on real digits models.

Every test checks the smaller model against the masked one it came from, on
random inputs in inference mode, and reads shapes from real TFLite files.
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from helpers import fit

import tfcompress as tfc
import tflite_export
from tfcompress._keras import keras
from tfcompress.pruning import channel_summary, count_macs

L = keras.layers


# ---- models ---------------------------------------------------------------------------------------


def digits_cnn(seed=0):
    """A Sequential CNN for 8x8x1 digits (conv1 16, conv2 32, dense 64, logits 10)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        L.Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 1), name="conv1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(64, activation="relu", name="dense"),
        L.Dense(10, name="logits"),
    ])


def digits_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = L.Flatten()(inputs)
    x = L.Dense(128, activation="relu", name="hidden1")(x)
    x = L.Dense(128, activation="relu", name="hidden2")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def keyword_net(seed=0):
    """A Conv1D keyword-spotting net (conv, BatchNorm, ReLU) over the 8 rows of a digit as 8 time steps."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8))
    x = inputs
    for i, filters in enumerate((32, 32, 48)):
        x = L.Conv1D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = L.ReLU(name=f"relu{i}")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="keyword_net")


def coupled_net(seed=0):
    """Every coupling in one net: BatchNorm, Concatenate, squeeze-excite Multiply, depthwise, residual Add, Flatten."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    stem = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    stem = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(stem))
    branch1 = L.Conv2D(8, 1, activation="relu", name="branch1")(stem)
    branch2 = L.SeparableConv2D(12, 3, padding="same", activation="relu", name="branch2")(stem)
    joined = L.Concatenate(name="concat")([branch1, branch2])
    squeeze = L.Dense(6, activation="relu", name="se_reduce")(L.GlobalAveragePooling2D(name="squeeze")(joined))
    excite = L.Reshape((1, 1, 20), name="se_reshape")(L.Dense(20, activation="sigmoid", name="se_expand")(squeeze))
    scaled = L.Multiply(name="se_scale")([joined, excite])
    depthwise = L.BatchNormalization(name="dw_bn")(L.DepthwiseConv2D(3, padding="same", name="dw")(scaled))
    residual = L.Add(name="residual")([L.Conv2D(16, 1, name="proj")(depthwise), stem])
    flat = L.Dropout(0.1, name="drop")(L.Flatten(name="flatten")(L.MaxPooling2D(name="pool")(residual)))
    hidden = L.Dense(32, activation="relu", name="fc")(flat)
    return keras.Model(inputs, L.Dense(10, name="logits")(hidden), name="coupled_net")


def compiled(model, learning_rate=1e-3, run_eagerly=False):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    return model


def upsampled(x, size=32):
    """Digits resized to size x size x 3, as the ImageNet-style applications take them."""
    return np.repeat(tf.image.resize(x, (size, size)).numpy(), 3, axis=-1)


# ---- checks ---------------------------------------------------------------------------------------


def random_inputs(model, count=16, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, *model.input_shape[1:])).astype("float32")


def assert_same_function(masked, small, x):
    expected = masked(x, training=False).numpy()
    got = small(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def kept_by_group(pruned):
    return {row.group: row.kept for row in channel_summary(pruned, print_fn=None).rows}


def tflite_weight_shapes(content):
    """Shapes of the flatbuffer's constant tensors of rank >= 2 (filters and FC weights)."""
    interpreter = Interpreter(model_content=content)
    return sorted(
        tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()
        if len(t["shape"]) >= 2 and t["shape"][0] > 1 and "serving_default" not in t["name"]
        and "StatefulPartitionedCall:0" != t["name"]
    )


def keras_filter_shapes(model):
    """The shapes the TFLite converter gives `model`'s Conv2D (OHWI) and Dense (out, in) kernels."""
    shapes = []
    for layer in model.layers:
        if isinstance(layer, L.Conv2D) and not isinstance(layer, (L.DepthwiseConv2D, L.SeparableConv2D)):
            kh, kw, cin, cout = layer.kernel.shape
            shapes.append((cout, kh, kw, cin))
        elif isinstance(layer, L.Dense):
            cin, cout = layer.kernel.shape
            shapes.append((cout, cin))
    return shapes


# ---- a plain CNN, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_cnn(digits):
    """The digits CNN after 5 dense epochs (the dense baseline and the distillation teacher)."""
    x, y, _, _ = digits
    model = compiled(digits_cnn(), 3e-3)
    fit(model, x, y, epochs=5, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def pruned_cnn(trained_cnn, digits):
    """The trained CNN with half of each group's channels masked over a 3-epoch fit, and its stripped model."""
    x, y, _, _ = digits
    pruned = compiled(tfc.prune(trained_cnn, 0.5, structure="channels"))
    callback = tfc.CompressionCallback(verbose=0)
    history = pruned.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    object.__setattr__(pruned, "test_history", history.history)
    return pruned, tfc.strip(pruned), callback


def test_cnn_loses_half_its_channels_in_fit_and_strip_removes_them(pruned_cnn, trained_cnn, digits):
    pruned, small, callback = pruned_cnn
    _, _, x_test, y_test = digits
    # The schedule reached its target inside the fit; the classifier stays whole.
    assert kept_by_group(pruned) == {"conv1": 8, "conv2": 16, "dense": 32, "logits": 10}
    (entry,) = callback.plan
    assert entry["compression"] == "channel pruning" and entry["end_step"] == 99 and entry["total_steps"] == 132
    # The logs carry the share of the pruned groups' channels masked: rising, at the target by the end.
    logged = pruned.test_history["channel_sparsity"]
    masked = 1 - sum(kept_by_group(pruned)[name] for name in ("conv1", "conv2", "dense")) / (16 + 32 + 64)
    assert logged[0] < logged[-1] and logged[-1] == pytest.approx(masked) == pytest.approx(0.5)
    # Same layers, fewer filters and units, same function.
    types = [type(layer).__name__ for layer in trained_cnn.layers]
    assert [type(layer).__name__ for layer in small.layers[1:]] == types
    assert [small.get_layer(n).get_config().get("filters") or small.get_layer(n).units
            for n in ("conv1", "conv2", "dense", "logits")] == [8, 16, 32, 10]
    assert_same_function(pruned, small, random_inputs(small))
    # Params drop as planned: conv2 16x8x9, dense (4*4*16)x32, logits 32x10, with biases.
    planned = 8 * 9 + 8 + 16 * 8 * 9 + 16 + 256 * 32 + 32 + 32 * 10 + 10
    info = channel_summary(pruned, print_fn=None)
    assert small.count_params() == planned == info.params["now"] == info.params["target"]
    # tfc.summary shows the same groups, params and MACs under its per-layer table.
    overview = tfc.summary(pruned, print_fn=None)
    assert overview.channels.as_dict() == info.as_dict() and "MACs:   dense" in str(overview)
    assert info.params["dense"] == trained_cnn.count_params()
    assert count_macs(small) == info.macs["now"] < info.macs["dense"] / 3.5
    accuracy = compiled(small).evaluate(x_test, y_test, verbose=0)[1]
    dense_accuracy = trained_cnn.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > dense_accuracy - 0.04, (accuracy, dense_accuracy)


def test_stripped_cnn_loads_with_plain_tf_keras_and_exports_smaller(pruned_cnn, digits, tmp_path):
    _, small, _ = pruned_cnn
    x, _, x_test, y_test = digits
    small.save(tmp_path / "small.keras")
    loaded = keras.models.load_model(tmp_path / "small.keras")
    assert type(loaded).__name__ == "Functional"
    np.testing.assert_allclose(loaded.predict(x_test[:32], verbose=0), small.predict(x_test[:32], verbose=0), atol=1e-6)

    expected = sorted(keras_filter_shapes(small))
    assert (16, 3, 3, 8) in expected and (32, 256) in expected
    for precision in ("fp32", "fp16", "dynamic", "int8", "int16x8", "edgetpu"):
        result = tflite_export.export(
            small, tmp_path / f"small_{precision}.tflite", precision=precision,
            representative_data=x[:128], latency_runs=0,
        )
        content = (tmp_path / f"small_{precision}.tflite").read_bytes()
        assert set(tflite_weight_shapes(content)) == set(expected), precision
        if precision == "int8":
            result = tflite_export.verify(tmp_path / "small_int8.tflite", x_test, y_test, latency_runs=0)
            assert result.tflite_accuracy > 0.9


def test_unstripped_channel_pruned_model_exports_small_and_loads_from_h5(pruned_cnn, tmp_path):
    pruned, small, _ = pruned_cnn
    result = tflite_export.export(pruned, tmp_path / "pruned.tflite", precision="fp32", latency_runs=0)
    assert result.stripped == ["channel pruning"]
    content = (tmp_path / "pruned.tflite").read_bytes()
    assert set(tflite_weight_shapes(content)) == set(keras_filter_shapes(small))
    pruned.save(tmp_path / "pruned.h5")
    loaded = tfc.load_model(tmp_path / "pruned.h5")
    assert type(loaded).__name__ == "ChannelPruned"
    np.testing.assert_array_equal(loaded.kept, pruned.kept)


# ---- an MLP and a Conv1D keyword net ---------------------------------------------------------------


def test_mlp_units_are_removed(digits):
    x, y, _, _ = digits
    pruned = compiled(tfc.prune(digits_mlp(), 0.75, structure="channels", end=0.5))
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    small = tfc.strip(pruned)
    assert [small.get_layer(n).units for n in ("hidden1", "hidden2", "logits")] == [32, 32, 10]
    assert small.count_params() == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert_same_function(pruned, small, random_inputs(small))


def test_conv1d_keyword_net_with_batchnorm(digits):
    x, y, x_test, y_test = digits
    x, x_test = x[..., 0], x_test[..., 0]
    pruned = compiled(tfc.prune(keyword_net(), 0.5, structure="channels", end=0.6), 3e-3)
    pruned.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    small = compiled(tfc.strip(pruned))
    assert [small.get_layer(f"conv{i}").filters for i in range(3)] == [16, 16, 24]
    assert [small.get_layer(f"bn{i}").moving_mean.shape[0] for i in range(3)] == [16, 16, 24]
    # Masked channels are exactly zero after BatchNorm, in training and inference statistics alike.
    assert_same_function(pruned, small, random_inputs(small))
    assert small.evaluate(x_test, y_test, verbose=0)[1] > 0.8


# ---- coupling read from the graph ---------------------------------------------------------------------


def test_groups_follow_concatenate_squeeze_excite_depthwise_residual_and_flatten():
    pruned = tfc.prune(coupled_net(), 0.5, structure="channels")
    groups = {g.name: g for g in pruned.channel_graph.groups}
    # The residual Add ties the stem to the projection; Flatten carries it into fc's rows.
    assert set(groups["stem"].layers) == {"stem", "stem_bn", "branch1", "branch2", "proj", "fc"}
    # Both branches (concatenated at offsets 0 and 8) share one group with the SE expansion and the depthwise.
    assert groups["branch1"].producers == ["branch1", "branch2", "se_expand"]
    assert groups["branch1"].channels == 20
    assert {"se_reduce", "dw", "dw_bn", "proj"} <= set(groups["branch1"].layers)
    assert not groups["logits"].prunable and "outputs of the model" in groups["logits"].reason
    # BatchNorm statistics far from their initial values: masked channels must still be exact zeros.
    rng = np.random.default_rng(1)
    for layer in pruned.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    pruned.update_masks()
    small = tfc.strip(pruned)
    assert small.get_layer("branch1").filters + small.get_layer("branch2").filters == 10
    assert small.get_layer("se_reshape").target_shape == (1, 1, 10)
    assert small.get_layer("fc").kernel.shape == (4 * 4 * 8, 16)
    assert_same_function(pruned, small, random_inputs(small))


# ---- the two Keras applications ----------------------------------------------------------------------


def test_mobilenetv2_inverted_residuals_shrink_and_convert(digits, tmp_path):
    x, y, _, _ = digits
    x32 = upsampled(x[:128])
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    # Eager: tracing the step of this 150-layer net cost more than the steps themselves (16 CPU s for
    # 8 traced steps, about 6 for 4 eager ones); channel pruning inside a traced step is the CNN's, above.
    pruned = compiled(tfc.prune(model, 0.5, structure="channels", end=0.5), run_eagerly=True)
    pruned.fit(x32[:64], y[:64], epochs=1, batch_size=16, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    groups = {g.name: g for g in pruned.channel_graph.groups}
    # An inverted-residual stage is one group: its projections are tied by the Adds.
    assert {"block_4_project", "block_5_project", "block_6_expand"} <= set(groups["block_3_project"].layers)
    small = tfc.strip(pruned)
    info = channel_summary(pruned, print_fn=None)
    assert small.count_params() == info.params["target"] < model.count_params() * 0.32
    assert small.get_layer("block_5_depthwise").depthwise_kernel.shape[2] == 48
    assert_same_function(pruned, small, random_inputs(small, count=8))
    result = tflite_export.export(
        small, tmp_path / "mobilenet_int8.tflite", precision="int8", representative_data=x32, latency_runs=0
    )
    assert result.report.fully_integer
    shapes = tflite_weight_shapes((tmp_path / "mobilenet_int8.tflite").read_bytes())
    assert (640, 1, 1, 56) in shapes and (10, 640) in shapes
    assert not any(1280 in shape for shape in shapes)


def test_resnet50v2_residual_groups_rebuild_exactly():
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50V2(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None)
    pruned = tfc.prune(model, 0.5, structure="channels")
    groups = {g.name: g for g in pruned.channel_graph.groups}
    # A residual stage: the shortcut conv, each block's last conv and the next block's pre-activation BN.
    stage = groups["conv4_block1_0_conv"]
    assert {f"conv4_block{i}_3_conv" for i in range(1, 7)} <= set(stage.producers)
    assert {f"conv4_block{i}_preact_bn" for i in range(2, 7)} | {"conv5_block1_preact_bn"} <= set(stage.layers)
    assert stage.channels == 1024
    pruned.update_masks()
    small = tfc.strip(pruned)
    assert small.get_layer("conv4_block3_3_conv").filters == 512
    assert small.get_layer("conv5_block3_2_conv").filters == 256
    info = channel_summary(pruned, print_fn=None)
    assert small.count_params() == info.params["now"] < model.count_params() * 0.27
    assert_same_function(pruned, small, random_inputs(small, count=4))


# ---- with distillation in one fit, then quantization-aware training of the smaller model ----------------


def test_distilled_channel_pruning_then_qat_exports_full_int8(trained_cnn, digits, tmp_path):
    x, y, x_test, y_test = digits
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = keras.models.clone_model(trained_cnn)  # the Distiller freezes its teacher: not the shared fixture
    teacher.set_weights(trained_cnn.get_weights())
    distiller = tfc.Distiller(teacher=teacher, student=tfc.prune(trained_cnn, 0.5, structure="channels"))
    distiller.compile(keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    distiller.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    assert kept_by_group(distiller.student)["conv2"] == 16

    # Masks live on the pruned model's variables: tfc.quantize wraps the physically smaller model.
    student = tfc.quantize(distiller.student, start=0.3)
    assert student.count_params() < distiller.student.count_params() / 2
    qat = tfc.Distiller(teacher=teacher, student=student)
    qat.compile(keras.optimizers.Adam(5e-4), loss=loss, metrics=["accuracy"])
    qat.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[tfc.CompressionCallback(verbose=0)])
    result = tflite_export.export(
        tfc.strip(qat.student), tmp_path / "int8.tflite", precision="int8",
        validation_data=(x_test, y_test), latency_runs=0,
    )
    assert result.report.fully_integer
    assert result.verification.tflite_accuracy > 0.9
    assert (16, 3, 3, 8) in tflite_weight_shapes((tmp_path / "int8.tflite").read_bytes())


# ---- errors ------------------------------------------------------------------------------------------------


def test_target_that_removes_every_channel_is_refused():
    with pytest.raises(ValueError, match=r"remove all 16 channel\(s\) of conv1"):
        tfc.prune(digits_cnn(), 0.5, structure="channels", layer_sparsity={"conv1": 0.99})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tfc.prune(digits_cnn(), 1.0, structure="channels")
    # Concatenated branches lose the same channels: one target for both.
    with pytest.raises(ValueError, match="different targets"):
        tfc.prune(coupled_net(), 0.5, structure="channels", layer_sparsity={"branch1": 0.5, "branch2": 0.25})
    layered = tfc.prune(digits_cnn(), 0.5, structure="channels", layer_sparsity={"conv2": 0.25, "dense": 0.75})
    assert layered.targets == {"conv1": 0.5, "conv2": 0.25, "dense": 0.75}


def test_model_without_prunable_group_is_refused():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8))
    recurrent = keras.Model(inputs, L.Dense(10, name="logits")(L.LSTM(16, name="lstm")(inputs)))
    with pytest.raises(ValueError, match="found no group of channels.*logits: its channels are outputs"):
        tfc.prune(recurrent, 0.5, structure="channels")
    with pytest.raises(ValueError, match="Layer 'logits' cannot be channel-pruned"):
        tfc.prune(digits_cnn(), 0.5, structure="channels", layers=["logits"])
    with pytest.raises(ValueError, match="structure"):
        tfc.prune(digits_cnn(), 0.5, structure="filters")


def test_group_reaching_an_unsliceable_layer_is_named_and_left_whole(caplog):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.LayerNormalization(name="norm")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    model = keras.Model(inputs, L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x)))
    with caplog.at_level("WARNING", logger="absl"):
        pruned = tfc.prune(model, 0.5, structure="channels")
    assert "conv1" in caplog.text and "norm (LayerNormalization) cannot be sliced" in caplog.text
    pruned.update_masks()
    small = tfc.strip(pruned)
    assert (small.get_layer("conv1").filters, small.get_layer("conv2").filters) == (8, 4)
    assert_same_function(pruned, small, random_inputs(small))


def test_training_without_the_callback_and_cloning_are_refused(digits):
    x, y, _, _ = digits
    pruned = compiled(tfc.prune(digits_cnn(), 0.5, structure="channels"))
    with pytest.raises(RuntimeError, match="CompressionCallback"):
        pruned.fit(x[:64], y[:64], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="Call tfc.strip"):
        tfc.prune(pruned, 0.5)
    # QAT comes in a second fit, once the channels are pruned.
    with pytest.raises(ValueError, match=r"not pruned yet: conv1 \(0/8 channels masked\).*fit this model"):
        tfc.quantize(pruned)


def test_channel_pruned_model_saved_mid_schedule_keeps_its_masks(tmp_path):
    pruned = compiled(tfc.prune(digits_cnn(), 0.5, structure="channels"))
    pruned.update_masks(0.25)
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert type(loaded).__name__ == "ChannelPruned"
    np.testing.assert_array_equal(loaded.kept, pruned.kept)
    assert loaded.targets == pruned.targets
    x = random_inputs(pruned)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), pruned(x, training=False).numpy(), atol=1e-6)
    # The loaded masks are enforced again and still removable by strip.
    assert_same_function(loaded, tfc.strip(loaded), x)
