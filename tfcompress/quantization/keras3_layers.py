"""Keras 3 quantization-aware layers: fake quant in `keras.ops`, phases driven by `CompressionCallback`.

`keras.quantizers.fake_quant_with_min_max_vars` lowers to TensorFlow's
`FakeQuantWithMinMaxVars[PerChannel]` on the TF backend, which the TFLite
converter turns into int8 tensors with these ranges: the converted file is
fully int8 without representative data. The layers here put it where the
converter needs it:

* `QuantDense`, `QuantConv1D`, `QuantConv2D`, `QuantConv2DTranspose`,
  `QuantDepthwiseConv1D`, `QuantDepthwiseConv2D` are the Keras layers with a
  fake-quantized kernel (per output channel for 2-D convolutions; per tensor
  for Dense, 1-D and transposed convolutions, whose per-channel kernels do
  not convert or are not on the last axis), a
  BatchNormalization that followed them folded in (its statistics and scale
  are the layer's own variables), and a fake quant on their output.
* `QuantBatchNormalization` is a BatchNormalization with nothing to fold
  into (pre-activation nets): it trains as one until `start`, then on its
  moving statistics (fixed; gamma and beta still learn), and computes
  `x * scale + shift`, the multiply's and the add's outputs each
  fake-quantized, which is the MUL and ADD TFLite runs.
* `ActivationQuantizer` fake-quantizes a tensor with a learned range: the
  model's float inputs and the outputs of weightless layers (ReLU, Add,
  average pooling).

Activation ranges follow an exponential moving average of each batch's
min / max (including 0, which int8 must represent). Every layer saves its
ranges and phase as its own variables, so a `.keras` file carries them.

Phases: each layer counts its training steps in a variable of its own, so the
phase is computed inside the compiled step on every backend (JAX's jitted
step never sees a variable assigned between its steps). Before `start` the
layer computes what the float layer computes, while ranges already learn;
from `start` it fake-quantizes; from `freeze` ranges and BatchNorm statistics
stop moving.
"""

import keras
from keras import ops

from tfcompress.quantization.wrappers import PhasedQuantization
from tfcompress.scheduling import Scheduled, is_fraction, missing_callback, tracing_for_saving, validate_point

MISSING_CALLBACK = missing_callback(
    "quantization-aware layers (Keras 3), whose phases (float, fake-quant, frozen) are scheduled"
)
# A freeze step no fit reaches (float32 holds it exactly).
NEVER = 2.0**30
# Activations a TFLite kernel fuses into the op before them: one fake quant after them suffices.
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# Activations with an int8 TFLite kernel of their own (HARD_SWISH; x * sigmoid(x) converts to LOGISTIC and
# MUL, whose fixed output scale needs no range), quantized before and after.
OWN_ACTIVATIONS = ("softmax", "sigmoid", "tanh", "hard_silu", "hard_swish", "silu", "swish")
RANGE_DECAY = 0.99


def activation_name(activation):
    """The registered name of a Keras 3 activation function (`"relu"`), or None for a custom one."""
    try:
        name = keras.activations.serialize(activation)
    except Exception:
        return None
    return name if isinstance(name, str) else None


class QuantizationPhases(Scheduled):
    """The phase variables and schedule every layer here shares."""

    def _init_phases(self, start, freeze):
        self.start = validate_point(start, "start")
        self.freeze = None if freeze is None else validate_point(freeze, "freeze")
        self._start_step = None
        self._next_step = None
        self.phase = 0

    def _build_phases(self):
        def scalar(name, value):
            # Never autocast: under a mixed policy a float16 step stops counting at 2,048.
            return self.add_weight(
                name=name, shape=(), initializer=keras.initializers.Constant(value), trainable=False, autocast=False
            )

        self.qat_step = scalar("qat_step", 0.0)
        # Step points (ints) are known now; fractions become steps when fit starts (until then: float).
        self.qat_start = scalar("qat_start", NEVER if is_fraction(self.start) else float(self.start))
        freeze = NEVER if self.freeze is None or is_fraction(self.freeze) else float(self.freeze)
        self.qat_freeze = scalar("qat_freeze", freeze)

    def resolve_schedule(self, total_steps):
        # The schedule and its plan entry are tf_keras's (`PhasedQuantization`); the steps also go into variables.
        plan = PhasedQuantization.resolve_schedule(self, total_steps)
        self._next_step = None
        self.qat_start.assign(float(self._start_step))
        self.qat_freeze.assign(NEVER if self._freeze_step is None else float(self._freeze_step))
        return plan

    def on_schedule_step(self, step):
        # The step counter moves inside the compiled step; set it only where it could differ (a fit's start).
        if self._next_step != step:
            self.qat_step.assign(float(step))
        # The `qat_phase` log: 0 float, 1 fake-quant, 2 fake-quant with frozen ranges.
        frozen = self._freeze_step is not None and step >= self._freeze_step
        # Every step, on every layer: plain ints, set past Keras's attribute tracking.
        object.__setattr__(self, "_next_step", step + 1)
        object.__setattr__(self, "phase", 2 if frozen else int(step >= self._start_step))

    def _phases(self, training):
        """`(on, frozen)` boolean tensors for this call; a training call counts one step."""
        if training and self._start_step is None and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.name!r}.)")
        step = ops.convert_to_tensor(self.qat_step)
        on = ops.greater_equal(step, ops.convert_to_tensor(self.qat_start))
        frozen = ops.greater_equal(step, ops.convert_to_tensor(self.qat_freeze))
        if training:
            self.qat_step.assign(step + 1.0)
        return on, frozen

    def _phase_config(self):
        return {"start": self.start, "freeze": self.freeze}

    def quantization_variables(self):
        """The variables this layer adds to run quantization (phase step and points, learned ranges).

        Not the model's weights: the int8 file keeps the ranges as its tensors'
        scales (`tfc.summary` leaves them out).
        """
        found = [getattr(self, name, None) for name in ("qat_step", "qat_start", "qat_freeze")]
        for value in vars(self).values():
            if isinstance(value, ActivationRange):
                found += [value.min, value.max, value.seen]
        return [variable for variable in found if variable is not None]


class ActivationRange:
    """A learned `[min, max]` range for one tensor, owned by `layer` (variables named `prefix_min/max`)."""

    def __init__(self, layer, prefix):
        # float32 under a mixed policy too (not autocast): the range of a float16 tensor, kept exactly.
        def scalar(name):
            return layer.add_weight(name=f"{prefix}_{name}", shape=(), initializer="zeros", trainable=False,
                                    autocast=False)

        self.min, self.max, self.seen = scalar("min"), scalar("max"), scalar("seen")

    def __call__(self, x, on, frozen, training):
        """`x` fake-quantized from `on`; in training the range follows the batch until `frozen`."""
        if training:
            # JAX's ops take arrays, not variables: read each once.
            low, high = ops.convert_to_tensor(self.min), ops.convert_to_tensor(self.max)
            observed = ops.stop_gradient(x)
            batch_min = ops.minimum(ops.cast(ops.min(observed), "float32"), 0.0)
            batch_max = ops.maximum(ops.cast(ops.max(observed), "float32"), 0.0)
            seen = ops.greater(ops.convert_to_tensor(self.seen), 0.0)
            new_min = ops.where(seen, low * RANGE_DECAY + batch_min * (1 - RANGE_DECAY), batch_min)
            new_max = ops.where(seen, high * RANGE_DECAY + batch_max * (1 - RANGE_DECAY), batch_max)
            self.min.assign(ops.where(frozen, low, new_min))
            self.max.assign(ops.where(frozen, high, new_max))
            self.seen.assign(1.0)
        low, high = self.min, self.max
        return _when(on, lambda t: fake_quant(t, low, high), x)


def _when(on, quantize, x):
    """`quantize(x)` when `on`, else `x`: a cond, which the TFLite converter folds once `on` is a constant.

    (A `where` would keep both branches, and the converter could not place the kernel's quantized axis.)
    """
    return ops.cond(on, lambda: quantize(x), lambda: x)


def fake_quant(x, low, high, narrow_range=False):
    """8-bit fake quant of `x` in `[low, high]` (scalars, or per channel along the last axis).

    On TensorFlow this is `keras.quantizers.fake_quant_with_min_max_vars`,
    which lowers to the `FakeQuantWithMinMaxVars[PerChannel]` ops the TFLite
    converter reads. Other backends compute what those ops compute, in the
    same float32 arithmetic (nudged range, round half up), so a model trained
    on JAX computes what its TFLite file computes; Keras's own version for
    them rounds differently on ties, which inputs such as `k / 16` pixels
    hit. The gradient passes straight through inside the range.
    """
    if keras.backend.backend() == "tensorflow":
        axis = -1 if len(low.shape) else None
        return keras.quantizers.fake_quant_with_min_max_vars(
            x, low, high, num_bits=8, narrow_range=narrow_range, axis=axis
        )
    dtype = keras.backend.standardize_dtype(x.dtype)
    x = ops.cast(x, "float32")
    low, high = ops.convert_to_tensor(low, "float32"), ops.convert_to_tensor(high, "float32")
    quant_min, quant_max = (1.0 if narrow_range else 0.0), 255.0
    scale = (high - low) / (quant_max - quant_min)
    inverse = 1.0 / scale
    zero = ops.clip(ops.floor(quant_min - low / scale + 0.5), quant_min, quant_max)
    nudged_min, nudged_max = (quant_min - zero) * scale, (quant_max - zero) * scale
    clamped = ops.minimum(ops.maximum(x, nudged_min), nudged_max)
    quant_zero = ops.floor(-nudged_min * inverse + 0.5)
    quantized = ops.floor((clamped - nudged_min) * inverse - quant_zero + 0.5) * scale
    # The value is `quantized` exactly; the gradient is the clamp's.
    return ops.cast(ops.stop_gradient(quantized) + (clamped - ops.stop_gradient(clamped)), dtype)


def fake_quant_weights(w, axis):
    """Symmetric 8-bit fake quant of a kernel (narrow range, so int8 zero is exact), per `axis` or per tensor."""
    if axis is None:
        bound = ops.maximum(ops.max(ops.abs(w)), 1e-8)
        return fake_quant(w, -bound, bound, narrow_range=True)
    bound = ops.maximum(ops.max(ops.abs(w), axis=tuple(range(len(w.shape) - 1))), 1e-8)
    return fake_quant(w, -bound, bound, narrow_range=True)


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(QuantizationPhases, keras.layers.Layer):
    """Fake-quantizes its input with a learned 8-bit range (a model input, a ReLU's or an Add's output).

    Arguments:
        start: when fake quantization starts (see `tfc.quantize`).
        freeze: when the range stops moving, or None.
    """

    def __init__(self, start=0.0, freeze=None, **kwargs):
        super().__init__(**kwargs)
        self._init_phases(start, freeze)

    def build(self, input_shape):
        self._build_phases()
        self.output_range = ActivationRange(self, "output")
        self.built = True

    def call(self, inputs, training=None):
        on, frozen = self._phases(training)
        return self.output_range(inputs, on, frozen, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self._phase_config()}


class QuantizedKernel(QuantizationPhases):
    """What the kernel layers share: fake-quantized kernel, folded BatchNorm, quantized output.

    Subclasses give `_core(inputs, kernel)` (the layer's op without bias or
    activation) and `_channel_shape` (the kernel's output channels as a
    broadcastable shape).

    Arguments (on top of the Keras layer's own):
        start, freeze: the phases (see `tfc.quantize`).
        fold: the config of the BatchNormalization folded in (momentum,
            epsilon, center, scale), or None.
        quantize_output: False when a ReLU layer after this one quantizes
            (TFLite fuses the ReLU into this op).
    """

    per_channel = True

    def _init_quantization(self, start, freeze, fold, quantize_output):
        self._init_phases(start, freeze)
        self.fold = dict(fold) if fold else None
        self.quantize_output = quantize_output

    def _build_quantization(self):
        self._build_phases()
        name = activation_name(self.activation)
        self._fused = name in FUSED_ACTIVATIONS
        if not self._fused:
            self.pre_activation_range = ActivationRange(self, "pre_activation")
        if self.quantize_output:
            self.output_range = ActivationRange(self, "output")
        if self.fold:
            channels = self._channels()
            for weight, initializer, trainable in (
                ("bn_gamma", "ones", self.fold["scale"]), ("bn_beta", "zeros", self.fold["center"]),
                ("bn_moving_mean", "zeros", False), ("bn_moving_variance", "ones", False),
            ):
                setattr(self, weight, self.add_weight(
                    name=weight, shape=(channels,), initializer=initializer, trainable=trainable,
                ))

    def _quantized_call(self, inputs, training):
        training = bool(training)
        on, frozen = self._phases(training)
        kernel = ops.convert_to_tensor(self.kernel)
        bias = ops.convert_to_tensor(self.bias) if self.use_bias else None
        if self.fold:
            outputs = self._folded(inputs, kernel, bias, on, frozen, training)
        else:
            kernel = _when(on, self._fake_quant, kernel)
            outputs = self._core(inputs, kernel)
            if bias is not None:
                outputs = outputs + bias
        if not self._fused:
            outputs = self.pre_activation_range(outputs, on, frozen, training)
        if self.activation is not None:
            outputs = self.activation(outputs)
        if self.quantize_output:
            outputs = self.output_range(outputs, on, frozen, training)
        return outputs

    def _folded(self, inputs, kernel, bias, on, frozen, training):
        """Conv + BatchNorm as one op, with the BatchNorm scale in the (fake-quantized) kernel.

        Inference (and the converter) runs the folded kernel: the kernel times
        the BatchNorm scale over the moving deviation, fake-quantized.
        Training runs one convolution. From `start` it is the folded kernel's,
        divided back by that scale, so the batch statistics and BatchNorm see
        the convolution the int8 kernel computes; before `start`, the float
        kernel's. BatchNorm then normalizes with the batch's statistics until
        `freeze` and with the moving ones after, which makes the frozen
        training step the inference graph.
        """
        epsilon = self.fold["epsilon"]
        mean, variance = ops.convert_to_tensor(self.bn_moving_mean), ops.convert_to_tensor(self.bn_moving_variance)
        gamma, beta = ops.convert_to_tensor(self.bn_gamma), ops.convert_to_tensor(self.bn_beta)
        moving_deviation = ops.sqrt(variance + epsilon)
        scale = gamma / moving_deviation
        if not training:
            folded = _when(on, self._fake_quant, self._folded_kernel(kernel, scale))
            return self._core(inputs, folded) + self._folded_shift(bias, mean, moving_deviation, gamma, beta)
        # From `start` the convolution is the folded kernel's, which is the float one's times `divisor`
        # per channel (with gamma 0 the folded kernel is zero: divide by 1, BatchNorm then gives beta).
        divisor = ops.where(on, ops.where(ops.equal(scale, 0.0), ops.ones_like(scale), scale), ops.ones_like(scale))
        # The cond picks the kernel, not the convolution: XLA runs a convolution inside a conditional
        # (and its gradient) several times slower on CPU.
        folded = _when(on, lambda k: self._fake_quant(self._folded_kernel(k, scale)), kernel)
        outputs = self._core(inputs, folded)
        # The statistics of the unscaled convolution (plus bias), from the scaled one's: per channel only.
        batch_mean, batch_variance = ops.moments(outputs, axes=tuple(range(len(outputs.shape) - 1)))
        batch_mean = batch_mean / divisor + (0.0 if bias is None else bias)
        batch_variance = batch_variance / ops.square(divisor)
        momentum = self.fold["momentum"]
        stop_mean, stop_variance = ops.stop_gradient(batch_mean), ops.stop_gradient(batch_variance)
        self.bn_moving_mean.assign(ops.where(frozen, mean, mean * momentum + stop_mean * (1 - momentum)))
        self.bn_moving_variance.assign(
            ops.where(frozen, variance, variance * momentum + stop_variance * (1 - momentum)))
        mean = ops.where(frozen, mean, batch_mean)
        deviation = ops.where(frozen, moving_deviation, ops.sqrt(batch_variance + epsilon))
        # BatchNorm of outputs / divisor + bias, as one multiply and one add on the activation tensor.
        return outputs * (gamma / (divisor * deviation)) + self._folded_shift(bias, mean, deviation, gamma, beta)

    def _folded_kernel(self, kernel, scale):
        """The kernel with the BatchNorm scale (gamma over the moving deviation, per channel) in it."""
        return kernel * ops.reshape(scale, self._channel_shape())

    @staticmethod
    def _folded_shift(bias, mean, deviation, gamma, beta):
        shift = -mean if bias is None else bias - mean
        return beta + gamma * shift / deviation

    def _fake_quant(self, kernel):
        return fake_quant_weights(kernel, -1 if self.per_channel else None)

    # Dense and Conv save only their kernel and bias: save every variable (ranges, phase, BatchNorm).
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def _channels(self):
        return int(self.kernel.shape[-1])

    def _channel_shape(self):
        return (self._channels(),)

    def get_config(self):
        return {
            **super().get_config(), **self._phase_config(), "fold": self.fold, "quantize_output": self.quantize_output,
        }


def _channels_last_only(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(
            f"tfc.quantize takes channels_last layers; {layer.name!r} is channels_first. Build the model "
            "with data_format='channels_last' (what TFLite runs)."
        )


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantDense(QuantizedKernel, keras.layers.Dense):
    """`keras.layers.Dense` with quantization-aware training; the kernel is quantized per tensor."""

    per_channel = False

    def __init__(self, *args, start=0.0, freeze=None, fold=None, quantize_output=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantization(start, freeze, fold, quantize_output)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quantization()

    def _core(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def call(self, inputs, training=None):
        return self._quantized_call(inputs, training)


class _QuantConv(QuantizedKernel):
    def __init__(self, *args, start=0.0, freeze=None, fold=None, quantize_output=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantization(start, freeze, fold, quantize_output)
        _channels_last_only(self)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quantization()

    def call(self, inputs, training=None):
        return self._quantized_call(inputs, training)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantConv2D(_QuantConv, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with quantization-aware training (kernel per output channel)."""

    def _core(self, inputs, kernel):
        return self.convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantConv1D(_QuantConv, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with quantization-aware training; the kernel is quantized per tensor.

    TensorFlow runs a 1-D convolution as a 2-D one on an expanded kernel, which moves a
    per-channel axis and the converter then refuses it.
    """

    per_channel = False

    def _core(self, inputs, kernel):
        padding = self.padding
        if padding == "causal":
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        return ops.conv(
            inputs, kernel, strides=list(self.strides), padding=padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantDepthwiseConv2D(_QuantConv, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with quantization-aware training (kernel per output channel)."""

    def _core(self, inputs, kernel):
        return ops.depthwise_conv(
            inputs, kernel, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )

    def _channels(self):
        return int(self.kernel.shape[-2] * self.kernel.shape[-1])

    def _channel_shape(self):
        return tuple(self.kernel.shape[-2:])

    def _fake_quant(self, kernel):
        # TFLite's depthwise output channel is (input channel, multiplier) flattened: quantize along it.
        shape = tuple(kernel.shape)
        flat = ops.reshape(kernel, shape[:-2] + (shape[-2] * shape[-1],))
        return ops.reshape(fake_quant_weights(flat, -1), shape)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantDepthwiseConv1D(_QuantConv, keras.layers.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` with quantization-aware training; the kernel is quantized per tensor.

    As for `QuantConv1D`: TensorFlow runs it as a 2-D depthwise convolution on
    an expanded kernel, and the converter refuses a per-channel axis there.
    """

    per_channel = False
    _core = QuantDepthwiseConv2D._core
    _channels = QuantDepthwiseConv2D._channels
    _channel_shape = QuantDepthwiseConv2D._channel_shape


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantConv2DTranspose(_QuantConv, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with quantization-aware training; the kernel is quantized per tensor.

    Its kernel is `(height, width, output channels, input channels)`: the output
    channels (where a folded BatchNorm scales it) are axis -2, and TensorFlow's
    per-channel fake quant takes only the last axis.
    """

    per_channel = False

    def _core(self, inputs, kernel):
        return ops.conv_transpose(
            inputs, kernel, strides=list(self.strides), padding=self.padding, output_padding=self.output_padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )

    def _channels(self):
        return int(self.kernel.shape[-2])

    def _channel_shape(self):
        return (self._channels(), 1)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantBatchNormalization(QuantizationPhases, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with quantization-aware training, for one with nothing to fold into.

    TFLite runs such a BatchNorm as a per-channel MUL by `gamma / sqrt(variance
    + epsilon)` and an ADD of `beta - mean * scale`; this layer computes exactly
    that, `x * scale + shift`, and fake-quantizes the multiply's output and the
    add's (the same int8 tensors as the file). Before `start` it is the
    BatchNormalization (batch statistics, moving ones updated; the ranges
    already learn). From `start` it trains on what the int8 file computes: the
    moving statistics, which stop moving, with gamma and beta still learned;
    the ranges stop at `freeze`. (Batch statistics in the fake-quant phase
    trained a net that inference, on the moving ones, did not compute:
    keras.applications ResNet50V2 trained from scratch on digits, 97% on its
    training batches, fell to chance in inference, Keras and LiteRT alike.)
    Only the last axis, no renorm (what `tfc.quantize` rewrites).

    Arguments (on top of BatchNormalization's own):
        start, freeze: the phases (see `tfc.quantize`).
        quantize_output: False when a ReLU layer after this one quantizes
            (TFLite fuses the ReLU into the ADD).

    Example:

    ```python
    norm = QuantBatchNormalization(momentum=0.9, start=100, freeze=400, name="preact_bn")
    ```
    """

    def __init__(self, *args, start=0.0, freeze=None, quantize_output=True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.renorm:
            raise ValueError(
                f"QuantBatchNormalization {self.name!r} has no renorm: keep a renorm BatchNormalization float "
                "with tfc.quantize(..., layers=lambda l: l.name != ...)."
            )
        self._init_phases(start, freeze)
        self.quantize_output = quantize_output

    def build(self, input_shape):
        if self.axis not in (-1, len(input_shape) - 1):
            # The ranges are per tensor and the MUL / ADD constants per last-axis channel (what TFLite broadcasts).
            raise ValueError(
                f"QuantBatchNormalization {self.name!r} normalizes the last axis only (got axis={self.axis}): "
                "keep this BatchNormalization float with tfc.quantize(..., layers=...)."
            )
        super().build(input_shape)
        self._build_phases()
        self.scaled_range = ActivationRange(self, "scaled")
        if self.quantize_output:
            self.output_range = ActivationRange(self, "output")

    def call(self, inputs, training=None, mask=None):
        training = bool(training)
        on, frozen = self._phases(training)
        inputs = ops.cast(inputs, "float32")
        moving_mean = ops.convert_to_tensor(self.moving_mean)
        moving_variance = ops.convert_to_tensor(self.moving_variance)
        if training and self.trainable:
            # Before start: a BatchNormalization (gradients flow through the batch's statistics). From start:
            # the moving statistics, fixed, as the int8 file computes.
            batch_mean, batch_variance = ops.moments(inputs, axes=self._reduction_axes)
            stop_mean, stop_variance = ops.stop_gradient(batch_mean), ops.stop_gradient(batch_variance)
            momentum = self.momentum
            self.moving_mean.assign(
                ops.where(on, moving_mean, moving_mean * momentum + stop_mean * (1.0 - momentum)))
            self.moving_variance.assign(
                ops.where(on, moving_variance, moving_variance * momentum + stop_variance * (1.0 - momentum)))
            mean = ops.where(on, moving_mean, batch_mean)
            variance = ops.where(on, moving_variance, batch_variance)
        else:
            mean, variance = moving_mean, moving_variance
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.convert_to_tensor(self.gamma)
        shift = -mean * scale
        if self.center:
            shift = shift + ops.convert_to_tensor(self.beta)
        outputs = self.scaled_range(inputs * scale, on, frozen, training) + shift
        if self.quantize_output:
            outputs = self.output_range(outputs, on, frozen, training)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), **self._phase_config(), "quantize_output": self.quantize_output}


KERNEL_LAYERS = {
    keras.layers.Dense: QuantDense,
    keras.layers.Conv1D: QuantConv1D,
    keras.layers.Conv2D: QuantConv2D,
    keras.layers.Conv2DTranspose: QuantConv2DTranspose,
    keras.layers.DepthwiseConv1D: QuantDepthwiseConv1D,
    keras.layers.DepthwiseConv2D: QuantDepthwiseConv2D,
}
# A SeparableConv's twins, as TFLite runs it: a depthwise and a 1x1 convolution.
SEPARABLE_LAYERS = {
    keras.layers.SeparableConv1D: (QuantDepthwiseConv1D, QuantConv1D),
    keras.layers.SeparableConv2D: (QuantDepthwiseConv2D, QuantConv2D),
}
QUANTIZATION_LAYERS = (ActivationQuantizer, QuantizedKernel, QuantBatchNormalization)
