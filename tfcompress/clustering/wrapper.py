"""tfmot's clustering wrapper, with a start step driven by `CompressionCallback`."""

import tensorflow as tf
from tfcompress._tfmot import cluster_wrapper, clustering_centroids

from tfcompress._keras import float32_variables, keras
from tfcompress._layers import walk
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
    """

    def __init__(self, layer, number_of_clusters, begin=0.0, **kwargs):
        super().__init__(layer, number_of_clusters, **kwargs)
        self.begin = validate_point(begin, "begin")
        self._begin_step = None
        self._on = None
        # Set by a quantization wrapper around this one, which then clusters and quantizes the kernel.
        self.weights_set_by_parent = False

    def build(self, input_shape):
        # tfmot makes the centroids from the kernel: read it as float32, not as its float16 view.
        with float32_variables():
            super().build(input_shape)
        self.clustering_on = self.add_weight("clustering_on", shape=(), dtype=tf.int32, initializer="zeros", trainable=False)

    def call(self, inputs, training=None, **kwargs):
        if training is True and self._begin_step is None and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.name!r}.)")
        if self.weights_set_by_parent:
            return self.layer.call(inputs, **kwargs)

        def clustered():
            return super(ClusterWeights, self).call(inputs, training=training, **kwargs)

        def original():
            # A tensor, not the variable: re-assigning the variable would re-track it and reorder weights.
            for name, weight in self.original_clusterable_weights.items():
                self.set_weight_to_layer(name, tf.identity(weight))
            return self.layer.call(inputs, **kwargs)

        return tf.cond(self.clustering_on > 0, clustered, original)

    def initialize_centroids(self):
        """Sets centroids and assignments from the kernel as it is now."""
        for name, weight in self.original_clusterable_weights.items():
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
        self._on = int(self.clustering_on.numpy())
        of = f" of {total_steps}" if total_steps else ""
        return [
            {
                "compression": "clustering",
                "layers": [self.layer.name],
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
