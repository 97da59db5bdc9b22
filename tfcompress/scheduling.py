"""Scheduling: when each compression happens inside `fit`, in one place.

* **Points.** Every tfcompress schedule takes `begin=` / `end=` / `start=`
  style arguments that are either a float in [0, 1] (a fraction of the fit's
  total optimizer steps, epochs x steps_per_epoch) or an int (an absolute
  step). `CompressionCallback` turns fractions into steps when `fit` starts,
  so nobody does step arithmetic.
* **Spans.** `Span` is a validated `(begin, end)` pair laid over a fit.
* **Scheduled parts.** A layer or model that compresses on a schedule
  (pruning aside, which drives tfmot's own counters) subclasses `Scheduled`.
  `CompressionCallback` finds every such part in the trained model, nested
  models included, calls `resolve_schedule(total_steps)` when `fit` starts
  and `on_schedule_step(step)` before every training batch. Parts switch
  phases by assigning their own variables, so a traced `train_function`
  never has to be retraced.
* **Values over the fit.** `LinearSchedule` moves a number (a distillation
  temperature or loss weight) from one value to another.
* **One error** for a schedule trained without the callback: `missing_callback`.
"""

import numbers

from tensorflow.python.saved_model import save_context

from tfcompress._layers import walk

def validate_point(value, name):
    """Checks one schedule point and returns it unchanged.

    Arguments:
        value: a float in [0, 1] (fraction of the fit) or an int >= 0 (step).
        name: the argument's name, used in the error message.

    Returns:
        `value`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a float in [0, 1] (a fraction of the fit) or an int >= 0 "
            f"(an absolute step); got {value!r}."
        )
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"`{name}` is a step number and must be >= 0; got {value}.")
    elif not 0.0 <= value <= 1.0:
        raise ValueError(
            f"`{name}` is a fraction of the fit and must be in [0, 1]; got {value}. "
            "Pass an int for an absolute step number."
        )
    return value


def is_fraction(value):
    """True when `value` is a fraction of the fit rather than a step number."""
    return not isinstance(value, numbers.Integral)


def resolve_point(value, total_steps):
    """Turns a fraction of the fit into a step; leaves step numbers alone.

    Arguments:
        value: a point accepted by `validate_point`.
        total_steps: the fit's total optimizer steps, or None when unknown.

    Returns:
        The step as an int.
    """
    if not is_fraction(value):
        return int(value)
    if total_steps is None:
        raise ValueError(
            "A schedule point is a fraction of the fit, but this fit's length is unknown. "
            "Pass `steps_per_epoch=` to fit() (needed for datasets of unknown length) "
            "or give the schedule absolute step numbers (ints)."
        )
    return int(round(value * total_steps))


class Span:
    """A `(begin, end)` pair of points, checked when given and resolved when `fit` starts.

    Arguments:
        begin: a point accepted by `validate_point`.
        end: a point accepted by `validate_point`.
        what: what the span schedules, named in errors (e.g. `"LinearSchedule"`).
    """

    def __init__(self, begin, end, what):
        self.begin = validate_point(begin, "begin")
        self.end = validate_point(end, "end")
        self.what = what
        if is_fraction(self.begin) == is_fraction(self.end) and self.begin > self.end:
            raise ValueError(f"{what} `begin` ({begin}) must not come after `end` ({end}).")

    @property
    def needs_fit_length(self):
        """True when `begin` or `end` is a fraction, so the fit's length is needed."""
        return is_fraction(self.begin) or is_fraction(self.end)

    def resolve(self, total_steps):
        """Returns `(begin_step, end_step)` for a fit of `total_steps` optimizer steps (None: unknown)."""
        begin = resolve_point(self.begin, total_steps)
        end = resolve_point(self.end, total_steps)
        if begin > end:
            raise ValueError(
                f"{self.what} begins at step {begin} but ends at step {end}; "
                "`begin` must not come after `end`."
            )
        return begin, end


def due_since(last_step, step, due):
    """True when `due(s)` holds for a step after `last_step` up to `step` (only `step` when `last_step` is None).

    With `steps_per_execution` one callback call follows several optimizer
    steps: an update due at any of them is caught up on.
    """
    first = step if last_step is None else last_step + 1
    return any(due(s) for s in range(first, step + 1))


def unknown_length(what, fix):
    """The error for a schedule given in fractions of a fit whose length is unknown.

    Arguments:
        what: what cannot be scheduled (e.g. `"pruning"`).
        fix: how to give the schedule without fractions (e.g. "give tfc.prune
            absolute step numbers for `begin` and `end`").
    """
    return ValueError(
        f"tfc.CompressionCallback cannot schedule {what}: its points are fractions of the fit, "
        "but this fit's length is unknown (a dataset of unknown size and no `steps_per_epoch`). "
        f"Pass `steps_per_epoch=` to fit(), or {fix}."
    )


def missing_callback(what):
    """The message for a model trained without `CompressionCallback`.

    Arguments:
        what: the parts that need the callback, e.g. "pruning wrappers, which run their schedule".
    """
    return (
        f"This model has tfcompress {what}, and they need "
        "`tfcompress.CompressionCallback()`. Train with "
        "`model.fit(..., callbacks=[tfc.CompressionCallback()])`."
    )


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
    return walk(model, Scheduled, include_self=True)


class LinearSchedule(Span):
    """A value that moves linearly from `initial_value` to `final_value`.

    Before `begin` the value is `initial_value`; after `end` it is
    `final_value`. Driven by `tfc.CompressionCallback` inside `fit`.

    Arguments:
        initial_value: the value until `begin`.
        final_value: the value from `end` on.
        begin: where the change starts: a fraction of the fit (float in
            [0, 1]) or an optimizer step (int). Defaults to 0.0.
        end: where it ends, same convention. Defaults to 1.0.

    Example:

    ```python
    # Soft targets early, sharper ones at the end; labels matter more late.
    distiller = tfc.Distiller(
        teacher=teacher, student=student,
        temperature=tfc.distillation.LinearSchedule(8.0, 2.0),
        alpha=tfc.distillation.LinearSchedule(0.1, 0.5, begin=0.5),
    )
    distiller.fit(x, y, epochs=10, callbacks=[tfc.CompressionCallback()])
    ```
    """

    def __init__(self, initial_value, final_value, begin=0.0, end=1.0):
        for name, value in (("initial_value", initial_value), ("final_value", final_value)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"LinearSchedule `{name}` must be a number; got {value!r}.")
        self.initial_value = float(initial_value)
        self.final_value = float(final_value)
        super().__init__(begin, end, "LinearSchedule")
        self.steps = None

    def resolve(self, total_steps):
        """Fixes `(begin_step, end_step)` for a fit of `total_steps` optimizer steps.

        Arguments:
            total_steps: the fit's optimizer steps, or None when unknown.

        Returns:
            `(begin_step, end_step)`.
        """
        self.steps = super().resolve(total_steps)
        return self.steps

    def value_at(self, step):
        """The value at optimizer `step` (needs `resolve` first when points are fractions)."""
        if self.steps is None:
            if self.needs_fit_length:
                raise RuntimeError(missing_callback("LinearSchedule values laid over the fit"))
            self.resolve(None)
        begin, end = self.steps
        if step <= begin:
            return self.initial_value
        if step >= end:
            return self.final_value
        return self.initial_value + (self.final_value - self.initial_value) * (step - begin) / (end - begin)

    def bounds(self):
        """The smallest and largest value the schedule takes."""
        return min(self.initial_value, self.final_value), max(self.initial_value, self.final_value)

    def __repr__(self):
        return (
            f"LinearSchedule({self.initial_value:g}, {self.final_value:g}, "
            f"begin={self.begin!r}, end={self.end!r})"
        )


def is_scheduled(value):
    """True when `value` is a schedule rather than a constant number."""
    return isinstance(value, LinearSchedule)


def check_value(value, name, low=None, high=None, low_inclusive=True, fix=""):
    """Validates a constant or scheduled value against `[low, high]` and returns it.

    Arguments:
        value: a number or a `LinearSchedule`.
        name: the argument's name, for the error message.
        low, high: bounds (None: unbounded).
        low_inclusive: False when `low` itself is not allowed.
        fix: a sentence telling the user what to pass instead.

    Returns:
        `value` (a float when it was a number).
    """
    if is_scheduled(value):
        values = value.bounds()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number or a tfc.distillation.LinearSchedule; got {value!r}."
        )
    else:
        value = float(value)
        values = (value, value)
    for v in values:
        too_low = low is not None and (v < low or (v == low and not low_inclusive))
        too_high = high is not None and v > high
        if too_low or too_high:
            if high is None:
                wanted = f"{'>=' if low_inclusive else '>'} {low:g}"
            else:
                wanted = f"in {'[' if low_inclusive else '('}{low:g}, {high:g}]"
            raise ValueError(f"`{name}` must be {wanted}; got {value!r}. {fix}".strip())
    return value
