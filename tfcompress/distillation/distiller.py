"""`Distiller`: trains a student on labels and a frozen teacher's outputs inside `fit`.

One public class for both Keras generations: `tfc.Distiller(teacher=..., student=...)`
is this tf_keras `Model` for tf_keras models and a `Keras3Distiller` (`keras3.py`)
for Keras 3 models; `generation` decides, and a mixed pair is an error naming the fix.
"""

from absl import logging
import tensorflow as tf

from tfcompress._keras import KERAS3, TF_KERAS, check_model, generation, keras
from tfcompress._layers import walk
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
    unwrapped,
)
from tfcompress.distillation.keras3 import Keras3Distiller
from tfcompress.distillation.losses import FINAL_OUTPUT, LogitsDistillation, at_least_float32
from tfcompress.scheduling import Scheduled, is_scheduled


class _OneDistiller(type):
    """`isinstance(d, tfc.Distiller)` holds for the Keras 3 Distiller too: users see one class."""

    def __instancecheck__(cls, instance):
        return type.__instancecheck__(cls, instance) or (cls is Distiller and isinstance(instance, Keras3Distiller))


class Distiller(keras.Model, Scheduled, DistillerSetup, metaclass=_OneDistiller):
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
    (`alpha` is its `student_loss_weight`).

    Keras 3 teacher and student (`import keras`, TensorFlow or JAX backend)
    get a `tfc.distillation.Keras3Distiller`, a Keras 3 `Model` with the same
    arguments and behaviour (`isinstance(d, tfc.Distiller)` holds for it). A
    tf_keras teacher with a Keras 3 student, or the reverse, is an error
    naming the fix.

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

    def __new__(cls, *args, **kwargs):
        teacher = args[0] if args else kwargs.get("teacher")
        student = args[1] if len(args) > 1 else kwargs.get("student")
        if cls is Distiller and teacher is not None and student is not None:
            if models_generation(teacher, student) == KERAS3:
                return Keras3Distiller(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

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
        self.teacher_cache = check_cache_mode(teacher_cache)
        losses = as_loss_list(distillation_losses)
        weights = loss_weights(distillation_loss_weights, losses)
        alpha = resolve_alpha(alpha, student_loss_weight)
        temperature = resolve_temperature(temperature, losses)

        teacher_layers, student_layers = feature_layers(teacher, student, losses)
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.distillation_losses = losses
        self.temperature = temperature
        self.alpha = alpha
        self.distillation_loss_weights = weights
        self.projections = projections(losses, keras.layers.Dense)
        # Untracked: they share the models' layers, and tracking them would list every layer twice.
        object.__setattr__(self, "_teacher_extractor", extractor(teacher, teacher_layers, "teacher", keras.Model))
        object.__setattr__(self, "_student_extractor", extractor(student, student_layers, "student", keras.Model))

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
        check_student_loss(self.alpha, loss)
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
        self._last_values.clear()
        return self._distillation_plan(total_steps)

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


_GENERATION_NAMES = {TF_KERAS: "tf_keras (Keras 2)", KERAS3: "Keras 3"}


def models_generation(teacher, student):
    """The Keras generation of a teacher and student pair; a mixed pair raises a TypeError naming the fix.

    Returns:
        `TF_KERAS` or `KERAS3`.
    """
    kinds = {role: generation(model, f"tfc.Distiller ({role})") for role, model in
             (("teacher", teacher), ("student", student))}
    if kinds["teacher"] == kinds["student"]:
        return kinds["teacher"]
    old = "teacher" if kinds["teacher"] == TF_KERAS else "student"
    new = "student" if old == "teacher" else "teacher"
    raise TypeError(
        f"tfc.Distiller got a {_GENERATION_NAMES[kinds['teacher']]} teacher and a "
        f"{_GENERATION_NAMES[kinds['student']]} student; both must come from one Keras. To distill in "
        f"Keras 3, rebuild the {old} with `import keras` (the same layers in the same order) and copy "
        f"its weights over: `rebuilt.set_weights({old}.get_weights())`. To stay on tf_keras, build "
        f"the {new} with `import tf_keras as keras`."
    )


def _check_models(teacher, student):
    check_model(teacher, "tfc.Distiller (teacher)")
    check_model(student, "tfc.Distiller (student)")
    check_outputs(teacher, student, _ends_in_softmax)


def _ends_in_softmax(model):
    inner = unwrapped(model.layers[-1])
    if isinstance(inner, keras.layers.Softmax):
        return True
    activation = getattr(inner, "activation", None)
    return activation is keras.activations.softmax
