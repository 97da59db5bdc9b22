"""Pruning of Keras 3 models: a mask constraint on each kernel, scheduled by the callback.

tfmot's wrapper layers exist only for tf_keras, and Keras 3 has no pruning.
Keras 3 optimizers apply each variable's `constraint` right after updating it,
inside the compiled train step, so a kernel whose constraint multiplies it by a
mask stays pruned after every step without any wrapper layer: the model keeps
its own layers, saves to `.keras` as itself and strips to a plain model.

* **The mask is a variable the step reads.** On TensorFlow the traced step
  reads it by reference. JAX's jitted step reads only the state it is handed,
  so `CompressionCallback` hands the masks in with the optimizer's variables
  for the length of the fit (a mask read any other way is frozen into the step).
* **The callback moves the masks** on the schedule (`schedules.py`): between
  steps, it sets each mask from the kernel's magnitudes and zeroes the kernel.
* **The mask is not saved.** After every step the kernel is zero exactly
  where the mask is, so a model loaded from `.keras` rebuilds its masks from
  its kernels (`kernel != 0`) and resumes on the same course.
* **Without the callback** the constraint refuses to run: building the train
  step of a fit that `CompressionCallback` does not drive raises an error
  naming it. A later fit that reuses an already compiled step (TensorFlow
  caches it per model) cannot be caught; it keeps the masks exactly as they
  are (the schedule does not move).
"""

import numpy as np
from absl import logging

from tfcompress._keras import is_keras3_functional, keras3, sync_keras3_state
from tfcompress._layers import clone_with_weights
from tfcompress.pruning.schedules import SCHEDULES, _FitSchedule, _validate_sparsity
from tfcompress.scheduling import Scheduled, due_since, missing_callback, unknown_length

MISSING_CALLBACK = missing_callback("pruning masks (Keras 3 kernel constraints), which follow a schedule")

# (weight attribute, constraint attribute) pairs a Keras 3 layer prunes or clusters: the constraint
# attribute is what `get_config` saves. DepthwiseConv kernels (`depthwise_constraint`) stay dense.
KERNEL_CONSTRAINTS = (
    ("kernel", "kernel_constraint"),
    ("pointwise_kernel", "pointwise_constraint"),
    ("embeddings", "embeddings_constraint"),
    ("recurrent_kernel", "recurrent_constraint"),
)


# ---- Keras 3 layers: which ones, their kernels, copying a model ----


def keras3_layers(model):
    """The layers of a Keras 3 model that compression may constrain, in order.

    Sequential/functional models: their layers, nested models' too (each
    constraint lands in a config that `.keras` saves). Subclassed models:
    every tracked layer.
    """
    if is_keras3_functional(model):
        layers = []
        for layer in model.layers:
            layers.extend(keras3_layers(layer) if isinstance(layer, keras3.Model) else [layer])
        return layers
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if not isinstance(layer, keras3.Model)]


def kernels_of(layer):
    """`[(owner, weight_attribute, constraint_attribute)]` for the kernels of `layer`.

    An RNN's are in its cell; a Bidirectional's in both directions' cells
    (each direction's config saves its constraints).
    """
    if isinstance(layer, keras3.layers.Bidirectional):
        return kernels_of(layer.forward_layer) + kernels_of(layer.backward_layer)
    owner = layer.cell if isinstance(getattr(layer, "cell", None), keras3.layers.Layer) else layer
    if not owner.built:
        return []
    found = []
    for weight, constraint in KERNEL_CONSTRAINTS:
        variable = getattr(owner, weight, None)
        if isinstance(variable, keras3.Variable) and len(variable.shape) >= 2 and hasattr(owner, constraint):
            found.append((owner, weight, constraint))
    return found


def attach(owner, weight, constraint_attribute, make_constraint):
    """Puts `make_constraint(inner)` on `owner`'s weight and in its config; returns the constraint."""
    variable = getattr(owner, weight)
    constraint = make_constraint(getattr(owner, constraint_attribute))
    setattr(owner, constraint_attribute, constraint)
    variable.constraint = constraint
    return constraint


def copy_model(model):
    """A copy of a Keras 3 Sequential/functional model with the same weights; a subclassed model itself.

    Keras cannot clone a subclassed model, so compression changes those in place.
    """
    if not is_keras3_functional(model):
        logging.info("%s is a subclassed Keras 3 model: it is compressed in place.", model.name)
        return model
    return clone_with_weights(model)


def compression_constraints(model):
    """`[(layer_name, variable, constraint)]` for every variable of `model` under a tfcompress constraint."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        owners = [layer] + ([layer.cell] if isinstance(getattr(layer, "cell", None), keras3.layers.Layer) else [])
        for owner in owners:
            for variable in owner._trainable_variables + owner._non_trainable_variables:
                if id(variable) in seen or not isinstance(variable.constraint, CompressionConstraint):
                    continue
                seen.add(id(variable))
                found.append((layer.name, variable, variable.constraint))
    return found


def plain_config(config):
    """A layer config with each tfcompress constraint replaced by the constraint it wraps (often None)."""
    if isinstance(config, dict):
        if str(config.get("registered_name", "")).startswith("tfcompress>"):
            return plain_config(config.get("config", {}).get("inner"))  # it may wrap another of ours
        return {key: plain_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [plain_config(value) for value in config]
    return config


class CompressionConstraint(keras3.constraints.Constraint):
    """Base of tfcompress's Keras 3 constraints: driven by `CompressionCallback`, wrapping the user's own.

    Arguments:
        inner: the constraint the weight had before (applied first), or None.
    """

    missing_callback = MISSING_CALLBACK

    def __init__(self, inner=None):
        self.inner = keras3.constraints.get(inner)
        # True only while CompressionCallback drives a fit; checked when the train step is built.
        self.driven = False

    def __call__(self, w):
        if not self.driven:
            raise RuntimeError(self.missing_callback)
        # The optimizer passes the variable itself; JAX ops take arrays only.
        w = keras3.ops.convert_to_tensor(w)
        if self.inner is not None:
            w = self.inner(w)
        return self.project(w)

    def project(self, w):
        raise NotImplementedError

    def state_variables(self):
        """The variables `project` reads (handed to JAX's jitted step with the optimizer's)."""
        return []

    def effective(self, values):
        """`values` (a numpy kernel) as the compressed model computes with it."""
        return values

    def get_config(self):
        return {"inner": keras3.constraints.serialize(self.inner)}


@keras3.saving.register_keras_serializable(package="tfcompress")
class PruningMask(CompressionConstraint):
    """Keeps a Keras 3 kernel zero where its mask is zero, after every optimizer step.

    The mask follows `schedule` (a `tfc.pruning.PolynomialDecay` or
    `ConstantSparsity`), moved by `tfc.CompressionCallback`. Users get it from
    `tfc.prune`, not by hand.

    Arguments:
        schedule: the pruning schedule, or its `get_config()` dict.
        m_by_n: `(m, n)`: m zeros in every n consecutive input weights, or None.
        inner: the kernel's own constraint (applied before the mask), or None.
    """

    def __init__(self, schedule, m_by_n=None, inner=None):
        super().__init__(inner)
        if not isinstance(schedule, _FitSchedule):
            schedule = SCHEDULES[schedule["class_name"]](**schedule["config"])
        self.schedule = schedule
        self.m_by_n = tuple(m_by_n) if m_by_n else None
        self.mask = None

    def build(self, kernel):
        """Creates the mask for `kernel`: zero where the kernel is zero (a loaded model resumes so)."""
        if self.mask is None or tuple(self.mask.shape) != tuple(kernel.shape):
            values = (np.asarray(kernel.numpy()) != 0).astype(kernel.dtype)
            self.mask = keras3.Variable(values, trainable=False, dtype=kernel.dtype, name="prune_mask")
        return self.mask

    def project(self, w):
        return w * keras3.ops.cast(self.mask, w.dtype)

    def state_variables(self):
        return [self.mask]

    def effective(self, values):
        if self.mask is None:
            return values
        return values * np.asarray(self.mask.numpy(), values.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "schedule": self.schedule.get_config(),
            "m_by_n": list(self.m_by_n) if self.m_by_n else None,
        }


def magnitude_mask(values, sparsity):
    """A 0/1 mask zeroing the `round(sparsity * size)` smallest magnitudes of `values`."""
    flat = np.abs(values).ravel()
    zeros = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, values.dtype)
    if zeros:
        mask[np.argpartition(flat, zeros - 1)[:zeros]] = 0
    return mask.reshape(values.shape)


def m_by_n_mask(values, m, n):
    """A 0/1 mask with m zeros in every block of n consecutive weights along the input channels (axis -2).

    Input channels that are not a multiple of n end in a partial block, padded
    with zeros that count among its m zeros, as tfmot's M:N masks do (the
    padded kernel is M:N): a first convolution over 3 channels keeps 2 of
    them at 2:4, over 1 channel keeps it.
    """
    moved = np.abs(np.moveaxis(values, -2, -1))
    channels = moved.shape[-1]
    pad = -channels % n
    if pad:
        moved = np.concatenate([moved, np.zeros(moved.shape[:-1] + (pad,), moved.dtype)], axis=-1)
    blocks = moved.reshape(-1, n)
    mask = np.zeros_like(blocks)
    # Kept: each block's n - m largest, the lower index first among equals (tfmot's top_k).
    np.put_along_axis(mask, np.argsort(-blocks, axis=1, kind="stable")[:, :n - m], 1, axis=1)
    mask = mask.reshape(moved.shape)[..., :channels]
    return np.moveaxis(mask, -1, -2).astype(values.dtype)


class PrunedKernel(Scheduled):
    """One masked Keras 3 kernel, as `CompressionCallback` drives it.

    Arguments:
        model: the model being trained (its JAX state is synced before the mask moves).
        layer_name: the layer's name, for the plan.
        variable: the kernel.
        constraint: its `PruningMask`.
    """

    def __init__(self, model, layer_name, variable, constraint):
        self.model = model
        self.layer_name = layer_name
        self.variable = variable
        self.constraint = constraint
        constraint.build(variable)
        self.size = int(np.prod(variable.shape))
        # Host-side count: on JAX a variable read mid-epoch is not the live value.
        self.kept = int(np.count_nonzero(constraint.mask.numpy()))
        self.last_step = None

    def resolve_schedule(self, total_steps):
        schedule = self.constraint.schedule
        if schedule.needs_fit_length and total_steps is None:
            raise unknown_length("pruning", "give tfc.prune absolute step numbers for `begin` and `end`")
        begin, end, frequency = schedule.resolve(total_steps)
        return [
            {
                "compression": "pruning",
                "layers": [self.layer_name],
                "final_sparsity": schedule.final_sparsity,
                "begin_step": begin,
                "end_step": end,
                "frequency": frequency,
                "total_steps": total_steps,
            }
        ]

    def on_schedule_step(self, step):
        if due_since(self.last_step, step, self.constraint.schedule.due):
            self.update(step)
        self.last_step = step

    def update(self, step):
        """Sets the mask from the kernel's magnitudes at the schedule's sparsity for `step`; zeroes the kernel."""
        sync_keras3_state(self.model)
        values = np.asarray(self.variable.numpy())
        if self.constraint.m_by_n:
            mask = m_by_n_mask(values, *self.constraint.m_by_n)
        else:
            mask = magnitude_mask(values, self.constraint.schedule.sparsity_at(step))
        self.constraint.mask.assign(mask)
        self.variable.assign(values * mask)
        self.kept = int(np.count_nonzero(mask))


def pruned_kernels(model):
    """A `PrunedKernel` for every masked kernel in a Keras 3 `model` (a clustered one's inner mask too)."""
    found = []
    for name, variable, constraint in compression_constraints(model):
        while isinstance(constraint, CompressionConstraint) and not isinstance(constraint, PruningMask):
            constraint = constraint.inner
        if isinstance(constraint, PruningMask):
            found.append(PrunedKernel(model, name, variable, constraint))
    return found


def prune_with_masks(model, schedule_for, target_for, chosen, named, m_by_n):
    """`tfc.prune` for a built Keras 3 model: puts a `PruningMask` on each chosen kernel.

    Arguments:
        model: the Keras 3 model (Sequential/functional: copied; subclassed: in place).
        schedule_for: `target_sparsity -> schedule`, one new schedule per call.
        target_for: `layer -> target sparsity` (from `final_sparsity` / `layer_sparsity`).
        chosen: `layer -> bool` from `layers=`, or None for every prunable layer.
        named: the layer names `layers=` lists explicitly (they must be prunable).
        m_by_n: `(m, n)` or None.

    Returns:
        The pruned model.
    """
    if compression_constraints(model):
        raise ValueError(
            "This model already carries tfcompress constraints. Prune a model once; to change "
            "the schedule, call tfc.strip(model) first and prune the result."
        )
    pruned = copy_model(model)
    skipped, masked = [], 0
    for layer in keras3_layers(pruned):
        if chosen is not None and not chosen(layer):
            continue
        kernels = kernels_of(layer)
        if not kernels:
            if layer.name in named:
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot be pruned: it has no kernel "
                    "with a constraint slot (DepthwiseConv, normalization and weightless layers stay "
                    "dense). Leave it out of `layers=`."
                )
            if any(len(w.shape) >= 2 for w in layer.weights) and "Depthwise" not in type(layer).__name__:
                skipped.append(layer.name)
            continue
        target = _validate_sparsity(target_for(layer), "layer_sparsity")
        for owner, weight, constraint_attribute in kernels:
            constraint = attach(
                owner, weight, constraint_attribute,
                lambda inner: PruningMask(schedule_for(target), m_by_n=m_by_n, inner=inner),
            )
            constraint.build(getattr(owner, weight))
            masked += 1
    if not masked:
        raise ValueError(
            "tfc.prune found no layer to prune in this model (it prunes the kernels of Dense, "
            "EinsumDense, Conv, SeparableConv pointwise, Embedding and recurrent layers)."
        )
    if skipped:
        logging.warning(
            "tfc.prune left these Keras 3 layers dense because they have no kernel constraint "
            "slot to hold a mask: %s.", ", ".join(skipped),
        )
    return pruned
