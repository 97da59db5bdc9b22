"""`CompressionCallback`: the one callback that drives every schedule in a model."""

import logging as python_logging

import tensorflow as tf
from absl import logging

from tfcompress._keras import KERAS3, check_keras3_backend, generation, keras, keras3
from tfcompress.clustering.constraints import clustered_kernels
from tfcompress.pruning.channels_keras3 import Keras3ChannelPruning, channel_pruned_models
from tfcompress.pruning.constraints import PrunedKernel, pruned_kernels
from tfcompress.pruning.prune import attach_sparsity_report
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization.quantize import attach_phase_report, centroid_trained_kernels
from tfcompress.quantization.keras3 import qat_phase
from tfcompress.scheduling import scheduled_parts, unknown_length


class CompressionCallback(keras.callbacks.Callback):
    """Drives every compression schedule in the model from the fit's own numbers.

    Add it once to `fit`. When training starts it finds every tfcompress wrapper
    in the model (nested models included), turns the schedules' fractions into
    optimizer steps from `epochs x steps_per_epoch`, and advances tfmot's step
    counters. `fit(initial_epoch=k)` continues a schedule where epoch k begins.
    The model reports its current `sparsity` as a metric, so the progress bar,
    History, CSVLogger and TensorBoard show it.

    The same callback drives Keras 3 models (`import keras`; TensorFlow or JAX
    backend): Keras 3's `fit` calls a callback's hooks by name, so this one
    class serves both. There it finds the pruning and clustering constraints on
    the kernels, moves the masks and starts the clustering between steps, and
    writes `sparsity` into the batch and epoch logs (callbacks listed after it,
    History included, see it).

    Arguments:
        verbose: 1 prints the resolved plan when training starts (only when
            `fit` itself is verbose); 0 prints nothing.

    Example:

    ```python
    model = tfc.prune(model, final_sparsity=0.8)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=5, callbacks=[tfc.CompressionCallback()])
    history.history["sparsity"]   # per epoch
    ```
    """

    # Keras 3 on JAX may run the batch-end hook on a worker thread (no per-step wait for the
    # step's results): this one only records the batch and writes `sparsity` into its logs.
    async_safe = True

    def __init__(self, verbose=1):
        super().__init__()
        # The batch hooks never read the logs: let Keras keep them as tensors (no per-step sync).
        self._supports_tf_logs = True
        self.verbose = verbose
        self.plan = []
        self._pruning_wrappers = []
        self._steps_per_epoch = None
        self._first_epoch = True
        self._parts = []
        self._step = 0
        self._keras3 = None
        self._quiet_kernels = None

    @property
    def step(self):
        """The training step the schedules are at: optimizer steps, counted from the fit's own numbers."""
        return self._keras3.step if self._keras3 else self._step

    def on_train_begin(self, logs=None):
        if generation(self.model, "tfc.CompressionCallback") == KERAS3:
            self._keras3 = _Keras3Fit(self.model, self.params)
            self.plan = self._keras3.begin()
            if self.verbose and self.params.get("verbose", 1):
                for entry in self.plan:
                    print(entry.get("description") or _describe(entry))
            return
        self._keras3 = None
        _create_training_variables_at_first_step(self.model)
        wrappers = find_pruning_wrappers(self.model)
        self._steps_per_epoch = self.params.get("steps")
        epochs = self.params.get("epochs")
        total = self._steps_per_epoch * epochs if self._steps_per_epoch and epochs else None
        self.plan = []
        for schedule in _unique(w.pruning_schedule for w in wrappers):
            if not hasattr(schedule, "resolve"):
                continue  # a tfmot schedule with its own step numbers
            if schedule.needs_fit_length and total is None:
                raise unknown_length("pruning", "give tfc.prune absolute step numbers for `begin` and `end`")
            begin, end, frequency = schedule.resolve(total)
            layers = [w.layer.name for w in wrappers if w.pruning_schedule is schedule]
            _merge_entry(
                self.plan,
                {
                    "compression": "pruning",
                    "layers": layers,
                    "final_sparsity": schedule.final_sparsity,
                    "begin_step": begin,
                    "end_step": end,
                    "frequency": frequency,
                    "total_steps": total,
                },
            )
        for entry in self.plan:
            if total is not None and entry["end_step"] > total:
                logging.warning(
                    "Pruning of %s ends at step %d but this fit has %d steps: the target sparsity "
                    "will not be reached in this fit.", ", ".join(entry["layers"]), entry["end_step"], total,
                )
        self._parts = scheduled_parts(self.model)
        for part in self._parts:
            for entry in part.resolve_schedule(total):
                _merge_entry(self.plan, entry)
        if not wrappers and not self._parts:
            logging.warning(
                "tfc.CompressionCallback found no compression wrapper in the model. Pass the "
                "model returned by tfc.prune (not the original) to fit()."
            )
        # Counters move only once every schedule is known to resolve.
        self._pruning_wrappers = wrappers
        # tfmot's wrappers start at step -1, which its graph assert rejects (as UpdatePruningStep does).
        keras.backend.batch_set_value(
            [(w.pruning_step, 0) for w in wrappers if keras.backend.get_value(w.pruning_step) < 0]
        )
        self._step = int(keras.backend.get_value(self.model.optimizer.iterations)) if self.model.optimizer else 0
        attach_sparsity_report(self.model)
        attach_phase_report(self.model)
        self._first_epoch = True
        self._scheduled_step = None
        kernels = centroid_trained_kernels(self.model)
        if kernels:
            self._quiet_kernels = _NoGradientByDesign(kernels)
            tf.get_logger().addFilter(self._quiet_kernels)
        if self.verbose and self.params.get("verbose", 1):
            for entry in self.plan:
                print(entry.get("description") or _describe(entry))

    def on_epoch_begin(self, epoch, logs=None):
        if self._keras3:
            return self._keras3.epoch_begin(epoch)
        if self._first_epoch and self.model.optimizer:
            # A BackupAndRestore listed after this callback restores the optimizer's step only now.
            self._step = max(self._step, int(keras.backend.get_value(self.model.optimizer.iterations)))
        # fit(initial_epoch=k) on a model whose counters are behind: start the schedule at epoch k.
        if self._first_epoch and self._steps_per_epoch:
            start = epoch * self._steps_per_epoch
            updates = [
                (w.pruning_step, start)
                for w in self._pruning_wrappers
                if keras.backend.get_value(w.pruning_step) < start
            ]
            keras.backend.batch_set_value(updates)
            self._step = max(self._step, start)
        if self._first_epoch:
            # What starts on the first step (clustering's k-means, QAT's switch) runs here, not in
            # the first batch, which tf_keras times against the step ("Callback ... is slow").
            self._schedule_step()
        self._first_epoch = False

    def _schedule_step(self):
        """Tells every scheduled part the current step, once per step."""
        if self._step != self._scheduled_step:
            for part in self._parts:
                part.on_schedule_step(self._step)
            self._scheduled_step = self._step

    def on_train_batch_begin(self, batch, logs=None):
        if self._keras3:
            return self._keras3.batch_begin(batch)
        self._batch_begin = batch
        self._schedule_step()

    def on_train_batch_end(self, batch, logs=None):
        if self._keras3:
            return self._keras3.batch_end(batch, logs)
        # With compile(steps_per_execution=N) one call runs N steps: tf_keras passes the call's
        # first step to batch_begin and its last to batch_end.
        self._step += batch - self._batch_begin + 1

    def on_epoch_end(self, epoch, logs=None):
        if self._keras3:
            return self._keras3.epoch_end(logs)
        # The optimizer moves masked weights off zero after the last mask multiply: re-apply masks.
        for wrapper in self._pruning_wrappers:
            wrapper.pruning_obj.weight_mask_op()

    def on_train_end(self, logs=None):
        if self._keras3:
            self._keras3.end()
        if self._quiet_kernels is not None:
            tf.get_logger().removeFilter(self._quiet_kernels)
            self._quiet_kernels = None


class _NoGradientByDesign(python_logging.Filter):
    """Drops TensorFlow's "Gradients do not exist for variables" warning when it lists only `names`.

    Cluster-preserving QAT trains those kernels through their centroids, so
    the warning (which asks whether `compile()` was given a loss) is expected
    there; any other variable without a gradient is still reported.
    """

    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def filter(self, record):
        if not str(record.msg).startswith("Gradients do not exist for variables"):
            return True
        listed = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (isinstance(listed, (list, tuple)) and listed and set(listed) <= self.names)


class _Keras3Fit:
    """One Keras 3 fit driven by `CompressionCallback`: constraints, scheduled parts, `sparsity` logs.

    Holds the model itself, not Keras 3's `Callback.model`: on JAX that property
    syncs the whole training state, which every batch would pay for.
    """

    def __init__(self, model, params):
        check_keras3_backend("tfc.CompressionCallback")
        self.model = model
        self.params = params
        self.kernels = []
        self.channels = []
        self.parts = []
        self.step = 0
        self.epoch_start = 0
        self.last_batch = None
        self.first_epoch = True
        self.step_variables = []

    def begin(self):
        steps = self.params.get("steps")
        epochs = self.params.get("epochs")
        total = steps * epochs if steps and epochs else None
        self.kernels = pruned_kernels(self.model) + clustered_kernels(self.model)
        self.channels = [Keras3ChannelPruning(part, self.model) for part in channel_pruned_models(self.model)]
        self.parts = self.kernels + self.channels + scheduled_parts(self.model)
        plan = []
        for part in self.parts:
            for entry in part.resolve_schedule(total):
                _merge_entry(plan, entry)
        for entry in plan:
            if entry["compression"] == "pruning" and total is not None and entry["end_step"] > total:
                logging.warning(
                    "Pruning of %s ends at step %d but this fit has %d steps: the target sparsity "
                    "will not be reached in this fit.", ", ".join(entry["layers"]), entry["end_step"], total,
                )
        if not self.parts:
            logging.warning(
                "tfc.CompressionCallback found no compression in this Keras 3 model. Pass the "
                "model returned by tfc.prune / tfc.cluster (not the original) to fit()."
            )
        # Constraints refuse to run unless driven; set only once every schedule resolved.
        for constraint in self._constraints():
            constraint.driven = True
        # A pruned and clustered kernel's mask is both constraints' state: list it once.
        self.step_variables = list({id(v): v for c in self._constraints() for v in c.state_variables()}.values())
        self._hand_to_step(True)
        _build_keras3_at_first_step(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        self.step = int(keras3.ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else 0
        self.first_epoch = True
        return plan

    def _constraints(self):
        return [kernel.constraint for kernel in self.kernels] + [c for part in self.channels for c in part.constraints]

    def _hand_to_step(self, on):
        """On JAX, lists the constraints' variables with the optimizer's, so the jitted step reads them live.

        JAX's train step reads only the state the fit loop hands it: model,
        optimizer and metric variables. Constraints run inside the optimizer's
        update, which sees the trainable and optimizer variables; anything else
        would be a constant frozen into the compiled step. They leave the list
        at each epoch's end, so a model saved then holds the usual optimizer.
        """
        optimizer = getattr(self.model, "optimizer", None)
        if keras3.backend.backend() != "jax" or optimizer is None:
            return
        listed = optimizer._variables
        known = {id(v) for v in listed}
        if on:
            listed.extend(v for v in self.step_variables if id(v) not in known)
        else:
            mine = {id(v) for v in self.step_variables}
            listed[:] = [v for v in listed if id(v) not in mine]

    def epoch_begin(self, epoch):
        self._hand_to_step(True)
        steps = self.params.get("steps")
        # fit(initial_epoch=k): start the schedule where epoch k begins.
        if self.first_epoch and steps:
            self.step = max(self.step, epoch * steps)
        self.first_epoch = False
        self.epoch_start = self.step
        self.last_batch = None

    # The step comes from the batch index Keras passes, so the batch-end hook changes no count: on
    # JAX, Keras runs it on a worker thread while the main thread starts the next step
    # (`async_safe`), and the next batch-begin need not wait for it.
    def batch_begin(self, batch):
        self.step = self.epoch_start + batch
        for part in self.parts:
            part.on_schedule_step(self.step)

    def batch_end(self, batch, logs):
        # With steps_per_execution, `batch` is the call's last step.
        self.last_batch = batch
        self._log_sparsity(logs)

    def epoch_end(self, logs):
        if self.last_batch is not None:
            done = self.last_batch + 1
            steps = self.params.get("steps")
            # Keras 3 names a call's last step as if it ran steps_per_execution steps, and the
            # epoch's last call may run fewer: the epoch has `steps`.
            self.step = self.epoch_start + (min(done, steps) if steps else done)
        self._log_sparsity(logs)
        self._hand_to_step(False)

    def end(self):
        # The last update of a schedule that ends with the fit (`end=1.0`) falls after the last batch.
        for part in self.kernels + self.channels:
            part.on_schedule_step(self.step)
        self._hand_to_step(False)
        for constraint in self._constraints():
            constraint.driven = False

    def sparsity(self):
        """The share of masked weights over every pruned kernel, or None when nothing is pruned."""
        pruned = [k for k in self.kernels if isinstance(k, PrunedKernel)]
        if not pruned:
            return None
        return 1.0 - sum(k.kept for k in pruned) / sum(k.size for k in pruned)

    def _log_sparsity(self, logs):
        sparsity = self.sparsity()
        if logs is not None and sparsity is not None:
            logs["sparsity"] = sparsity
        if logs is not None and self.channels:
            counts = [part.channel_counts() for part in self.channels]
            logs["channel_sparsity"] = sum(m for m, _ in counts) / max(1, sum(t for _, t in counts))
        phase = qat_phase(self.parts)
        if logs is not None and phase is not None:
            logs["qat_phase"] = phase


def _merge_entry(plan, entry):
    """Adds `entry` to `plan`, folding it into an entry for the same schedule on other layers."""
    same = {key: value for key, value in entry.items() if key != "layers"}
    for known in plan:
        if {key: value for key, value in known.items() if key != "layers"} == same:
            layers = known.get("layers", [])
            known["layers"] = layers + [name for name in entry.get("layers", []) if name not in layers]
            return
    plan.append(dict(entry))


def _unique(items):
    seen = []
    for item in items:
        if not any(item is s for s in seen):
            seen.append(item)
    return seen


def _describe(entry):
    layers = entry["layers"]
    names = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    total = f" of {entry['total_steps']}" if entry["total_steps"] else ""
    return (
        f"tfcompress: pruning {len(layers)} layer(s) ({names}) to "
        f"{entry['final_sparsity']:.0%} sparsity over steps {entry['begin_step']}-"
        f"{entry['end_step']}{total}, mask update every {entry['frequency']} step(s)"
    )


def _create_training_variables_at_first_step(model):
    """Has the first call of `model.train_function` create the training variables before it steps.

    The optimizer's slots and the compiled loss and metrics' variables are
    created inside the first train step, and a `tf.function` that creates
    variables is traced a second time without them: the first epoch of a
    pruned or quantization-aware model paid two traces (a toy QAT CNN: 2.7 CPU
    s, 1.5 with one). The first call reads the data's spec from its iterator
    and creates them eagerly, then steps. Only for the standard train step and
    one output; anything unexpected leaves Keras's usual path (the Distiller
    creates its own before `fit`).
    """
    if (
        getattr(model, "train_function", None) is None
        or type(model).train_step is not keras.Model.train_step
        or len(getattr(model, "outputs", None) or []) != 1
        or not isinstance(model.optimizer, keras.optimizers.Optimizer)
    ):
        return
    _before_first_call(model, lambda spec: _create_training_variables(model, spec))


def _build_keras3_at_first_step(model):
    """Keras 3 on TensorFlow: builds the optimizer, compiled loss and metrics before the first step traces.

    Keras 3 builds them this way (`_symbolic_build`, from the data's spec)
    only under a distribution strategy; otherwise they are created inside the
    first trace, and TensorFlow traces the step again. A compressed model's
    step is large (prune + QAT + distillation of bench_keras3's digits CNN:
    1,550 graph ops), and its first epoch went from 3.2-4.8 s to 2.0-2.4 s with
    one trace. Any failure leaves Keras's own path.
    """
    if (
        keras3.backend.backend() != "tensorflow"
        or getattr(model, "train_function", None) is None
        or getattr(model, "_distribute_strategy", None) is not None
        or not hasattr(model, "_symbolic_build")
    ):
        return
    _before_first_call(model, lambda spec: model._symbolic_build(data_batch=spec))


def _before_first_call(model, build):
    """Runs `build(element_spec)` when `model.train_function` is first called, then restores it and steps."""
    train_function = model.train_function

    def first_call(iterator):
        model.train_function = train_function
        try:
            build(iterator.element_spec)
        except Exception as error:  # Keras creates them in the first step, as it always did
            logging.debug("Training variables left to the first step: %s", error)
        return train_function(iterator)

    model.train_function = first_call


def _create_training_variables(model, element_spec):
    import tensorflow as tf

    from tf_keras.src.engine import data_adapter

    def one(spec):
        return tf.zeros([1, *[1 if d is None else d for d in spec.shape[1:]]], spec.dtype)

    _, y_spec, _ = data_adapter.unpack_x_y_sample_weight(element_spec)
    output = model.outputs[0]
    y_pred = tf.zeros([1, *output.shape[1:]], output.dtype)
    with model.distribute_strategy.scope():
        model.optimizer.build(model.trainable_variables)
        if y_spec is None:
            return
        y_true = tf.nest.map_structure(one, y_spec)
        if model.compiled_loss is not None and not model.compiled_loss.built:
            model.compiled_loss.build(y_pred)
        if model.compiled_metrics is not None and not model.compiled_metrics.built:
            model.compiled_metrics.build(y_pred, y_true)
