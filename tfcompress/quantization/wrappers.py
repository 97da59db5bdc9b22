"""tfmot's quantization wrapper and input quantizer, with phases and errors of ours."""

import copy

import tensorflow as tf
from tfcompress._tfmot import tfmot, cluster_wrapper, pruning_wrapper, quantize_layer

from tfcompress._keras import keras
from tfcompress._layers import copy_weights_by_name, fresh_copy, walk
from tfcompress.quantization.gates import GatedQuantizer
from tfcompress.quantization.registry import CONFIGS
from tfcompress.pruning.wrapper import PruneLowMagnitude
from tfcompress.scheduling import (
    Scheduled,
    is_fraction,
    missing_callback,
    resolve_point,
    tracing_for_saving,
    unknown_length,
    validate_point,
)

MISSING_CALLBACK = missing_callback("quantization wrappers, whose phases (float, fake-quant, frozen) are scheduled")


class PhasedQuantization(Scheduled):
    """Phase variables and their schedule, shared by the two layers below."""

    # The phase variables: a wrapper made from a tfmot one has them fresh, not copied.
    PHASE_WEIGHTS = ("qat_on", "qat_frozen")

    def _init_phases(self, start, freeze):
        self.start = validate_point(start, "start")
        self.freeze = None if freeze is None else validate_point(freeze, "freeze")
        self._start_step = None
        self._freeze_step = None
        self._phase = -1

    def _build_phases(self):
        self.qat_on = self.add_weight("qat_on", shape=(), dtype=tf.int32, initializer="zeros", trainable=False)
        self.qat_frozen = self.add_weight("qat_frozen", shape=(), dtype=tf.int32, initializer="zeros", trainable=False)

    def _check_driven(self, training):
        if training is True and self._start_step is None and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.name!r}.)")

    def resolve_schedule(self, total_steps):
        if total_steps is None and any(is_fraction(p) for p in (self.start, self.freeze) if p is not None):
            raise unknown_length("quantization", "give tfc.quantize absolute step numbers for `start` and `freeze`")
        start = resolve_point(self.start, total_steps)
        freeze = None if self.freeze is None else resolve_point(self.freeze, total_steps)
        if freeze is not None and freeze < start:
            raise ValueError(
                f"Quantization freezes at step {freeze}, before it starts at step {start}; "
                "`freeze` must not come before `start`."
            )
        clustered = getattr(self, "layer", None)
        if isinstance(clustered, cluster_wrapper.ClusterWeights) and freeze is not None and hasattr(clustered, "begin"):
            begin = resolve_point(clustered.begin, total_steps)
            if begin >= freeze:
                raise clustering_after_freeze(unwrapped(clustered).name, begin, freeze, "step ")
        self._start_step, self._freeze_step = start, freeze
        self._phase = -1
        frozen = "" if freeze is None else f", ranges and BatchNorm frozen from step {freeze}"
        of = f" of {total_steps}" if total_steps else ""
        return [
            {
                "compression": "quantization",
                "layers": [self.name],
                "start_step": start,
                "freeze_step": freeze,
                "total_steps": total_steps,
                "description": f"tfcompress: quantization-aware training (int8): float until step {start}{of}, "
                f"fake-quant from step {start}{frozen}",
            }
        ]

    def on_schedule_step(self, step):
        on = int(step >= self._start_step)
        frozen = int(self._freeze_step is not None and step >= self._freeze_step)
        if on + 2 * frozen != self._phase:
            keras.backend.batch_set_value([(self.qat_on, on), (self.qat_frozen, frozen)])
            self._phase = on + 2 * frozen

    def _phase_config(self):
        return {"start": self.start, "freeze": self.freeze}


@keras.utils.register_keras_serializable(package="tfcompress")
class QuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2, PhasedQuantization):
    """tfmot's `QuantizeWrapperV2` whose fake quantization starts at `start`.

    Before `start` the layer computes exactly what the float layer computes
    (ranges are already being learned); from `start` weights and activations
    are fake-quantized; from `freeze` activation ranges stop moving and a
    wrapped BatchNormalization uses its moving statistics. A pruned layer
    inside (tfcompress's or tfmot's `PruneLowMagnitude`) is masked before its
    kernel is quantized, so zeros stay exact zeros in int8; a clustered layer
    inside (`tfc.cluster`) is clustered before it is quantized.
    """

    def __init__(self, layer, quantize_config, start=0.0, freeze=None, **kwargs):
        super().__init__(layer, quantize_config, **kwargs)
        self._init_phases(start, freeze)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_phases()
        weight_vars = []
        for weight, quantizer, variables in self._weight_vars:
            if isinstance(quantizer, ClusteredQuantizer):
                # Clustering stays on in every QAT phase; only the quantization is gated.
                quantizer.inner = GatedQuantizer(quantizer.inner, self, freezable=False)
            else:
                quantizer = GatedQuantizer(quantizer, self, freezable=False)
            weight_vars.append((weight, quantizer, variables))
        # A new list, not items replaced in place: a SavedModel refuses tracked lists that were edited.
        self._weight_vars = weight_vars
        if isinstance(self.layer, cluster_wrapper.ClusterWeights):
            self.layer.weights_set_by_parent = True
        if isinstance(_pruned_inside(self.layer), PruneLowMagnitude):
            _pruned_inside(self.layer).updated_by_parent = True
        for activation in self._quantize_activations:
            activation.quantizer = GatedQuantizer(activation.quantizer, self, freezable=True)
        self._output_quantizers = [GatedQuantizer(q, self, freezable=True) for q in self._output_quantizers]

    def call(self, inputs, training=None, **kwargs):
        self._check_driven(training)
        pruned = _pruned_inside(self.layer)
        if isinstance(pruned, PruneLowMagnitude):
            # Mask first, so the kernel that gets fake-quantized already has its zeros (see update_masks).
            pruned.update_masks(training)
        elif pruned is not None:
            pruned.pruning_obj.weight_mask_op()
        if training is True and self.freeze is not None and isinstance(self.layer, keras.layers.BatchNormalization):
            return tf.cond(
                self.qat_frozen > 0,
                lambda: super(QuantizeWrapper, self).call(inputs, training=False, **kwargs),
                lambda: super(QuantizeWrapper, self).call(inputs, training=True, **kwargs),
            )
        outputs = super().call(inputs, training=training, **kwargs)
        report = getattr(self, "_tfc_phase_report", None)
        if report is not None:
            self.add_metric(report(self.qat_on + self.qat_frozen))
        return outputs

    def get_config(self):
        return {**super().get_config(), **self._phase_config()}

    @classmethod
    def from_config(cls, config):
        with tfmot.quantization.keras.quantize_scope({"WrappedLayerQuantizeConfig": WrappedLayerQuantizeConfig}):
            return super().from_config(config)

    def load_own_variables(self, store):
        load_wrapper_variables(self, store)


def load_wrapper_variables(wrapper, store):
    """`Layer.load_own_variables` for a `QuantizeWrapperV2` saved around an already built layer.

    `QuantizeWrapperV2.build` lists a built inner layer's weights first among
    its own, so a `.keras` file of a freshly quantized model holds more
    entries than the reloaded wrapper (built around an unbuilt layer) owns;
    those leading entries are the inner layer's, which it loads itself.
    """
    own = wrapper._trainable_weights + wrapper._non_trainable_weights
    extra = len(store.keys()) - len(own)
    if extra > 0:
        store = {str(index): store[str(index + extra)] for index in range(len(own))}
    keras.layers.Layer.load_own_variables(wrapper, store)


@keras.utils.register_keras_serializable(package="tfcompress")
class QuantizeInput(quantize_layer.QuantizeLayer, PhasedQuantization):
    """tfmot's `QuantizeLayer` (the model-input quantizer) with the same phases."""

    def __init__(self, quantizer, start=0.0, freeze=None, **kwargs):
        super().__init__(quantizer, **kwargs)
        self._init_phases(start, freeze)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_phases()
        if self.quantizer:
            self.quantizer = GatedQuantizer(self.quantizer, self, freezable=True)
        # tfmot's QuantizeLayer never sets it, so loading a .keras file built it twice (tfmot PR #1123).
        self.built = True

    def call(self, inputs, training=None):
        self._check_driven(training)
        return super().call(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        if isinstance(self.quantizer, GatedQuantizer):
            config["quantizer"] = keras.utils.serialize_keras_object(self.quantizer.inner)
        return {**config, **self._phase_config()}

    @classmethod
    def from_config(cls, config):
        with tfmot.quantization.keras.quantize_scope():
            return super().from_config(config)


@keras.utils.register_keras_serializable(package="tfcompress")
class WrappedLayerQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes the layer inside a pruning or clustering wrapper with that layer's own config.

    A pruned kernel is masked before it is fake-quantized (see
    `QuantizeWrapper.call`); a clustered kernel is clustered first, then
    fake-quantized, so the int8 kernel keeps the shared values.

    Arguments:
        inner: the config tfmot's registry gives the unwrapped layer.
        quantize_activation: False for a convolution feeding a BatchNorm, so
            no fake quant sits between them (what tfmot's Conv + BatchNorm
            transforms do for unwrapped layers) and the converter folds them.
    """

    def __init__(self, inner, quantize_activation=True):
        self.inner = inner
        self.quantize_activation = quantize_activation

    def get_weights_and_quantizers(self, layer):
        pairs = self.inner.get_weights_and_quantizers(unwrapped(layer))
        if not isinstance(layer, cluster_wrapper.ClusterWeights):
            return pairs
        # The clustering wrapper replaces the inner kernel attribute by a tensor: use its variables.
        originals = layer.original_clusterable_weights
        return [
            (originals[attr], ClusteredQuantizer(quantizer, layer, attr)) if attr in originals else (weight, quantizer)
            for attr, (weight, quantizer) in zip(self.inner.weight_attrs, pairs)
        ]

    def get_activations_and_quantizers(self, layer):
        return self.inner.get_activations_and_quantizers(unwrapped(layer)) if self.quantize_activation else []

    def set_quantize_weights(self, layer, quantize_weights):
        self.inner.set_quantize_weights(unwrapped(layer), quantize_weights)

    def set_quantize_activations(self, layer, quantize_activations):
        if self.quantize_activation:
            self.inner.set_quantize_activations(unwrapped(layer), quantize_activations)

    def get_output_quantizers(self, layer):
        return self.inner.get_output_quantizers(unwrapped(layer)) if self.quantize_activation else []

    def get_config(self):
        return {
            "inner": keras.utils.serialize_keras_object(self.inner),
            "quantize_activation": self.quantize_activation,
        }

    @classmethod
    def from_config(cls, config):
        # By class name: an .h5 file names tfcompress's configs without their registered package.
        with tfmot.quantization.keras.quantize_scope(CONFIGS):
            return cls(keras.utils.deserialize_keras_object(config["inner"]), config.get("quantize_activation", True))

    def __deepcopy__(self, memo):
        return WrappedLayerQuantizeConfig(copy.deepcopy(self.inner, memo), self.quantize_activation)


class ClusteredQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Clusters a kernel with its clustering wrapper's centroids, then quantizes it.

    Before the wrapper's `begin` the kernel passes through unclustered.
    """

    def __init__(self, inner, cluster_layer, weight_name):
        self.inner = inner
        self.cluster_layer = cluster_layer
        self.weight_name = weight_name

    def build(self, tensor_shape, name, layer):
        return self.inner.build(tensor_shape, name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        wrapper, name = self.cluster_layer, self.weight_name
        # Training moves weights to their nearest centroid, as tfmot's wrapper does each step.
        shared = tf.cond(
            wrapper.clustering_on > 0, lambda: wrapper.shared(name, inputs, bool(training)), lambda: tf.identity(inputs)
        )
        return self.inner(shared, training, weights, **kwargs)

    def get_config(self):
        return self.inner.get_config()


def check_clustering_before_freeze(begins, freeze):
    """Raises `clustering_after_freeze` for the first `(layer name, begin)` at or after QAT's `freeze`.

    Compared here only when both points are fractions of the fit or both are steps.
    """
    if freeze is None:
        return
    for name, begin in begins:
        if is_fraction(begin) == is_fraction(freeze) and begin >= freeze:
            raise clustering_after_freeze(name, begin, freeze)


def clustering_after_freeze(layer_name, begin, freeze, unit=""):
    """The error for clustering that begins after QAT froze the ranges its shared values would move."""
    return ValueError(
        f"Clustering of layer {layer_name!r} begins at {unit}{begin}, once quantization has frozen its "
        f"ranges at {unit}{freeze}: the shared values would move activations out of ranges that no longer "
        f"follow them. Begin clustering before the freeze (tfc.cluster(..., begin=...) < {freeze}) or "
        f"freeze later (tfc.quantize(..., freeze=...) > {begin})."
    )


def unwrapped(layer):
    """The layer the user built, inside any pruning and clustering wrappers (`tfc.cluster(tfc.prune(m))` nests two)."""
    while isinstance(layer, (pruning_wrapper.PruneLowMagnitude, cluster_wrapper.ClusterWeights)):
        layer = layer.layer
    return layer


def _pruned_inside(layer):
    """The pruning wrapper `layer` is or wraps (a clustering wrapper around a pruned layer), or None."""
    if isinstance(layer, cluster_wrapper.ClusterWeights):
        layer = layer.layer
    return layer if isinstance(layer, pruning_wrapper.PruneLowMagnitude) else None


def find_quantization_layers(model):
    """Every phased quantization layer in `model`, nested ones included."""
    return walk(model, PhasedQuantization)


def rebuilt_copy(layer, source, scope=None):
    """A fresh copy of `layer`, built, holding the values of `source`'s weights.

    Quantizers look at the weights when they are built (tfmot's
    cluster-preserving quantizer counts the kernel's distinct values), so a
    wrapper must wrap a layer that already holds its trained weights.
    `scope` names the wrapper to come (`source`'s name by default).
    """
    # Under the wrapper's scope, as when a wrapper builds its layer: bare `kernel:0` names collide in .h5 files.
    # The copy too: a wrapper's config builds the wrapper inside it (a pruned layer inside clustering).
    with tf.name_scope(scope or source.name):
        copy_ = fresh_copy(layer)
        # The wrapper is wired into the model, so its input shape is known; the inner layer's may not be.
        copy_.build(source.input_shape)
    copy_weights_by_name(source, copy_)
    return copy_
