"""Channel pruning: whole filters masked inside `fit`, then removed by `tfc.strip`.

`tfc.prune(model, 0.5, structure="channels")` returns a `ChannelPruned`
model: the same layers, plus one mask over every removable channel. Before
the masks change, nothing is different from the dense model. As the fit goes
on, `tfc.CompressionCallback` ranks the channels of each group (the layers
whose channels are coupled, see `channel_groups.py`) by importance and masks
the weakest, following the polynomial schedule of unstructured pruning.
A masked channel's filters, bias and BatchNorm gamma / beta are zero, so the
channel is exactly zero wherever it is read; the optimizer's variable
constraints keep them at zero after every step, whatever `train_step` runs
(a `Distiller`'s included). `tfc.strip` then rebuilds the model with fewer
filters and units and copies the surviving weights: a smaller, faster
model that loads with plain tf_keras and converts to TFLite at any precision.

Keras 3 models hold the same masks as constraints of their own layers
(`channels_keras3.py`); the groups, ranking, schedule and rebuild here serve
both.
"""

import dataclasses

from absl import logging
import numpy as np
import tensorflow as tf

from tfcompress._keras import (
    KERAS3, check_keras3_model, check_model, generation, is_keras3_object, is_model, keras, keras3, weight_name,
)
from tfcompress._layers import clone_with_weights, layer_selector, named_layers
from tfcompress._metrics import report_metric
from tfcompress.pruning.channel_groups import CHANNEL, OUT, ChannelGraph, count_macs
from tfcompress.pruning.constraints import plain_config
from tfcompress.pruning.schedules import (
    _MAX_FREQUENCY,
    _UPDATES_PER_SPAN,
    ConstantSparsity,
    PolynomialDecay,
    _validate_sparsity,
)
from tfcompress.scheduling import Scheduled, Span, is_fraction, missing_callback, tracing_for_saving, unknown_length

__all__ = [
    "ChannelPruned", "channel_summary", "count_macs", "prune_channels", "shrink_for_quantization", "strip_channels",
]

DEFAULT_CHANNEL_SPARSITY = 0.5
IMPORTANCE = ("l2", "l1")

MISSING_CALLBACK = missing_callback("channel masks, which follow a schedule")
CLONE_ERROR = (
    "This model is channel-pruned (tfc.prune(..., structure='channels')): its masks live on its own "
    "variables and do not survive cloning or wrapping. Call tfc.strip(model) first: it rebuilds the "
    "smaller model, which can then be pruned again or quantized, e.g. tfc.quantize(tfc.strip(model))."
)


def channels_removed(share, channels):
    """How many of a group's `channels` a sparsity `share` masks: rounded, and never all of them."""
    return min(channels - 1, int(share * channels + 0.5))


class _MaskConstraint:
    """`weight * mask` along one axis; the optimizer applies it after every update.

    Arguments:
        mask: the model's mask variable (index 0 is always 1).
        index: for each position along `axis`, its entry in `mask`.
        axis: the channel axis of the weight.
        rank: the weight's rank.
        previous: a constraint the weight already had, applied first.
    """

    def __init__(self, mask, index, axis, rank, previous):
        self.mask = mask
        self.index = tf.constant(index, tf.int32)
        self.shape = [1] * rank
        self.shape[axis] = -1
        self.previous = previous

    def __call__(self, weight):
        if self.previous is not None:
            weight = self.previous(weight)
        factor = tf.reshape(tf.gather(self.mask, self.index), self.shape)
        return weight * tf.cast(factor, weight.dtype)


class ChannelSchedule(Span):
    """When and how far channels are masked: the fit-aware polynomial (or constant) schedule.

    The same steps as `tfc.pruning.PolynomialDecay`: fractions of the fit
    resolved by `CompressionCallback`, about 20 mask updates by default, and a
    last update exactly at `end` (at the fit's last step when `end` is a
    fraction that reaches the end of the fit).
    """

    def __init__(self, initial_sparsity, begin, end, power, frequency, constant):
        super().__init__(begin, end, "The channel pruning schedule")
        if frequency is not None and (isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1):
            raise ValueError(f"`frequency` must be an int >= 1 or None (automatic); got {frequency!r}.")
        if not power > 0:
            raise ValueError(f"`power` must be > 0; got {power}.")
        self.initial_sparsity = initial_sparsity
        self.power = power
        self.frequency = frequency
        self.constant = constant
        self.steps = None

    def resolve(self, total_steps):
        begin, end = Span.resolve(self, total_steps)
        if total_steps and is_fraction(self.end) and end >= total_steps:
            end = max(begin, total_steps - 1)  # the fit has no step `total_steps`: finish on its last one
        frequency = self.frequency or max(1, min(_MAX_FREQUENCY, round((end - begin) / _UPDATES_PER_SPAN)))
        self.steps = (begin, end, frequency)
        return self.steps

    def updates_at(self, step):
        """True when the masks change before optimizer step `step`."""
        if self.steps is None:
            return False
        begin, end, frequency = self.steps
        return begin <= step <= end and ((step - begin) % frequency == 0 or step == end)

    def sparsity(self, target, step):
        """The share of a group's channels masked at `step`, for a group whose target is `target`."""
        begin, end, _ = self.steps
        if self.constant:
            return target
        progress = 1.0 if end <= begin else min(max((step - begin) / (end - begin), 0.0), 1.0)
        initial = min(self.initial_sparsity, target)
        return target + (initial - target) * (1.0 - progress) ** self.power


class ChannelMasking:
    """What a channel-pruned model of either Keras does with its masks: rank, choose, plan.

    The holder has `channel_graph`, `targets`, `_settings` and `_schedule`,
    and gives `kept` (a bool per channel class), `_model` (whose layers hold
    the weights) and `_set_kept(keep)` (writes the masks and zeroes the
    masked channels' weights).
    """

    def _variables(self):
        return {
            (layer.name, weight_name(variable)): variable
            for layer in self._model.layers
            for variable in layer.weights
        }

    def importance(self):
        """Each channel class's importance: the norms of its filters plus BatchNorm |gamma|.

        Each member (a kernel's filters, a depthwise kernel's channels, a
        BatchNorm's gamma) is scaled to mean 1 over the group first, so a big
        convolution does not drown the BatchNorm that rescales it.

        Returns:
            A float array, one entry per channel class.
        """
        graph = self.channel_graph
        variables = self._variables()
        scores = np.zeros(graph.num_classes)
        for layer_name, cuts in graph.slices.items():
            for cut in cuts:
                if cut.role not in (OUT, CHANNEL) or cut.weight in ("bias", "beta"):
                    continue
                value = variables[(layer_name, cut.weight)].numpy()
                rows = np.moveaxis(value, cut.axis, 0).reshape(value.shape[cut.axis], -1)
                if self._settings["importance"] == "l1" or cut.weight == "gamma":
                    per_position = np.abs(rows).sum(axis=1)
                else:
                    per_position = np.sqrt(np.square(rows).sum(axis=1))
                valid = cut.owners >= 0
                member = np.zeros(graph.num_classes)
                np.add.at(member, cut.owners[valid], per_position[valid])
                touched = np.unique(cut.owners[valid])
                mean = member[touched].mean()
                if mean > 0:
                    scores += member / mean
        return scores

    def update_masks(self, sparsity=None):
        """Masks the least important channels of every pruned group, now.

        Arguments:
            sparsity: the share of each group's channels to mask: a float for
                every group, a `{group name: float}` dict, or None for each
                group's final target. Masked channels stay masked.

        Returns:
            The number of channel classes now masked.
        """
        graph = self.channel_graph
        if sparsity is None:
            wanted = dict(self.targets)
        elif isinstance(sparsity, dict):
            wanted = {name: sparsity[name] for name in self.targets if name in sparsity}
        else:
            wanted = {name: float(sparsity) for name in self.targets}
        keep = self.kept
        scores = self.importance()
        for group in graph.prunable_groups:
            if group.name not in wanted:
                continue
            ids = np.arange(group.first, group.first + group.channels)
            remove = channels_removed(wanted[group.name], group.channels)
            ranked = np.where(keep[ids], scores[ids], -np.inf)
            order = np.argsort(ranked, kind="stable")
            group_keep = np.ones(group.channels, bool)
            group_keep[order[:remove]] = False
            group_keep &= keep[ids]
            keep[ids] = group_keep
            # Every producer keeps at least one filter (coupled groups may span several).
            for cut in graph.producer_slices(group):
                classes = np.unique(cut.owners[cut.owners >= 0])
                if len(classes) and not keep[classes].any():
                    keep[classes[np.argmax(scores[classes])]] = True
        self._set_kept(keep)
        return int((~keep).sum())

    def planned_cost(self):
        """`((params, macs) dense, (params, macs) at every group's target)` of the stripped model."""
        graph = self.channel_graph
        keep = np.ones(graph.num_classes, bool)
        for group in graph.prunable_groups:
            if group.name in self.targets:
                remove = channels_removed(self.targets[group.name], group.channels)
                keep[group.first:group.first + remove] = False
        return graph.cost(), graph.cost(keep)

    def _plan(self, total_steps, begin, end, frequency):
        """The plan entry `CompressionCallback` prints and returns for the resolved schedule."""
        targets = sorted(set(self.targets.values()))
        before, after = self.planned_cost()
        total = f" of {total_steps}" if total_steps else ""
        names = list(self.targets)
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        share = f"{targets[0]:.0%}" if len(targets) == 1 else f"{targets[0]:.0%}-{targets[-1]:.0%}"
        description = (
            f"tfcompress: channel pruning of {len(names)} group(s) ({shown}): {share} of their channels "
            f"masked over steps {begin}-{end}{total}, mask update every {frequency} step(s); at the target "
            f"params {before[0]:,} -> {after[0]:,}, MACs {before[1]:,} -> {after[1]:,}"
        )
        return [{
            "compression": "channel pruning",
            "layers": names,
            "final_sparsity": targets[0] if len(targets) == 1 else dict(self.targets),
            "begin_step": begin,
            "end_step": end,
            "frequency": frequency,
            "total_steps": total_steps,
            "params": [before[0], after[0]],
            "macs": [before[1], after[1]],
            "description": description,
        }]


@keras.utils.register_keras_serializable(package="tfcompress")
class ChannelPruned(ChannelMasking, keras.Model, Scheduled):
    """A functional model whose channels are masked group by group during `fit`.

    Users get it from `tfc.prune(model, sparsity, structure="channels")`.
    Its layers are ordinary tf_keras layers; one non-trainable weight,
    `channel_mask`, says which channel classes are kept. Training needs
    `tfc.CompressionCallback()`; `tfc.strip` returns the smaller plain model.

    Attributes:
        channel_graph: the `ChannelGraph` (groups, slices) of the model.
        targets: `{group name: final share of its channels removed}`.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        settings = kwargs.pop("channel_pruning", None)
        super().__init__(inputs=inputs, outputs=outputs, name=name, trainable=trainable, **kwargs)
        if settings is None:
            raise ValueError(CLONE_ERROR)
        graph = ChannelGraph(self)
        groups = {group.name: group for group in graph.prunable_groups}
        unknown = sorted(set(settings["targets"]) - set(groups))
        if unknown:
            raise ValueError(f"Channel groups {unknown} are not prunable groups of this model.")
        schedule = ChannelSchedule(
            settings["initial_sparsity"], settings["begin"], settings["end"], settings["power"],
            settings["frequency"], settings["schedule"] == "constant",
        )
        # Plain attributes: the graph and schedule hold no weights, and tracking would list layers twice.
        object.__setattr__(self, "channel_graph", graph)
        object.__setattr__(self, "_settings", dict(settings))
        object.__setattr__(self, "_schedule", schedule)
        object.__setattr__(self, "_driven", False)
        targets = {name: settings["targets"][name] for name in groups if name in settings["targets"]}
        object.__setattr__(self, "targets", targets)
        self.channel_mask = self.add_weight(
            name="channel_mask", shape=(graph.num_classes + 1,), initializer="ones", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        object.__setattr__(self, "_constrained", self._install_constraints())
        object.__setattr__(self, "_apply_function", None)

    # ---- masks -------------------------------------------------------------------------------

    @property
    def _model(self):
        return self

    @property
    def kept(self):
        """A bool per channel class: True while the class is kept."""
        return self.channel_mask.numpy()[1:] > 0.5

    def _set_kept(self, keep):
        self.channel_mask.assign(np.concatenate([[1.0], keep.astype(np.float32)]))
        self.apply_masks()

    def _install_constraints(self):
        variables = self._variables()
        constrained = []
        for layer_name, cuts in self.channel_graph.slices.items():
            for cut in cuts:
                if cut.role not in (OUT, CHANNEL):
                    continue
                variable = variables[(layer_name, cut.weight)]
                rank = len(variable.shape)
                constraint = _MaskConstraint(
                    self.channel_mask, cut.owners + 1, cut.axis % rank, rank, variable.constraint
                )
                # The optimizer applies a variable's constraint after each update; tf.Variable has no setter.
                variable._constraint = constraint
                constrained.append((variable, constraint))
        return constrained

    def apply_masks(self):
        """Zeroes the weights of masked channels now (the optimizer does it after each step)."""
        if self._apply_function is None:
            # One traced function: a few hundred eager assigns would cost more than the batch.
            def apply():
                for variable, constraint in self._constrained:
                    variable.assign(constraint(variable))

            object.__setattr__(self, "_apply_function", tf.function(apply, autograph=False))
        self._apply_function()

    # ---- schedule (driven by CompressionCallback) --------------------------------------------

    def resolve_schedule(self, total_steps):
        schedule = self._schedule
        if schedule.needs_fit_length and total_steps is None:
            raise unknown_length("channel pruning", "give tfc.prune absolute step numbers for `begin` and `end`")
        begin, end, frequency = schedule.resolve(total_steps)
        object.__setattr__(self, "_driven", True)
        self.apply_masks()  # traces the mask function now, not inside the first batch
        if getattr(self, "_channel_report", None) is None:
            # `channel_sparsity` in the logs: the share of the pruned groups' channels masked now.
            members = np.zeros(self.channel_graph.num_classes, np.float32)
            for group in self.channel_graph.prunable_groups:
                if group.name in self.targets:
                    members[group.first:group.first + group.channels] = 1.0
            object.__setattr__(
                self, "_channel_report", (report_metric(self, "channel_sparsity"), tf.constant(members))
            )
        return self._plan(total_steps, begin, end, frequency)

    def on_schedule_step(self, step):
        schedule = self._schedule
        if schedule.updates_at(step):
            self.update_masks({name: schedule.sparsity(target, step) for name, target in self.targets.items()})

    # A Python check at trace time: autograph would bury the error in generated code.
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, mask=None):
        if training is True and not self._driven and not tracing_for_saving():
            raise RuntimeError(MISSING_CALLBACK)
        outputs = super().call(inputs, training=training, mask=mask)
        report = getattr(self, "_channel_report", None)
        if training is True and report is not None:
            metric, members = report
            kept = tf.reduce_sum(self.channel_mask[1:] * members)
            self.add_metric(metric(1.0 - kept / tf.reduce_sum(members)))
        return outputs

    # ---- saving --------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config["channel_pruning"] = dict(self._settings)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        settings = config.pop("channel_pruning")
        plain = keras.Model.from_config(config, custom_objects=custom_objects)
        return cls(plain.inputs, plain.outputs, name=config.get("name"), channel_pruning=settings)


def is_channel_pruned(model):
    """True for a model returned by `tfc.prune(..., structure="channels")` (not yet stripped), of either Keras."""
    if isinstance(model, ChannelPruned):
        return True
    if not is_keras3_object(model):
        return False
    from tfcompress.pruning.channels_keras3 import is_channel_pruned_keras3  # it builds on this module

    return is_channel_pruned_keras3(model)


def channel_pruning(model):
    """What a channel-pruned model of either Keras masks: the tf_keras `ChannelPruned` model itself, or a
    `Keras3ChannelPruning` read from a Keras 3 model's masks (`channel_graph`, `targets`, `kept`...)."""
    if isinstance(model, ChannelPruned):
        return model
    from tfcompress.pruning.channels_keras3 import Keras3ChannelPruning

    return Keras3ChannelPruning(model)


def shrink_for_quantization(model):
    """The smaller model `model` was channel-pruned into, for `tfc.quantize` to wrap.

    Masks live on the `ChannelPruned` model's own variables and would not
    survive tfmot's cloning, so QAT runs in a second fit on the physically
    smaller model. `tfc.quantize(channel_pruned)` calls this: once the
    pruning fit has reached every group's target it rebuilds the model with
    `tfc.strip` and says so; before that it refuses, naming the fit to run.

    Arguments:
        model: a `ChannelPruned` model.

    Returns:
        The stripped, smaller plain model of the same Keras.
    """
    pruning = channel_pruning(model)
    kept = pruning.kept
    behind = []
    for group in pruning.channel_graph.prunable_groups:
        if group.name not in pruning.targets:
            continue
        planned = channels_removed(pruning.targets[group.name], group.channels)
        masked = int((~kept[group.first:group.first + group.channels]).sum())
        if masked < planned:
            behind.append(f"{group.name} ({masked}/{planned} channels masked)")
    if behind:
        raise ValueError(
            "tfc.quantize got a channel-pruned model whose channels are not pruned yet: "
            f"{', '.join(behind[:3])}{' and more' if len(behind) > 3 else ''}. Channel pruning and QAT "
            "take two fits: fit this model with tfc.CompressionCallback() until the schedule ends, then "
            "call tfc.quantize(model): it rebuilds the smaller model (tfc.strip) and adds QAT to it."
        )
    (before, _), _ = pruning.planned_cost()
    stripped = strip_channels(model)
    logging.info(
        "tfc.quantize: the channel-pruned model was rebuilt smaller with tfc.strip (%s -> %s params) "
        "before quantization-aware training.", f"{before:,}", f"{stripped.count_params():,}",
    )
    return stripped


def _schedule_settings(schedule, initial_sparsity, final_sparsity, begin, end, power, frequency):
    if isinstance(schedule, (PolynomialDecay, ConstantSparsity)):
        config = schedule.get_config()["config"]
        constant = isinstance(schedule, ConstantSparsity)
        return {
            "schedule": "constant" if constant else "polynomial",
            "initial_sparsity": 0.0 if constant else config["initial_sparsity"],
            "begin": config["begin"], "end": config["end"], "power": config.get("power", 3),
            "frequency": config["frequency"],
        }, config.get("final_sparsity", config.get("target_sparsity"))
    if schedule not in ("polynomial", "constant"):
        raise ValueError(
            "`schedule` must be 'polynomial', 'constant', or a tfc.pruning.PolynomialDecay / "
            f"ConstantSparsity instance; got {schedule!r}."
        )
    ChannelSchedule(initial_sparsity, begin, end, power, frequency, schedule == "constant")  # validates
    return {
        "schedule": schedule, "initial_sparsity": initial_sparsity, "begin": begin, "end": end,
        "power": power, "frequency": frequency,
    }, final_sparsity


def _explicit_targets(group_layers, layer_sparsity):
    """The `layer_sparsity` values that name (or type-match) a layer of the group."""
    found = {}
    for layer in group_layers:
        for key, value in (layer_sparsity or {}).items():
            if (isinstance(key, str) and key == layer.name) or (not isinstance(key, str) and isinstance(layer, key)):
                found[layer.name] = value
                break
    return found


def prune_channels(
    model,
    final_sparsity=None,
    *,
    structure="channels",
    initial_sparsity=0.0,
    begin=0.0,
    end=0.75,
    schedule="polynomial",
    power=3,
    frequency=None,
    m_by_n=None,
    layers=None,
    layer_sparsity=None,
    importance="l2",
):
    """Returns a copy of `model` whose channels are masked group by group during `fit`.

    `tfc.prune(model, sparsity, structure="channels")` calls this. Channels
    that must go together (a convolution's filter, its BatchNorm, the
    depthwise channel after it, the kernel rows reading it, every channel a
    residual `Add` or an SE `Multiply` ties to it, `Concatenate` offsets and
    `Flatten` -> `Dense` rows) form a group's channel; each group loses
    `final_sparsity` of its channels, the least important first (L2 norm of
    the filters plus BatchNorm |gamma|). `tfc.CompressionCallback` runs the
    schedule; `tfc.strip` then returns the physically smaller model.

    Groups whose channels reach a model output (the classifier) or a layer
    that cannot be sliced (LSTM, LayerNormalization, a softmax over
    channels, nested models, ...) are left whole and named in a warning.

    Arguments:
        model: a built Sequential or functional model of either Keras.
        final_sparsity: share of each group's channels removed at `end`, in
            [0, 1). Defaults to 0.5.
        structure: "channels".
        initial_sparsity, begin, end, schedule, power, frequency: the schedule,
            as for unstructured `tfc.prune` (fractions of the fit or steps).
        m_by_n: not available with channels (an error names the fix).
        layers: which groups to prune: names, classes or a predicate over
            layers; a group is pruned when one of its producing layers
            (the Conv / Dense whose filters are its channels) is chosen.
        layer_sparsity: `{name or layer class: sparsity}` for the group a
            producing layer belongs to.
        importance: "l2" (default) or "l1" norm of the filters.

    Returns:
        A `ChannelPruned` model for tf_keras; for Keras 3, a copy of the model
        whose masked weights carry `ChannelMask` constraints. Compile it
        before `fit`.

    Raises:
        ValueError: no group of the model can be pruned; a target would
            remove every channel of a group; a layer named in `layers` or
            `layer_sparsity` cannot be channel-pruned.

    Example:

    ```python
    pruned = tfc.prune(model, 0.5, structure="channels")
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(x, y, epochs=5, callbacks=[tfc.CompressionCallback()])
    small = tfc.strip(pruned)        # fewer filters and units, same layer types
    ```
    """
    keras3_model = generation(model, "tfc.prune") == KERAS3
    if keras3_model:
        check_keras3_model(model, "tfc.prune")
    else:
        check_model(model, "tfc.prune")
    if structure != "channels":
        raise ValueError(f"`structure` must be None, 'unstructured' or 'channels'; got {structure!r}.")
    if is_channel_pruned(model):
        raise ValueError(CLONE_ERROR)
    if m_by_n is not None:
        raise ValueError(
            "`m_by_n` is a pattern of zeros inside kernels, not a number of channels; drop it with "
            "structure='channels' (or drop structure= for M:N pruning)."
        )
    if importance not in IMPORTANCE:
        raise ValueError(f"`importance` must be one of {IMPORTANCE}; got {importance!r}.")
    settings, final_sparsity = _schedule_settings(
        schedule, initial_sparsity, final_sparsity, begin, end, power, frequency
    )
    if final_sparsity is None:
        final_sparsity = DEFAULT_CHANNEL_SPARSITY
    final_sparsity = _validate_sparsity(final_sparsity, "final_sparsity")
    _validate_sparsity(settings["initial_sparsity"], "initial_sparsity")
    for value in (layer_sparsity or {}).values():
        _validate_sparsity(value, "layer_sparsity")

    settings = {**settings, "importance": importance}
    if keras3_model:
        from tfcompress.pruning.channels_keras3 import prune_channels_keras3  # it builds on this module

        return prune_channels_keras3(
            model, lambda copy: _groups_and_targets(copy, final_sparsity, layers, layer_sparsity), settings
        )
    copy = clone_with_weights(model)
    graph, targets = _groups_and_targets(copy, final_sparsity, layers, layer_sparsity)
    return ChannelPruned(copy.inputs, copy.outputs, name=copy.name, channel_pruning={**settings, "targets": targets})


def _groups_and_targets(copy, final_sparsity, layers, layer_sparsity):
    """The `ChannelGraph` of `copy` and each chosen group's target; warns of the groups left whole."""
    graph = ChannelGraph(copy)
    chosen = layer_selector(copy, layers)
    by_name = {layer.name: layer for layer in copy.layers}
    left_whole = [g for g in graph.groups if not g.prunable]
    if not graph.prunable_groups:
        reasons = "; ".join(f"{g.name}: {g.reason}" for g in left_whole[:8])
        raise ValueError(
            "tfc.prune(structure='channels') found no group of channels it can remove in this model"
            + (f" ({reasons})" if reasons else " (it has no Conv, Dense or SeparableConv layer)")
            + ". Channel pruning slices Conv, Dense, DepthwiseConv, SeparableConv and BatchNorm layers "
            "joined by activations, pooling, Add, Multiply, Concatenate and Flatten; use structure=None "
            "for unstructured pruning."
        )

    targets = {}
    for group in graph.prunable_groups:
        if chosen is not None and not any(chosen(by_name[n]) for n in group.producers if n in by_name):
            continue
        producers = [by_name[n] for n in group.producers if n in by_name]
        explicit = _explicit_targets(producers, layer_sparsity)
        if len(set(explicit.values())) > 1:
            raise ValueError(
                f"`layer_sparsity` gives different targets {explicit} to layers whose channels are "
                f"coupled (group {group.name}: {', '.join(group.layers)}); they lose the same channels. "
                "Give the group one value."
            )
        target = next(iter(explicit.values()), final_sparsity)
        remove = int(target * group.channels + 0.5)
        if remove >= group.channels:
            raise ValueError(
                f"A channel sparsity of {target} would remove all {group.channels} channel(s) of "
                f"{group.name} (coupled layers: {', '.join(group.layers)}). Lower final_sparsity, give the "
                f"group its own value with layer_sparsity={{{group.name!r}: ...}}, or leave it whole with `layers=`."
            )
        targets[group.name] = target

    # Names choose groups through the layers whose filters the channels are.
    producing = {name for g in graph.prunable_groups for name in g.producers}
    unprunable = {name: g for g in left_whole for name in g.producers}
    for name in sorted(named_layers(layers) | {k for k in (layer_sparsity or {}) if isinstance(k, str)}):
        if name in unprunable:
            raise ValueError(f"Layer {name!r} cannot be channel-pruned: {unprunable[name].reason}.")
        if name not in producing:
            raise ValueError(
                f"Layer {name!r} has no output channels of its own to prune: name the Conv, Dense or "
                "SeparableConv layer whose filters feed it (its group is pruned with that layer)."
            )
    if not targets:
        raise ValueError("`layers=` chose none of the model's prunable channel groups: nothing would be pruned.")

    blocked = [g for g in left_whole if "outputs of the model" not in g.reason]
    if blocked:
        logging.warning(
            "tfc.prune(structure='channels') leaves these layers whole: %s.",
            "; ".join(f"{', '.join(g.layers or g.producers)} ({g.reason})" for g in blocked),
        )
    outputs = [g for g in left_whole if g not in blocked]
    if outputs:
        logging.info(
            "tfc.prune(structure='channels') keeps every channel of %s: they are the model's outputs.",
            ", ".join(g.name for g in outputs),
        )
    return graph, targets


def strip_channels(model):
    """Rebuilds a channel-pruned model with only its kept channels.

    Every layer keeps its type and configuration, with fewer `filters` /
    `units` where channels were removed; the surviving weights (kernels,
    biases, BatchNorm parameters and statistics) are copied. The masked
    model and the result compute the same function up to float rounding.

    Arguments:
        model: a model returned by `tfc.prune(..., structure="channels")`.

    Returns:
        A new, uncompiled functional model of the same Keras (Keras 3: without
        tfcompress constraints).
    """
    if not is_channel_pruned(model):
        raise TypeError(f"strip_channels expects a channel-pruned model; got {type(model).__name__}.")
    pruning = channel_pruning(model)
    graph, keep = pruning.channel_graph, pruning.kept
    pruning.apply_masks()
    nodes = {}
    for node in graph.nodes:
        nodes.setdefault(node.layer.name, node)
    pairs = []

    def resize(layer):
        if is_model(layer):
            return clone_with_weights(layer)
        if not hasattr(layer, "weights"):  # a Keras 3 op on a tensor (`x + 3.0`): no weights, no channels cut
            return layer.__class__.from_config(layer.get_config())
        # Keras 3: the masks' constraints leave with the masks (the user's own stay).
        config = plain_config(layer.get_config())
        for cut in graph.slices.get(layer.name, []):
            if cut.role == OUT and cut.weight in ("kernel", "pointwise_kernel"):
                config["filters" if "filters" in config else "units"] = graph.kept_count(cut.owners, keep)
        node = nodes.get(layer.name)
        if type(layer).__name__ == "Reshape" and node is not None:
            target = list(config["target_shape"])
            if target[-1] != -1:
                target[-1] = graph.kept_count(node.output, keep)
                config["target_shape"] = tuple(target)
        new = layer.__class__.from_config(config)
        pairs.append((layer, new))
        return new

    if isinstance(model, ChannelPruned):
        rebuilt = keras.models.clone_model(keras.Model(model.inputs, model.outputs, name=model.name),
                                           clone_function=resize)
    else:
        rebuilt = keras3.models.clone_model(model, clone_function=resize)
    for old, new in pairs:
        cuts = graph.slices.get(old.name, [])
        targets = {weight_name(v): v for v in new.weights}
        for variable in old.weights:
            value = np.asarray(variable.numpy())
            for cut in cuts:
                if cut.weight == weight_name(variable):
                    value = np.take(value, graph.kept_positions(cut.owners, keep), axis=cut.axis)
            target = targets[weight_name(variable)]
            if tuple(target.shape) != value.shape:
                raise RuntimeError(
                    f"Rebuilding {old.name!r}: weight {weight_name(variable)!r} is {tuple(target.shape)} in "
                    f"the smaller model but {value.shape} after slicing."
                )
            target.assign(value)
    return rebuilt


@dataclasses.dataclass
class ChannelGroupRow:
    """One group: its name, coupled layers, channels now kept and at the target."""

    group: str
    layers: list
    channels: int
    kept: int
    target_kept: int
    prunable: bool
    reason: str = ""


@dataclasses.dataclass
class ChannelSummary:
    """Groups and the model's params / MACs: dense, as masked now, and at the targets."""

    rows: list
    params: dict
    macs: dict

    def as_dict(self):
        return {
            "groups": [dataclasses.asdict(row) for row in self.rows],
            "params": dict(self.params),
            "macs": dict(self.macs),
        }

    def __str__(self):
        header = ("group", "layers", "channels", "kept now", "at target")
        lines = []
        for row in self.rows:
            layers = ", ".join(row.layers[:3]) + (f" +{len(row.layers) - 3}" if len(row.layers) > 3 else "")
            target = str(row.target_kept) if row.prunable else f"whole: {row.reason}"
            lines.append((row.group, layers, str(row.channels), str(row.kept), target))
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(4)]

        def fmt(cells):
            return "  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]),
                              cells[2].rjust(widths[2]), cells[3].rjust(widths[3]), cells[4]])

        totals = [
            f"params: dense {self.params['dense']:,}  now {self.params['now']:,}  at target {self.params['target']:,}",
            f"MACs:   dense {self.macs['dense']:,}  now {self.macs['now']:,}  at target {self.macs['target']:,}",
        ]
        return "\n".join([fmt(header), "-" * len(fmt(header)), *map(fmt, lines), "", *totals])


def channel_summary(model, print_fn=print):
    """Prints and returns each channel group and the model's params and MACs before and after.

    Arguments:
        model: a model returned by `tfc.prune(..., structure="channels")`.
        print_fn: where the table goes (`print`; None prints nothing).

    Returns:
        A `ChannelSummary`: `.rows` (one per group, left-whole groups with
        their reason), `.params` and `.macs` as `{"dense", "now", "target"}`
        ("now" is what `tfc.strip` would give from the current masks).

    Example:

    ```python
    info = tfc.pruning.channels.channel_summary(pruned)
    info.params["target"] / info.params["dense"]
    ```
    """
    if not is_channel_pruned(model):
        raise TypeError(
            "channel_summary expects a model from tfc.prune(..., structure='channels'); for any model, "
            "tfc.summary(model) gives params per layer and tfc.pruning.channels.count_macs(model) its MACs."
        )
    pruning = channel_pruning(model)
    graph, keep = pruning.channel_graph, pruning.kept
    (dense, target) = pruning.planned_cost()
    now = graph.cost(keep)
    rows = []
    for group in graph.groups:
        if group.prunable:
            ids = slice(group.first, group.first + group.channels)
            kept = int(keep[ids].sum())
            share = pruning.targets.get(group.name, 0.0)
            target_kept = group.channels - channels_removed(share, group.channels)
        else:
            kept = target_kept = group.channels
        rows.append(ChannelGroupRow(group.name, list(group.layers or group.producers), group.channels, kept,
                                    target_kept, group.prunable and group.name in pruning.targets,
                                    group.reason or ("" if group.name in pruning.targets else "not chosen by `layers=`")))
    result = ChannelSummary(
        rows=rows,
        params={"dense": dense[0], "now": now[0], "target": target[0]},
        macs={"dense": dense[1], "now": now[1], "target": target[1]},
    )
    if print_fn is not None:
        print_fn(str(result))
    return result
