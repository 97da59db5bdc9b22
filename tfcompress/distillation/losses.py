"""Distillation losses: what the student learns from the teacher's outputs.

Named after Keras 3's `keras.distillation` losses (`LogitsDistillation`,
`FeatureDistillation`) so code moves between the two with few changes; these
work on tf_keras models and their temperature can follow a schedule.
"""

import tensorflow as tf

from tfcompress._keras import keras
from tfcompress.scheduling import check_value

FINAL_OUTPUT = "final_output"

_LOGITS_LOSSES = ("kl_divergence", "mse")
_HALF_TYPES = (tf.float16, tf.bfloat16)


def at_least_float32(tensor):
    """`tensor` cast to float32 when it is float16 / bfloat16 (a mixed-precision output), else unchanged.

    Losses are computed in float32 under a mixed policy: float16 overflows
    above 65504 (a loss times LossScaleOptimizer's scale of 2**15 does), and
    softmax with temperature loses the small probabilities that carry the
    teacher's knowledge.
    """
    tensor = tf.convert_to_tensor(tensor)
    return tf.cast(tensor, tf.float32) if tensor.dtype in _HALF_TYPES else tensor


class DistillationLoss:
    """Base class: a loss between teacher outputs and student outputs.

    Subclasses set `teacher_layer_name` / `student_layer_name` (None: the
    model's final output) and implement `compute_loss`, which returns the mean
    loss over the (per-replica) batch as a scalar tensor.
    """

    teacher_layer_name = None
    student_layer_name = None
    name = "distillation_loss"

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Returns the scalar loss between `teacher_outputs` and `student_outputs`."""
        raise NotImplementedError("Subclasses of DistillationLoss implement compute_loss.")


class LogitsDistillation(DistillationLoss):
    """Soft-target loss on the final logits (Hinton et al., 2015).

    With the default `loss="kl_divergence"` it computes, per example,
    `T^2 * KL(softmax(teacher / T) || softmax(student / T))` and averages it
    over the batch; the `T^2` factor keeps its gradients on the scale of the
    hard-label loss whatever the temperature. `loss="mse"` matches the logits
    divided by `T` directly (Ba & Caruana, 2014).

    Both models must output logits (no softmax on the last layer).

    Arguments:
        temperature: a number > 0 or a `tfc.distillation.LinearSchedule`. None
            (default) uses the `Distiller`'s `temperature` (3.0 unless given).
        loss: `"kl_divergence"` (default) or `"mse"`.

    Example:

    ```python
    distiller = tfc.Distiller(
        teacher=teacher, student=student,
        distillation_losses=tfc.distillation.LogitsDistillation(temperature=4.0),
    )
    ```
    """

    name = "logits_loss"

    def __init__(self, temperature=None, loss="kl_divergence"):
        if temperature is not None:
            check_value(temperature, "temperature", low=0.0, low_inclusive=False,
                        fix="A typical temperature is 2 to 8.")
        if loss not in _LOGITS_LOSSES:
            raise ValueError(f"LogitsDistillation `loss` must be one of {_LOGITS_LOSSES}; got {loss!r}.")
        self.temperature = temperature
        self.loss = loss

    def compute_loss(self, teacher_outputs, student_outputs, temperature=None, **kwargs):
        """Mean soft-target loss over the batch.

        Arguments:
            teacher_outputs: teacher logits, `(batch, classes)`.
            student_outputs: student logits, same shape.
            temperature: the current temperature (a scalar tensor or float).

        Returns:
            A scalar tensor, float32 for float16 / bfloat16 logits.
        """
        student_outputs = at_least_float32(student_outputs)
        temperature = tf.cast(temperature, student_outputs.dtype)
        teacher_logits = tf.stop_gradient(tf.cast(teacher_outputs, student_outputs.dtype)) / temperature
        student_logits = student_outputs / temperature
        if self.loss == "mse":
            return tf.reduce_mean(tf.math.squared_difference(teacher_logits, student_logits))
        teacher_log_probs = tf.nn.log_softmax(teacher_logits, axis=-1)
        student_log_probs = tf.nn.log_softmax(student_logits, axis=-1)
        per_example = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
        return tf.reduce_mean(per_example) * temperature**2


class FeatureDistillation(DistillationLoss):
    """Matches an intermediate layer of the student to one of the teacher.

    The student's features go through a learned projection (a bias-free
    `Dense` on the channel axis, i.e. a 1x1 convolution on feature maps) when
    their width differs from the teacher's, then `loss` compares them with the
    teacher's. The projection trains with the student and is not part of
    `distiller.student`. Spatial sizes must match.

    Arguments:
        loss: `"mse"` (default), `"mae"`, `"cosine_similarity"`, or a tf_keras
            loss / callable `(teacher_features, student_features) -> loss`.
        teacher_layer_name: the teacher layer whose output is the target.
            None: the teacher's final output.
        student_layer_name: the student layer trained to match it. None: the
            same name as `teacher_layer_name` (a pruning or QAT wrapper around
            that layer is found too).
        projection: `"auto"` (default) adds a projection only when widths
            differ; True always adds one; False never (widths must match).

    Example:

    ```python
    distiller = tfc.Distiller(
        teacher=teacher, student=student,
        distillation_losses=[
            tfc.distillation.LogitsDistillation(),
            tfc.distillation.FeatureDistillation(teacher_layer_name="hidden2"),
        ],
        distillation_loss_weights=[1.0, 0.5],
    )
    ```
    """

    def __init__(self, loss="mse", teacher_layer_name=None, student_layer_name=None, projection="auto"):
        if projection not in ("auto", True, False):
            raise ValueError(f"`projection` must be 'auto', True or False; got {projection!r}.")
        self.loss = loss
        self._loss_fn = keras.losses.get(loss)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name if student_layer_name is not None else teacher_layer_name
        self.projection = projection
        self.name = f"feature_loss_{teacher_layer_name or FINAL_OUTPUT}"

    def needs_projection(self, teacher_width, student_width):
        """Whether student features of `student_width` need a learned projection."""
        if self.projection == "auto":
            return teacher_width != student_width
        return bool(self.projection)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Mean of `loss` between teacher features and (projected) student features.

        Returns:
            A scalar tensor, float32 for float16 / bfloat16 features.
        """
        student_outputs = at_least_float32(student_outputs)
        teacher_outputs = tf.stop_gradient(tf.cast(teacher_outputs, student_outputs.dtype))
        return tf.reduce_mean(self._loss_fn(teacher_outputs, student_outputs))
