"""Pruning schedules resolved from the fit they run in.

They are tfmot `PruningSchedule`s, so tfmot's wrappers and mask updates use them
unchanged. Two things differ from tfmot's own schedules:

* `begin` / `end` may be fractions of the fit; `CompressionCallback` turns them
  into steps when `fit` starts (tfmot needs hand-computed step numbers).
* The mask-update frequency defaults to about 20 updates over the pruning span,
  and a final update always happens exactly at `end`, so even a fit of a few
  dozen steps reaches the target (tfmot's `frequency=100` never prunes there).

The resolved steps live in `tf.Variable`s, so a traced `train_function` reused
by a later `fit` sees the new values.
"""

import tensorflow as tf
from tfcompress._tfmot import tfmot

from tfcompress.scheduling import Span

# Mask updates over the pruning span when `frequency` is not given.
_UPDATES_PER_SPAN = 20
_MAX_FREQUENCY = 100


def _validate_sparsity(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1); got {value!r}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1) (a fraction of weights set to zero); got {value}."
        )
    return float(value)


class _FitSchedule(tfmot.sparsity.keras.PruningSchedule, Span, tf.Module):
    """Shared step handling of the schedules below.

    A `tf.Module`, so the wrapper holding it tracks its step variables: a
    SavedModel refuses traced functions that capture untracked variables.
    """

    def __init__(self, begin, end, frequency):
        tf.Module.__init__(self, name=type(self).__name__.lower())
        Span.__init__(self, begin, end, "The pruning schedule")
        if frequency is not None and (
            isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1
        ):
            raise ValueError(f"`frequency` must be an int >= 1 or None (automatic); got {frequency!r}.")
        self.frequency = frequency
        self._begin_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="begin_step")
        self._end_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="end_step")
        self._frequency = tf.Variable(1, dtype=tf.int64, trainable=False, name="frequency")
        self.steps = None
        if not self.needs_fit_length:
            self.resolve(None)

    @property
    def resolved(self):
        return self.steps is not None

    def resolve(self, total_steps):
        """Fixes the schedule's steps for a fit of `total_steps` optimizer steps.

        Returns:
            `(begin_step, end_step, frequency)`.
        """
        begin, end = Span.resolve(self, total_steps)
        frequency = self.frequency or max(1, min(_MAX_FREQUENCY, round((end - begin) / _UPDATES_PER_SPAN)))
        self._begin_step.assign(begin)
        self._end_step.assign(end)
        self._frequency.assign(frequency)
        self.steps = (begin, end, frequency)
        return self.steps

    def _should_prune(self, step):
        step = tf.cast(step, tf.int64)
        in_span = tf.logical_and(step >= self._begin_step, step <= self._end_step)
        on_turn = tf.logical_or(
            tf.equal(tf.math.floormod(step - self._begin_step, self._frequency), 0),
            tf.equal(step, self._end_step),
        )
        return tf.logical_and(in_span, on_turn)

    def due(self, step):
        """True when the masks update at optimizer `step` (Python; the Keras 3 path, driven from the callback)."""
        begin, end, frequency = self.steps
        return begin <= step <= end and ((step - begin) % frequency == 0 or step == end)

    def _python_progress(self, step):
        begin, end, _ = self.steps
        return min(max((step - begin) / max(end - begin, 1), 0.0), 1.0)

    def _progress(self, step):
        span = tf.cast(tf.maximum(self._end_step - self._begin_step, 1), tf.float32)
        done = tf.cast(tf.cast(step, tf.int64) - self._begin_step, tf.float32) / span
        return tf.clip_by_value(done, 0.0, 1.0)

    def _step_config(self):
        return {"begin": self.begin, "end": self.end, "frequency": self.frequency}


class PolynomialDecay(_FitSchedule):
    """Sparsity rises from `initial_sparsity` to `final_sparsity` along a polynomial.

    `sparsity(t) = final + (initial - final) * (1 - t) ** power`, with `t` the
    progress from `begin` to `end` (the schedule of Zhu & Gupta, 2017, as in tfmot).

    Arguments:
        initial_sparsity: sparsity at `begin`, in [0, 1).
        final_sparsity: sparsity reached at `end` and kept after, in [0, 1).
        begin: when pruning starts: a fraction of the fit (float) or a step (int).
        end: when the target is reached: a fraction of the fit (float) or a step (int).
        power: exponent of the decay; 3 prunes fast early and gently near the end.
        frequency: optimizer steps between mask updates; None picks about 20
            updates over the span. A last update always happens at `end`.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin=0.1, end=0.7)
    >>> schedule.resolve(total_steps=100)
    (10, 70, 3)
    """

    def __init__(self, initial_sparsity=0.0, final_sparsity=0.8, begin=0.0, end=0.75, power=3, frequency=None):
        self.initial_sparsity = _validate_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _validate_sparsity(final_sparsity, "final_sparsity")
        if not power > 0:
            raise ValueError(f"`power` must be > 0; got {power}.")
        self.power = power
        super().__init__(begin, end, frequency)

    def __call__(self, step):
        remaining = tf.pow(1.0 - self._progress(step), float(self.power))
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * remaining
        return self._should_prune(step), sparsity

    def sparsity_at(self, step):
        """The target sparsity at optimizer `step`, as a Python float (needs `resolve` first)."""
        remaining = (1.0 - self._python_progress(step)) ** self.power
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * remaining

    def get_config(self):
        return {
            "class_name": self.__class__.__name__,
            "config": {
                "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity,
                "power": self.power,
                **self._step_config(),
            },
        }


class ConstantSparsity(_FitSchedule):
    """Prunes to `target_sparsity` at once from `begin`, refreshing masks until `end`.

    Arguments:
        target_sparsity: sparsity applied at every mask update, in [0, 1).
        begin: first mask update: a fraction of the fit (float) or a step (int).
        end: last mask update: a fraction of the fit (float) or a step (int).
        frequency: optimizer steps between mask updates; None picks about 20.
    """

    def __init__(self, target_sparsity=0.8, begin=0.0, end=0.75, frequency=None):
        self.target_sparsity = _validate_sparsity(target_sparsity, "target_sparsity")
        super().__init__(begin, end, frequency)

    @property
    def final_sparsity(self):
        return self.target_sparsity

    def __call__(self, step):
        return self._should_prune(step), tf.constant(self.target_sparsity, tf.float32)

    def sparsity_at(self, step):
        """The target sparsity at optimizer `step`, as a Python float."""
        del step
        return self.target_sparsity

    def get_config(self):
        return {
            "class_name": self.__class__.__name__,
            "config": {"target_sparsity": self.target_sparsity, **self._step_config()},
        }


SCHEDULES = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}
