"""`CompressionCallback`: the one callback that drives every schedule in a model."""

from absl import logging

from tfcompress._keras import keras
from tfcompress.pruning.prune import attach_sparsity_report
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization.quantize import attach_phase_report
from tfcompress.scheduling import scheduled_parts, unknown_length


class CompressionCallback(keras.callbacks.Callback):
    """Drives every compression schedule in the model from the fit's own numbers.

    Add it once to `fit`. When training starts it finds every tfcompress wrapper
    in the model (nested models included), turns the schedules' fractions into
    optimizer steps from `epochs x steps_per_epoch`, and advances tfmot's step
    counters. `fit(initial_epoch=k)` continues a schedule where epoch k begins.
    The model reports its current `sparsity` as a metric, so the progress bar,
    History, CSVLogger and TensorBoard show it.

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

    def on_train_begin(self, logs=None):
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
        if self.verbose and self.params.get("verbose", 1):
            for entry in self.plan:
                print(entry.get("description") or _describe(entry))

    def on_epoch_begin(self, epoch, logs=None):
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
        self._first_epoch = False

    def on_train_batch_begin(self, batch, logs=None):
        for part in self._parts:
            part.on_schedule_step(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        # The optimizer moves masked weights off zero after the last mask multiply: re-apply masks.
        for wrapper in self._pruning_wrappers:
            wrapper.pruning_obj.weight_mask_op()


def _merge_entry(plan, entry):
    """Adds `entry` to `plan`, folding it into an entry for the same schedule on other layers."""
    same = {key: value for key, value in entry.items() if key != "layers"}
    for known in plan:
        if {key: value for key, value in known.items() if key != "layers"} == same:
            known["layers"] = known.get("layers", []) + entry.get("layers", [])
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

