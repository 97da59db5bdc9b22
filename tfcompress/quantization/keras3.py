"""Quantization-aware training for Keras 3 (`import keras`) models.

tfmot wraps only tf_keras models and Keras 3 has no int8 QAT, so tfcompress
rewrites a Keras 3 Sequential or functional model itself, layer by layer:
kernel layers become their quantization-aware twins (`keras3_layers.py`), a
SeparableConv1D / 2D becomes a depthwise and a 1x1 convolution (what TFLite runs),
a BatchNormalization after a Dense or linear convolution folds into it,
weightless layers and tensor arithmetic that change a tensor's range (ReLU,
Add, Multiply, global average pooling, `x + 3.0`) get an
`ActivationQuantizer` after them, hard sigmoid becomes `relu6(x + 3) * (1 / 6)`
with ranges, Rescaling and Normalization become a multiply and an add with a
range each, any other BatchNormalization (pre-activation nets: nothing to fold
into) becomes a `QuantBatchNormalization`, a BatchNormalization until `start`
and from then that same multiply and add with their ranges, on its moving
statistics,
and layers that only move values or stay inside their input's range (max and
average pooling, Flatten, Reshape, Dropout, zero padding, cropping) stay as
they are. Pruning and clustering constraints stay on the kernels, so the
masked or clustered kernel is the one that gets fake-quantized.
"""

import numpy as np
from absl import logging

from tfcompress._keras import check_keras3_model, is_keras3_functional, keras3 as keras
from tfcompress._layers import clone_with_weights, layer_selector
from tfcompress.clustering.constraints import ClusterCentroids
from tfcompress.pruning.constraints import compression_constraints
from tfcompress.quantization.wrappers import check_clustering_before_freeze
from tfcompress.quantization.keras3_layers import (
    FUSED_ACTIVATIONS,
    KERNEL_LAYERS,
    NEVER,
    OWN_ACTIVATIONS,
    QUANTIZATION_LAYERS,
    SEPARABLE_LAYERS,
    ActivationQuantizer,
    ActivationRange,
    QuantBatchNormalization,
    QuantizedKernel,
    activation_name,
)
from tfcompress.scheduling import is_fraction, scheduled_parts, validate_point

UNSUPPORTED = ("error", "float")
# Layers that only move or pick values: their output keeps their input's int8 range.
PASS_THROUGH = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
    # Zeros are exact in int8 (every range includes 0): TFLite pads with the zero point.
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    # NASNet's adjust block crops: a slice keeps every value it keeps exactly.
    keras.layers.Cropping1D, keras.layers.Cropping2D,
    # TFLite's int8 AVERAGE_POOL_2D takes one scale for input and output (an average stays in its input's
    # range); a range of its own fails to convert (DenseNet's transitions, NASNet's cells).
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
    # Nearest repeats values, bilinear averages neighbours: both stay in the input's range (U-Net decoders).
    keras.layers.UpSampling1D, keras.layers.UpSampling2D,
    keras.layers.Permute, keras.layers.RepeatVector, keras.layers.Identity,
    # Training-only noise and regularization: the identity in inference, so nothing in the int8 file.
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.ActivityRegularization,
)
# Weightless layers whose output gets a range of its own.
RANGED = (
    keras.layers.Add,
    # Global average pooling converts to MEAN, which requantizes.
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.Multiply,
    # Inputs with other ranges are requantized by the converter (DenseNet's blocks).
    keras.layers.Concatenate,
    # Activation layers with an int8 TFLite kernel: LEAKY_RELU (SOFTMAX too, on the last axis: `_classify`).
    # (ELU converts to a float ELU between a DEQUANTIZE and a QUANTIZE: not here.)
    keras.layers.LeakyReLU,
)
# Arithmetic written on tensors in a functional model (`x + 3.0`, `x * (1 / 6)`: MobileNetV3's hard
# sigmoid): TFLite's int8 ADD and MUL take any input and output scales.
RANGED_OPS = (keras.src.ops.numpy.Add, keras.src.ops.numpy.Multiply, keras.src.ops.numpy.Subtract)
# Fixed per-channel affine layers (x * scale + offset), rewritten as a MUL and an ADD with a range each. (A
# BatchNormalization with nothing to fold into computes the same two ops, but trains: QuantBatchNormalization.)
AFFINE = (keras.layers.Rescaling, keras.layers.Normalization)
# Hard sigmoid, `relu6(x + 3) / 6` in Keras 3: TFLite has no int8 kernel for it, so it becomes an ADD with the
# RELU6 fused (one range) and a MUL by 1 / 6 (one range).
HARD_SIGMOID = "hard_sigmoid"


def _is_relu(layer):
    """True for a ReLU / ReLU6 layer TFLite fuses into the op before it."""
    if type(layer) is keras.layers.ReLU:
        config = layer.get_config()
        return config["max_value"] in (None, 6.0) and not config["negative_slope"] and not config["threshold"]
    return type(layer) is keras.layers.Activation and activation_name(layer.activation) in ("relu", "relu6")


def _is_hard_sigmoid(layer):
    """True for `Activation("hard_sigmoid")` and `keras.ops.hard_sigmoid` written on a tensor."""
    if type(layer) is keras.src.ops.nn.HardSigmoid:
        return True
    return type(layer) is keras.layers.Activation and activation_name(layer.activation) == HARD_SIGMOID


class _Graph:
    """Who feeds whom in a functional model: producers and consumers of each layer."""

    def __init__(self, functional):
        self.consumers, self.producers, self.outputs, self.calls = {}, {}, set(), {}
        for nodes in functional._nodes_by_depth.values():
            for node in nodes:
                if node.is_input:
                    continue
                self.calls[id(node.operation)] = self.calls.get(id(node.operation), 0) + 1
                for tensor in node.input_tensors:
                    producer = tensor._keras_history.operation
                    self.consumers.setdefault(id(producer), []).append(node.operation)
                    self.producers.setdefault(id(node.operation), []).append(producer)
        for tensor in functional.outputs:
            self.outputs.add(id(tensor._keras_history.operation))

    def only_consumer(self, layer):
        """The one layer fed by `layer`, or None (several, none, or a model output)."""
        consumers = self.consumers.get(id(layer), [])
        if len(consumers) != 1 or id(layer) in self.outputs:
            return None
        return consumers[0]


def _affine(layer):
    """`(scale, offset)` of a Rescaling / Normalization layer as float32 arrays (`x * scale + offset`), or None."""
    try:
        if type(layer) is keras.layers.Rescaling:
            scale, offset = layer.scale, layer.offset
        else:
            if layer.invert:
                return None
            mean = keras.ops.convert_to_numpy(layer.mean)
            deviation = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance)), keras.backend.epsilon())
            scale, offset = 1.0 / deviation, -mean / deviation
        return np.asarray(scale, "float32"), np.asarray(offset, "float32")
    except (TypeError, ValueError, AttributeError):
        return None


def _kernel_problem(layer):
    """Why a Dense / Conv layer cannot be quantized, or None."""
    name = activation_name(layer.activation)
    if name not in FUSED_ACTIVATIONS + OWN_ACTIVATIONS + (HARD_SIGMOID,):
        return f"activation {name or type(layer.activation).__name__!r} has no int8 TFLite kernel"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "channels_first"
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return "LoRA or Keras quantization is on"
    return None


class _Plan:
    """What happens to each layer: quantized twin, folded, ranged, passed through, or kept float."""

    def __init__(self, functional, chosen):
        self.graph = _Graph(functional)
        self.layers = [op for op in functional.operations if not isinstance(op, keras.layers.InputLayer)]
        self.kind, self.uncovered, self.folded_into = {}, [], {}
        for layer in self.layers:
            if isinstance(layer, keras.Model):
                raise ValueError(
                    f"tfc.quantize cannot rewrite the nested model {layer.name!r}. Build the model flat "
                    "(its layers directly in the outer functional model) before tfc.quantize."
                )
            if not chosen(layer):
                self.kind[id(layer)] = "float"
                continue
            reason = self._classify(layer)
            if reason:
                self.uncovered.append((layer, reason))
                self.kind[id(layer)] = "float"
        for layer in self.layers:
            if self.kind.get(id(layer)) == "norm":
                producer = self.graph.producers[id(layer)][0]
                if (
                    self.kind.get(id(producer)) == "kernel" and self.graph.only_consumer(producer) is layer
                    and activation_name(producer.activation) == "linear"
                ):
                    self.folded_into[id(producer)] = layer
                elif layer.renorm:
                    self.kind[id(layer)] = "float"
                    self.uncovered.append((layer, "batch renormalization with no Dense / Conv to fold into"))
                else:
                    # Nothing to fold into (after an Add, a Concatenate, an activation): a trainable MUL and ADD.
                    self.kind[id(layer)] = "affine"

    def _classify(self, layer):
        kind = None
        if self.graph.calls.get(id(layer), 0) > 1 and getattr(layer, "weights", None):
            # One set of ranges and one step counter per call site.
            return "called more than once (shared weights)"
        if type(layer) in KERNEL_LAYERS or type(layer) in SEPARABLE_LAYERS:
            problem = _kernel_problem(layer)
            if problem:
                return problem
            kind = "kernel"
        elif type(layer) is keras.layers.BatchNormalization:
            axis = layer.axis if isinstance(layer.axis, int) else None
            if axis not in (-1, len(layer.input.shape) - 1):
                return "normalizes an axis other than the last"
            kind = "norm"
        elif _is_hard_sigmoid(layer):
            kind = "hard_sigmoid"
        elif type(layer) is keras.layers.Softmax:
            if layer.axis not in (-1, len(layer.input.shape) - 1):
                return "softmax over an axis other than the last (TFLite's SOFTMAX takes the last)"
            kind = "ranged"
        elif _is_relu(layer) or (
            type(layer) is keras.layers.Activation
            and activation_name(layer.activation) in FUSED_ACTIVATIONS + OWN_ACTIVATIONS
        ) or type(layer) in RANGED + RANGED_OPS:
            kind = "ranged"
        elif type(layer) in AFFINE:
            if _affine(layer) is None:
                return "an inverted or non-numeric normalization"
            kind = "affine"
        elif type(layer) in PASS_THROUGH:
            kind = "through"
        else:
            return "no 8-bit QAT rule for it"
        self.kind[id(layer)] = kind
        return None

    def fused_relu_after(self, layer):
        """True when the one consumer of `layer` (past a folded BatchNorm) is a quantized ReLU."""
        after = self.graph.only_consumer(self.folded_into.get(id(layer), layer))
        return after is not None and self.kind.get(id(after)) == "ranged" and _is_relu(after)

    def quantized(self, layer):
        return self.kind.get(id(layer)) not in (None, "float")


def _selector(model, layers):
    if layers is None:
        return lambda layer: True
    return layer_selector(model, layers)


def _uncovered_error(uncovered):
    groups = {}
    for layer, reason in uncovered:
        groups.setdefault(type(layer), []).append(f"{layer.name!r}: {reason}")
    listed = "; ".join(f"{cls.__name__} ({', '.join(items)})" for cls, items in groups.items())
    names = ", ".join(repr(layer.name) for layer, _ in uncovered)
    return ValueError(
        f"tfc.quantize cannot quantize {len(uncovered)} layer(s) of this Keras 3 model with 8-bit "
        f"quantization-aware training: {listed}. Keep them float with one filter, "
        f"layers=lambda l: l.name not in {{{names}}}, or pass unsupported='float'; either way the "
        "int8 export then calibrates them from representative_data."
    )


def _check_phases(start, freeze):
    start = validate_point(start, "start")
    if freeze is not None:
        freeze = validate_point(freeze, "freeze")
        if is_fraction(start) == is_fraction(freeze) and freeze < start:
            raise ValueError(f"`freeze` ({freeze}) must not come before `start` ({start}).")
    return start, freeze


def _check_clustering_before_freeze(model, freeze):
    """Refuses clustering that would begin once activation ranges and BatchNorm statistics are frozen (as tf_keras)."""
    begins = ((name, c.begin) for name, _, c in compression_constraints(model) if isinstance(c, ClusterCentroids))
    check_clustering_before_freeze(begins, freeze)


def quantize_keras3(model, *, start=0.0, freeze=None, layers=None, preserve=None, unsupported="error"):
    """`tfc.quantize` for a Keras 3 model; see `tfc.quantize` for the arguments.

    Returns:
        A new functional Keras 3 model with quantization-aware layers
        (compile it before fit), on the TensorFlow or JAX backend.

    Example:

    ```python
    qat = tfc.quantize(tfc.prune(model, 0.8, end=0.5), start=0.6, freeze=0.9)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=10, callbacks=[tfc.CompressionCallback()])
    tflite_export.export(qat, "model_int8.tflite", precision="int8")
    ```
    """
    check_keras3_model(model, "tfc.quantize")
    start, freeze = _check_phases(start, freeze)
    _check_clustering_before_freeze(model, freeze)
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"`unsupported` must be one of {UNSUPPORTED}; got {unsupported!r}.")
    if preserve is not None:
        raise ValueError(
            "`preserve` is for stripped tf_keras models. A Keras 3 model keeps its zeros and shared values "
            "through QAT while it carries tfc.prune / tfc.cluster constraints: quantize the model those "
            "return (before tfc.strip), and drop `preserve=`."
        )
    if not is_keras3_functional(model):
        raise TypeError(
            f"tfc.quantize rewrites Keras 3 Sequential and functional models layer by layer, and cannot "
            f"rewrite the subclassed model {model.name!r} ({type(model).__name__}). Build the same layers as a "
            "functional model (inputs = keras.Input(shape); ...; keras.Model(inputs, outputs)) for QAT. "
            "tfc.prune and tfc.cluster still take this model (they change it in place)."
        )
    if any(isinstance(layer, QUANTIZATION_LAYERS) for layer in model._flatten_layers(include_self=False)):
        raise ValueError("This model is already quantized; call tfc.quantize once, on the float model.")
    functional = model._functional if isinstance(model, keras.Sequential) else model
    plan = _Plan(functional, _selector(model, layers))
    if plan.uncovered and unsupported == "error":
        raise _uncovered_error(plan.uncovered)
    if plan.uncovered:
        logging.warning(
            "tfc.quantize keeps %d layer(s) float (unsupported='float'): %s. The int8 export "
            "calibrates them: pass representative_data to tflite_export.export.",
            len(plan.uncovered), ", ".join(layer.name for layer, _ in plan.uncovered),
        )
    return _rewrite(model, functional, plan, start, freeze)


def _copy(layer):
    return layer.__class__.from_config(layer.get_config())


def _rewrite(model, functional, plan, start, freeze):
    """The quantization-aware functional model, and every weight carried over.

    A BatchNormalization with no Dense / Conv before it to fold into (ResNet50V2's and
    DenseNet's pre-activation BatchNorm) becomes a `QuantBatchNormalization` with its
    gamma, beta and moving statistics: a BatchNormalization until `start`, then the
    MUL and ADD the int8 file runs (`x * scale + shift`, both outputs fake-quantized)
    on its moving statistics, fixed from `start`, with gamma and beta still learned.
    As a fixed inference affine (what it was), its statistics, gamma and beta stayed
    what they were at `tfc.quantize` for the whole fit: the initial identity in a net
    trained from scratch with `start=0.3`. Batch statistics in the fake-quant phase (as
    a folded BatchNorm trains) left ResNet50V2 at chance in inference. keras.applications
    nets trained from scratch on digits, 66 steps with `start=0.3`, one run each (see
    docs/coverage.md): ResNet50V2 70.8% (fixed affine) -> 92.4%, DenseNet121 77.1% -> 65.2%
    (83.9% on batch statistics, where ResNet50V2 fell to 7.8%).
    Rescaling and Normalization stay fixed multiplies and adds.
    """
    replacements, pairs = {}, []

    def quantizer(name, layer=None):
        # It computes in the dtype of the layer whose output it quantizes: a float32 output stays
        # float32 under a mixed policy (the global policy otherwise).
        dtype = getattr(layer, "dtype_policy", None)
        return ActivationQuantizer(start=start, freeze=freeze, name=name, dtype=dtype)

    def op(cls, name):
        # Named after the layer it replaces: an automatic name ("add") can clash with one of the model's.
        return cls(name=name)

    def ranged(inner, layer):
        output = quantizer(f"{layer.name}_quant", layer)

        def call(*args, **kwargs):
            return output(inner(*args, **kwargs))

        return call

    def affine(layer):
        # TFLite has no int8 op for x * scale + offset: a MUL and an ADD, each with the range of its output.
        scale, offset = _affine(layer)
        shifted = quantizer(f"{layer.name}_quant", layer)
        multiply = op(keras.src.ops.numpy.Multiply, f"{layer.name}_multiply")
        if not np.any(offset):
            return lambda inputs, **kwargs: shifted(multiply(inputs, scale))
        scaled, add = quantizer(f"{layer.name}_scale_quant", layer), op(keras.src.ops.numpy.Add, f"{layer.name}_add")
        return lambda inputs, **kwargs: shifted(add(scaled(multiply(inputs, scale)), offset))

    def batch_norm(layer):
        # A trainable MUL and ADD; a ReLU right after fuses into the ADD (as after an Add layer), with its range.
        config = {
            **layer.get_config(), "axis": -1, "start": start, "freeze": freeze,
            "quantize_output": not plan.fused_relu_after(layer),
        }
        new = QuantBatchNormalization.from_config(config)
        pairs.append((layer, new, None))
        return new

    def hard_sigmoid(layer):
        # Keras 3's hard_sigmoid is relu6(x + 3) / 6: the converter fuses the RELU6 into the ADD.
        name = layer.name
        shifted, output = quantizer(f"{name}_relu6_quant", layer), quantizer(f"{name}_quant", layer)
        add = op(keras.src.ops.numpy.Add, f"{name}_add")
        relu6 = op(keras.src.ops.nn.Relu6, f"{name}_relu6")
        multiply = op(keras.src.ops.numpy.Multiply, f"{name}_multiply")
        return lambda inputs, **kwargs: output(multiply(shifted(relu6(add(inputs, 3.0))), 1.0 / 6.0))

    def kernel(layer):
        norm = plan.folded_into.get(id(layer))
        fold = None
        if norm is not None:
            config = norm.get_config()
            fold = {key: config[key] for key in ("momentum", "epsilon", "center", "scale")}
        config = {**layer.get_config(), "start": start, "freeze": freeze, "fold": fold}
        hard = activation_name(layer.activation) == HARD_SIGMOID
        if hard:  # the layer stays linear (output quantized) and hard sigmoid follows
            config["activation"] = "linear"
        config["quantize_output"] = hard or not plan.fused_relu_after(layer)
        if type(layer) in SEPARABLE_LAYERS:
            # What TFLite runs: DEPTHWISE_CONV_2D (linear, its output ranged) and a 1x1 CONV_2D.
            depthwise_class, pointwise_class = SEPARABLE_LAYERS[type(layer)]
            depthwise = depthwise_class(
                kernel_size=config["kernel_size"], strides=config["strides"], padding=config["padding"],
                depth_multiplier=config["depth_multiplier"], dilation_rate=config["dilation_rate"],
                use_bias=False, depthwise_initializer=config["depthwise_initializer"],
                depthwise_regularizer=config["depthwise_regularizer"],
                depthwise_constraint=config["depthwise_constraint"],
                start=start, freeze=freeze, name=f"{layer.name}_depthwise",
            )
            pointwise = pointwise_class(
                filters=config["filters"], kernel_size=1, activation=config["activation"], use_bias=config["use_bias"],
                kernel_initializer=config["pointwise_initializer"], bias_initializer=config["bias_initializer"],
                kernel_regularizer=config["pointwise_regularizer"], bias_regularizer=config["bias_regularizer"],
                activity_regularizer=config["activity_regularizer"], kernel_constraint=config["pointwise_constraint"],
                bias_constraint=config["bias_constraint"], start=start, freeze=freeze, fold=fold,
                quantize_output=config["quantize_output"], name=layer.name,
            )
            pairs.append((layer, (depthwise, pointwise), norm))
            new = lambda inputs, **kwargs: pointwise(depthwise(inputs))  # noqa: E731
        else:
            new = KERNEL_LAYERS[type(layer)].from_config(config)
            pairs.append((layer, new, norm))
        if not hard:
            return new
        activation = hard_sigmoid(layer)
        return lambda inputs, **kwargs: activation(new(inputs))

    def replace(layer):
        if id(layer) in replacements:
            return replacements[id(layer)]
        kind = plan.kind.get(id(layer))
        if kind == "norm":
            new = lambda inputs, **kwargs: inputs  # noqa: E731 (folded into the layer before)
        elif kind == "affine":
            new = batch_norm(layer) if type(layer) is keras.layers.BatchNormalization else affine(layer)
        elif kind == "hard_sigmoid":
            new = hard_sigmoid(layer)
        elif kind == "kernel":
            new = kernel(layer)
        else:
            new = _copy(layer)
            if isinstance(layer, keras.layers.Layer):  # tensor arithmetic (`x + 3.0`) has no weights
                pairs.append((layer, new, None))
            if kind == "ranged" and not (type(layer) is keras.layers.Add and plan.fused_relu_after(layer)):
                new = ranged(new, layer)
        replacements[id(layer)] = new
        return new

    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history.operation.name)
        for x in functional.inputs
    ]
    fed = []
    for original, new in zip(functional.inputs, inputs):
        consumers = plan.graph.consumers.get(id(original._keras_history.operation), [])
        float_input = "float" in str(new.dtype)
        fed.append(
            quantizer(f"{original._keras_history.operation.name}_quant")(new)
            if float_input and any(plan.quantized(layer) for layer in consumers) else new
        )
    outputs = functional._run_through_graph(fed, operation_fn=replace)
    qat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    for old, new, norm in pairs:
        _carry_weights(old, new, norm)
    return qat


def _carry_weights(old, new, norm):
    """Copies `old`'s weights (and the folded BatchNorm's) into its quantization-aware twin `new`.

    A SeparableConv's twin is `(depthwise, pointwise)`: the depthwise kernel goes to the first,
    the pointwise kernel, bias and BatchNorm to the second.
    """
    if isinstance(new, tuple):
        depthwise, new = new
        depthwise.kernel.assign(old.depthwise_kernel.numpy())
        new.kernel.assign(old.pointwise_kernel.numpy())
    elif isinstance(new, QuantBatchNormalization):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            if getattr(new, name, None) is not None:
                getattr(new, name).assign(getattr(old, name).numpy())
        return
    elif not isinstance(new, QuantizedKernel):
        new.set_weights(old.get_weights())
        return
    else:
        new.kernel.assign(old.kernel.numpy())
    if old.use_bias:
        new.bias.assign(old.bias.numpy())
    if norm is not None:
        channels = new.bn_moving_mean.shape[0]
        new.bn_gamma.assign(norm.gamma.numpy() if norm.scale else np.ones(channels, "float32"))
        new.bn_beta.assign(norm.beta.numpy() if norm.center else np.zeros(channels, "float32"))
        new.bn_moving_mean.assign(norm.moving_mean.numpy())
        new.bn_moving_variance.assign(norm.moving_variance.numpy())


def is_quantization_aware(model):
    """True when a Keras 3 `model` holds tfcompress quantization-aware layers (its int8 export needs no calibration)."""
    return bool(quantization_layers(model))


def float_twin_keras3(model):
    """A copy of a Keras 3 QAT `model` that never fake-quantizes: the FP32 reference for its int8 file.

    The phase is a cond on a variable, which the converter folds: with the
    start out of reach, the converted file is the float model (BatchNorm folded).
    """
    return _twin_starting_at(model, NEVER)


def fake_quant_twin_keras3(model):
    """A copy of a Keras 3 QAT `model` that fake-quantizes from now on, with the ranges it learned so far.

    For a model whose fit ended before `start` (an early stop): its ranges
    follow the float training's batches, as tfmot's do before QAT starts.
    """
    return _twin_starting_at(model, 0.0)


def _twin_starting_at(model, start):
    twin = clone_with_weights(model)
    for layer in quantization_layers(twin):
        layer.qat_start.assign(start)
    return twin


def quantization_layers(model):
    """Every Keras 3 quantization-aware layer in `model` (tfcompress's), nested models included."""
    return [part for part in scheduled_parts(model) if isinstance(part, QUANTIZATION_LAYERS)]


def fake_quant_not_started(model):
    """`{layer name: (step, start)}` for the quantization-aware layers that still compute in float.

    Such a layer has not trained to its `start` (or never trained: a fractional
    `start` becomes a step only when `fit` begins), so its inference graph has
    no fake quant and the converter gets float ops with no ranges.
    """
    waiting = {}
    for layer in quantization_layers(model):
        step, start = (float(keras.ops.convert_to_numpy(v)) for v in (layer.qat_step, layer.qat_start))
        if step < start:
            waiting[layer.name] = (int(step), None if start >= NEVER else int(start))
    return waiting


def ranges_learned(model):
    """True when every learned range of the model's quantization-aware layers has seen a training batch."""
    ranges = [value for layer in quantization_layers(model) for value in vars(layer).values()
              if isinstance(value, ActivationRange)]
    return all(float(keras.ops.convert_to_numpy(value.seen)) > 0 for value in ranges)


def qat_phase(parts):
    """The `qat_phase` log value (0 float, 1 fake-quant, 2 frozen) of a fit's scheduled parts, or None."""
    phases = [part.phase for part in parts if isinstance(part, QUANTIZATION_LAYERS)]
    return max(phases) if phases else None
