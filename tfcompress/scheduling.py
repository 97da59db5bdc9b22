"""The contract between `CompressionCallback` and the parts of a model it drives.

A layer or model that compresses on a schedule (pruning aside, which drives
tfmot's own counters) subclasses `Scheduled` as a mixin. `CompressionCallback`
finds every such part in the trained model, nested models included, and:

* calls `resolve_schedule(total_steps)` when `fit` starts, so fractions of
  the fit become optimizer steps;
* calls `on_schedule_step(step)` before every training batch with the
  optimizer step about to run (`fit(initial_epoch=k)` starts at epoch k).

Parts switch phases by assigning their own variables, so a traced
`train_function` never has to be retraced.
"""

from tensorflow.python.saved_model import save_context


def tracing_for_saving():
    """True while a SavedModel traces the model (its `training=True` functions too), not in `fit`.

    Parts refuse to train unscheduled; saving a model before its first fit must still work.
    """
    return save_context.in_save_context()


class Scheduled:
    """Mixin for layers and models that `CompressionCallback` drives."""

    def resolve_schedule(self, total_steps):
        """Fixes the schedule for a fit of `total_steps` steps (None: unknown).

        Returns:
            A list of plan entries (dicts with a `"compression"` key and a
            `"description"` line) shown when `fit` starts and kept in
            `CompressionCallback.plan`. Raises ValueError naming the fix when
            the schedule needs the fit's length and `total_steps` is None.
        """
        del total_steps
        return []

    def on_schedule_step(self, step):
        """Called before each training batch with the optimizer step about to run."""
        del step


def scheduled_parts(model):
    """Every `Scheduled` layer or model in `model`, `model` itself included."""
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True) if isinstance(layer, Scheduled)]
