"""tfmot's clustering wrapper, with a start step driven by `CompressionCallback`."""

import tensorflow as tf
from tfcompress._tfmot import cluster_wrapper, clustering_centroids

from tfcompress._keras import float32_variables, keras
from tfcompress._layers import call_converted, walk
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

MISSING_CALLBACK = missing_callback("clustering wrappers, whose start step is scheduled")


@keras.utils.register_keras_serializable(package="tfcompress")
class ClusterWeights(cluster_wrapper.ClusterWeights, Scheduled):
    """tfmot's `ClusterWeights` whose weight sharing starts at `begin`.

    Before `begin` the layer trains its float kernel as usual; at `begin` the
    centroids are initialized from the kernel as it is then (tfmot does it
    once, when wrapping) and from there on the kernel is shared among
    `number_of_clusters` values.

    The wrapped layer may be a pruned one (`tfc.prune`'s `PruneLowMagnitude`):
    its mask is updated first, the masked kernel is clustered, and one
    centroid is held at zero, so the pruned zeros stay zeros and the kernel
    holds at most `number_of_clusters` values, zero included (tfmot's
    sparsity-preserving clustering, with the pruning mask as the zeros).
    """

    def __init__(self, layer, number_of_clusters, begin=0.0, **kwargs):
        super().__init__(layer, number_of_clusters, **kwargs)
        self.begin = validate_point(begin, "begin")
        self._begin_step = None
        self._on = None
        # Set by a quantization wrapper around this one, which then clusters and quantizes the kernel.
        self.weights_set_by_parent = False

    @property
    def pruned(self):
        """The pruning wrapper this layer clusters inside, or None."""
        return self.layer if isinstance(self.layer, PruneLowMagnitude) else None

    def get_weight_from_layer(self, weight_name):
        return getattr(self.pruned.layer if self.pruned else self.layer, weight_name)

    def set_weight_to_layer(self, weight_name, new_weight):
        setattr(self.pruned.layer if self.pruned else self.layer, weight_name, new_weight)

    def build(self, input_shape):
        # tfmot makes the centroids from the kernel: read it as float32, not as its float16 view.
        with float32_variables():
            super().build(input_shape)
        self.clustering_on = self.add_weight("clustering_on", shape=(), dtype=tf.int32, initializer="zeros", trainable=False)
        if self.pruned:
            self.pruned.updated_by_parent = True

    def nonzero_mask(self, weight_name):
        """1 where `weight_name` may be nonzero: the pruning mask, tfmot's mask with `preserve_sparsity`, else None."""
        if self.pruned:
            weight = self.original_clusterable_weights[weight_name]
            return next(mask for kernel, mask, _ in self.pruned.pruning_vars if kernel is weight)
        return self.sparsity_masks.get(weight_name) if self.preserve_sparsity else None

    def shared(self, weight_name, weight, training=True):
        """`weight` on its centroids; zeros kept when `nonzero_mask` says so.

        Arguments:
            weight_name: the clustered weight's name (`"kernel"`).
            weight: its float values (the variable, or a tensor of them).
            training: True moves each weight to its nearest centroid first,
                as tfmot's wrapper does every step.

        Returns:
            The clustered tensor, with gradients to the centroids and weights.
        """
        algorithm, indices = self.clustering_algorithms[weight_name], self.pulling_indices[weight_name]
        mask = self.nonzero_mask(weight_name)
        updates = []
        if mask is not None:
            weight = weight * tf.cast(mask, weight.dtype)
            centroids = self.cluster_centroids[weight_name]
            # The centroid nearest zero is zero, so the kept zeros add no value of their own.
            nearest_zero = tf.one_hot(tf.argmin(tf.abs(centroids)), tf.shape(centroids)[0], dtype=centroids.dtype)
            updates.append(centroids.assign(centroids * (1.0 - nearest_zero)))
        with tf.control_dependencies(updates):
            if training:
                updates = [indices.assign(algorithm.get_pulling_indices(weight))]
        with tf.control_dependencies(updates):
            return algorithm.get_clustered_weight(indices, weight)

    def shared_values(self):
        """`{weight name: array}`: each clustered weight as the model computes with it (float values before `begin`)."""
        on = int(self.clustering_on.numpy())
        values = {}
        for name, weight in self.original_clusterable_weights.items():
            if on:
                # Alone, the wrapper reassigns weights to centroids on every call (tfmot's); inside QAT, when training.
                values[name] = self.shared(name, weight, training=not self.weights_set_by_parent).numpy()
            else:
                mask = self.nonzero_mask(name)
                values[name] = weight.numpy() * (1 if mask is None else mask.numpy())
        return values

    def update_clustered_weights_associations(self):
        for name, weight in self.original_clusterable_weights.items():
            self.set_weight_to_layer(name, self.shared(name, weight))

    def call(self, inputs, training=None, **kwargs):
        if training is True and self._begin_step is None and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.name!r}.)")
        if self.weights_set_by_parent:
            return call_converted(self.layer, inputs, **kwargs)
        if self.pruned:
            # Mask first, so the kernel read below (clustered or not) already has its zeros.
            self.pruned.update_masks(training)

        def clustered():
            return super(ClusterWeights, self).call(inputs, training=training, **kwargs)

        def original():
            # A tensor, not the variable: re-assigning the variable would re-track it and reorder weights.
            for name, weight in self.original_clusterable_weights.items():
                self.set_weight_to_layer(name, tf.identity(weight))
            return call_converted(self.layer, inputs, **kwargs)

        return tf.cond(self.clustering_on > 0, clustered, original)

    def initialize_centroids(self):
        """Sets centroids and assignments from the kernel as it is now (masked, for a pruned layer)."""
        for name, weight in self.original_clusterable_weights.items():
            mask = self.nonzero_mask(name)
            weight = weight if mask is None else weight * tf.cast(mask, weight.dtype)
            initializer = clustering_centroids.CentroidsInitializerFactory.get_centroid_initializer(
                self.cluster_centroids_init
            )(weight, self.number_of_clusters, self.cluster_per_channel, self.data_format, self.preserve_sparsity)
            self.cluster_centroids[name].assign(initializer.get_cluster_centroids())
            self.pulling_indices[name].assign(self.clustering_algorithms[name].get_pulling_indices(weight))

    def start_clustering(self):
        """Initializes the centroids from the current kernel and turns sharing on."""
        self.initialize_centroids()
        self.clustering_on.assign(1)
        self._on = 1

    def resolve_schedule(self, total_steps):
        if total_steps is None and is_fraction(self.begin):
            raise unknown_length("clustering", "give tfc.cluster an absolute step number for `begin`")
        self._begin_step = resolve_point(self.begin, total_steps)
        steps = getattr(self.pruned.pruning_schedule, "steps", None) if self.pruned else None
        if steps is not None and self._begin_step < steps[1]:
            raise clustering_before_pruning_ends(self.pruned.layer.name, self._begin_step, steps[1], "step ")
        self._on = int(self.clustering_on.numpy())
        of = f" of {total_steps}" if total_steps else ""
        return [
            {
                "compression": "clustering",
                "layers": [(self.pruned.layer if self.pruned else self.layer).name],
                "clusters": self.number_of_clusters,
                "begin_step": self._begin_step,
                "total_steps": total_steps,
                "description": f"tfcompress: clustering into {self.number_of_clusters} shared values "
                f"from step {self._begin_step}{of}",
            }
        ]

    def on_schedule_step(self, step):
        if not self._on and step >= self._begin_step:
            self.start_clustering()

    def get_config(self):
        return {**super().get_config(), "begin": self.begin}


def check_pruning_ends_first(layer_name, begin, end):
    """Raises `clustering_before_pruning_ends` when clustering's `begin` comes before pruning's `end`.

    Compared here only when both are fractions of the fit or both are steps;
    mixed ones are compared once the fit's length resolves them.
    """
    if is_fraction(end) == is_fraction(begin) and begin < end:
        raise clustering_before_pruning_ends(layer_name, begin, end)


def clustering_before_pruning_ends(layer_name, begin, end, unit=""):
    """The error for clustering that would begin while the layer's pruning still moves its mask.

    The centroids are set once, at `begin`, from the kernel's nonzero
    weights; a weight pruned later would be one they were fitted to.
    """
    return ValueError(
        f"Clustering of layer {layer_name!r} begins at {unit}{begin}, before its pruning ends at "
        f"{unit}{end}: the centroids are fitted to the pruned kernel, so pruning must be done first. "
        f"Begin clustering at or after the pruning's end (tfc.cluster(..., begin={end})) or end the "
        f"pruning earlier (tfc.prune(..., end={begin}))."
    )


def find_cluster_wrappers(model):
    """Every tfmot clustering wrapper in `model`, nested ones included."""
    return walk(model, cluster_wrapper.ClusterWeights)


@keras.utils.register_keras_serializable(package="tfcompress")
class ClusterWeightsRNN(cluster_wrapper.ClusterWeightsRNN, ClusterWeights):
    """`ClusterWeights` for LSTM, GRU, SimpleRNN and Bidirectional layers (their cells hold the kernels)."""


@keras.utils.register_keras_serializable(package="tfcompress")
class ClusterWeightsMHA(cluster_wrapper.ClusterWeightsMHA, ClusterWeights):
    """`ClusterWeights` for MultiHeadAttention (its kernels live in EinsumDense sublayers)."""


def wrapper_class(layer):
    """The clustering wrapper class that reaches `layer`'s kernels, as tfmot's `cluster_weights` picks it."""
    if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
        return ClusterWeightsRNN
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return ClusterWeightsMHA
    return ClusterWeights
