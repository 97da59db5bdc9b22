"""`prune`: wrap a model's layers with tfmot pruning wrappers, scheduled by the fit."""

from absl import logging
from tfcompress._tfmot import prunable_layer, prune_registry, pruning_wrapper

from tfcompress._keras import KERAS3, check_keras3_model, check_model, generation, keras
from tfcompress._layers import clone_with_weights, fresh_copy, layer_selector, named_layers, per_layer_value
from tfcompress._metrics import report_metric
from tfcompress.pruning.channels import prune_channels
from tfcompress.pruning.constraints import prune_with_masks
from tfcompress.pruning.schedules import SCHEDULES, ConstantSparsity, PolynomialDecay, _validate_sparsity
from tfcompress.pruning.wrapper import PruneLowMagnitude, find_pruning_wrappers

DEFAULT_SPARSITY = 0.8


def prunable_weight_names(layer):
    """Names of the weights tfmot prunes in `layer`; [] when it prunes none."""
    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return ["(custom)"]
    if not prune_registry.PruneRegistry.supports(layer):
        return None
    if layer.__class__ in prune_registry.PruneRegistry._LAYERS_WEIGHTS_MAP:
        return list(prune_registry.PruneRegistry._weight_names(layer))
    return ["(recurrent)"]


def takes_m_by_n(layer, weights):
    """Whether tfmot's M:N masks take every weight it prunes in tf_keras `layer` (2-D and 4-D kernels only).

    A 1-D convolution's 3-D kernel passes `tfc.prune` and fails at the first
    training step ("weight tensor with shape ... is not supported").
    """
    for name in weights:
        weight = None if name.startswith("(") else getattr(layer, name, None)
        if weight is not None and len(weight.shape) not in (2, 4):
            return False
    return True


def _check_m_by_n(m_by_n):
    try:
        m, n = (int(v) for v in m_by_n)
    except (TypeError, ValueError):
        raise TypeError(f"`m_by_n` must be a pair of ints such as (2, 4); got {m_by_n!r}.") from None
    if not 0 < m < n:
        raise ValueError(f"`m_by_n=(m, n)` needs 0 < m < n (m zeros in every n weights); got {m_by_n!r}.")
    return m, n


def attach_sparsity_report(model):
    """Makes `model` report its overall sparsity as the `sparsity` metric.

    The last pruning wrapper computes the share of masked weights over every
    pruned layer, so the progress bar, History, CSVLogger and TensorBoard show
    it without extra code. Does nothing when already attached or not pruned.
    """
    wrappers = [w for w in find_pruning_wrappers(model) if isinstance(w, PruneLowMagnitude)]
    if not wrappers or any(getattr(w, "_tfc_sparsity_report", None) for w in wrappers):
        return
    masks = [mask for w in wrappers for _, mask, _ in w.pruning_vars]
    if not masks:
        return
    reporter = wrappers[-1]
    # Plain attribute: tracking would add the metric's variable to the layer's weights.
    object.__setattr__(reporter, "_tfc_sparsity_report", (report_metric(reporter, "sparsity"), masks))


def prune(
    model,
    final_sparsity=None,
    *,
    initial_sparsity=0.0,
    begin=0.0,
    end=0.75,
    schedule="polynomial",
    power=3,
    frequency=None,
    m_by_n=None,
    layers=None,
    layer_sparsity=None,
    structure=None,
):
    """Returns a copy of `model` whose layers are pruned by magnitude during `fit`.

    Each chosen layer is wrapped with tfmot's `PruneLowMagnitude`; its kernel's
    smallest weights are masked to zero following the schedule. The schedule is
    laid over the fit that trains the model: add `tfc.CompressionCallback()` to
    `fit`, and by `end` every pruned layer holds exactly its target sparsity.
    The original model is left untouched.

    Keras 3 models (`import keras`, TensorFlow or JAX backend) take the same
    arguments. Their layers stay as they are: each chosen kernel gets a
    `tfc.pruning.constraints.PruningMask` constraint, which the optimizer
    applies after every step. Sequential and functional models are copied;
    a subclassed model (which Keras cannot clone) is pruned in place.

    Arguments:
        model: a built Sequential or functional tf_keras model, or a built
            Keras 3 model (Sequential, functional or subclassed).
        final_sparsity: share of each pruned kernel set to zero at `end`, in
            [0, 1). Defaults to 0.8 (not allowed with `m_by_n`).
        initial_sparsity: sparsity at `begin` (polynomial schedule only).
        begin: when pruning starts: a fraction of the fit (float in [0, 1]) or
            an optimizer step (int).
        end: when the target is reached: a fraction of the fit or a step.
        schedule: `"polynomial"` (tfmot's polynomial decay, `power=3`) or
            `"constant"` (the target at once from `begin`), or a
            `tfc.pruning.PolynomialDecay` / `ConstantSparsity` instance.
        power: exponent of the polynomial schedule.
        frequency: optimizer steps between mask updates. None chooses about 20
            updates over the span, and a last one always happens at `end`.
        m_by_n: `(m, n)` structured sparsity, e.g. `(2, 4)`: m zeros in every
            block of n consecutive weights along the input channels (tfmot's
            M:N pruning; Dense and Conv2D kernels, and on Keras 3 1-D
            convolutions too, which tf_keras leaves dense with a warning). A
            last block short of n inputs is padded with zeros that count among
            its m. The pattern is set at the first training step.
        layers: which layers to prune: None (every layer with a kernel tfmot can
            prune; DepthwiseConv2D and BatchNorm are left dense), names, layer
            classes, or a predicate `layer -> bool`.
        layer_sparsity: per-layer targets, `{name or layer class: sparsity}`,
            overriding `final_sparsity` for those layers.
        structure: None or "unstructured" (single weights, above), or
            "channels": whole output channels are masked and `tfc.strip`
            removes them (see `tfc.pruning.channels.prune_channels`).

    Returns:
        A new tf_keras model with pruning wrappers, or the Keras 3 model with
        mask constraints (compile it before `fit`).

    Example:

    ```python
    pruned = tfc.prune(model, final_sparsity=0.8, layer_sparsity={"logits": 0.5})
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(x, y, epochs=3, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(pruned)
    ```
    """
    if structure not in (None, "unstructured"):
        return prune_channels(
            model, final_sparsity, structure=structure, initial_sparsity=initial_sparsity, begin=begin,
            end=end, schedule=schedule, power=power, frequency=frequency, m_by_n=m_by_n, layers=layers,
            layer_sparsity=layer_sparsity,
        )
    keras3 = generation(model, "tfc.prune") == KERAS3
    if keras3:
        check_keras3_model(model, "tfc.prune")
    else:
        check_model(model, "tfc.prune")
    if m_by_n is not None:
        m, n = _check_m_by_n(m_by_n)
        if final_sparsity is not None or layer_sparsity:
            raise ValueError(
                f"`m_by_n={m_by_n}` fixes the sparsity at {m}/{n}; drop `final_sparsity` / `layer_sparsity`."
            )
        final_sparsity = m / n
        m_by_n = (m, n)
    elif final_sparsity is None:
        final_sparsity = DEFAULT_SPARSITY
    final_sparsity = _validate_sparsity(final_sparsity, "final_sparsity")
    _validate_sparsity(initial_sparsity, "initial_sparsity")

    def schedule_for(target):
        # One schedule per wrapper: a SavedModel restores each wrapper's step variables into its own.
        if not isinstance(schedule, str):
            config = schedule.get_config()
            return SCHEDULES[config["class_name"]](**config["config"])
        if schedule == "polynomial":
            return PolynomialDecay(initial_sparsity, target, begin, end, power, frequency)
        if schedule == "constant":
            return ConstantSparsity(target, begin, end, frequency)
        raise ValueError(f"`schedule` must be 'polynomial' or 'constant'; got {schedule!r}.")

    if not isinstance(schedule, str) and not isinstance(schedule, (PolynomialDecay, ConstantSparsity)):
        raise TypeError(
            "`schedule` must be 'polynomial', 'constant', or a tfc.pruning.PolynomialDecay / "
            f"ConstantSparsity instance; got {schedule!r}."
        )
    chosen = layer_selector(model, layers)
    # Layers asked for by name must be prunable; classes and predicates just skip the rest.
    named = named_layers(layers)
    target_for = per_layer_value(model, layer_sparsity, final_sparsity, "layer_sparsity")
    for target in (layer_sparsity or {}).values():
        _validate_sparsity(target, "layer_sparsity")
    if keras3:
        return prune_with_masks(model, schedule_for, target_for, chosen, named, m_by_n)
    skipped = []
    attention = []
    not_m_by_n = []

    def wrap(layer):
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            raise ValueError(
                f"Layer {layer.name!r} is already pruned. Prune a model once; to change the "
                "schedule, call tfc.strip(model) first and prune the result."
            )
        copy = fresh_copy(layer)
        if chosen is not None and not chosen(layer):
            return copy
        if isinstance(layer, keras.layers.MultiHeadAttention):
            # tfmot's wrapper calls its layer with one input; attention takes query and value.
            if layer.name in named:
                raise ValueError(
                    f"Layer {layer.name!r} (MultiHeadAttention) cannot be pruned: tfmot's pruning "
                    "wrapper passes one input, and attention takes query and value. Leave it out of `layers=`."
                )
            attention.append(layer.name)
            return copy
        weights = prunable_weight_names(layer)
        if not weights:
            if layer.name in named:
                reason = (
                    "tfmot prunes none of its weights (it leaves DepthwiseConv2D, normalization "
                    "and weightless layers dense)"
                    if weights == []
                    else "tfmot does not support it; implement "
                    "tfmot.sparsity.keras.PrunableLayer (get_prunable_weights) on it"
                )
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot be pruned: {reason}. "
                    "Leave it out of `layers=`."
                )
            if weights is None and layer.weights:
                skipped.append(layer.name)
            return copy
        if m_by_n and not takes_m_by_n(layer, weights):
            if layer.name in named:
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot take m_by_n={m_by_n}: tfmot's "
                    "M:N masks take 2-D and 4-D kernels (Dense, Conv2D) only. Leave it out of `layers=`, "
                    "or build the model with `import keras` (Keras 3), where tfc.prune applies M:N to "
                    "1-D convolutions too."
                )
            not_m_by_n.append(layer.name)
            return copy
        wrapper = PruneLowMagnitude(
            copy, pruning_schedule=schedule_for(_validate_sparsity(target_for(layer), "layer_sparsity")),
            sparsity_m_by_n=m_by_n,
        )
        return wrapper, copy

    try:
        pruned = clone_with_weights(model, wrap)
    except ValueError as error:
        if "m_by_n" in str(error) or "sparsity" in str(error).lower():
            raise ValueError(
                f"tfmot cannot apply m_by_n={m_by_n} here: {error} Choose the layers with "
                "`layers=` (Dense and Conv2D kernels)."
            ) from error
        raise
    wrappers = find_pruning_wrappers(pruned)
    if not wrappers:
        raise ValueError(
            "tfc.prune found no layer to prune in this model (tfmot prunes Dense, Conv, "
            "Embedding, recurrent and attention kernels)."
        )
    if skipped:
        logging.warning(
            "tfc.prune left these layers dense because tfmot cannot prune them: %s. "
            "Implement tfmot.sparsity.keras.PrunableLayer on them to prune them.",
            ", ".join(skipped),
        )
    if not_m_by_n:
        logging.warning(
            "tfc.prune left these layers dense: tfmot's M:N masks take 2-D and 4-D kernels (Dense, "
            "Conv2D) only: %s. On Keras 3 models (`import keras`) tfc.prune applies m_by_n to them too.",
            ", ".join(not_m_by_n),
        )
    if attention:
        logging.warning(
            "tfc.prune left these MultiHeadAttention layers dense (tfmot's pruning wrapper passes one "
            "input, and attention takes query and value): %s. The Dense layers around them are pruned.",
            ", ".join(attention),
        )
    attach_sparsity_report(pruned)
    return pruned
