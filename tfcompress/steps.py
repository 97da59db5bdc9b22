"""Points in training given as a fraction of the fit or as an absolute step.

Every tfcompress schedule takes `begin=` / `end=` / `start=` style arguments that
are either a float in [0, 1] (a fraction of the fit's total optimizer steps,
epochs x steps_per_epoch) or an int (an absolute step). `CompressionCallback`
turns fractions into steps when `fit` starts, so nobody does step arithmetic.
"""

import numbers


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
