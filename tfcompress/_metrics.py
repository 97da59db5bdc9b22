"""Metrics that report a compression state (sparsity, phase) in the Keras logs."""

import tensorflow as tf

from tfcompress._keras import keras


@keras.utils.register_keras_serializable(package="tfcompress")
class CurrentValue(keras.metrics.Metric):
    """The latest value given, not an average over the epoch.

    Sparsity and schedule phases are states of the model, so the progress bar,
    History and CSVLogger should show where the model is now. Resetting between
    epochs keeps the value for the same reason.
    """

    def __init__(self, name, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_weight(
            "value", initializer="zeros", aggregation=tf.VariableAggregation.MEAN
        )

    def update_state(self, value, sample_weight=None):
        del sample_weight
        return self.value.assign(tf.cast(value, self.dtype))

    def result(self):
        return tf.identity(self.value)

    def reset_state(self):
        pass


def report_metric(layer, name):
    """The `CurrentValue` metric `layer` should report as `name`.

    A model loaded from a SavedModel comes back with the metrics its layers
    reported when saved, and `add_metric` keeps reporting a metric of the same
    name: reuse that one (it keeps updating) and drop any other stale copy.
    """
    revived = [metric for metric in layer._metrics if metric.name == name]
    metric = revived[0] if revived and isinstance(revived[0], CurrentValue) else CurrentValue(name)
    for stale in revived:
        if stale is not metric:
            layer._metrics.remove(stale)
    return metric
