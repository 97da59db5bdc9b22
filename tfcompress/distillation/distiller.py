"""`Distiller`: trains a student on labels and a frozen teacher's outputs inside `fit`."""

import time

from absl import logging
import numpy as np
import tensorflow as tf

from tfcompress._keras import check_model, keras
from tfcompress._layers import walk
from tfcompress.distillation import teacher_cache
from tfcompress.distillation.losses import (
    FINAL_OUTPUT,
    DistillationLoss,
    FeatureDistillation,
    LogitsDistillation,
    at_least_float32,
)
from tfcompress.scheduling import Scheduled, check_value, is_scheduled, missing_callback, unknown_length

DEFAULT_TEMPERATURE = 3.0
DEFAULT_ALPHA = 0.5
_CACHE_MODES = ("auto", True, False)
_PREDICT_BATCH = 1024


class Distiller(keras.Model, Scheduled):
    """A tf_keras model whose `fit` trains `student` to imitate a frozen `teacher`.

    Each training step minimizes

        alpha * student_loss + (1 - alpha) * sum_i(w_i * distillation_loss_i)

    where `student_loss` is the loss given to `compile` (hard labels) and the
    distillation losses compare teacher and student outputs; the default,
    `LogitsDistillation`, is `T^2 * KL(softmax(teacher / T) || softmax(student / T))`
    (Hinton et al.). Regularization losses of the student are added unweighted.
    `fit`'s `sample_weight` weighs the student loss only: examples given weight 0
    are taught by the teacher alone, which is how unlabelled data joins the fit.
    The teacher is frozen (`teacher.trainable = False`) and always runs with
    `training=False`, BatchNormalization included. `evaluate`, `predict` and the
    validation metrics are the student's; `distiller.student` is the trained
    student. The API mirrors Keras 3's `keras.distillation.Distiller`
    (`alpha` is its `student_loss_weight`), for tf_keras models.

    Temperature, `alpha` and the loss weights may be a
    `tfc.distillation.LinearSchedule` over the fit, driven by
    `tfc.CompressionCallback`; their current values are in the logs
    (`temperature`, `alpha`, `<loss name>_weight`) next to `loss` (the total),
    `student_loss`, `distillation_loss` and, with several distillation losses,
    each one (`logits_loss`, `feature_loss_<teacher layer>`).

    Teacher-output cache: when `fit` gets arrays (numpy or eager tensors), the
    teacher's outputs are computed once, before training, and shuffled together
    with their inputs, so an epoch costs about what a plain fit of the student
    costs. A `tf.data.Dataset` may be augmented, so the teacher runs on every
    batch unless the dataset comes from `cache_teacher_outputs`. `fit` prints
    which of the two happens.

    Mixed precision: under `mixed_float16` / `mixed_bfloat16` every loss is
    computed in float32 (float16 logits are cast up), and a student that
    computes in float16 trains with a `keras.mixed_precision.LossScaleOptimizer`
    (`compile` wraps the optimizer, as tf_keras does under `mixed_float16`),
    whose loss scaling and skipping of overflowing steps the train step uses.

    Saving: `distiller.save(path)` saves the *student* (what `predict` runs) and
    says so; save `tfc.strip(distiller.student)` for a plain model. The teacher
    is never modified and projection layers are training-only.

    Arguments:
        teacher: a trained, built Sequential or functional tf_keras model
            that outputs logits. Frozen by the Distiller.
        student: a built Sequential or functional tf_keras model with the
            teacher's output shape, outputting logits; may carry `tfc.prune` /
            `tfc.quantize` wrappers.
        distillation_losses: a `LogitsDistillation`, `FeatureDistillation`, or a
            list of them. None (default) is `LogitsDistillation()`.
        distillation_loss_weights: one weight (number or `LinearSchedule`) per
            distillation loss; default 1.0 each.
        student_loss_weight: Keras 3's name for `alpha`; give one of the two.
        temperature: softmax temperature of `LogitsDistillation`, > 0: a number
            or a `LinearSchedule`. Default 3.0 (or the loss's own temperature).
        alpha: weight of the hard-label loss in [0, 1]: a number or a
            `LinearSchedule`. Default 0.5.
        teacher_cache: `"auto"` (default) caches teacher outputs when the
            inputs allow it and says why not otherwise; True requires the cache
            (an error when impossible); False always runs the teacher.
        name: the model's name.

    Example:

    ```python
    student = tfc.prune(student, final_sparsity=0.8)
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.3)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=10, validation_split=0.1, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(distiller.student)
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses=None,
        distillation_loss_weights=None,
        student_loss_weight=None,
        *,
        temperature=None,
        alpha=None,
        teacher_cache="auto",
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        if teacher_cache not in _CACHE_MODES:
            raise ValueError(f"`teacher_cache` must be 'auto', True or False; got {teacher_cache!r}.")
        self.teacher_cache = teacher_cache
        losses = _as_loss_list(distillation_losses)
        weights = _loss_weights(distillation_loss_weights, losses)
        alpha = _resolve_alpha(alpha, student_loss_weight)
        temperature = _resolve_temperature(temperature, losses)

        teacher_layers, student_layers = _feature_layers(teacher, student, losses)
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.distillation_losses = losses
        self.temperature = temperature
        self.alpha = alpha
        self.distillation_loss_weights = weights
        self.projections = _projections(losses)
        # Untracked: they share the models' layers, and tracking them would list every layer twice.
        object.__setattr__(self, "_teacher_extractor", _extractor(teacher, teacher_layers, "teacher"))
        object.__setattr__(self, "_student_extractor", _extractor(student, student_layers, "student"))

        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_has_student_loss", False)
        if any(isinstance(loss, LogitsDistillation) for loss in losses):
            self._values["temperature"] = self._value_variable("temperature", temperature)
        self._values["alpha"] = self._value_variable("alpha", alpha)
        for loss, weight in zip(losses, weights):
            self._values[f"{loss.name}_weight"] = self._value_variable(f"{loss.name}_weight", weight)
        object.__setattr__(self, "_last_values", {})

        # loss, distillation_loss and, with several distillation losses, each one.
        each = [loss.name for loss in losses] if len(losses) > 1 else []
        self.loss_means = _LossMeans(["loss", "distillation_loss", *each])
        object.__setattr__(
            self,
            "_logged_values",
            [key for key, (value, _) in self._values.items() if key in ("temperature", "alpha") or is_scheduled(value)],
        )
        # Logs are equal on every replica (metric results, mirrored variables): take the first, never the sum.
        self.distribute_reduction_method = "first"
        self.teacher_cache_used = None
        # Every weight exists already (both models are built), so summary() works before fit.
        self.built = True

    def _value_variable(self, name, value):
        initial = value.initial_value if is_scheduled(value) else value
        variable = self.add_weight(
            name=name,
            shape=(),
            initializer=keras.initializers.Constant(initial),
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        return value, variable

    @property
    def _distillation_trackers(self):
        return [self.loss_means]

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training, like `Model.compile`; `loss` is the hard-label (student) loss.

        Arguments:
            optimizer: the optimizer that trains the student (and projections).
                Wrapped in a `LossScaleOptimizer` when the student computes in
                float16, whatever the global policy is now.
            loss: the student's supervised loss on the labels `y`. May be None
                only when `alpha` is 0 (pure distillation, no labels needed).
            metrics: metrics of the student's predictions against `y`.
            **kwargs: passed to `Model.compile`.
        """
        alpha = self.alpha
        alpha_max = alpha.bounds()[1] if is_scheduled(alpha) else alpha
        if loss is None and alpha_max > 0:
            raise ValueError(
                "Distiller.compile needs `loss=`: the student's loss on the labels (e.g. "
                "keras.losses.SparseCategoricalCrossentropy(from_logits=True)), weighted by "
                f"`alpha` (here {alpha!r}). For pure distillation without labels, build the "
                "Distiller with alpha=0.0."
            )
        object.__setattr__(self, "_has_student_loss", loss is not None)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        # tf_keras wraps it only when the Distiller's own policy is mixed_float16; what counts is the student's.
        loss_scaled = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        if _computes_in_float16(self.student) and not loss_scaled:
            self.optimizer = keras.mixed_precision.LossScaleOptimizer(self.optimizer)

    def call(self, inputs, training=None, **kwargs):
        """The student's forward pass (what `predict` and `evaluate` run)."""
        inputs, _ = teacher_cache.unpack(inputs)
        return self.student(inputs, training=training, **kwargs)

    def _teacher_features(self, x):
        if self._teacher_extractor is not None:
            return self._teacher_extractor(x, training=False)
        return {FINAL_OUTPUT: self.teacher(x, training=False)}

    def _student_features(self, x):
        if self._student_extractor is not None:
            return self._student_extractor(x, training=True)
        return {FINAL_OUTPUT: self.student(x, training=True)}

    def _weight(self, key):
        """The value of `key` in the train step: its variable when scheduled, else the number itself.

        Fixed values go into the graph as constants, which the graph optimizer
        folds away (a weight of 1.0 costs nothing per step).
        """
        value, variable = self._values[key]
        return variable if is_scheduled(value) else float(value)

    def _distillation_terms(self, teacher_features, student_features):
        terms = []
        for loss, projection in zip(self.distillation_losses, self.projections_by_loss):
            teacher_output = teacher_features[loss.teacher_layer_name or FINAL_OUTPUT]
            student_output = student_features[loss.student_layer_name or FINAL_OUTPUT]
            if projection is not None:
                student_output = projection(student_output)
            kwargs = {}
            if isinstance(loss, LogitsDistillation):
                kwargs["temperature"] = self._weight("temperature")
            terms.append(loss.compute_loss(teacher_output, student_output, **kwargs))
        return terms

    @property
    def projections_by_loss(self):
        """One projection layer (or None) per distillation loss, in order."""
        layers = iter(self.projections)
        return [next(layers) if getattr(loss, "_needs_projection", False) else None for loss in self.distillation_losses]

    def train_step(self, data):
        """One optimizer step on the combined loss; returns the logs (see class docstring)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = teacher_cache.unpack(x)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        alpha = self._weight("alpha")
        with tf.GradientTape() as tape:
            student_features = self._student_features(x)
            y_pred = at_least_float32(student_features[FINAL_OUTPUT])
            teacher_features = cached if cached is not None else self._teacher_features(x)
            terms = self._distillation_terms(teacher_features, student_features)
            weighted = [
                _scaled(self._weight(f"{loss.name}_weight"), term) for loss, term in zip(self.distillation_losses, terms)
            ]
            distillation_loss = weighted[0] if len(weighted) == 1 else tf.add_n(weighted)
            if y is not None and self._has_student_loss:
                # compiled_loss divides by the replica count itself (gradients are summed over replicas).
                student_loss = _scaled(replicas, self.compiled_loss(y, y_pred, sample_weight))
            else:
                student_loss = tf.constant(0.0)
            total = _scaled(alpha, student_loss) + _scaled(1.0 - alpha, distillation_loss)
            if self.student.losses:
                total += tf.add_n([tf.cast(loss, total.dtype) for loss in self.student.losses])
            scaled = _scaled(1.0 / replicas, total)
        # A LossScaleOptimizer's minimize scales the loss, unscales the gradients and skips non-finite steps.
        self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)

        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self.loss_means.update_state([total, distillation_loss, *(terms if len(terms) > 1 else [])], batch)
        if y is not None:
            self.compiled_metrics.update_state(y, y_pred, sample_weight)

        means = self.loss_means.result()
        logs = {"loss": means.pop("loss")}
        compiled_loss_metrics = self.compiled_loss.metrics if self._has_student_loss else []
        if compiled_loss_metrics:
            logs["student_loss"] = compiled_loss_metrics[0].result()
        logs.update(means)
        for metric in self._student_metrics(exclude=compiled_loss_metrics):
            logs[metric.name] = metric.result()
        for key in self._logged_values:
            logs[key] = tf.identity(self._weight(key))
        return logs

    def _student_metrics(self, exclude=()):
        excluded = [*self._distillation_trackers, *exclude]
        return [m for m in self.metrics if not any(m is e for e in excluded)]

    def test_step(self, data):
        """Evaluates the student on `(x, y)`: its compiled loss and metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, _ = teacher_cache.unpack(x)
        y_pred = at_least_float32(self.student(x, training=False))
        if y is not None and self._has_student_loss:
            self.compiled_loss(y, y_pred, sample_weight, regularization_losses=self.student.losses)
        if y is not None:
            self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return {m.name: m.result() for m in self._student_metrics()}

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, _ = teacher_cache.unpack(x)
        return self.student(x, training=False)

    # Schedules (driven by tfc.CompressionCallback through the Scheduled contract).

    def resolve_schedule(self, total_steps):
        """Lays temperature / alpha / weight schedules over a fit of `total_steps` steps.

        Returns:
            One plan entry describing the distillation.
        """
        parts = []
        for key, (value, variable) in self._values.items():
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
        self._last_values.clear()
        names = ", ".join(_loss_label(loss) for loss in self.distillation_losses)
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

    def on_schedule_step(self, step):
        """Assigns every scheduled value for optimizer `step` (only when it changed)."""
        for key, (value, variable) in self._values.items():
            if not is_scheduled(value):
                continue
            current = value.value_at(step)
            if self._last_values.get(key) != current:
                variable.assign(current)
                self._last_values[key] = current

    # Fit, the teacher cache and saving.

    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains the student, like `Model.fit`; caches teacher outputs when it can.

        Arguments:
            x, y, *args, **kwargs: as `Model.fit`. Pass
                `callbacks=[tfc.CompressionCallback()]` when any value is a
                schedule or the student is pruned / quantized.

        Returns:
            The `History`; its logs include `loss` (the total), `student_loss`,
            `distillation_loss`, `temperature` and `alpha`.
        """
        self._check_callback(kwargs.get("callbacks"))
        verbose = kwargs.get("verbose", "auto") != 0
        x = self._with_teacher_outputs(x, verbose, kwargs.get("batch_size"))
        self._create_training_variables(x, y)
        return super().fit(x, y, *args, **kwargs)

    def _create_training_variables(self, x, y):
        """Creates the optimizer's slots and the compiled metrics' variables before `fit`.

        A `tf.function` that creates variables on its first call is traced a
        second time without them; with every variable in place, `fit` traces
        the train step once, which on a short fit saves a good part of its
        fixed cost. Only for array inputs, where a first label shows the metrics
        what they will see; anything else keeps Keras's usual path.
        """
        inputs, _ = teacher_cache.unpack(x)
        optimizer = self.optimizer
        if not isinstance(optimizer, keras.optimizers.Optimizer) or not teacher_cache.array_inputs(inputs):
            return
        if y is not None and not teacher_cache.array_inputs(y):
            return
        with self.distribute_strategy.scope():
            optimizer.build(self.trainable_variables)
            if y is None:
                return  # no labels: train_step updates no compiled loss or metric
            output = self.student.outputs[0]
            y_pred = at_least_float32(tf.zeros([1, *output.shape[1:]], dtype=output.dtype))
            y_true = tf.nest.map_structure(lambda a: tf.convert_to_tensor(a[:1]), y)
            if self._has_student_loss and not self.compiled_loss.built:
                self.compiled_loss.build(y_pred)
            if not self.compiled_metrics.built:
                self.compiled_metrics.build(y_pred, y_true)

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
        batch_size = max(batch_size or 0, _PREDICT_BATCH)
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
            chunks.append({k: v.numpy() for k, v in self._teacher_features(chunk).items()})
        return {key: np.concatenate([c[key] for c in chunks]).astype(np.float32) for key in chunks[0]}

    def cache_teacher_outputs(self, dataset, batch_size=_PREDICT_BATCH):
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

    def save(self, filepath, overwrite=True, save_format=None, **kwargs):
        """Saves the student (what `predict` runs), not the Distiller.

        The Distiller is a training setup around two models: the teacher is
        unchanged and the projection layers only serve training, so the model
        worth saving is the student. This is what `ModelCheckpoint` gets too.
        Load it with `keras.models.load_model`; save `tfc.strip(distiller.student)`
        for a plain model without compression wrappers.

        Arguments:
            filepath, overwrite, save_format, **kwargs: as `Model.save`.
        """
        logging.log_first_n(
            logging.WARNING,
            "Distiller.save saves the student model only (distiller.student); the teacher is "
            "unchanged and projection layers are training-only. Load it with "
            "keras.models.load_model.",
            1,
        )
        self.student.save(filepath, overwrite=overwrite, save_format=save_format, **kwargs)

    def get_config(self):
        raise NotImplementedError(
            "tfc.Distiller is a training setup and is not serialized: save the student with "
            "distiller.student.save(path) (or distiller.save(path), which does the same), and "
            "tfc.strip(distiller.student) for a plain model."
        )


class _LossMeans(keras.metrics.Metric):
    """Running means of the Distiller's losses over an epoch, all updated by two ops per step.

    One `keras.metrics.Mean` per loss costs a dozen ops per step each, which a
    small student notices. Means are weighted by batch size, as Keras's loss is.
    """

    def __init__(self, names, name="distillation_loss_means"):
        super().__init__(name=name)
        self.names = list(names)
        self.totals = self.add_weight("totals", shape=(len(self.names),), initializer="zeros")
        self.count = self.add_weight("count", shape=(), initializer="zeros")

    def update_state(self, values, batch_size):
        batch = tf.cast(batch_size, self.dtype)
        values = tf.stack([tf.cast(value, self.dtype) for value in values])
        return tf.group(self.totals.assign_add(values * batch), self.count.assign_add(batch))

    def result(self):
        means = tf.math.divide_no_nan(self.totals, self.count)
        return {name: means[index] for index, name in enumerate(self.names)}

    def reset_state(self):
        self.totals.assign(tf.zeros_like(self.totals))
        self.count.assign(0.0)


def _scaled(factor, tensor):
    """`factor * tensor`, without an op when `factor` is the number 1."""
    if isinstance(factor, (int, float)) and factor == 1:
        return tensor
    return factor * tensor


def _computes_in_float16(model):
    return any(layer.compute_dtype == "float16" for layer in walk(model))


def _loss_label(loss):
    if isinstance(loss, LogitsDistillation):
        return f"logits {loss.loss}"
    if loss.teacher_layer_name is None:
        return "features of the final output"
    return f"features {loss.teacher_layer_name} -> {loss.student_layer_name}"


def _check_models(teacher, student):
    check_model(teacher, "tfc.Distiller (teacher)")
    check_model(student, "tfc.Distiller (student)")
    for role, model in (("teacher", teacher), ("student", student)):
        if len(model.outputs) != 1:
            raise ValueError(
                f"tfc.Distiller distills models with one output; the {role} has {len(model.outputs)}. "
                "Build a model that returns only the logits to distill."
            )
        if _ends_in_softmax(model):
            raise ValueError(
                f"The {role} ({model.name}) ends in a softmax, but distillation softens logits with "
                "the temperature. Remove the softmax (activation=None on the last layer) and use "
                "a loss with from_logits=True."
            )
    teacher_shape = tuple(teacher.outputs[0].shape[1:])
    student_shape = tuple(student.outputs[0].shape[1:])
    if teacher_shape != student_shape:
        raise ValueError(
            f"Teacher and student output shapes differ: teacher {teacher_shape}, student "
            f"{student_shape}. The student must predict the same classes as the teacher: give its "
            f"last layer {teacher_shape[-1] if teacher_shape else ''} units."
        )


def _ends_in_softmax(model):
    inner = _unwrapped(model.layers[-1])
    if isinstance(inner, keras.layers.Softmax):
        return True
    activation = getattr(inner, "activation", None)
    return activation is keras.activations.softmax


def _as_loss_list(distillation_losses):
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


def _loss_weights(weights, losses):
    if weights is None:
        return [1.0] * len(losses)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(weights) != len(losses):
        raise ValueError(
            f"`distillation_loss_weights` has {len(weights)} weight(s) for {len(losses)} distillation "
            "loss(es): give one weight per loss, in the same order."
        )
    return [check_value(w, "distillation_loss_weights", low=0.0) for w in weights]


def _resolve_alpha(alpha, student_loss_weight):
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


def _resolve_temperature(temperature, losses):
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


def _unwrapped(layer):
    # tfc.prune / tfc.quantize wrap a layer (QAT around pruning: twice) and rename it.
    while isinstance(getattr(layer, "layer", None), keras.layers.Layer):
        layer = layer.layer
    return layer


def _find_layer(model, name, role, argument):
    for layer in model.layers:
        if layer.name == name or _unwrapped(layer).name == name:
            return layer
    names = [_unwrapped(layer).name for layer in model.layers]
    raise ValueError(
        f"FeatureDistillation: the {role} ({model.name}) has no layer named {name!r}. Its layers "
        f"are {names}; pass one of them as `{argument}=`."
    )


def _feature_layers(teacher, student, losses):
    teacher_layers, student_layers = {}, {}
    for loss in losses:
        if not isinstance(loss, FeatureDistillation):
            continue
        if loss.teacher_layer_name is not None:
            teacher_layers[loss.teacher_layer_name] = _find_layer(
                teacher, loss.teacher_layer_name, "teacher", "teacher_layer_name"
            )
        if loss.student_layer_name is not None:
            student_layers[loss.student_layer_name] = _find_layer(
                student, loss.student_layer_name, "student", "student_layer_name"
            )
        teacher_shape = _output_shape(teacher, teacher_layers.get(loss.teacher_layer_name))
        student_shape = _output_shape(student, student_layers.get(loss.student_layer_name))
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


def _output_shape(model, layer):
    tensor = model.outputs[0] if layer is None else layer.output
    return tuple(tensor.shape[1:])


def _projections(losses):
    projections = []
    for loss in losses:
        if getattr(loss, "_needs_projection", False):
            teacher_shape, student_shape = loss._shapes
            # A Dense on the last axis is a 1x1 convolution on feature maps.
            projection = keras.layers.Dense(
                teacher_shape[-1], use_bias=False, name=f"projection_{loss.student_layer_name or FINAL_OUTPUT}"
            )
            projection.build((None, *student_shape))
            projections.append(projection)
    return projections


def _extractor(model, layers, role):
    if not layers:
        return None
    outputs = {FINAL_OUTPUT: model.outputs[0]}
    outputs.update({name: layer.output for name, layer in layers.items()})
    return keras.Model(model.inputs, outputs, name=f"{model.name}_{role}_features")
