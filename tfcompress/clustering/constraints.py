"""Clustering of Keras 3 models: a constraint that keeps each kernel on a few shared values.

Like Keras 3 pruning (`tfcompress/pruning/constraints.py`), no wrapper layer:
the optimizer applies the kernel's constraint after each update, inside the
compiled step. From `begin` on, the constraint assigns every weight to its
nearest centroid, moves each centroid to the mean of its weights as they are
after the update (so a cluster learns from the gradients of all its weights)
and sets every weight to its centroid. The kernel then holds at most
`clusters` distinct values after every step.

The centroids and the on/off switch are variables the step reads (handed to
JAX's jitted step by `CompressionCallback`). They are not saved: a clustered
kernel holds its centroids as its own values, so a model loaded from `.keras`
takes them back from the kernel and resumes on the same course.
"""

import numpy as np
import tensorflow as tf

from tfcompress._keras import keras3, sync_keras3_state
from tfcompress._tfmot import cluster_config, clustering_centroids
from tfcompress.clustering.wrapper import check_pruning_ends_first, clustering_before_pruning_ends
from tfcompress.pruning.constraints import (
    CompressionConstraint,
    PruningMask,
    attach,
    compression_constraints,
    copy_model,
    kernels_of,
    keras3_layers,
)
from tfcompress.scheduling import (
    Scheduled,
    is_fraction,
    missing_callback,
    resolve_point,
    unknown_length,
    validate_point,
)

INITIALIZATIONS = {
    "kmeans++": cluster_config.CentroidInitialization.KMEANS_PLUS_PLUS,
    "linear": cluster_config.CentroidInitialization.LINEAR,
    "density": cluster_config.CentroidInitialization.DENSITY_BASED,
    "random": cluster_config.CentroidInitialization.RANDOM,
}


@keras3.saving.register_keras_serializable(package="tfcompress")
class ClusterCentroids(CompressionConstraint):
    """Keeps a Keras 3 kernel on `clusters` shared values from `begin` on.

    A kernel whose zeros stay zeros (pruned, or `preserve_sparsity`) counts the
    zero as one of its `clusters`, as tfmot's sparsity-preserving clustering
    does: its first centroid is held at zero, so the kernel holds at most
    `clusters` distinct values, zero included (4-bit indices for 16).

    Users get it from `tfc.cluster`, not by hand.

    Arguments:
        clusters: shared values per kernel (> 1).
        begin: when sharing starts: a fraction of the fit (float) or a step (int).
        init: centroid initialization: "kmeans++", "linear", "density" or "random" (tfmot's).
        preserve_sparsity: keep zero weights at zero.
        inner: the kernel's own constraint (applied first), or None.
    """

    missing_callback = missing_callback("clustering constraints (Keras 3), whose start step is scheduled")

    def __init__(self, clusters=16, begin=0.0, init="kmeans++", preserve_sparsity=False, inner=None):
        super().__init__(inner)
        self.clusters = int(clusters)
        self.begin = validate_point(begin, "begin")
        self.init = init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.centroids = None
        self.on = None
        self.keep = None

    def build(self, kernel):
        """Creates the centroids, the switch and (with `preserve_sparsity`) the zero mask for `kernel`.

        A kernel also pruned (`inner` is its `PruningMask`) shares the pruning mask as its zero mask.
        """
        if self.centroids is None:
            self.centroids = keras3.Variable(np.zeros(self.clusters, "float32"), trainable=False, name="centroids")
            self.on = keras3.Variable(0.0, trainable=False, name="clustering_on")
            if isinstance(self.inner, PruningMask):
                self.keep = self.inner.build(kernel)
            elif self.preserve_sparsity:
                self.keep = keras3.Variable(
                    np.ones(kernel.shape, "float32"), trainable=False, name="nonzero"
                )

    def project(self, w):
        ops = keras3.ops
        flat = ops.reshape(w, (-1,))
        centroids = ops.cast(self.centroids, w.dtype)
        nearest = ops.argmin(ops.abs(flat[:, None] - centroids[None, :]), axis=1)
        members = ops.ones_like(flat) if self.keep is None else ops.reshape(ops.cast(self.keep, w.dtype), (-1,))
        sums = ops.segment_sum(flat * members, nearest, num_segments=self.clusters)
        counts = ops.segment_sum(members, nearest, num_segments=self.clusters)
        moved = ops.where(counts > 0, sums / ops.maximum(counts, 1.0), centroids)
        if self.keep is not None:  # the zero centroid stays at zero: weights nearest it become zeros
            moved = ops.concatenate([ops.zeros((1,), moved.dtype), moved[1:]])
        shared = ops.reshape(ops.take(moved, nearest) * members, ops.shape(w))
        on = ops.cast(self.on, w.dtype) > 0
        self.centroids.assign(ops.cast(ops.where(on, moved, centroids), self.centroids.dtype))
        return ops.where(on, shared, w)

    def state_variables(self):
        return [v for v in (self.centroids, self.on, self.keep) if v is not None]

    def get_config(self):
        return {
            **super().get_config(),
            "clusters": self.clusters,
            "begin": self.begin,
            "init": self.init,
            "preserve_sparsity": self.preserve_sparsity,
        }


def initial_centroids(values, clusters, init):
    """Centroids for `values`: their own values when they hold `clusters` or fewer (a resumed model), else tfmot's."""
    distinct = np.unique(values)
    if 0 < distinct.size <= clusters:
        return np.resize(distinct, clusters).astype("float32")
    initializer = clustering_centroids.CentroidsInitializerFactory.get_centroid_initializer(INITIALIZATIONS[init])
    centroids = initializer(
        tf.constant(values), clusters, False, "channels_last", False
    ).get_cluster_centroids()
    return np.resize(np.asarray(centroids, "float32"), clusters)


class ClusteredKernel(Scheduled):
    """One clustered Keras 3 kernel, as `CompressionCallback` drives it.

    Arguments:
        model: the model being trained.
        layer_name: the layer's name, for the plan.
        variable: the kernel.
        constraint: its `ClusterCentroids`.
    """

    def __init__(self, model, layer_name, variable, constraint):
        self.model = model
        self.layer_name = layer_name
        self.variable = variable
        self.constraint = constraint
        constraint.build(variable)
        self.begin_step = None
        # A fresh switch each fit: a loaded model starts again from the values its kernel holds.
        self.started = False
        constraint.on.assign(0.0)

    def resolve_schedule(self, total_steps):
        begin = self.constraint.begin
        if total_steps is None and is_fraction(begin):
            raise unknown_length("clustering", "give tfc.cluster an absolute step number for `begin`")
        self.begin_step = resolve_point(begin, total_steps)
        pruning = self.constraint.inner
        if isinstance(pruning, PruningMask) and pruning.schedule.steps is not None:
            end_step = pruning.schedule.steps[1]  # resolved just before: pruned kernels come first
            if self.begin_step < end_step:
                raise clustering_before_pruning_ends(self.layer_name, self.begin_step, end_step, unit="step ")
        of = f" of {total_steps}" if total_steps else ""
        clusters = self.constraint.clusters
        return [
            {
                "compression": "clustering",
                "layers": [self.layer_name],
                "clusters": clusters,
                "begin_step": self.begin_step,
                "total_steps": total_steps,
                "description": f"tfcompress: clustering into {clusters} shared values from step {self.begin_step}{of}",
            }
        ]

    def on_schedule_step(self, step):
        if not self.started and step >= self.begin_step:
            self.start()

    def start(self):
        """Sets the centroids from the kernel as it is now, puts every weight on its nearest one, turns sharing on."""
        sync_keras3_state(self.model)
        constraint = self.constraint
        values = np.asarray(self.variable.numpy())
        if constraint.keep is not None:
            # The zero is one of the clusters (held at zero): the others come from the nonzero weights.
            nonzero = values[values != 0]
            others = (initial_centroids(nonzero, constraint.clusters - 1, constraint.init) if nonzero.size
                      else np.zeros(constraint.clusters - 1, "float32"))
            centroids = np.concatenate([np.zeros(1, "float32"), others])
        else:
            # No zero mask, so `preserve_sparsity` is off: every weight is a member.
            centroids = initial_centroids(values, constraint.clusters, constraint.init)
        nearest = np.abs(values[..., None] - centroids).argmin(axis=-1)
        shared = centroids[nearest].astype(values.dtype)
        if constraint.keep is not None:
            keep = (values != 0).astype("float32")
            constraint.keep.assign(keep)
            shared = shared * keep
        constraint.centroids.assign(centroids)
        constraint.on.assign(1.0)
        self.variable.assign(shared)
        self.started = True


def clustered_kernels(model):
    """A `ClusteredKernel` for every clustered kernel in a Keras 3 `model`."""
    return [
        ClusteredKernel(model, name, variable, constraint)
        for name, variable, constraint in compression_constraints(model)
        if isinstance(constraint, ClusterCentroids)
    ]


def cluster_with_constraints(model, clusters, begin, init, preserve_sparsity, chosen, named):
    """`tfc.cluster` for a built Keras 3 model: puts a `ClusterCentroids` on each chosen kernel.

    Arguments:
        model: the Keras 3 model (Sequential/functional: copied; subclassed: in place).
        clusters, begin, init, preserve_sparsity: as `tfc.cluster` takes them (validated).
        chosen: `layer -> bool` from `layers=`, or None for every clusterable layer.
        named: the layer names `layers=` lists explicitly (they must be clusterable).

    Returns:
        The clustered model.
    """
    found = compression_constraints(model)
    if any(isinstance(c, ClusterCentroids) for _, _, c in found):
        raise ValueError("This model is already clustered; call tfc.strip(model) before clustering it again.")
    if any(not isinstance(c, PruningMask) for _, _, c in found):
        raise ValueError(
            "tfc.cluster clusters models pruned by tfc.prune(structure=None); this one carries channel "
            "masks. Strip it first: tfc.cluster(tfc.strip(model))."
        )
    clustered = copy_model(model)
    count = 0
    for layer in keras3_layers(clustered):
        if chosen is not None and not chosen(layer):
            continue
        kernels = kernels_of(layer)
        if not kernels and layer.name in named:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) cannot be clustered: it has no kernel "
                "with a constraint slot. Leave it out of `layers=`."
            )
        for owner, weight, constraint_attribute in kernels:
            pruning = getattr(owner, constraint_attribute)
            if isinstance(pruning, PruningMask):
                # Deep Compression in one fit: the kernel's pruning runs first, and sharing keeps its zeros.
                check_pruning_ends_first(layer.name, begin, pruning.schedule.end)
            constraint = attach(
                owner, weight, constraint_attribute,
                lambda inner: ClusterCentroids(
                    clusters, begin, init, preserve_sparsity or isinstance(inner, PruningMask), inner=inner),
            )
            constraint.build(getattr(owner, weight))
            count += 1
    if not count:
        raise ValueError("tfc.cluster found no layer to cluster in this Keras 3 model.")
    return clustered
