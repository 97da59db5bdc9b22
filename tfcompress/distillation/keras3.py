"""`tfc.Distiller` for Keras 3 teacher and student models (TensorFlow or JAX backend).

`tfc.Distiller(teacher=..., student=...)` returns a `Keras3Distiller` when both
models are Keras 3 (`import keras`): the same arguments, losses, schedules,
teacher-output cache and `.student` as for tf_keras, written in Keras 3's
backend-agnostic form. Keras's own train step (TensorFlow's or JAX's) calls
`compute_loss`, which uses `keras.ops` only, so one class trains on both
backends and a pruned student's mask constraints apply inside the same step.

Schedules run inside the step: the Distiller counts its own optimizer steps in
a variable, and each scheduled value is computed from that count and its
resolved `(begin, end)` steps, also variables. `CompressionCallback` sets them
when `fit` starts; no value is assigned between steps, which JAX's jitted step
would not see.
"""

from absl import logging

from tfcompress._keras import check_keras3_model, keras3, sync_keras3_state
from tfcompress.distillation import teacher_cache
from tfcompress.distillation.common import (
    DistillerSetup,
    as_loss_list,
    check_cache_mode,
    check_outputs,
    check_student_loss,
    extractor,
    feature_layers,
    loss_weights,
    projections,
    resolve_alpha,
    resolve_temperature,
)
from tfcompress.distillation.losses import FINAL_OUTPUT, FeatureDistillation, LogitsDistillation
from tfcompress.scheduling import Scheduled, is_scheduled

ops = keras3.ops
_HALF_TYPES = ("float16", "bfloat16")


class Keras3Distiller(keras3.Model, DistillerSetup, Scheduled):
    """`tfc.Distiller` for Keras 3 models: trains `student` to imitate a frozen `teacher`.

    Build it with `tfc.Distiller(teacher=..., student=...)`, which returns
    this class for Keras 3 models; everything `tfc.Distiller`'s docstring
    says holds (the loss, `alpha`, temperature, schedules and their logs,
    `sample_weight` weighing the hard-label loss only, the teacher-output
    cache, `save` saving the student). Keras 3 specifics:

    * Any backend tfcompress drives (TensorFlow, JAX); the losses use
      `keras.ops` only. A custom `DistillationLoss` must too on JAX.
    * A student pruned or clustered by `tfc.prune` / `tfc.cluster` trains in
      the same fit: its kernel constraints run in the optimizer's update, and
      `tfc.CompressionCallback` drives them and the Distiller's schedules
      (`sparsity` appears in the logs).
    * The student may be a subclassed model for logits distillation (its
      output shape is then checked at the first step); `FeatureDistillation`
      of named layers needs Sequential or functional models.
    * `FeatureDistillation(loss=...)` takes a loss name or a Keras 3 loss /
      callable.

    Arguments:
        teacher, student, distillation_losses, distillation_loss_weights,
        student_loss_weight, temperature, alpha, teacher_cache, name: as
            `tfc.Distiller`, for built Keras 3 models.

    Example:

    ```python
    import keras
    student = tfc.prune(student, final_sparsity=0.8)          # a Keras 3 model
    distiller = tfc.Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.3)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x, y, epochs=10, callbacks=[tfc.CompressionCallback()])
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
        check_keras3_model(teacher, "tfc.Distiller (teacher)")
        check_keras3_model(student, "tfc.Distiller (student)")
        self.teacher_cache = check_cache_mode(teacher_cache)
        losses = as_loss_list(distillation_losses)
        weights = loss_weights(distillation_loss_weights, losses)
        alpha = resolve_alpha(alpha, student_loss_weight)
        temperature = resolve_temperature(temperature, losses)
        _check_models(teacher, student, losses)
        teacher_layers, student_layers = feature_layers(teacher, student, losses) if _has_features(losses) else ({}, {})

        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        object.__setattr__(self, "distillation_losses", losses)
        object.__setattr__(self, "distillation_loss_weights", weights)
        self.temperature = temperature
        self.alpha = alpha
        object.__setattr__(self, "_feature_fns", [_feature_fn(loss) for loss in losses])
        self.projections = projections(losses, keras3.layers.Dense)
        # Untracked: they share the models' layers, and tracking them would list every layer twice.
        object.__setattr__(self, "_teacher_extractor", extractor(teacher, teacher_layers, "teacher", keras3.Model))
        object.__setattr__(self, "_student_extractor", extractor(student, student_layers, "student", keras3.Model))

        values = {"alpha": alpha}
        if any(isinstance(loss, LogitsDistillation) for loss in losses):
            values = {"temperature": temperature, **values}
        for loss, weight in zip(losses, weights):
            values[f"{loss.name}_weight"] = weight
        # The optimizer steps this Distiller took; scheduled values are computed from it in the step.
        self.schedule_step = self.add_weight(
            name="schedule_step", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        object.__setattr__(self, "_values", {key: (value, self._span_variable(key, value)) for key, value in values.items()})
        object.__setattr__(self, "_step_set", False)
        object.__setattr__(self, "_has_student_loss", False)
        object.__setattr__(self, "_training_step", False)
        logged = [key for key, (value, _) in self._values.items() if key in ("temperature", "alpha") or is_scheduled(value)]
        each = [loss.name for loss in losses] if len(losses) > 1 else []
        self.distillation_logs = _DistillationLogs(["student_loss", "distillation_loss", *each], logged)
        self.teacher_cache_used = None
        self.built = True

    def _span_variable(self, key, value):
        """`(begin_step, end_step)` of a scheduled value as a variable the step reads; None for a constant."""
        if not is_scheduled(value):
            return None
        return self.add_weight(
            name=f"{key}_steps", shape=(2,), initializer="zeros", trainable=False, autocast=False
        )

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training, like `Model.compile`; `loss` is the hard-label (student) loss.

        Arguments:
            optimizer: the optimizer that trains the student (and projections).
                Wrapped in a `LossScaleOptimizer` when the student computes in
                float16.
            loss: the student's supervised loss on the labels `y`. May be None
                only when `alpha` is 0 (pure distillation, no labels needed).
            metrics: metrics of the student's predictions against `y`.
            **kwargs: passed to `Model.compile`.
        """
        check_student_loss(self.alpha, loss)
        object.__setattr__(self, "_has_student_loss", loss is not None)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        computes_in_float16 = any(
            getattr(layer, "compute_dtype", None) == "float16"
            for layer in self.student._flatten_layers(include_self=True, recursive=True)
        )
        if computes_in_float16 and not isinstance(self.optimizer, keras3.optimizers.LossScaleOptimizer):
            self.optimizer = keras3.optimizers.LossScaleOptimizer(self.optimizer)

    def call(self, inputs, training=None):
        """The student's forward pass (what `predict` and `evaluate` run)."""
        inputs, _ = teacher_cache.unpack(inputs)
        return self.student(inputs, training=training)

    def _teacher_features(self, x):
        if self._teacher_extractor is not None:
            return self._teacher_extractor(x, training=False)
        return {FINAL_OUTPUT: self.teacher(x, training=False)}

    @staticmethod
    def _numpy(tensor):
        return ops.convert_to_numpy(tensor)

    def _weight(self, key):
        """The value of `key` in the step: computed from the step count when scheduled, else the number."""
        value, span = self._values[key]
        if span is None:
            return float(value)
        step = ops.cast(self.schedule_step, "float32")
        begin, end = span[0], span[1]
        progress = ops.clip(ops.divide(step - begin, ops.maximum(end - begin, 1.0)), 0.0, 1.0)
        return value.initial_value + (value.final_value - value.initial_value) * progress

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`alpha * student_loss + (1 - alpha) * sum_i(w_i * distillation_loss_i)` plus regularization.

        In evaluation (`training=False`) the loss is the student's compiled
        loss only, as for tf_keras.

        Returns:
            A float32 scalar.
        """
        x, cached = teacher_cache.unpack(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        y_pred = _float32(y_pred)
        # Read by compute_metrics in the same trace: the distillation logs belong to training steps.
        object.__setattr__(self, "_training_step", bool(training))
        student_loss = ops.zeros((), "float32")
        if y is not None and self._has_student_loss:
            student_loss = ops.cast(self._compile_loss(y, y_pred, sample_weight), "float32")
        extra = [ops.cast(self._aggregate_additional_loss(loss), "float32") for loss in self.losses]
        regularization = ops.sum(ops.stack(extra)) if extra else 0.0
        if not training:
            return student_loss + regularization

        if self._student_extractor is not None:
            student_features = self._student_extractor(x, training=True)
        else:
            student_features = {FINAL_OUTPUT: y_pred}
        teacher_features = cached if cached is not None else self._teacher_features(x)
        terms = self._distillation_terms(teacher_features, student_features)
        weighted = [self._weight(f"{loss.name}_weight") * term for loss, term in zip(self.distillation_losses, terms)]
        distillation_loss = weighted[0] if len(weighted) == 1 else ops.sum(ops.stack(weighted))
        alpha = self._weight("alpha")
        total = alpha * student_loss + (1.0 - alpha) * distillation_loss + regularization

        batch = ops.shape(y_pred)[0]
        values = [self._weight(key) for key in self.distillation_logs.value_names]
        self.distillation_logs.update_state(
            [student_loss, distillation_loss, *(terms if len(terms) > 1 else [])], batch, values
        )
        self.schedule_step.assign_add(1)
        return total

    def _distillation_terms(self, teacher_features, student_features):
        terms = []
        remaining = iter(self.projections)
        for loss, feature_fn in zip(self.distillation_losses, self._feature_fns):
            teacher_output = _float32(teacher_features[loss.teacher_layer_name or FINAL_OUTPUT])
            student_output = _float32(student_features[loss.student_layer_name or FINAL_OUTPUT])
            if getattr(loss, "_needs_projection", False):
                student_output = _float32(next(remaining)(student_output))
            teacher_output = ops.stop_gradient(teacher_output)
            if isinstance(loss, LogitsDistillation):
                terms.append(logits_loss(loss.loss, teacher_output, student_output, self._weight("temperature")))
            elif feature_fn is not None:
                terms.append(ops.mean(feature_fn(teacher_output, student_output)))
            else:
                terms.append(ops.cast(loss.compute_loss(teacher_output, student_output), "float32"))
        return terms

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The compiled metrics of the student; training steps add the distillation logs."""
        logs = super().compute_metrics(x, y, _float32(y_pred), sample_weight)
        if not self._training_step:
            for key in self.distillation_logs.names + self.distillation_logs.value_names:
                logs.pop(key, None)
        elif not self._has_student_loss:
            logs.pop("student_loss", None)
        return logs

    # Schedules (driven by tfc.CompressionCallback through the Scheduled contract).

    def resolve_schedule(self, total_steps):
        """Lays the schedules over a fit of `total_steps` steps and writes their steps into the step's variables.

        Returns:
            One plan entry describing the distillation.
        """
        plan = self._distillation_plan(total_steps)
        sync_keras3_state(self)
        for value, span in self._values.values():
            if span is not None:
                span.assign([float(step) for step in value.steps])
        object.__setattr__(self, "_step_set", False)
        return plan

    def on_schedule_step(self, step):
        """Sets the step count once per fit, where the fit starts (`initial_epoch` included); the step counts on."""
        if self._step_set:
            return
        sync_keras3_state(self)
        self.schedule_step.assign(step)
        object.__setattr__(self, "_step_set", True)

    # Fit and saving.

    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains the student, like `Model.fit`; caches teacher outputs when it can.

        Arguments:
            x, y, *args, **kwargs: as `Model.fit`. Pass
                `callbacks=[tfc.CompressionCallback()]` when any value is a
                schedule or the student is pruned / clustered.

        Returns:
            The `History`; its logs include `loss` (the total), `student_loss`,
            `distillation_loss`, `temperature` and `alpha`.
        """
        self._check_callback(kwargs.get("callbacks"))
        verbose = kwargs.get("verbose", "auto") != 0
        x = self._with_teacher_outputs(x, verbose, kwargs.get("batch_size"))
        if not args:
            pipeline = array_batches(x, y, kwargs)
            if pipeline is not None:
                dataset, steps = pipeline
                # The pipeline batches and shuffles (Keras would warn that a dataset's shuffle is ignored).
                kwargs = {key: value for key, value in kwargs.items()
                          if key not in ("batch_size", "shuffle", "steps_per_epoch")}
                return super().fit(dataset, None, shuffle=False, steps_per_epoch=steps, **kwargs)
        return super().fit(x, y, *args, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        """Saves the student (what `predict` runs), not the Distiller; see `tfc.Distiller.save`.

        Arguments:
            filepath, overwrite, **kwargs: as `keras.Model.save`.
        """
        logging.log_first_n(
            logging.WARNING,
            "Distiller.save saves the student model only (distiller.student); the teacher is "
            "unchanged and projection layers are training-only. Load it with tfc.load_model "
            "(or keras.models.load_model after tfc.strip).",
            1,
        )
        self.student.save(filepath, overwrite=overwrite, **kwargs)

    def get_config(self):
        raise NotImplementedError(
            "tfc.Distiller is a training setup and is not serialized: save the student with "
            "distiller.student.save(path) (or distiller.save(path), which does the same), and "
            "tfc.strip(distiller.student) for a plain model."
        )


# fit() arguments that only Keras's own array slicing handles: with any of them, it slices.
_ARRAY_ONLY = ("class_weight", "sample_weight", "steps_per_epoch")


def array_batches(x, y, fit_kwargs):
    """Array inputs as a repeating `tf.data` pipeline of batches and its steps per epoch; None to leave them to Keras.

    Keras 3's array slicing builds a parallel input pipeline and starts two
    iterators of it every epoch (the second, started at an epoch's end, is
    dropped when the next epoch starts its own): 36-55 ms an epoch of a small
    model's fit on a 2-core CPU (tf_keras's own slicing: 11 ms). This pipeline
    is a shuffled range of indices, batched, gathering each batch from the
    arrays, repeated; with `steps_per_epoch` set to one pass, Keras 3 keeps
    one iterator of it for the whole fit. The batches are what Keras would
    give: `batch_size` (32 by default) in an order shuffled each epoch
    (`shuffle=True`, the default) or kept (`shuffle=False`), the last one
    partial; inputs and cached teacher outputs are gathered with the same
    indices. TensorFlow backend only; anything else Keras's slicing handles
    (validation_split, sample or class weights, steps_per_epoch,
    shuffle="batch") is left to it.

    Arguments:
        x, y: the inputs (teacher outputs packed beside them) and targets.
        fit_kwargs: the keyword arguments `fit` was given.

    Returns:
        `(dataset, steps_per_epoch)`, or None.
    """
    import tensorflow as tf

    if keras3.backend.backend() != "tensorflow" or fit_kwargs.get("validation_split"):
        return None
    if any(fit_kwargs.get(key) is not None for key in _ARRAY_ONLY):
        return None
    shuffle = fit_kwargs.get("shuffle", True)
    if shuffle not in (True, False) or not teacher_cache.array_inputs(x):
        return None
    if y is not None and not teacher_cache.array_inputs(y):
        return None
    arrays = x if y is None else (x, y)
    leaves = tf.nest.flatten(arrays)
    count = int(leaves[0].shape[0])
    if any(int(leaf.shape[0]) != count for leaf in leaves) or count == 0:
        return None  # Keras names the mismatch
    batch_size = fit_kwargs.get("batch_size") or 32
    tensors = tf.nest.map_structure(tf.convert_to_tensor, arrays)
    indices = tf.data.Dataset.range(count)
    if shuffle:
        # Each pass of the repeat is a new iteration of the shuffle: a new order every epoch.
        indices = indices.shuffle(count, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).repeat()
    dataset = batches.map(lambda index: tf.nest.map_structure(lambda t: tf.gather(t, index), tensors)).prefetch(1)
    return dataset, -(-count // batch_size)


def logits_loss(kind, teacher_logits, student_logits, temperature):
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))` (or the MSE of the logits / T), batch mean.

    Arguments:
        kind: `"kl_divergence"` or `"mse"` (`LogitsDistillation.loss`).
        teacher_logits, student_logits: float32 `(batch, classes)` tensors.
        temperature: a float or scalar tensor.

    Returns:
        A scalar tensor.
    """
    teacher_scaled = teacher_logits / temperature
    student_scaled = student_logits / temperature
    if kind == "mse":
        return ops.mean(ops.square(teacher_scaled - student_scaled))
    teacher_log_probs = ops.log_softmax(teacher_scaled, axis=-1)
    student_log_probs = ops.log_softmax(student_scaled, axis=-1)
    per_example = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return ops.mean(per_example) * temperature**2


class _DistillationLogs(keras3.metrics.Metric):
    """Running means of the Distiller's losses and the current value of each logged weight.

    One metric for all of them: a few ops per step, all metric variables,
    which JAX's step carries like any other metric.
    """

    def __init__(self, names, value_names, name="distillation_logs"):
        super().__init__(name=name)
        self.names = list(names)
        self.value_names = list(value_names)
        self.totals = self.add_variable(shape=(len(self.names),), initializer="zeros", name="totals")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        self.values = self.add_variable(shape=(max(len(self.value_names), 1),), initializer="zeros", name="values")

    def update_state(self, losses, batch_size, values):
        batch = ops.cast(batch_size, "float32")
        self.totals.assign(self.totals + ops.stack([ops.cast(v, "float32") for v in losses]) * batch)
        self.count.assign(self.count + batch)
        if values:
            self.values.assign(ops.stack([ops.cast(v, "float32") for v in values]))

    def result(self):
        means = ops.divide_no_nan(self.totals, self.count)
        logs = {name: means[index] for index, name in enumerate(self.names)}
        logs.update({name: self.values[index] for index, name in enumerate(self.value_names)})
        return logs

    def reset_state(self):
        self.totals.assign(ops.zeros(self.totals.shape))
        self.count.assign(0.0)


def _float32(tensor):
    """`tensor` in float32 when it is float16 / bfloat16: losses are computed in float32."""
    return ops.cast(tensor, "float32") if keras3.backend.standardize_dtype(tensor.dtype) in _HALF_TYPES else tensor


def _has_features(losses):
    return any(isinstance(loss, FeatureDistillation) for loss in losses)


def _is_graph_model(model):
    return getattr(model, "outputs", None) is not None


def _check_models(teacher, student, losses):
    check_outputs(teacher, student, _ends_in_softmax)
    subclassed = [role for role, model in (("teacher", teacher), ("student", student)) if not _is_graph_model(model)]
    if _has_features(losses) and subclassed:
        raise ValueError(
            f"FeatureDistillation reads named layers, which needs Sequential or functional models; the "
            f"{' and '.join(subclassed)} is subclassed. Distill its logits only (LogitsDistillation), or "
            "build it as a functional model."
        )


def _ends_in_softmax(model):
    last = model.layers[-1]
    if isinstance(last, keras3.layers.Softmax):
        return True
    return getattr(last, "activation", None) is keras3.activations.softmax


def _feature_fn(loss):
    """The Keras 3 function behind a `FeatureDistillation`'s `loss`; None for other losses."""
    if not isinstance(loss, FeatureDistillation):
        return None
    if isinstance(loss.loss, str):
        return keras3.losses.get(loss.loss)
    if type(loss.loss).__module__.startswith("tf_keras"):
        raise TypeError(
            f"FeatureDistillation(loss={loss.loss!r}) is a tf_keras loss, but the models are Keras 3: "
            "pass its name (e.g. 'mse') or a keras.losses object."
        )
    return loss.loss
