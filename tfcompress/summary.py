"""`summary`: what compression did to each layer, as a table and as data."""

import dataclasses
import gzip
import zlib

import numpy as np
from tfcompress._tfmot import cluster_wrapper, pruning_wrapper, QuantizeLayer, QuantizeWrapper

from tfcompress._keras import KERAS3, check_keras3_model, check_model, generation, is_keras3_functional, keras
from tfcompress._layers import walk
from tfcompress.pruning.channels import channel_summary, is_channel_pruned
from tfcompress.pruning.constraints import CompressionConstraint, keras3_layers
from tfcompress.quantization.keras3_layers import QuantizationPhases, QuantizedKernel


@dataclasses.dataclass
class LayerSummary:
    """One layer's numbers. `sparsity` is over its kernels (weights of rank >= 2);
    `clusters` is the most distinct values in one float kernel when every
    kernel is clustered (at most 256 values), else 0; `bits` is the average
    storage bits per parameter (8 for int8 kernels); `gzip_bytes` is every
    weight stored dense, after gzip -9.

    What a kept kernel weight costs to download, with its position apart
    (both over the kernels, as stored: int8 for quantized ones):
    `bits_per_nonzero` is 8 x the deflated size (level 9, raw deflate as in a
    zip or APK) of the nonzero values packed one after the other, divided by
    their count; `index_bits_per_nonzero` is 8 x the deflated size of the
    kernels' positions as a bitmap (one bit per weight, 1 where nonzero),
    divided by the same count. Their sum is what a value-plus-bitmap sparse
    encoding costs per kept weight; 0.0 for both when no weight is nonzero."""

    name: str
    layer_type: str
    params: int
    nonzero: int
    sparsity: float
    bits: float
    bytes: int
    gzip_bytes: int
    clusters: int = 0
    bits_per_nonzero: float = 0.0
    index_bits_per_nonzero: float = 0.0

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelSummary:
    """Per-layer rows and a totals row; `str()` is the printed table."""

    rows: list
    total: LayerSummary
    channels: object = None  # a channel-pruned model's ChannelSummary: groups, params and MACs before / after

    def as_dict(self):
        result = {"layers": [row.as_dict() for row in self.rows], "total": self.total.as_dict()}
        if self.channels is not None:
            result["channels"] = self.channels.as_dict()
        return result

    def __str__(self):
        header = ("layer", "type", "params", "nonzero", "sparsity", "clusters", "bits", "bytes", "gzip bytes",
                  "bits/nonzero", "index bits")
        lines = [_row_cells(row) for row in self.rows]
        total = _row_cells(self.total)
        widths = [max(len(cells[i]) for cells in [header, total, *lines]) for i in range(len(header))]

        def fmt(cells):
            left = [cells[i].ljust(widths[i]) for i in range(2)]
            right = [cells[i].rjust(widths[i]) for i in range(2, len(cells))]
            return "  ".join(left + right)

        rule = "-" * len(fmt(header))
        table = "\n".join([fmt(header), rule, *map(fmt, lines), rule, fmt(total)])
        return table if self.channels is None else f"{table}\n\n{self.channels}"


def _row_cells(row):
    return (
        row.name,
        row.layer_type,
        f"{row.params:,}",
        f"{row.nonzero:,}",
        f"{row.sparsity:.1%}",
        f"{row.clusters}" if row.clusters else "-",
        f"{row.bits:.1f}",
        f"{row.bytes:,}",
        f"{row.gzip_bytes:,}",
        f"{row.bits_per_nonzero:.2f}",
        f"{row.index_bits_per_nonzero:.2f}",
    )


def _deflate_size(data):
    """Bytes after raw deflate at level 9 (a zip or APK entry's payload)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(compressor.compress(data) + compressor.flush())


def _int8(array):
    """Symmetric per-tensor int8, as the converter stores a quantized kernel."""
    scale = np.abs(array).max() / 127.0
    return np.zeros(array.shape, np.int8) if scale == 0 else np.round(array / scale).astype(np.int8)


def _effective_weights(layer):
    """The layer's type, name and weights as the model computes with them.

    Pruning masks are applied; kernels that a quantization wrapper
    fake-quantizes are given as int8.
    """
    quantized, variables = set(), []
    if isinstance(layer, QuantizeWrapper):
        # tfmot swaps the inner kernel attribute for its fake-quantized tensor, which
        # drops the variable from the inner layer's weights: take it from the wrapper.
        variables = [weight for weight, _, _ in getattr(layer, "_weight_vars", [])]
        quantized = {id(weight) for weight in variables}
        layer = layer.layer
    shared = {}
    if isinstance(layer, cluster_wrapper.ClusterWeights):
        if int(getattr(layer, "clustering_on", 1)):
            shared = {
                id(weight): layer.clustering_algorithms[name].get_clustered_weight(layer.pulling_indices[name], weight)
                for name, weight in layer.original_clusterable_weights.items()
            }
        variables += [w for w in layer.original_clusterable_weights.values() if id(w) not in quantized]
        layer = layer.layer
    masks = {}
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        masks = {id(weight): mask.numpy() for weight, mask, _ in layer.pruning_vars}
        listed = {id(weight) for weight in variables}  # a clustering wrapper around it listed the kernel
        variables += [weight for weight, _, _ in layer.pruning_vars if id(weight) not in quantized | listed]
        layer = layer.layer
    known = {id(weight) for weight in variables}
    variables += [weight for weight in layer.weights if id(weight) not in known]
    arrays = []
    for weight in variables:
        value = np.asarray(shared.get(id(weight), weight))
        value = value * masks[id(weight)] if id(weight) in masks else value
        arrays.append(_int8(value) if id(weight) in quantized else value)
    return layer.__class__.__name__, layer.name, arrays


def kernel_sparsity(arrays):
    """The one definition of sparsity: the share of exact zeros among the kernels.

    Kernels are the weight arrays of rank >= 2 (biases and normalization
    parameters do not count); when there are none, every array counts.

    Arguments:
        arrays: weight arrays as the model computes with them (masks applied).

    Returns:
        A float in [0, 1]; 0.0 for no weights.
    """
    arrays = [np.asarray(a) for a in arrays]
    kernels = [a for a in arrays if a.ndim >= 2] or arrays
    size = sum(a.size for a in kernels)
    return float(sum(a.size - np.count_nonzero(a) for a in kernels) / size) if size else 0.0


def _keras3_rows(model):
    """`(type, name, arrays)` per Keras 3 layer with weights; constrained kernels as the model computes with them.

    Sequential/functional models: a row per layer the user built (an RNN's
    cell weights in its row). Subclassed models: a row per layer that owns
    weights, with those weights. A quantization-aware layer's ranges and
    phase variables are not counted, so a layer that holds only those (an
    activation quantizer) has no row.
    """
    functional = is_keras3_functional(model)
    layers = keras3_layers(model) if functional else list(model._flatten_layers(include_self=True, recursive=True))
    rows = []
    for layer in layers:
        variables = layer.weights if functional else layer._trainable_variables + layer._non_trainable_variables
        # Ranges and phase variables, left out as tfmot's quantizer variables are.
        if isinstance(layer, QuantizationPhases):
            machinery = {id(variable) for variable in layer.quantization_variables()}
            variables = [variable for variable in variables if id(variable) not in machinery]
        arrays = []
        # A quantization-aware layer's kernel is stored as int8 in the exported file.
        quantized = isinstance(layer, QuantizedKernel)
        for variable in variables:
            values = np.asarray(variable.numpy())
            constraint = variable.constraint
            values = constraint.effective(values) if isinstance(constraint, CompressionConstraint) else values
            arrays.append(_int8(values) if quantized and variable.name == "kernel" else values)
        if arrays:
            rows.append((type(layer).__name__, layer.name, arrays))
    return rows


def _leaf_layers(model):
    return [layer for layer in walk(model, into_wrappers=False) if not isinstance(layer, keras.Model)]


# A float kernel with at most this many distinct nonzero values (and a quarter of its nonzero count) is clustered.
_MAX_CLUSTERS = 256


def _summarize(name, layer_type, arrays):
    kernels = [a for a in arrays if a.ndim >= 2] or arrays
    float_kernels = [k for k in kernels if k.dtype.kind == "f" and k.ndim >= 2]
    shared = [np.unique(k).size for k in float_kernels]
    # Among the nonzero weights: a pruned kernel has few distinct values only because it has few weights left.
    clustered = bool(shared) and all(
        np.unique(k[k != 0]).size <= min(_MAX_CLUSTERS, np.count_nonzero(k) // 4) for k in float_kernels
    )
    params = sum(a.size for a in arrays)
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    kept = sum(np.count_nonzero(k) for k in kernels)
    values = b"".join(np.ascontiguousarray(k[k != 0]).tobytes() for k in kernels)
    bitmap = np.packbits(np.concatenate([(k != 0).ravel() for k in kernels])).tobytes() if kernels else b""
    return LayerSummary(
        name=name,
        layer_type=layer_type,
        params=int(params),
        nonzero=int(sum(np.count_nonzero(a) for a in arrays)),
        sparsity=kernel_sparsity(arrays),
        bits=8.0 * len(raw) / params if params else 0.0,
        bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, compresslevel=9, mtime=0)),
        clusters=max(shared) if clustered else 0,
        bits_per_nonzero=8.0 * _deflate_size(values) / kept if kept else 0.0,
        index_bits_per_nonzero=8.0 * _deflate_size(bitmap) / kept if kept else 0.0,
    )


def summary(model, print_fn=print):
    """Prints and returns each layer's parameters, zeros, bits, compressed size and cost per kept weight.

    Works on wrapped models (masks applied, as the model computes) and on
    stripped ones, and on subclassed models (their tracked layers). Layers
    without weights are left out. Keras 3 models too, with their pruning masks
    and clustering constraints.

    Arguments:
        model: a built tf_keras or Keras 3 model, compressed or not.
        print_fn: where the table goes (`print` by default; None prints nothing).

    Returns:
        A `ModelSummary`: `.rows` (one `LayerSummary` per layer with weights),
        `.total`, `.as_dict()` for JSON, and `str()` for the table. For a
        channel-pruned model (`tfc.prune(..., structure="channels")`),
        `.channels` holds its groups and the params and MACs dense, now and at
        the target, printed below the table.

    Raises:
        TypeError: `model` is not a Keras model, or mixes tf_keras and Keras 3 layers.
        ValueError: `model` is not built yet (it has no weights to count).

    Example:

    ```python
    info = tfc.summary(tfc.strip(pruned))
    info.total.sparsity, info.total.gzip_bytes
    ```
    """
    rows, arrays = [], []
    if generation(model, "tfc.summary") == KERAS3:
        check_keras3_model(model, "tfc.summary")
        layers = _keras3_rows(model)
    else:
        check_model(model, "tfc.summary", allow_subclassed=True)
        layers = [_effective_weights(layer) for layer in _leaf_layers(model) if not isinstance(layer, QuantizeLayer)]
    for layer_type, name, weights in layers:
        if not weights:
            continue
        rows.append(_summarize(name, layer_type, weights))
        arrays.extend(weights)
    total = _summarize("total", "", arrays)
    channels = channel_summary(model, print_fn=None) if is_channel_pruned(model) else None
    result = ModelSummary(rows=rows, total=total, channels=channels)
    if print_fn is not None:
        print_fn(str(result))
    return result
