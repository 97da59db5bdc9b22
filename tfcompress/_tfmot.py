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
    "quantize_layer",
    "quantize_utils",
    "quantize_wrapper",
    "smart_cond",
    "tfmot",
]
