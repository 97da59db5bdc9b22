"""`cluster`: weight sharing with tfmot's clustering wrappers, started by the fit."""

from absl import logging
import tensorflow as tf
from tfcompress._tfmot import clustering_registry, pruning_wrapper

from tfcompress._keras import KERAS3, check_keras3_model, check_model, generation
from tfcompress._layers import clone_with_weights, fresh_copy, layer_selector, named_layers
from tfcompress.clustering.constraints import INITIALIZATIONS, cluster_with_constraints
from tfcompress.clustering.wrapper import (
    ClusterWeights,
    check_pruning_ends_first,
    find_cluster_wrappers,
    wrapper_class,
)
from tfcompress.pruning.wrapper import PruneLowMagnitude
from tfcompress.scheduling import validate_point

# tfmot clusters these, but a rebuilt copy cannot take their trained weights before its first call.
_LEFT_FLOAT = ("MultiHeadAttention",)


def _clusterable(layer):
    if type(layer).__name__ in _LEFT_FLOAT or not clustering_registry.ClusteringRegistry.supports(layer):
        return False
    return bool(clustering_registry.ClusteringRegistry.make_clusterable(layer).get_clusterable_weights())


def _check_pruned(layer, begin):
    """Refuses a pruned layer clustering cannot follow: a recurrent one, or one still pruning at `begin`."""
    if not isinstance(layer, PruneLowMagnitude):
        raise ValueError(
            f"Layer {layer.name!r} was pruned by tfmot's own prune_low_magnitude; tfc.cluster clusters "
            "layers pruned by tfc.prune. Prune with tfc.prune, or strip first: "
            "tfc.cluster(tfc.strip(pruned), preserve_sparsity=True)."
        )
    if wrapper_class(layer.layer) is not ClusterWeights:
        raise ValueError(
            f"tfc.cluster cannot cluster the pruned {type(layer.layer).__name__} {layer.layer.name!r} in the "
            "same fit (its kernels live in cells). Strip the pruned model first and keep its zeros: "
            "tfc.cluster(tfc.strip(pruned), preserve_sparsity=True)."
        )
    check_pruning_ends_first(layer.layer.name, begin, layer.pruning_schedule.end)


def cluster(model, clusters=16, *, begin=0.0, init="kmeans++", preserve_sparsity=False, layers=None):
    """Returns a copy of `model` whose kernels share `clusters` values after `begin`.

    Each chosen layer is wrapped with tfmot's `ClusterWeights`. Before `begin`
    kernels train as floats; at `begin` (driven by `tfc.CompressionCallback`)
    the centroids are initialized from the kernels as trained so far and from
    then on every kernel holds at most `clusters` distinct values, which
    compress well (see `tfc.summary`'s gzip column).

    Keras 3 models (`import keras`) take the same arguments: each chosen
    kernel gets a `tfc.clustering.constraints.ClusterCentroids` constraint,
    which after every optimizer step moves each centroid to the mean of its
    weights and puts the weights on it. Sequential and functional models are
    copied; a subclassed model is clustered in place.

    A model returned by `tfc.prune` is clustered in the same fit, after its
    pruning (Deep Compression's prune, then share): each pruned layer's
    wrapper is wrapped again (Keras 3: the kernel's `ClusterCentroids`
    wraps its `PruningMask`), and from `begin`, which must not come before
    the pruning's `end`, its masked kernel is clustered with the zeros kept.
    `tfc.quantize` of the result adds QAT as a third phase.

    Arguments:
        model: a built Sequential or functional tf_keras model, or a built
            Keras 3 model (either possibly returned by `tfc.prune`).
        clusters: shared values per kernel (> 1).
        begin: when clustering starts: a fraction of the fit (float) or a step (int).
        init: centroid initialization, as tfmot offers it: "kmeans++",
            "linear", "density" or "random".
        preserve_sparsity: keep zero weights at zero (for a model stripped
            after `tfc.prune`). A model still wrapped by `tfc.prune` always
            keeps its zeros: one centroid is zero, so a kernel holds at most
            `clusters` values, zero included.
        layers: which layers: names, layer classes or a predicate; None
            clusters every layer tfmot can cluster (Dense, Conv, ...).

    Returns:
        A new tf_keras model with clustering wrappers, or the Keras 3 model
        with clustering constraints (compile it before fit).

    Example:

    ```python
    clustered = tfc.cluster(model, clusters=16, begin=0.3)
    clustered.compile(...)
    clustered.fit(x, y, epochs=5, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(clustered)

    # Deep Compression in one fit: prune to 90%, share 16 values, then QAT.
    model = tfc.quantize(tfc.cluster(tfc.prune(model, 0.9, end=0.5), 16, begin=0.5), start=0.8)
    ```
    """
    keras3 = generation(model, "tfc.cluster") == KERAS3
    if keras3:
        check_keras3_model(model, "tfc.cluster")
    else:
        check_model(model, "tfc.cluster")
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
        raise ValueError(f"`clusters` must be an int >= 2; got {clusters!r}.")
    if init not in INITIALIZATIONS:
        raise ValueError(f"`init` must be one of {sorted(INITIALIZATIONS)}; got {init!r}.")
    begin = validate_point(begin, "begin")
    if find_cluster_wrappers(model):
        raise ValueError("This model is already clustered; call tfc.strip(model) before clustering it again.")
    chosen = layer_selector(model, layers)
    named = named_layers(layers)
    if keras3:
        return cluster_with_constraints(model, clusters, begin, init, preserve_sparsity, chosen, named)

    def wrap(layer):
        pruned = isinstance(layer, pruning_wrapper.PruneLowMagnitude)
        inner = layer.layer if pruned else layer
        copy = fresh_copy(layer)
        if chosen is None and type(inner).__name__ in _LEFT_FLOAT:
            skipped.append(inner.name)
        if (chosen is not None and not (chosen(layer) or chosen(inner))) or not _clusterable(inner):
            if layer.name in named:
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot be clustered by tfmot. "
                    "Leave it out of `layers=`, or implement "
                    "tfmot.clustering.keras.ClusterableLayer on it."
                )
            return copy
        if pruned:
            _check_pruned(layer, begin)
        # Weights go in before wrapping: tfmot computes the centroids when the wrapper is built.
        # Under the wrapper's scope, as when a wrapper builds its layer: bare `kernel:0` names collide in .h5 files.
        with tf.name_scope(f"cluster_{layer.name}"):
            copy.build(layer._build_input_shape)
        copy.set_weights(layer.get_weights())
        wrapper = wrapper_class(layer)(
            copy,
            clusters,
            begin=begin,
            cluster_centroids_init=INITIALIZATIONS[init],
            preserve_sparsity=preserve_sparsity or pruned,
        )
        return wrapper, None

    skipped = []
    clustered = clone_with_weights(model, wrap)
    if skipped:
        logging.warning("tfc.cluster left these layers unclustered (tfcompress cannot yet cluster %s): %s.",
                        ", ".join(_LEFT_FLOAT), ", ".join(skipped))
    if not find_cluster_wrappers(clustered):
        raise ValueError("tfc.cluster found no layer tfmot can cluster in this model.")
    return clustered
