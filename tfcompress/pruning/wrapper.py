"""tfmot's pruning wrapper, with errors that name tfcompress's callback."""

import inspect

import numpy as np
import tensorflow as tf
from tfcompress._tfmot import cluster_wrapper, clustering_registry, pruning_wrapper, smart_cond

from tfcompress._keras import float32_variables, keras
from tfcompress._layers import call_converted, walk
from tfcompress.pruning.schedules import SCHEDULES
from tfcompress.scheduling import missing_callback, tracing_for_saving

def find_pruning_wrappers(model):
    """Every tfmot pruning wrapper in `model`, in nested models and wrappers too.

    tfmot's own collector only looks through `model.layers`, so it misses a
    pruned layer inside a quantization wrapper.
    """
    return walk(model, pruning_wrapper.PruneLowMagnitude)


MISSING_CALLBACK = missing_callback("pruning wrappers, whose masks follow a schedule")


@keras.utils.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """Magnitude pruning of one layer's kernel (tfmot's wrapper, reused as is).

    Differences from tfmot's wrapper: training without `tfc.CompressionCallback`
    fails with an error naming it, and `sparsity_m_by_n` survives `get_config`.
    Users normally get it from `tfc.prune`, not by hand.
    """

    _PRUNE_CALLBACK_ERROR_MSG = MISSING_CALLBACK
    # Set by a quantization wrapper around this one, which calls `update_masks` before it reads the kernel.
    updated_by_parent = False

    def update_masks(self, training=None):
        """Adds tfmot's per-step updates: the step count, the scheduled mask update, kernel *= mask.

        tfmot's `call` adds them; a wrapper around this layer calls this
        before it reads the kernel instead, because under MirroredStrategy
        each update is a cross-replica merge, and a merge after the kernel
        was read loses the first replica's kernel gradient.

        Arguments:
            training: the `training` argument of the call being traced.
        """
        if training is None:
            training = keras.backend.learning_phase()
        # Under a mixed policy the kernel reads as float16 here: masking that view would round the float32 kernel.
        with float32_variables():
            self._add_mask_updates(training)

    def _add_mask_updates(self, training):
        def increment_step():
            with tf.control_dependencies([self.pruning_step.assign_add(1)]):
                return tf.no_op("update")

        def update_mask():
            at_least_one = tf.debugging.assert_greater_equal(
                self.pruning_step, np.int64(1), message=self._PRUNE_CALLBACK_ERROR_MSG
            )
            with tf.control_dependencies([at_least_one]):
                with tf.control_dependencies([self.pruning_obj.conditional_mask_update()]):
                    return tf.no_op("update")

        def no_update():
            return tf.no_op("no_update")

        self.add_update(smart_cond(training, increment_step, no_update))
        self.add_update(smart_cond(training, update_mask, no_update))
        self.add_update(self.pruning_obj.weight_mask_op())

    def call(self, inputs, training=None, **kwargs):
        # Fractions in the schedule are only known once fit starts: say so before tfmot's graph assert does.
        if training is True and not getattr(self.pruning_schedule, "resolved", True) and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.layer.name!r}: schedule not resolved.)")
        if not self.updated_by_parent:
            # tfmot's call adds the same updates, but with the kernel read as float16 under a mixed policy.
            self.update_masks(training)
            if "training" in inspect.getfullargspec(self.layer.call).args:
                kwargs["training"] = keras.backend.learning_phase() if training is None else training
        outputs = call_converted(self.layer, inputs, **kwargs)
        report = getattr(self, "_tfc_sparsity_report", None)
        if report is not None:
            metric, masks = report
            kept = tf.add_n([tf.reduce_sum(tf.cast(mask, tf.float32)) for mask in masks])
            total = float(sum(mask.shape.num_elements() for mask in masks))
            self.add_metric(metric(1.0 - kept / total))
        return outputs

    def get_clusterable_weights(self):
        """The kernels a clustering wrapper around this pruned layer shares: its layer's, as tfmot names them.

        Makes `tfc.cluster(tfc.prune(model))` one model: tfmot's
        `ClusterWeights` accepts a layer that lists its clusterable weights.
        """
        return clustering_registry.ClusteringRegistry.make_clusterable(self.layer).get_clusterable_weights()

    def get_clusterable_algorithm(self, weight_name):
        """None: the wrapped layer's kernels cluster with tfmot's default algorithm."""
        del weight_name
        return None

    def get_config(self):
        config = super().get_config()
        config["sparsity_m_by_n"] = self.sparsity_m_by_n
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.pop("pruning_schedule")
        config["pruning_schedule"] = SCHEDULES[schedule["class_name"]](**schedule["config"])
        config["layer"] = keras.layers.deserialize(config.pop("layer"))
        return cls(**config)


# tfmot's ClusterWeights takes a ClusterableLayer; a pruned layer is one (see get_clusterable_weights).
cluster_wrapper.clusterable_layer.ClusterableLayer.register(PruneLowMagnitude)
