"""`sensitivity`: how much each layer tolerates magnitude pruning, and per-layer targets from it.

`tfc.sensitivity(model, (x, y))` prunes each layer that `tfc.prune` would
prune, one at a time and without training, to a grid of sparsities, and
measures the accuracy (or loss) of the whole model each time. The result is
data (`to_dict()`, `plot()`), and `result.layer_sparsity(target=0.9)` turns it
into the `layer_sparsity=` mapping `tfc.prune` takes: layers whose curve falls
early keep more weights, robust ones give more.
"""

import dataclasses
import json
import time

import numpy as np

from tfcompress._keras import KERAS3, check_keras3_model, check_model, generation, keras, keras3
from tfcompress._layers import all_layers, layer_selector
from tfcompress._tfmot import prunable_layer, prune_registry
from tfcompress.pruning.constraints import kernels_of, keras3_layers, magnitude_mask
from tfcompress.pruning.prune import prunable_weight_names

# Up to 0.98 so that an overall 95% can leave the sensitive layers below it.
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
METRICS = ("accuracy", "loss")

_NO_LABELS = (
    "tfc.sensitivity measures accuracy or loss, so `data` needs labels: pass `(x, y)` arrays or a "
    "tf.data.Dataset of `(x, y)` pairs, e.g. tf.data.Dataset.from_tensor_slices((x, y)).batch(256)."
)


# ---- which kernels: exactly those tfc.prune masks ----


def _tf_keras_kernels(layer):
    """The variables tfmot's pruning wrapper would mask in `layer` ([] when `tfc.prune` leaves it dense)."""
    names = prunable_weight_names(layer)
    # tfc.prune leaves attention dense: tfmot's wrapper passes it one input.
    if not names or isinstance(layer, keras.layers.MultiHeadAttention):
        return []
    if names == ["(custom)"]:
        return list(layer.get_prunable_weights())
    if names != ["(recurrent)"]:
        return [getattr(layer, name) for name in names]
    registry = prune_registry.PruneRegistry
    kernels = []
    for cell in registry._get_rnn_cells(layer):
        if isinstance(cell, prunable_layer.PrunableLayer):
            kernels.extend(cell.get_prunable_weights())
        else:
            kernels.extend(getattr(cell, name) for name in registry._RNN_CELLS_WEIGHTS_MAP[cell.__class__])
    return kernels


def prunable_kernels(model, layers=None):
    """`[(layer, [kernel variables])]` for every layer `tfc.prune(model, layers=layers)` would prune.

    Arguments:
        model: a built tf_keras or Keras 3 model, not wrapped for compression.
        layers: `tfc.prune`'s `layers=` argument (None, names, classes or a predicate).

    Returns:
        A list of `(layer, variables)` pairs in model order.
    """
    chosen = layer_selector(model, layers)
    if generation(model, "tfc.sensitivity") == KERAS3:
        found = [(layer, [getattr(owner, weight) for owner, weight, _ in kernels_of(layer)])
                 for layer in keras3_layers(model)]
    else:
        found = [(layer, _tf_keras_kernels(layer)) for layer in all_layers(model)
                 if not isinstance(layer, keras.Model)]
    return [(layer, kernels) for layer, kernels in found if kernels and (chosen is None or chosen(layer))]


# ---- the data and the measurement ----


def _as_batches(data, batch_size):
    """`data` as a list of `(x, y)` numpy batches, read once (every point of the scan sees the same examples)."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "tfc.sensitivity got an infinite tf.data.Dataset (it is read once and kept): "
                "limit it, e.g. dataset.take(20)."
            )
        spec = data.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) < 2:
            raise ValueError(_NO_LABELS)
        batches = []
        for element in data.as_numpy_iterator():
            x, y = element[0], element[1]
            batches.append((x, y))
        return batches
    if isinstance(data, dict) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(_NO_LABELS)
    x, y = data
    if y is None:
        raise ValueError(_NO_LABELS)
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"tfc.sensitivity got {len(x)} inputs and {len(y)} labels; pass one label per input.")
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def _add_batch_axis(model, batches):
    """Batches an unbatched dataset's single examples (their rank is one below the model input's)."""
    rank = len(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if rank is None or not batches or np.ndim(batches[0][0]) != rank - 1:
        return batches
    x = np.stack([b[0] for b in batches])
    y = np.stack([b[1] for b in batches])
    return [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]


def _correct(y, logits):
    """Number of top-1 hits in a batch: class ids or one-hot labels, several outputs or one."""
    logits = np.asarray(logits).reshape(len(logits), -1)
    y = np.asarray(y)
    if logits.shape[1] == 1:
        # One output: a probability (threshold 0.5) or a logit (threshold 0).
        threshold = 0.5 if logits.min() >= 0.0 and logits.max() <= 1.0 else 0.0
        return int(np.sum((logits[:, 0] > threshold) == (y.reshape(-1) > 0.5)))
    labels = y.reshape(len(y), -1).argmax(1) if y.ndim > 1 and y.shape[-1] == logits.shape[1] else y.reshape(-1)
    return int(np.sum(logits.argmax(1) == labels))


def _scorer(model, metric, kind):
    """`(batches) -> float`: accuracy, the compiled loss, or the user's callable over every batch."""
    if callable(metric):
        return lambda batches: float(metric(np.concatenate([b[1] for b in batches]),
                                            np.concatenate([np.asarray(model.predict_on_batch(b[0])) for b in batches])))
    if metric == "accuracy":
        def accuracy(batches):
            hits = sum(_correct(y, model.predict_on_batch(x)) for x, y in batches)
            return hits / sum(len(y) for _, y in batches)

        return accuracy
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "metric='loss' uses the model's compiled loss, and this model is not compiled: call "
            "model.compile(loss=...) first, or use metric='accuracy'."
        )
    loss = (keras3 if kind == KERAS3 else keras).losses.get(loss)

    def mean_loss(batches):
        total = sum(float(np.mean(np.asarray(loss(y, model.predict_on_batch(x))))) * len(y) for x, y in batches)
        return total / sum(len(y) for _, y in batches)

    return mean_loss


def _check_sparsities(sparsities):
    values = sorted({float(s) for s in sparsities})
    if not values or values[0] < 0.0 or values[-1] >= 1.0:
        raise ValueError(f"`sparsities` must be values in [0, 1), e.g. (0.5, 0.8, 0.9); got {sparsities!r}.")
    return values if values[0] == 0.0 else [0.0] + values


# ---- the result ----


@dataclasses.dataclass
class LayerSensitivity:
    """One layer's curve: the metric with only this layer pruned to each sparsity.

    Attributes:
        name: the layer's name (the key `layer_sparsity=` takes).
        layer_type: its class name.
        params: weights in its pruned kernels (biases do not count).
        scores: the metric at each of the result's `sparsities`.
    """

    name: str
    layer_type: str
    params: int
    scores: list

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SensitivityResult:
    """What `tfc.sensitivity` measured: per-layer curves over a grid of sparsities.

    Attributes:
        metric: `"accuracy"`, `"loss"` or the callable's name.
        higher_is_better: True for accuracy and callables, False for the loss.
        baseline: the metric of the unpruned model.
        sparsities: the grid, 0.0 first.
        layers: one `LayerSensitivity` per scanned layer, in model order.
        samples: examples each point was measured on.
        seconds: wall time of the scan.
    """

    metric: str
    higher_is_better: bool
    baseline: float
    sparsities: list
    layers: list
    samples: int
    seconds: float

    def drops(self, layer):
        """How much worse than the baseline `layer` (a name or `LayerSensitivity`) is at each sparsity (>= 0 worse)."""
        row = layer if isinstance(layer, LayerSensitivity) else self[layer]
        scores = np.asarray(row.scores, np.float64)
        return (self.baseline - scores) if self.higher_is_better else (scores - self.baseline)

    def __getitem__(self, name):
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"No layer {name!r} in this sensitivity result; layers are {[r.name for r in self.layers]}.")

    def layer_sparsity(self, target=None, *, max_nonzero=None, max_bytes=None, bits_per_weight=32):
        """Per-layer sparsities meeting an overall budget, sensitive layers pruned least.

        Each layer's measured drop (baseline minus its score; the loss's rise)
        is made non-decreasing in sparsity and interpolated linearly between
        grid points. For a tolerated drop `t`, each layer takes the largest
        sparsity whose drop stays within `t` (at most the grid's largest); the
        overall sparsity over the scanned kernels, weighted by their sizes,
        then grows with `t`. A bisection finds the smallest `t` that meets the
        budget, and the last step is shared between the two bracketing
        solutions so the weighted sparsity equals the target exactly. So every
        layer is pruned up to the same measured damage, and a layer whose
        curve falls early keeps more of its weights. Drops are measured one
        layer at a time; pruned together they add up, and fine-tuning with
        `tfc.prune` recovers most of it.

        Arguments:
            target: overall sparsity in [0, 1) over the scanned kernels.
            max_nonzero: instead, the number of kernel weights allowed to stay nonzero.
            max_bytes: instead, bytes allowed for the nonzero kernel weights at
                `bits_per_weight` each (32 for float32, 8 for int8); indices not counted.
            bits_per_weight: storage bits of one weight, for `max_bytes`.

        Returns:
            `{layer name: sparsity}` for `tfc.prune(model, layer_sparsity=...)`.

        Example:

        ```python
        result = tfc.sensitivity(model, (x_val, y_val))
        pruned = tfc.prune(model, layer_sparsity=result.layer_sparsity(target=0.9))
        ```
        """
        total = sum(row.params for row in self.layers)
        given = [v is not None for v in (target, max_nonzero, max_bytes)]
        if sum(given) != 1:
            raise ValueError("Give exactly one budget: `target` (overall sparsity), `max_nonzero` or `max_bytes`.")
        if max_nonzero is not None:
            target = 1.0 - max_nonzero / total
        elif max_bytes is not None:
            target = 1.0 - (8.0 * max_bytes / bits_per_weight) / total
        target = max(0.0, float(target))
        grid = np.asarray(self.sparsities, np.float64)
        reachable = grid[-1]
        if not target < 1.0 or target > reachable + 1e-9:
            raise ValueError(
                f"An overall sparsity of {target:.4f} needs more than the largest scanned sparsity "
                f"({reachable:g}) in every layer: scan further with tfc.sensitivity(..., sparsities=[..., 0.99]) "
                "or relax the budget."
            )
        params = np.asarray([row.params for row in self.layers], np.float64)
        # Non-decreasing drops: a layer never tolerates more damage by pruning less.
        curves = [np.maximum.accumulate(np.maximum(self.drops(row), 0.0)) for row in self.layers]

        def at(t):
            return np.asarray([_largest_within(grid, curve, t) for curve in curves])

        def overall(sparsity):
            return float(np.dot(params, sparsity) / params.sum())

        low, high = 0.0, max(float(curve[-1]) for curve in curves)
        if overall(at(low)) >= target:
            high = low
        for _ in range(60):
            if high - low < 1e-12:
                break
            middle = (low + high) / 2
            if overall(at(middle)) >= target:
                high = middle
            else:
                low = middle
        below, above = at(low), at(high)
        if overall(above) - overall(below) > 1e-12 and overall(below) < target:
            share = (target - overall(below)) / (overall(above) - overall(below))
            chosen = below + share * (above - below)
        else:
            # Every layer already tolerates `target` at no measured cost: scale down to the budget.
            chosen = above * (target / overall(above)) if overall(above) > 0 else above
        return {row.name: float(round(s, 6)) for row, s in zip(self.layers, chosen)}

    def to_dict(self):
        """The result as plain data (JSON-ready)."""
        return {
            "metric": self.metric, "higher_is_better": self.higher_is_better, "baseline": self.baseline,
            "sparsities": list(self.sparsities), "samples": self.samples, "seconds": self.seconds,
            "layers": [row.to_dict() for row in self.layers],
        }

    def to_json(self, **kwargs):
        """Returns the result as a JSON string (keyword arguments go to `json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data):
        """The result `to_dict()` gave (a scan saved as JSON), to plot or to derive targets again.

        Example:

        ```python
        result = tfc.SensitivityResult.from_dict(json.load(open("scan.json")))
        targets = result.layer_sparsity(target=0.9)
        ```
        """
        fields = {name: data[name] for name in ("metric", "higher_is_better", "baseline", "sparsities", "samples", "seconds")}
        return cls(layers=[LayerSensitivity(**row) for row in data["layers"]], **fields)

    def plot(self, ax=None):
        """Draws one curve per layer (metric against sparsity) and the baseline; returns the figure.

        Arguments:
            ax: matplotlib axes to draw into; None makes a new figure (not shown by pyplot).

        Returns:
            The matplotlib `Figure`.
        """
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6.4, 4.2)).subplots()
        for row in self.layers:
            ax.plot(self.sparsities, row.scores, marker="o", markersize=3, label=f"{row.name} ({row.params:,})")
        ax.axhline(self.baseline, color="gray", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel("sparsity of one layer (others dense)")
        ax.set_ylabel(self.metric)
        ax.set_title("Pruning sensitivity per layer")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        return ax.figure

    def __str__(self):
        header = ["layer", "params"] + [f"{s:g}" for s in self.sparsities]
        lines = [[row.name, f"{row.params:,}"] + [f"{v:.3f}" for v in row.scores] for row in self.layers]
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        title = f"{self.metric} with one layer pruned (unpruned: {self.baseline:.4f}, {self.samples} examples)"
        return "\n".join([title, fmt(header), "-" * len(fmt(header)), *map(fmt, lines)])


def _largest_within(grid, curve, tolerance):
    """The largest sparsity whose (non-decreasing, piecewise-linear) drop stays within `tolerance`."""
    above = np.nonzero(curve > tolerance)[0]
    if not above.size:
        return float(grid[-1])
    i = int(above[0])
    if i == 0:
        return 0.0
    # Linear between the last point within and the first one beyond.
    share = (tolerance - curve[i - 1]) / (curve[i] - curve[i - 1])
    return float(grid[i - 1] + share * (grid[i] - grid[i - 1]))


# ---- the scan ----


def sensitivity(model, data, *, sparsities=SPARSITIES, metric="accuracy", layers=None, batch_size=512,
                print_fn=print):
    """Prunes each layer alone to a grid of sparsities, without training, and measures the model.

    The layers are those `tfc.prune(model, layers=layers)` would prune. For
    each one, its kernels are set to a copy with the smallest magnitudes
    zeroed (as tfmot's magnitude pruning chooses them; other layers stay
    dense), and the whole model is evaluated on `data`. The weights are put
    back exactly afterwards, also when the scan fails or is interrupted.

    Arguments:
        model: a built tf_keras or Keras 3 model, not wrapped for compression
            (call `tfc.strip` first).
        data: `(x, y)` arrays, or a `tf.data.Dataset` of `(x, y)` pairs
            (batched or not; finite). It is read once and kept in memory: a
            few hundred to a few thousand validation examples are enough.
        sparsities: the grid, values in [0, 1); 0.0 (the baseline) is added.
        metric: `"accuracy"` (top-1; class ids or one-hot labels; one output is
            thresholded at 0.5 for probabilities, 0 for logits), `"loss"` (the
            model's compiled loss, lower is better), or a callable
            `(y_true, y_pred) -> float` where higher is better.
        layers: which layers, as `tfc.prune`'s `layers=`.
        batch_size: examples per prediction, for `(x, y)` arrays.
        print_fn: receives one line per scanned layer (`print` by default;
            None is quiet).

    Returns:
        A `SensitivityResult`: `.layers` (per-layer curves), `.layer_sparsity(target)`,
        `.plot()`, `.to_dict()`; `str()` is a table.

    Raises:
        ValueError: `data` has no labels, the model has no prunable layer, a bad grid.

    Example:

    ```python
    result = tfc.sensitivity(model, (x_val, y_val))
    result.plot().savefig("sensitivity.png")
    pruned = tfc.prune(model, layer_sparsity=result.layer_sparsity(target=0.9))
    ```
    """
    kind = generation(model, "tfc.sensitivity")
    if kind == KERAS3:
        check_keras3_model(model, "tfc.sensitivity")
    else:
        check_model(model, "tfc.sensitivity", allow_subclassed=True)
    if not (callable(metric) or metric in METRICS):
        raise ValueError(f"`metric` must be 'accuracy', 'loss' or a callable (y_true, y_pred) -> float; got {metric!r}.")
    grid = _check_sparsities(sparsities)
    batches = _add_batch_axis(model, _as_batches(data, int(batch_size)))
    samples = sum(len(y) for _, y in batches)
    if not samples:
        raise ValueError("tfc.sensitivity got no examples in `data`; pass a few hundred labelled examples.")
    scanned = prunable_kernels(model, layers)
    if not scanned:
        raise ValueError(
            "tfc.sensitivity found no layer that tfc.prune would prune (Dense, Conv, Embedding and "
            "recurrent kernels). A model that carries compression wrappers: call tfc.strip(model) first."
        )
    score = _scorer(model, metric, kind)
    say = print_fn or (lambda line: None)
    started = time.perf_counter()
    saved = model.get_weights()
    rows = []
    try:
        baseline = score(batches)
        name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
        say(f"tfc.sensitivity: {len(scanned)} layers x {len(grid) - 1} sparsities on {samples} examples; "
            f"unpruned {name} {baseline:.4f}")
        for number, (layer, kernels) in enumerate(scanned, 1):
            layer_started = time.perf_counter()
            originals = [np.asarray(kernel.numpy()) for kernel in kernels]
            scores = [baseline]
            for sparsity in grid[1:]:
                for kernel, values in zip(kernels, originals):
                    kernel.assign(values * magnitude_mask(values, sparsity))
                scores.append(score(batches))
            for kernel, values in zip(kernels, originals):
                kernel.assign(values)
            rows.append(LayerSensitivity(layer.name, type(layer).__name__, int(sum(v.size for v in originals)),
                                         [float(s) for s in scores]))
            curve = " ".join(f"{s:g}:{v:.3f}" for s, v in zip(grid[1:], scores[1:]))
            say(f"[{number}/{len(scanned)}] {layer.name} ({type(layer).__name__}, {rows[-1].params:,} weights) "
                f"{curve}  {time.perf_counter() - layer_started:.1f}s")
    finally:
        model.set_weights(saved)
    return SensitivityResult(
        metric=name, higher_is_better=metric != "loss", baseline=float(baseline), sparsities=grid, layers=rows,
        samples=int(samples), seconds=round(time.perf_counter() - started, 3),
    )
