"""`strip`: the plain tf_keras model left after compression."""

from absl import logging
from tfcompress._tfmot import tfmot

import numpy as np

from tfcompress._keras import (
    KERAS3,
    check_keras3_model,
    check_model,
    generation,
    is_keras3_functional,
    keras3,
    weight_name,
)
from tfcompress.pruning.constraints import CompressionConstraint, compression_constraints, plain_config
from tfcompress._layers import clone_with_weights, rebuild
from tfcompress.clustering.wrapper import ClusterWeights, find_cluster_wrappers
from tfcompress.pruning.channels import is_channel_pruned, strip_channels
from tfcompress.pruning.wrapper import find_pruning_wrappers
from tfcompress.quantization.strip import strip_quantization
from tfcompress.quantization.wrappers import find_quantization_layers, rebuilt_copy


def strip(model):
    """Returns a plain tf_keras model holding `model`'s compressed weights.

    Pruning wrappers are removed and their masks applied, so the zeros stay;
    clustering wrappers are removed and each kernel keeps its shared values.
    A quantization-aware model keeps tfmot's standard quantization layers with
    their learned ranges (the TFLite converter needs them for int8); only
    tfcompress's phase machinery is removed. Save such a model as `.h5` or a
    SavedModel and load it inside `tfmot.quantization.keras.quantize_scope()`
    (tfmot 0.8.1 cannot load its quantized models from `.keras`).
    The result shares nothing with `model`: training either one later does
    not change the other. It saves to `.keras` / `.h5` / SavedModel and loads
    back with plain `tf_keras.models.load_model`. It is not compiled.

    A Keras 3 model (`import keras`) loses its tfcompress constraints: the
    result is a plain Keras 3 model with the masked / shared kernels, which
    `keras.models.load_model` loads without tfcompress. A Sequential or
    functional model is copied (uncompiled); a subclassed one (which Keras
    cannot clone) is stripped in place and returned.

    Arguments:
        model: a model returned by `tfc.prune` (trained or not), or any
            Sequential/functional tf_keras model, or a Keras 3 model.

    Returns:
        A new, uncompiled tf_keras model, or the plain Keras 3 model.

    Example:

    ```python
    final = tfc.strip(pruned)
    final.save("model.keras")
    ```
    """
    if generation(model, "tfc.strip") == KERAS3:
        check_keras3_model(model, "tfc.strip")
        return strip_channels(model) if is_channel_pruned(model) else _strip_constraints(model)
    check_model(model, "tfc.strip")
    if is_channel_pruned(model):
        return strip_channels(model)
    # In the model's strategy scope: outside it, a mirrored kernel cannot be assigned (MirroredStrategy).
    with model.distribute_strategy.scope():
        for wrapper in find_pruning_wrappers(model):
            if wrapper.built:
                wrapper.pruning_obj.weight_mask_op()
    if find_quantization_layers(model):
        return strip_quantization(model)
    clustered = find_cluster_wrappers(model)
    if any(int(wrapper.clustering_on.numpy()) == 0 for wrapper in clustered if hasattr(wrapper, "clustering_on")):
        logging.warning(
            "Clustering never started in this model (its `begin` is after the last trained "
            "step): the stripped kernels are clustered from their current values."
        )

    def build():
        stripped = tfmot.sparsity.keras.strip_pruning(_strip_pruned_clusters(model))
        return tfmot.clustering.keras.strip_clustering(stripped) if clustered else stripped

    stripped = rebuild(build)
    # tfmot's strip returns the training model's own layer objects; copy them.
    return clone_with_weights(stripped)


def _strip_pruned_clusters(model):
    """`model` with each clustering wrapper around a pruned layer replaced by the plain layer, shared values in.

    tfmot strips one wrapper per layer; the other layers stay as they are for its strips.
    """
    if not any(wrapper.pruned for wrapper in find_cluster_wrappers(model) if isinstance(wrapper, ClusterWeights)):
        return model

    def plain(layer):
        if not (isinstance(layer, ClusterWeights) and layer.pruned):
            return layer, None
        new = rebuilt_copy(layer.pruned.layer, layer)
        values = layer.shared_values()
        for variable in new.weights:
            if weight_name(variable) in values:
                variable.assign(values[weight_name(variable)])
        return new, None

    return clone_with_weights(model, plain)


def _strip_constraints(model):
    """`strip` for Keras 3: the kernels as compressed, without tfcompress constraints."""
    constrained = compression_constraints(model)
    values = {id(v): c.effective(np.asarray(v.numpy())) for _, v, c in constrained}
    if is_keras3_functional(model):
        clone = keras3.models.clone_model(
            model, clone_function=lambda layer: layer.__class__.from_config(plain_config(layer.get_config())),
            recursive=True,
        )
        clone.set_weights([values[id(v)] if id(v) in values else v.numpy() for v in model.weights])
        return clone
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for name, value in list(vars(layer).items()):
            if isinstance(value, CompressionConstraint):
                setattr(layer, name, value.inner)
    for _, variable, constraint in constrained:
        variable.assign(values[id(variable)])
        variable.constraint = constraint.inner
    return model
