"""Which channels of a functional tf_keras model must be removed together.

Removing output channel `c` of a convolution is only safe when every slice
tied to it goes too: its kernel and bias, the BatchNormalization parameters
and statistics after it, a following DepthwiseConv2D's channel, the kernel
rows of every layer that reads it, and every channel an `Add` or `Multiply`
joins it with (residual and squeeze-excite blocks), through `Concatenate`
offsets and `Flatten` -> `Dense`. This module reads those ties from the
model's own graph (its nodes and their inbound tensors), never from layer
names, in the spirit of Torch-Pruning's DepGraph (Fang et al., 2023).

The result is a `ChannelGraph`:

* **channels** that are coupled form one channel class; a class is removed
  or kept as a whole;
* **groups** are the sets of layers whose channels are coupled (a residual
  stage, one convolution + BatchNorm + depthwise block); every class belongs
  to one group, and a group is pruned by one ratio;
* **slices** say, for every weight, which position along which axis belongs
  to which class (`-1`: a position that is never removed).

A group is left whole, with the reason, when one of its channels reaches a
layer that cannot be sliced (LSTM, LayerNormalization, a softmax over
channels, a nested model, ...), a model output, or a consumer that would
not see an exact zero once the channel is masked (e.g. `sigmoid(0) = 0.5`).
"""

import dataclasses

import numpy as np

from tfcompress._keras import is_keras3_object, keras, keras3, weight_name

# Weights zeroed while a channel is masked and scored for its importance.
OUT = "out"  # a producer's filters / units (and its bias)
CHANNEL = "channel"  # per-channel parameters of BatchNorm and depthwise layers
# Weights only cut by the rebuild: a consumer's input rows, BatchNorm statistics, PReLU slopes.
IN = "in"
STAT = "stat"

_PASS_THROUGH = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "ActivityRegularization", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
)
_ACTIVATIONS = ("Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU")
_MERGES = ("Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply")
_CHANNEL_COUPLING = ("softmax", "log_softmax")


@dataclasses.dataclass
class WeightSlice:
    """Position `i` along `axis` of weight `weight` of `layer` belongs to channel class `owners[i]` (-1: kept)."""

    layer: str
    weight: str
    axis: int
    owners: np.ndarray
    role: str


@dataclasses.dataclass
class ChannelGroup:
    """Layers whose channels are coupled, and whether they can be pruned.

    `first` .. `first + channels - 1` are the ids of the group's channel
    classes. `producers` are the layers whose filters or units these are.
    """

    index: int
    channels: int
    layers: list
    producers: list
    prunable: bool = True
    reason: str = ""
    first: int = -1

    @property
    def name(self):
        """The group's first producing layer: how errors and tables name it."""
        return (self.producers or self.layers)[0]


@dataclasses.dataclass
class _Node:
    """One call of a layer: its channel ownership in and out, for cost counting."""

    layer: object
    kind: str
    inputs: list  # owner arrays of the inputs' last axes
    output: np.ndarray
    input_shapes: list
    output_shape: tuple


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self, count):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _class_name(layer):
    return type(layer).__name__


def _activation_name(activation, K=keras):
    try:
        return K.activations.serialize(activation)
    except (ValueError, TypeError):
        return getattr(activation, "__name__", str(activation))


def _zero_preserving(function):
    """True when `function(0) == 0`, so a masked channel stays exactly zero after it."""
    try:
        return bool(np.all(np.asarray(function(np.zeros((1, 1), np.float32))) == 0.0))
    except Exception:  # noqa: BLE001 - any activation that cannot run alone is treated as unsafe
        return False


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _shape(tensor):
    return tuple(tensor.shape)


def _key(tensor):
    layer, node_index, tensor_index = tensor._keras_history
    return layer.name, node_index, tensor_index


def _nodes_in_order(model):
    """The model's nodes, inputs first (a topological order of its graph).

    Keras 3 keeps a Sequential model's graph in its inner functional model.
    """
    by_depth = getattr(getattr(model, "_functional", None) or model, "_nodes_by_depth")
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _node_parts(node):
    """`(layer, input tensors, output tensors)` of a node of either Keras."""
    if hasattr(node, "operation"):  # Keras 3
        return node.operation, _flat(node.input_tensors), _flat(node.outputs)
    return node.layer, _flat(node.keras_inputs), _flat(node.outputs)


def _flat(value):
    return keras3.tree.flatten(value)


class ChannelGraph:
    """The channel classes and groups of a functional or Sequential model of either Keras.

    Arguments:
        model: a built Sequential or functional tf_keras or Keras 3 model.

    Attributes:
        groups: every `ChannelGroup`, prunable or not, in graph order.
        slices: `{layer name: [WeightSlice, ...]}` for the prunable groups.
        num_classes: how many channel classes the prunable groups hold.
        class_group: for each channel class, the index of its group.

    Example:

    >>> graph = ChannelGraph(model)
    >>> [(g.name, g.channels, g.prunable) for g in graph.groups]
    """

    def __init__(self, model):
        self.model = model
        self._K = keras3 if is_keras3_object(model) else keras
        self._uf = _UnionFind()
        self._space = []  # per channel node: the first node of its producer's output (its space)
        self._space_info = {}  # space -> (producer layer name, channels)
        self._members = {}  # space -> layer names with a slice of it
        self._unsafe = []  # (channel node, reason)
        self._owners = {}  # tensor key -> channel nodes of its last axis (-1: kept)
        self._zero = {}  # tensor key -> per position: exactly zero once its channel is masked
        self._culprit = {}  # tensor key -> the layer that made a masked channel nonzero
        self._raw_slices = []
        self._raw_nodes = []
        self._layer_inputs = {}  # layer name -> owner arrays of its first call's inputs
        self._layer_output = {}
        self._walk()
        self._finish()

    # ---- building -------------------------------------------------------------------------

    def _new_space(self, layer, count):
        nodes = self._uf.add(count)
        space = int(nodes[0]) if count else -1
        self._space.extend([space] * count)
        if count:
            self._space_info[space] = (layer.name, count)
        return nodes

    def _note(self, owners, layer_name):
        for node in np.unique(owners[owners >= 0]):
            self._members.setdefault(self._space[node], set()).add(layer_name)

    def _tie(self, a, b, layer):
        """Position i of `a` and of `b` must be removed together (an Add, a shared layer...)."""
        for x, y in zip(a, b):
            if x >= 0 and y >= 0:
                self._uf.union(int(x), int(y))
            elif x >= 0 or y >= 0:
                self._unsafe.append((int(max(x, y)), f"{layer.name} joins it with a channel that is never removed"))

    def _mark(self, owners, reason):
        for node in np.unique(owners[owners >= 0]):
            self._unsafe.append((int(node), reason))

    def _slice(self, layer, weight, axis, owners, role):
        self._raw_slices.append((layer.name, weight, axis, np.asarray(owners), role))
        self._note(np.asarray(owners), layer.name)

    def _consume(self, layer, key, owners):
        """`layer` reads every position of the tensor `key`: masked channels must arrive as zeros."""
        zero = self._zero[key]
        bad = (owners >= 0) & ~zero
        if bad.any():
            culprit = self._culprit.get(key, "a layer on the way")
            self._mark(owners[bad], f"after {culprit} a masked channel is not zero where {layer.name} reads it")

    def _walk(self):
        for node in _nodes_in_order(self.model):
            layer, inputs, outputs = _node_parts(node)
            if _class_name(layer) == "InputLayer" or not inputs:
                for tensor in outputs:
                    size = _shape(tensor)[-1] if len(_shape(tensor)) else 1
                    self._set(tensor, np.full(size or 0, -1), np.ones(size or 0, bool))
                continue
            keys = [_key(t) for t in inputs]
            if any(k not in self._owners for k in keys):
                raise ValueError(f"Layer {layer.name!r} reads a tensor from outside the model's graph.")
            owners = [self._owners[k] for k in keys]
            zeros = [self._zero[k] for k in keys]
            handler = self._handler(layer, inputs, outputs)
            kind = handler(layer, inputs, outputs, keys, owners, zeros)
            self._raw_nodes.append(
                (layer, kind, owners, [self._owners[_key(t)] for t in outputs][0],
                 [_shape(t) for t in inputs], _shape(outputs[0]))
            )
        for tensor in _flat(self.model.outputs):
            key = _key(tensor)
            self._mark(self._owners[key], f"its channels are outputs of the model ({tensor._keras_history[0].name})")

    def _set(self, tensor, owners, zero, culprit=None):
        key = _key(tensor)
        self._owners[key] = np.asarray(owners, dtype=np.int64)
        self._zero[key] = np.asarray(zero, dtype=bool)
        if culprit:
            self._culprit[key] = culprit

    def _handler(self, layer, inputs, outputs):
        K = self._K
        name = _class_name(layer)
        rank = len(_shape(inputs[0]))
        if len(outputs) != 1:
            return self._barrier
        # A Keras 3 op called on a tensor (`x + 3.0`) is no layer: like tf_keras's TFOpLambda, a barrier.
        if isinstance(layer, K.Model) or not isinstance(layer, K.layers.Layer):
            return self._barrier
        if not _channels_last(layer):
            return self._barrier
        transposed = (K.layers.Conv1DTranspose, K.layers.Conv2DTranspose, K.layers.Conv3DTranspose)
        if isinstance(layer, transposed):
            return self._barrier
        if isinstance(layer, (K.layers.SeparableConv1D, K.layers.SeparableConv2D)):
            return self._separable
        if isinstance(layer, (K.layers.DepthwiseConv1D, K.layers.DepthwiseConv2D)):
            return self._depthwise
        if isinstance(layer, (K.layers.Conv1D, K.layers.Conv2D, K.layers.Conv3D)):
            return self._producer if getattr(layer, "groups", 1) == 1 else self._barrier
        if name == "Dense":
            return self._producer
        if name == "BatchNormalization":
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            return self._batchnorm if [a % rank for a in axis] == [rank - 1] else self._barrier
        if name in _ACTIVATIONS:
            if name == "Activation" and _activation_name(layer.activation, K) in _CHANNEL_COUPLING:
                return self._barrier
            return self._activation
        if name == "PReLU":
            return self._prelu
        if name in _PASS_THROUGH:
            return self._pass_through
        if name == "Flatten":
            return self._flatten
        if name == "Reshape":
            return self._reshape
        if name in _MERGES:
            return self._merge
        if name == "Concatenate":
            return self._concatenate
        return self._barrier

    # ---- one handler per kind of layer --------------------------------------------------------

    def _barrier(self, layer, inputs, outputs, keys, owners, zeros):
        for tensor_owners in owners:
            self._mark(tensor_owners, f"{layer.name} ({_class_name(layer)}) cannot be sliced")
        for tensor in outputs:
            shape = _shape(tensor)
            size = shape[-1] if shape and shape[-1] is not None else 0
            self._set(tensor, np.full(size, -1), np.ones(size, bool))
        return "barrier"

    def _shared_inputs(self, layer, owners):
        """A layer called twice reads its inputs through the same kernel rows: tie them."""
        first = self._layer_inputs.setdefault(layer.name, owners)
        if first is not owners:
            for a, b in zip(first, owners):
                self._tie(a, b, layer)
            return False
        return True

    def _output_space(self, layer, count):
        if layer.name not in self._layer_output:
            self._layer_output[layer.name] = self._new_space(layer, count)
        return self._layer_output[layer.name]

    def _activation_zero(self, layer, out):
        activation = getattr(layer, "activation", None)
        if activation is None:
            return True
        if _activation_name(activation, self._K) in _CHANNEL_COUPLING:
            self._mark(out, f"{layer.name} applies a softmax across its channels")
            return False
        return _zero_preserving(activation)

    def _producer(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,) = owners
        self._consume(layer, keys[0], in_owners)
        count = int(_shape(outputs[0])[-1])
        out = self._output_space(layer, count)
        if self._shared_inputs(layer, owners):
            self._slice(layer, "kernel", -2, in_owners, IN)
            self._slice(layer, "kernel", -1, out, OUT)
            if getattr(layer, "use_bias", False):
                self._slice(layer, "bias", 0, out, OUT)
        zero = self._activation_zero(layer, out)
        self._set(outputs[0], out, np.full(count, zero), None if zero else layer.name)
        return "producer"

    def _separable(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,) = owners
        self._consume(layer, keys[0], in_owners)
        count = int(_shape(outputs[0])[-1])
        out = self._output_space(layer, count)
        if self._shared_inputs(layer, owners):
            self._slice(layer, "depthwise_kernel", -2, in_owners, IN)
            self._slice(layer, "pointwise_kernel", -2, np.repeat(in_owners, layer.depth_multiplier), IN)
            self._slice(layer, "pointwise_kernel", -1, out, OUT)
            if layer.use_bias:
                self._slice(layer, "bias", 0, out, OUT)
        zero = self._activation_zero(layer, out)
        self._set(outputs[0], out, np.full(count, zero), None if zero else layer.name)
        return "separable"

    def _depthwise(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,) = owners
        out = np.repeat(in_owners, layer.depth_multiplier)
        if self._shared_inputs(layer, owners):
            # Keras 3 names a depthwise layer's kernel `kernel`; tf_keras `depthwise_kernel`.
            kernel = "depthwise_kernel" if hasattr(layer, "depthwise_kernel") else "kernel"
            self._slice(layer, kernel, -2, in_owners, CHANNEL)
            if layer.use_bias:
                self._slice(layer, "bias", 0, out, CHANNEL)
        # Its own masked kernel and bias make a masked channel zero, whatever comes in.
        zero = self._activation_zero(layer, out)
        self._set(outputs[0], out, np.full(len(out), zero), None if zero else layer.name)
        return "depthwise"

    def _batchnorm(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,) = owners
        if self._shared_inputs(layer, owners):
            if layer.scale:
                self._slice(layer, "gamma", 0, in_owners, CHANNEL)
            if layer.center:
                self._slice(layer, "beta", 0, in_owners, CHANNEL)
            self._slice(layer, "moving_mean", 0, in_owners, STAT)
            self._slice(layer, "moving_variance", 0, in_owners, STAT)
        # gamma = beta = 0 gives exactly 0; without gamma, (0 - mean) / std is not 0.
        zero = np.full(len(in_owners), bool(layer.scale))
        self._set(outputs[0], in_owners, zero, None if layer.scale else layer.name)
        return "batchnorm"

    def _activation(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,), (zero,) = owners, zeros
        keeps_zero = _zero_preserving(layer.call)
        culprit = None if keeps_zero else layer.name
        self._set(outputs[0], in_owners, zero & keeps_zero, culprit or self._culprit.get(keys[0]))
        return "activation"

    def _prelu(self, layer, inputs, outputs, keys, owners, zeros):
        (in_owners,), (zero,) = owners, zeros
        rank = len(_shape(inputs[0]))
        if layer.shared_axes and rank - 1 in [a % rank for a in layer.shared_axes]:
            return self._barrier(layer, inputs, outputs, keys, owners, zeros)
        if self._shared_inputs(layer, owners):
            self._slice(layer, "alpha", -1, in_owners, STAT)
        self._set(outputs[0], in_owners, zero, self._culprit.get(keys[0]))
        return "activation"

    def _pass_through(self, layer, inputs, outputs, keys, owners, zeros):
        self._set(outputs[0], owners[0], zeros[0], self._culprit.get(keys[0]))
        return "pass"

    def _flatten(self, layer, inputs, outputs, keys, owners, zeros):
        shape = _shape(inputs[0])
        spatial = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        # Row-major flattening puts channel c of spatial position s at s * channels + c.
        self._set(outputs[0], np.tile(owners[0], spatial), np.tile(zeros[0], spatial), self._culprit.get(keys[0]))
        return "flatten"

    def _reshape(self, layer, inputs, outputs, keys, owners, zeros):
        before, after = _shape(inputs[0]), _shape(outputs[0])
        if len(after) == 2 and len(before) >= 2:
            return self._flatten(layer, inputs, outputs, keys, owners, zeros)
        if before[-1] == after[-1] and layer.target_shape[-1] in (before[-1], -1):
            return self._pass_through(layer, inputs, outputs, keys, owners, zeros)
        return self._barrier(layer, inputs, outputs, keys, owners, zeros)

    def _merge(self, layer, inputs, outputs, keys, owners, zeros):
        width = _shape(outputs[0])[-1]
        full = [i for i, t in enumerate(inputs) if _shape(t)[-1] == width]
        for i, tensor_owners in enumerate(owners):
            if i not in full:  # broadcast over the channels (last axis 1): not a channel tie
                self._mark(tensor_owners, f"{layer.name} broadcasts it over other channels")
        first = full[0]
        for i in full[1:]:
            self._tie(owners[first], owners[i], layer)
        stacked = np.stack([zeros[i] for i in full])
        zero = stacked.any(axis=0) if _class_name(layer) == "Multiply" else stacked.all(axis=0)
        culprit = next((self._culprit[keys[i]] for i in full if keys[i] in self._culprit), None)
        self._set(outputs[0], owners[first], zero, culprit)
        return "merge"

    def _concatenate(self, layer, inputs, outputs, keys, owners, zeros):
        rank = len(_shape(outputs[0]))
        if layer.axis % rank != rank - 1:
            return self._merge(layer, inputs, outputs, keys, owners, zeros)
        culprit = next((self._culprit[k] for k in keys if k in self._culprit), None)
        self._set(outputs[0], np.concatenate(owners), np.concatenate(zeros), culprit)
        return "concatenate"

    # ---- classes and groups ----------------------------------------------------------------

    def _finish(self):
        uf = self._uf
        total = len(uf.parent)
        # A class spans the spaces of all its channels; a group is the union of those spaces.
        spaces = _UnionFind()
        spaces.add(total)
        for node in range(total):
            spaces.union(self._space[node], self._space[uf.find(node)])
        group_of_space, groups = {}, []
        for space in sorted(self._space_info):
            root = spaces.find(space)
            if root not in group_of_space:
                group_of_space[root] = len(groups)
                groups.append(ChannelGroup(index=len(groups), channels=0, layers=[], producers=[]))
            group = groups[group_of_space[root]]
            producer, _ = self._space_info[space]
            if producer not in group.producers:
                group.producers.append(producer)
        group_of = {node: group_of_space[spaces.find(self._space[node])] for node in range(total)}
        # A model output is the plainest reason: name it before any other.
        for node, reason in sorted(self._unsafe, key=lambda item: "outputs of the model" not in item[1]):
            group = groups[group_of[node]]
            if group.prunable:
                group.prunable, group.reason = False, reason
        order = [layer.name for layer in _ordered_layers(self.model)]
        for space, names in self._members.items():
            group = groups[group_of[space]]
            group.layers = sorted(set(group.layers) | names, key=lambda n: order.index(n) if n in order else -1)

        # Global ids: prunable groups only, each group's classes contiguous.
        class_id, next_id, class_group = {}, 0, []
        for group in groups:
            group.first = next_id if group.prunable else -1
            group.channels = 0
        members_by_group = {}
        for node in range(total):
            members_by_group.setdefault(group_of[node], []).append(node)
        for group in groups:
            roots = []
            for node in members_by_group.get(group.index, []):
                root = uf.find(node)
                if root not in roots:
                    roots.append(root)
            group.channels = len(roots)
            if group.prunable:
                group.first = next_id
                for root in roots:
                    class_id[root] = next_id
                    class_group.append(group.index)
                    next_id += 1
        self.groups = groups
        self.num_classes = next_id
        self.class_group = np.asarray(class_group, dtype=np.int64)

        def to_ids(owners):
            ids = np.full(len(owners), -1, dtype=np.int64)
            for i, node in enumerate(owners):
                if node >= 0:
                    ids[i] = class_id.get(uf.find(int(node)), -1)
            return ids

        self.slices = {}
        for layer_name, weight, axis, owners, role in self._raw_slices:
            ids = to_ids(owners)
            if (ids >= 0).any():
                self.slices.setdefault(layer_name, []).append(WeightSlice(layer_name, weight, axis, ids, role))
        self.nodes = [
            _Node(layer, kind, [to_ids(o) for o in ins], to_ids(out), in_shapes, out_shape)
            for layer, kind, ins, out, in_shapes, out_shape in self._raw_nodes
        ]

    # ---- what a choice of channels costs ------------------------------------------------------

    @property
    def prunable_groups(self):
        return [g for g in self.groups if g.prunable]

    def kept_positions(self, owners, keep):
        """Indices of the positions of an owner array that survive when `keep[class]` says which classes stay."""
        survives = owners < 0
        survives[~survives] = keep[owners[~survives]]
        return np.nonzero(survives)[0]

    def kept_count(self, owners, keep):
        """How many positions of an owner array survive (see `kept_positions`)."""
        return len(self.kept_positions(owners, keep))

    def producer_slices(self, group):
        """The filter slices (`OUT` kernels) whose channels belong to `group`."""
        ids = range(group.first, group.first + group.channels)
        return [
            cut for cuts in self.slices.values() for cut in cuts
            if cut.role == OUT and cut.weight in ("kernel", "pointwise_kernel") and np.isin(cut.owners, ids).any()
        ]

    def weight_shape(self, layer, variable, keep):
        """The shape `variable` of `layer` has once the classes with `keep[class] == False` are gone."""
        shape = list(variable.shape)
        for cut in self.slices.get(layer.name, []):
            if cut.weight == weight_name(variable):
                shape[cut.axis] = self.kept_count(cut.owners, keep)
        return shape

    def cost(self, keep=None):
        """`(params, macs)` of the model when only the classes with `keep[class]` remain.

        MACs count Conv, Dense, DepthwiseConv and SeparableConv multiply-adds
        per example; params count every weight of the model.
        """
        keep = np.ones(self.num_classes, bool) if keep is None else np.asarray(keep, bool)
        params = 0
        for layer in _ordered_layers(self.model):
            for variable in layer.weights:
                params += int(np.prod(self.weight_shape(layer, variable, keep)))
        macs = 0
        for node in self.nodes:
            macs += _node_macs(node, lambda owners: self.kept_count(owners, keep))
        return params, macs


def _ordered_layers(model):
    return [layer for layer in model.layers if _class_name(layer) != "InputLayer"]


def _node_macs(node, kept):
    layer = node.layer
    if node.kind not in ("producer", "separable", "depthwise"):
        return 0
    shape_out = node.output_shape
    positions = int(np.prod([d for d in shape_out[1:-1] if d is not None])) if len(shape_out) > 2 else 1
    channels_in = kept(node.inputs[0])
    channels_out = kept(node.output)
    window = int(np.prod(layer.kernel_size)) if hasattr(layer, "kernel_size") else 1
    if node.kind == "producer":
        return positions * window * channels_in * channels_out
    if node.kind == "depthwise":
        return positions * window * channels_out
    expanded = channels_in * layer.depth_multiplier
    return positions * (window * expanded + expanded * channels_out)


def count_macs(model):
    """Multiply-adds of one example through `model`'s Conv, Dense, depthwise and separable layers.

    Arguments:
        model: a built Sequential or functional model of either Keras.

    Returns:
        An int.

    Example:

    >>> count_macs(keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=10))
    """
    return ChannelGraph(model).cost()[1]
