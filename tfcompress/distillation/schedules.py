"""Values that change over the fit: temperature and loss weights of a `Distiller`.

A value is either a plain number (constant) or a `LinearSchedule` whose
`begin` / `end` are fractions of the fit (floats in [0, 1]) or absolute
optimizer steps (ints), like every tfcompress schedule. The `Distiller` holds
each value in a `tf.Variable` that `tfc.CompressionCallback` assigns before
every batch, so the traced train function sees the change without retracing.
"""

import numbers

from tfcompress.steps import is_fraction, resolve_point, validate_point


class LinearSchedule:
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
        self.begin = validate_point(begin, "begin")
        self.end = validate_point(end, "end")
        if is_fraction(self.begin) == is_fraction(self.end) and self.begin > self.end:
            raise ValueError(f"LinearSchedule `begin` ({begin}) must not come after `end` ({end}).")
        self.steps = None

    @property
    def needs_fit_length(self):
        """True when `begin` or `end` is a fraction, so the fit's length is needed."""
        return is_fraction(self.begin) or is_fraction(self.end)

    def resolve(self, total_steps):
        """Fixes `(begin_step, end_step)` for a fit of `total_steps` optimizer steps.

        Arguments:
            total_steps: the fit's optimizer steps, or None when unknown.

        Returns:
            `(begin_step, end_step)`.
        """
        begin = resolve_point(self.begin, total_steps)
        end = resolve_point(self.end, total_steps)
        if begin > end:
            raise ValueError(
                f"LinearSchedule begins at step {begin} but ends at step {end}; "
                "`begin` must not come after `end`."
            )
        self.steps = (begin, end)
        return self.steps

    def value_at(self, step):
        """The value at optimizer `step` (needs `resolve` first when points are fractions)."""
        if self.steps is None:
            if self.needs_fit_length:
                raise RuntimeError(
                    "This LinearSchedule is laid over the fit by tfc.CompressionCallback: pass "
                    "`callbacks=[tfc.CompressionCallback()]` to fit()."
                )
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
