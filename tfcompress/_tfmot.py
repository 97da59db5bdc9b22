"""The one place that imports tfmot, its public API and the internals we build on.

tfcompress subclasses tfmot's wrappers and reuses its registries, which live
under `tensorflow_model_optimization.python.core`: not a public API, and free
to move between releases. Every other module imports them from here, and
`setup.py` pins tfmot to the release line these names were tested with, so a
tfmot upgrade is checked against this one file.
"""

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.clustering.keras import (
    cluster_config,
    cluster_wrapper,
    clustering_centroids,
    clustering_registry,
)
from tensorflow_model_optimization.python.core.keras.utils import smart_cond
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_aware_activation,
    quantize_config,
    quantize_layer,
    quantize_wrapper,
)
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    cluster_preserve_quantize_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs,
    default_8bit_quantize_registry,
    default_8bit_quantizers,
    default_8bit_transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer
from tensorflow_model_optimization.python.core.sparsity.keras import (
    prunable_layer,
    prune_registry,
    pruning_wrapper,
)


def _trace_without_autograph():
    """Has autograph leave tfmot's code and tfcompress's tf_keras wrappers as written when a step is traced.

    tfmot's layers, quantizers and pruning ops, and tfcompress's pruning,
    clustering and quantization wrappers around them, branch with `tf.cond` /
    `smart_cond`, never with Python control flow on tensors, so autograph's
    rewrite of them (on every trace of every wrapper's call) buys nothing.
    TensorFlow exempts Keras's own code the same way.
    * tfmot: a two-conv digits CNN's 2-epoch prune + QAT fit took 6.1-7.7
      CPU s with it and 2.7-3.6 without (alternating runs).
    * tfcompress's wrappers: the same kind of fit, 5.45-5.73 -> 4.07-4.37
      CPU s (three alternating runs each).
    The layer a wrapper wraps is still converted (`_layers.call_converted`),
    as tf_keras converts any layer's `call`: a user's layer that branches on a
    tensor in Python trains wrapped (tests/test_pruning.py). The distillation
    code stays converted, since it calls the user's own losses.
    """
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError:  # a TensorFlow that moved autograph's config: conversion stays as it was
        return
    for prefix in ("tensorflow_model_optimization", "tfcompress.pruning", "tfcompress.clustering",
                   "tfcompress.quantization", "tfcompress._metrics"):
        rule = config_lib.DoNotConvert(prefix)
        if not any(getattr(r, "_prefix", None) == rule._prefix for r in config.CONVERSION_RULES):
            config.CONVERSION_RULES = (rule, *config.CONVERSION_RULES)


_trace_without_autograph()

# The wrapper classes other modules test against.
ClusterWeights = cluster_wrapper.ClusterWeights
PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude
NoOpActivation = quantize_aware_activation.NoOpActivation
QuantizeAwareActivation = quantize_aware_activation.QuantizeAwareActivation
QuantizeLayer = quantize_layer.QuantizeLayer
QuantizeWrapper = quantize_wrapper.QuantizeWrapper

__all__ = [
    "ClusterWeights",
    "NoOpActivation",
    "PruneLowMagnitude",
    "QuantizeAwareActivation",
    "QuantizeLayer",
    "QuantizeWrapper",
    "cluster_config",
    "cluster_preserve_quantize_registry",
    "cluster_wrapper",
    "clustering_centroids",
    "clustering_registry",
    "default_8bit_quantize_configs",
    "default_8bit_quantize_registry",
    "default_8bit_quantizers",
    "default_8bit_transforms",
    "model_transformer",
    "prunable_layer",
    "prune_preserve_quantize_registry",
    "prune_registry",
    "pruning_wrapper",
    "quantize_aware_activation",
    "quantize_config",
    "quantize_layer",
    "quantize_utils",
    "quantize_wrapper",
    "smart_cond",
    "tfmot",
]
