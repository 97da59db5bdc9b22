"""What both Distillers share: argument checks, the fit plan, and the teacher-output cache.

`tfc.Distiller` is one public class for both Keras generations: a tf_keras
`Model` for tf_keras models (`distiller.py`) and a Keras 3 `Model` for Keras 3
models (`keras3.py`). Their arguments, checks, plan line and teacher-output
cache are the same code, here; only the train step differs.
"""

import time

import numpy as np
import tensorflow as tf

from tfcompress._keras import keras
from tfcompress.distillation import teacher_cache
from tfcompress.distillation.losses import FINAL_OUTPUT, DistillationLoss, FeatureDistillation, LogitsDistillation
from tfcompress.scheduling import check_value, is_scheduled, missing_callback, unknown_length

DEFAULT_TEMPERATURE = 3.0
DEFAULT_ALPHA = 0.5
CACHE_MODES = ("auto", True, False)
PREDICT_BATCH = 1024


def check_cache_mode(mode):
    """Returns `mode` when it is a valid `teacher_cache` argument, else raises naming the choices."""
    if mode not in CACHE_MODES:
        raise ValueError(f"`teacher_cache` must be 'auto', True or False; got {mode!r}.")
    return mode


def check_student_loss(alpha, loss):
    """Raises when `compile` got no hard-label loss although `alpha` can be above 0."""
    alpha_max = alpha.bounds()[1] if is_scheduled(alpha) else alpha
    if loss is None and alpha_max > 0:
        raise ValueError(
            "Distiller.compile needs `loss=`: the student's loss on the labels (e.g. "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True)), weighted by "
            f"`alpha` (here {alpha!r}). For pure distillation without labels, build the "
            "Distiller with alpha=0.0."
        )


def loss_label(loss):
    if isinstance(loss, LogitsDistillation):
        return f"logits {loss.loss}"
    if loss.teacher_layer_name is None:
        return "features of the final output"
    return f"features {loss.teacher_layer_name} -> {loss.student_layer_name}"


def as_loss_list(distillation_losses):
    if distillation_losses is None:
        return [LogitsDistillation()]
    losses = list(distillation_losses) if isinstance(distillation_losses, (list, tuple)) else [distillation_losses]
    if not losses:
        raise ValueError("`distillation_losses` is empty; pass None for the default LogitsDistillation().")
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            hint = ""
            if type(loss).__module__.startswith("keras"):
                hint = " (this is a Keras 3 keras.distillation loss; use tfc.distillation's of the same name)"
            raise TypeError(
                "`distillation_losses` takes tfc.distillation.LogitsDistillation / FeatureDistillation "
                f"objects; got {loss!r}{hint}."
            )
    if sum(isinstance(loss, LogitsDistillation) for loss in losses) > 1:
        raise ValueError("Give at most one LogitsDistillation: the models have one output.")
    names = [loss.name for loss in losses]
    for i, loss in enumerate(losses):
        if names.count(loss.name) > 1:
            loss.name = f"{loss.name}_{i}"
    return losses


def loss_weights(weights, losses):
    if weights is None:
        return [1.0] * len(losses)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(weights) != len(losses):
        raise ValueError(
            f"`distillation_loss_weights` has {len(weights)} weight(s) for {len(losses)} distillation "
            "loss(es): give one weight per loss, in the same order."
        )
    return [check_value(w, "distillation_loss_weights", low=0.0) for w in weights]


def resolve_alpha(alpha, student_loss_weight):
    if alpha is not None and student_loss_weight is not None:
        raise ValueError(
            "Give `alpha` or `student_loss_weight` (Keras 3's name for the same weight), not both."
        )
    value = alpha if alpha is not None else student_loss_weight
    if value is None:
        value = DEFAULT_ALPHA
    return check_value(
        value, "alpha", low=0.0, high=1.0,
        fix="It is the weight of the hard-label loss; (1 - alpha) weighs the distillation losses.",
    )


def resolve_temperature(temperature, losses):
    fix = "A typical temperature is 2 to 8 (1 leaves the softmax unchanged)."
    logits = [loss for loss in losses if isinstance(loss, LogitsDistillation)]
    own = logits[0].temperature if logits else None
    if temperature is not None and own is not None and temperature != own:
        raise ValueError(
            f"Temperature given twice: Distiller(temperature={temperature!r}) and "
            f"LogitsDistillation(temperature={own!r}). Set it in one place."
        )
    value = temperature if temperature is not None else own
    if value is None:
        value = DEFAULT_TEMPERATURE
    return check_value(value, "temperature", low=0.0, low_inclusive=False, fix=fix)


def unwrapped(layer):
    # tfc.prune / tfc.quantize wrap a layer (QAT around pruning: twice) and rename it.
    while isinstance(getattr(layer, "layer", None), keras.layers.Layer):
        layer = layer.layer
    return layer


def find_layer(model, name, role, argument):
    for layer in model.layers:
        if layer.name == name or unwrapped(layer).name == name:
            return layer
    names = [unwrapped(layer).name for layer in model.layers]
    raise ValueError(
        f"FeatureDistillation: the {role} ({model.name}) has no layer named {name!r}. Its layers "
        f"are {names}; pass one of them as `{argument}=`."
    )


def feature_layers(teacher, student, losses):
    teacher_layers, student_layers = {}, {}
    for loss in losses:
        if not isinstance(loss, FeatureDistillation):
            continue
        if loss.teacher_layer_name is not None:
            teacher_layers[loss.teacher_layer_name] = find_layer(
                teacher, loss.teacher_layer_name, "teacher", "teacher_layer_name"
            )
        if loss.student_layer_name is not None:
            student_layers[loss.student_layer_name] = find_layer(
                student, loss.student_layer_name, "student", "student_layer_name"
            )
        teacher_shape = output_shape(teacher, teacher_layers.get(loss.teacher_layer_name))
        student_shape = output_shape(student, student_layers.get(loss.student_layer_name))
        if len(teacher_shape) != len(student_shape) or teacher_shape[:-1] != student_shape[:-1]:
            raise ValueError(
                f"FeatureDistillation {loss.teacher_layer_name!r} -> {loss.student_layer_name!r}: feature "
                f"shapes {teacher_shape} (teacher) and {student_shape} (student) differ beyond the "
                "channel axis; only the width can differ (a projection maps it). Pick layers with the "
                "same spatial size."
            )
        loss._needs_projection = loss.needs_projection(teacher_shape[-1], student_shape[-1])
        if not loss._needs_projection and teacher_shape != student_shape:
            raise ValueError(
                f"FeatureDistillation {loss.teacher_layer_name!r}: widths differ ({teacher_shape[-1]} vs "
                f"{student_shape[-1]}) and projection=False. Use projection='auto'."
            )
        loss._shapes = (teacher_shape, student_shape)
    return teacher_layers, student_layers


def output_shape(model, layer):
    tensor = model.outputs[0] if layer is None else layer.output
    return tuple(tensor.shape[1:])


def check_outputs(teacher, student, ends_in_softmax):
    """Raises naming the fix unless both models output one tensor of logits of the same shape.

    A subclassed Keras 3 model has no symbolic outputs: its checks wait for the first step.

    Arguments:
        teacher, student: the models.
        ends_in_softmax: `model -> bool` for that Keras's layers.
    """
    graph = [(role, model) for role, model in (("teacher", teacher), ("student", student))
             if getattr(model, "outputs", None) is not None]
    for role, model in graph:
        if len(model.outputs) != 1:
            raise ValueError(
                f"tfc.Distiller distills models with one output; the {role} has {len(model.outputs)}. "
                "Build a model that returns only the logits to distill."
            )
        if ends_in_softmax(model):
            raise ValueError(
                f"The {role} ({model.name}) ends in a softmax, but distillation softens logits with "
                "the temperature. Remove the softmax (activation=None on the last layer) and use "
                "a loss with from_logits=True."
            )
    if len(graph) < 2:
        return
    teacher_shape, student_shape = output_shape(teacher, None), output_shape(student, None)
    if teacher_shape != student_shape:
        raise ValueError(
            f"Teacher and student output shapes differ: teacher {teacher_shape}, student "
            f"{student_shape}. The student must predict the same classes as the teacher: give its "
            f"last layer {teacher_shape[-1] if teacher_shape else ''} units."
        )


def projections(losses, dense):
    """One learned projection per feature loss whose widths differ, built; `dense` is that Keras's Dense class."""
    found = []
    for loss in losses:
        if getattr(loss, "_needs_projection", False):
            teacher_shape, student_shape = loss._shapes
            # A Dense on the last axis is a 1x1 convolution on feature maps.
            projection = dense(
                teacher_shape[-1], use_bias=False, name=f"projection_{loss.student_layer_name or FINAL_OUTPUT}"
            )
            projection.build((None, *student_shape))
            found.append(projection)
    return found


def extractor(model, layers, role, model_class):
    """A `model_class` (that Keras's Model) giving `model`'s final output and `layers`' outputs by name; None without layers."""
    if not layers:
        return None
    outputs = {FINAL_OUTPUT: model.outputs[0]}
    outputs.update({name: layer.output for name, layer in layers.items()})
    # `input` is one tensor for a one-input model (the structure Keras 3 expects to be called with).
    return model_class(model.input, outputs, name=f"{model.name}_{role}_features")


class DistillerSetup:
    """The parts of `tfc.Distiller` that do not depend on the Keras generation.

    The concrete Distiller provides `teacher`, `student`, `distillation_losses`,
    `teacher_cache`, `_values` (`{key: (value, state)}`), `_teacher_extractor`,
    `_teacher_features(x)` and `_numpy(tensor)`.
    """

    @staticmethod
    def _numpy(tensor):
        return tensor.numpy()

    def _distillation_plan(self, total_steps):
        """Resolves temperature / alpha / weight schedules for a fit of `total_steps` steps.

        Returns:
            One plan entry describing the distillation (the `Scheduled.resolve_schedule` result).
        """
        parts = []
        for key, (value, _) in self._values.items():
            if is_scheduled(value):
                if value.needs_fit_length and total_steps is None:
                    raise unknown_length(
                        f"the Distiller's `{key}`",
                        "give the LinearSchedule absolute step numbers (ints) for `begin` and `end`",
                    )
                begin, end = value.resolve(total_steps)
                parts.append(f"{key} {value.initial_value:g} -> {value.final_value:g} over steps {begin}-{end}")
            elif key in ("temperature", "alpha"):
                parts.append(f"{key} {value:g}")
        names = ", ".join(loss_label(loss) for loss in self.distillation_losses)
        total = f" of {total_steps}" if total_steps else ""
        return [
            {
                "compression": "distillation",
                "losses": [loss.name for loss in self.distillation_losses],
                "total_steps": total_steps,
                "description": f"tfcompress: distilling {self.teacher.name} into {self.student.name} "
                f"({names}); {', '.join(parts)}{total and ' (fit' + total + ' steps)'}",
            }
        ]

    def _check_callback(self, callbacks):
        from tfcompress.callbacks import CompressionCallback

        scheduled = [key for key, (value, _) in self._values.items() if is_scheduled(value)]
        if scheduled and not any(isinstance(cb, CompressionCallback) for cb in callbacks or []):
            raise ValueError(missing_callback(f"Distiller values that follow a schedule ({', '.join(scheduled)})"))

    def _report(self, verbose, message):
        if verbose:
            print(f"tfcompress: {message}")

    def _with_teacher_outputs(self, x, verbose, batch_size):
        if teacher_cache.is_packed(x):
            self.teacher_cache_used = True
            return x
        if isinstance(x, tf.data.Dataset) and teacher_cache.dataset_is_packed(x):
            self.teacher_cache_used = True
            self._report(verbose, "teacher outputs cached: they come with the dataset (cache_teacher_outputs).")
            return x
        if self.teacher_cache is False:
            self.teacher_cache_used = False
            self._report(verbose, "teacher runs on every batch (teacher_cache=False).")
            return x
        if not teacher_cache.array_inputs(x):
            if teacher_cache.is_stream(x):
                reason = (
                    f"the inputs are {teacher_cache.describe_inputs(x)}, which may be shuffled or "
                    "augmented differently on every pass"
                )
                fix = (
                    "If the data is not augmented, build the dataset with "
                    "distiller.cache_teacher_outputs(unbatched_dataset) before shuffle() and batch(), "
                    "or pass numpy arrays."
                )
            else:
                reason = f"the cache takes numpy arrays or tensors, and the inputs are {teacher_cache.describe_inputs(x)}"
                fix = "Pass np.asarray(x) to use it."
            if self.teacher_cache is True:
                raise ValueError(f"Distiller(teacher_cache=True) cannot cache teacher outputs: {reason}. {fix}")
            self.teacher_cache_used = False
            self._report(verbose, f"teacher outputs not cached, the teacher runs on every batch: {reason}. {fix}")
            return x
        count = teacher_cache.num_examples(x)
        shapes = [tuple(t.shape) for t in self._teacher_output_tensors()]
        size = teacher_cache.cache_bytes(count, shapes)
        if size > teacher_cache.MAX_CACHE_BYTES:
            message = (
                f"teacher outputs not cached: they would take {teacher_cache.format_bytes(size)} for "
                f"{count} examples (limit {teacher_cache.format_bytes(teacher_cache.MAX_CACHE_BYTES)}); "
                "the teacher runs on every batch. Distill fewer or smaller feature layers to cache them."
            )
            if self.teacher_cache is True:
                raise ValueError(f"Distiller(teacher_cache=True): {message}")
            self.teacher_cache_used = False
            self._report(verbose, message)
            return x
        start = time.perf_counter()
        outputs = self._predict_teacher(x, batch_size)
        self.teacher_cache_used = True
        self._report(
            verbose,
            f"teacher outputs cached: {count} examples, {len(outputs)} tensor(s), "
            f"{teacher_cache.format_bytes(size)}, computed once in {time.perf_counter() - start:.1f} s; "
            "they are shuffled together with their inputs.",
        )
        return teacher_cache.pack(x, outputs)

    def _teacher_output_tensors(self):
        if self._teacher_extractor is not None:
            return list(self._teacher_extractor.outputs)
        return list(self.teacher.outputs)

    def _predict_teacher(self, x, batch_size=None):
        """Teacher outputs (final and feature layers) as float32 numpy arrays."""
        batch_size = max(batch_size or 0, PREDICT_BATCH)
        if isinstance(x, tf.data.Dataset):
            if self._teacher_extractor is not None:
                outputs = self._teacher_extractor.predict(x, verbose=0)
            else:
                outputs = {FINAL_OUTPUT: self.teacher.predict(x, verbose=0)}
            return {key: np.asarray(value, dtype=np.float32) for key, value in outputs.items()}
        # Eager calls on large chunks: no predict loop to build, a fraction of a short fit saved.
        chunks = []
        for start in range(0, teacher_cache.num_examples(x), batch_size):
            chunk = tf.nest.map_structure(lambda a: a[start : start + batch_size], x)
            chunks.append({k: self._numpy(v) for k, v in self._teacher_features(chunk).items()})
        return {key: np.concatenate([c[key] for c in chunks]).astype(np.float32) for key in chunks[0]}

    def cache_teacher_outputs(self, dataset, batch_size=PREDICT_BATCH):
        """Computes the teacher's outputs for an unaugmented dataset once.

        Returns a dataset whose elements carry the teacher's outputs beside
        their inputs; shuffle, batch and pass it to `fit`, which then never
        runs the teacher. Call it *before* `shuffle()` and augmentation: the
        given dataset must yield the same examples in the same order on every
        pass (checked on its first elements).

        Arguments:
            dataset: an unbatched `tf.data.Dataset` of `(x, y)`, `(x, y, w)` or
                `x` elements.
            batch_size: batch size of the one teacher pass.

        Returns:
            An unbatched `tf.data.Dataset` with the same element layout.

        Example:

        ```python
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = distiller.cache_teacher_outputs(ds).shuffle(1000).batch(32)
        distiller.fit(ds, epochs=5)
        ```
        """
        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(
                f"cache_teacher_outputs takes a tf.data.Dataset; got {type(dataset).__name__}. "
                "Numpy arrays passed to fit() are cached automatically."
            )
        teacher_cache.check_repeatable(dataset)
        outputs = self._predict_teacher(teacher_cache.dataset_inputs(dataset).batch(batch_size))
        return teacher_cache.packed_dataset(dataset, outputs)
