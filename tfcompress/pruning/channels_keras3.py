"""Channel pruning of Keras 3 models: whole channels masked by constraints, removed by `tfc.strip`.

The same groups, ranking and schedule as the tf_keras `ChannelPruned` model
(`channels.py`), held the Keras 3 way (`constraints.py`): the model keeps its
own layers, and each weight a masked channel lives in (a producer's filters
and bias, a BatchNorm's gamma and beta, a depthwise kernel) gets a
`ChannelMask` constraint. The optimizer applies it after every update inside
the compiled step, so a masked channel stays exactly zero on TensorFlow and
on JAX (where the masks travel with the optimizer's variables, as pruning
masks do). `tfc.CompressionCallback` moves the masks on the schedule; the
model saves to `.keras` with its masks and resumes; `tfc.strip` rebuilds it
with fewer filters and units.

Every `ChannelMask` of a model carries the same settings (schedule, targets,
importance); the channel groups are found again from the model's graph
whenever they are needed, so nothing but the masks has to be saved.
"""

import numpy as np

from tfcompress._keras import is_keras3_functional, keras3, sync_keras3_state
from tfcompress._layers import clone_with_weights
from tfcompress.pruning.channel_groups import CHANNEL, OUT, ChannelGraph
from tfcompress.pruning.channels import ChannelMasking, ChannelSchedule
from tfcompress.pruning.constraints import CompressionConstraint, compression_constraints
from tfcompress.scheduling import Scheduled, due_since, missing_callback, unknown_length

MISSING_CALLBACK = missing_callback("channel masks (Keras 3 constraints), which follow a schedule")

# The constraint slot of each weight a masked channel lives in.
CONSTRAINT_ATTRIBUTES = {
    "kernel": "kernel_constraint",
    "bias": "bias_constraint",
    "gamma": "gamma_constraint",
    "beta": "beta_constraint",
    "depthwise_kernel": "depthwise_constraint",
    "pointwise_kernel": "pointwise_constraint",
}


@keras3.saving.register_keras_serializable(package="tfcompress")
class ChannelMask(CompressionConstraint):
    """Keeps the masked channels of a Keras 3 weight at zero (whole slices along `axis`).

    Users get it from `tfc.prune(model, sparsity, structure="channels")`, not by hand.

    Arguments:
        axis: the weight's channel axis.
        settings: the model's channel pruning (schedule, targets, importance),
            the same in every mask of the model.
        kept: 1.0 / 0.0 per position along `axis` (a saved mask), or None
            (every position kept).
        inner: the weight's own constraint (applied before the mask), or None.
    """

    missing_callback = MISSING_CALLBACK

    def __init__(self, axis, settings, kept=None, inner=None):
        super().__init__(inner)
        self.axis = int(axis)
        self.settings = dict(settings)
        self._kept = None if kept is None else [float(value) for value in kept]
        self.mask = None

    def build(self, variable):
        """Creates the mask for `variable` (from the saved one when loaded)."""
        if self.mask is None:
            size = int(variable.shape[self.axis])
            values = np.ones(size, "float32") if self._kept is None else np.asarray(self._kept, "float32")
            if values.shape != (size,):
                raise ValueError(f"A saved channel mask has {values.size} entries for {size} channels.")
            self.mask = keras3.Variable(values, trainable=False, dtype="float32", name="channel_mask")
        return self.mask

    def _shape(self, rank):
        shape = [1] * rank
        shape[self.axis % rank] = -1
        return shape

    def project(self, w):
        return w * keras3.ops.reshape(keras3.ops.cast(self.mask, w.dtype), self._shape(len(w.shape)))

    def state_variables(self):
        return [self.mask]

    def effective(self, values):
        if self.mask is None:
            return values
        return values * np.reshape(np.asarray(self.mask.numpy(), values.dtype), self._shape(values.ndim))

    def get_config(self):
        kept = self._kept if self.mask is None else [float(v) for v in np.asarray(self.mask.numpy())]
        return {**super().get_config(), "axis": self.axis, "settings": dict(self.settings), "kept": kept}


def channel_masks(model):
    """`[(layer name, variable, ChannelMask)]` of a Keras 3 model (empty when it is not channel-pruned)."""
    return [
        (name, variable, constraint)
        for name, variable, constraint in compression_constraints(model)
        if isinstance(constraint, ChannelMask)
    ]


def is_channel_pruned_keras3(model):
    """True for a Keras 3 model returned by `tfc.prune(..., structure="channels")` (not yet stripped)."""
    return is_keras3_functional(model) and bool(channel_masks(model))


def channel_pruned_models(model):
    """The channel-pruned models in `model`: itself, or the ones it holds (a `Distiller`'s student)."""
    if is_channel_pruned_keras3(model):
        return [model]
    if not channel_masks(model):
        return []
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if is_channel_pruned_keras3(layer) and not any(layer in f._flatten_layers() for f in found):
            found.append(layer)
    return found


def _layers_by_name(model):
    return {layer.name: layer for layer in model.layers}


def attach_channel_masks(model, graph, settings):
    """Puts a `ChannelMask` on each weight of `model` a prunable channel of `graph` lives in."""
    layers = _layers_by_name(model)
    for layer_name, cuts in graph.slices.items():
        layer = layers[layer_name]
        for cut in cuts:
            if cut.role not in (OUT, CHANNEL):
                continue
            variable = getattr(layer, cut.weight)
            attribute = CONSTRAINT_ATTRIBUTES[cut.weight]
            if isinstance(layer, (keras3.layers.DepthwiseConv1D, keras3.layers.DepthwiseConv2D)):
                attribute = "depthwise_constraint"  # its kernel is `kernel`, its constraint is not
            constraint = ChannelMask(cut.axis % len(variable.shape), settings, inner=getattr(layer, attribute, None))
            setattr(layer, attribute, constraint)
            variable.constraint = constraint
            constraint.build(variable)


class Keras3ChannelPruning(ChannelMasking, Scheduled):
    """The channel pruning of one Keras 3 model, as `CompressionCallback`, `tfc.strip` and `tfc.summary` see it.

    Rebuilt from the model whenever needed: the groups from its graph, the
    schedule and targets from its masks' settings, which channels are kept
    from the masks themselves.

    Arguments:
        model: a Keras 3 model returned by `tfc.prune(..., structure="channels")`.
        trainer: the model `fit` trains, when it holds `model` (a `Distiller`):
            on JAX its training state is synced before the masks move.

    Attributes:
        channel_graph, targets: as on the tf_keras `ChannelPruned` model.
    """

    def __init__(self, model, trainer=None):
        masks = channel_masks(model)
        if not masks:
            raise TypeError("This Keras 3 model is not channel-pruned (tfc.prune(..., structure='channels')).")
        self._model = model
        self._trainer = trainer or model
        self._settings = masks[0][2].settings
        self.channel_graph = ChannelGraph(model)
        groups = {group.name for group in self.channel_graph.prunable_groups}
        self.targets = {name: value for name, value in self._settings["targets"].items() if name in groups}
        self._schedule = ChannelSchedule(
            self._settings["initial_sparsity"], self._settings["begin"], self._settings["end"],
            self._settings["power"], self._settings["frequency"], self._settings["schedule"] == "constant",
        )
        by_variable = {id(variable): constraint for _, variable, constraint in masks}
        self._masked = []  # (variable, constraint, owners): every masked weight, its positions' channel classes
        layers = _layers_by_name(model)
        for layer_name, cuts in self.channel_graph.slices.items():
            layer = layers[layer_name]
            for cut in cuts:
                if cut.role not in (OUT, CHANNEL):
                    continue
                variable = getattr(layer, cut.weight)
                constraint = by_variable.get(id(variable))
                if constraint is None:
                    raise ValueError(
                        f"The channel masks of this model do not match its layers ({layer_name!r} "
                        f"{cut.weight} has none): prune the original model again."
                    )
                constraint.build(variable)
                self._masked.append((variable, constraint, cut.owners))
        self.constraints = [constraint for _, constraint, _ in self._masked]
        self.last_step = None
        self.kept_now = self._read_kept()

    # ---- masks -------------------------------------------------------------------------------

    def _read_kept(self):
        keep = np.ones(self.channel_graph.num_classes, bool)
        for _, constraint, owners in self._masked:
            valid = owners >= 0
            keep[owners[valid]] &= np.asarray(constraint.mask.numpy())[valid] > 0.5
        return keep

    @property
    def kept(self):
        """A bool per channel class: True while the class is kept."""
        return self.kept_now.copy()

    def _set_kept(self, keep):
        for variable, constraint, owners in self._masked:
            mask = np.ones(len(owners), "float32")
            valid = owners >= 0
            mask[valid] = keep[owners[valid]]
            constraint.mask.assign(mask)
            variable.assign(constraint.effective(np.asarray(variable.numpy())))
        self.kept_now = np.asarray(keep, bool).copy()

    def apply_masks(self):
        """Zeroes the weights of masked channels now (the optimizer does it after each step)."""
        self._set_kept(self.kept_now)

    def channel_counts(self):
        """`(masked, total)`: the pruned groups' channels masked now, and all of them."""
        total = masked = 0
        for group in self.channel_graph.prunable_groups:
            if group.name in self.targets:
                ids = slice(group.first, group.first + group.channels)
                total += group.channels
                masked += int((~self.kept_now[ids]).sum())
        return masked, total

    # ---- schedule (driven by CompressionCallback) --------------------------------------------

    def resolve_schedule(self, total_steps):
        schedule = self._schedule
        if schedule.needs_fit_length and total_steps is None:
            raise unknown_length("channel pruning", "give tfc.prune absolute step numbers for `begin` and `end`")
        begin, end, frequency = schedule.resolve(total_steps)
        self.last_step = None
        return self._plan(total_steps, begin, end, frequency)

    def on_schedule_step(self, step):
        schedule = self._schedule
        if due_since(self.last_step, step, schedule.updates_at):
            sync_keras3_state(self._trainer)  # JAX: the live weights, which the masks are chosen from
            self.update_masks({name: schedule.sparsity(target, step) for name, target in self.targets.items()})
        self.last_step = step


def prune_channels_keras3(model, graph_of, settings):
    """`tfc.prune(..., structure="channels")` for a Keras 3 model: its copy with channel masks.

    Arguments:
        model: a built Keras 3 Sequential or functional model.
        graph_of: `copy -> (ChannelGraph, targets)`: the checks and targets `prune_channels` shares.
        settings: the schedule and importance settings.

    Returns:
        The copy, its layers unchanged but for the masks' constraints.
    """
    if not is_keras3_functional(model):
        raise ValueError(
            "tfc.prune(structure='channels') reads the model's graph to find which channels are coupled, "
            "and a subclassed Keras 3 model has none: build it as a functional or Sequential model "
            "(or prune it with structure=None)."
        )
    if compression_constraints(model):
        raise ValueError(
            "This model already carries tfcompress constraints. Prune a model once; to change "
            "the schedule, call tfc.strip(model) first and prune the result."
        )
    copy = clone_with_weights(model)
    graph, targets = graph_of(copy)
    attach_channel_masks(copy, graph, {**settings, "targets": targets})
    return copy
