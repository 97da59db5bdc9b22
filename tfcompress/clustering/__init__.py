"""Weight clustering (sharing) scheduled inside `fit` (tfmot's wrappers)."""

from tfcompress.clustering.cluster import cluster
from tfcompress.clustering.wrapper import ClusterWeights
