"""tfmot's pruning wrapper, with errors that name tfcompress's callback."""

import tensorflow as tf
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tfcompress._keras import keras
from tfcompress.pruning.schedules import SCHEDULES
from tfcompress.scheduling import tracing_for_saving

def find_pruning_wrappers(model):
    """Every tfmot pruning wrapper in `model`, in nested models and wrappers too.

    tfmot's own collector only looks through `model.layers`, so it misses a
    pruned layer inside a quantization wrapper.
    """
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude)
    ]


MISSING_CALLBACK = (
    "This model has tfcompress pruning wrappers, which need "
    "`tfcompress.CompressionCallback()` to run their schedule. Train with "
    "`model.fit(..., callbacks=[tfc.CompressionCallback()])`."
)


@keras.utils.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """Magnitude pruning of one layer's kernel (tfmot's wrapper, reused as is).

    Differences from tfmot's wrapper: training without `tfc.CompressionCallback`
    fails with an error naming it, and `sparsity_m_by_n` survives `get_config`.
    Users normally get it from `tfc.prune`, not by hand.
    """

    _PRUNE_CALLBACK_ERROR_MSG = MISSING_CALLBACK

    def call(self, inputs, training=None, **kwargs):
        # Fractions in the schedule are only known once fit starts: say so before tfmot's graph assert does.
        if training is True and not getattr(self.pruning_schedule, "resolved", True) and not tracing_for_saving():
            raise RuntimeError(f"{MISSING_CALLBACK} (layer {self.layer.name!r}: schedule not resolved.)")
        outputs = super().call(inputs, training=training, **kwargs)
        report = getattr(self, "_tfc_sparsity_report", None)
        if report is not None:
            metric, masks = report
            kept = tf.add_n([tf.reduce_sum(tf.cast(mask, tf.float32)) for mask in masks])
            total = float(sum(mask.shape.num_elements() for mask in masks))
            self.add_metric(metric(1.0 - kept / total))
        return outputs

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
