"""Saving and loading compressed models: one scope for every tfcompress and tfmot class.

A model in training carries wrapper layers (pruning, quantization, clustering)
that `tf_keras.models.load_model` only finds inside custom-object scopes:
tfcompress's own classes and tfmot's. `load_model` opens them all, for
`.keras`, `.h5` and SavedModel files, so a wrapped model saved mid-training
loads back and keeps training with `tfc.CompressionCallback`.

tfmot 0.8.1 cannot load its quantized models from `.keras` files (tfmot PR
#1123, unreleased): its `QuantizeLayer` never marks itself built, so loading
builds it twice, and a `QuantizeWrapperV2` saved around a built layer holds
that layer's weights first among its own. tfcompress's `QuantizeInput` and
`QuantizeWrapper` load right, and so does a model stripped after QAT, which
holds tfmot's layers: `load_model` and `custom_objects()` give it the same
classes, fixed for loading (they save under tfmot's names).

A SavedModel resumes the schedules too (masks advance, QAT switches on time),
but tf_keras does not restore optimizer state from it: training goes on with
a fresh optimizer (logged). `.keras` and `.h5` keep the optimizer state.
"""

import contextlib
import io
import json
import os
import warnings
import zipfile

from absl import logging

from tfcompress._tfmot import (
    tfmot,
    cluster_preserve_quantize_registry,
    cluster_wrapper,
    prune_preserve_quantize_registry,
    quantize_layer,
)

from tfcompress._keras import keras, keras3
from tfcompress._layers import walk
from tfcompress._metrics import CurrentValue
# Imported for their registered classes (tfcompress>...), which every saved wrapped model names.
import tfcompress.clustering  # noqa: F401
import tfcompress.clustering.constraints  # noqa: F401
from tfcompress.pruning.channels import ChannelPruned
from tfcompress.pruning.constraints import compression_constraints
import tfcompress.quantization  # noqa: F401
from tfcompress.pruning.wrapper import PruneLowMagnitude
from tfcompress.quantization.wrappers import load_wrapper_variables


class _PruneLowMagnitudeByConfig:
    """Finds the right pruning wrapper for a `.h5` file's nested "PruneLowMagnitude" entries.

    Layers nested in a quantization wrapper are looked up by bare class name
    in `.h5` files, which names tfmot's wrapper; tfcompress's schedules
    (`begin` / `end` instead of tfmot's `begin_step` / `end_step`) say the
    layer is tfcompress's.
    """

    @staticmethod
    def from_config(config):
        schedule = config.get("pruning_schedule", {}).get("config", {})
        cls = PruneLowMagnitude if "begin" in schedule else tfmot.sparsity.keras.PruneLowMagnitude
        return cls.from_config(config)


class _ClusterWeightsByConfig:
    """The clustering wrapper a `.h5` file's "ClusterWeights" entry needs (tfcompress's has `begin`)."""

    @staticmethod
    def from_config(config, custom_objects=None):
        from tfcompress.clustering.wrapper import ClusterWeights

        cls = ClusterWeights if "begin" in config else cluster_wrapper.ClusterWeights
        return cls.from_config(config)


class _LoadableQuantizeLayer(quantize_layer.QuantizeLayer):
    """tfmot's `QuantizeLayer`, marked built once built, so a `.keras` file's weights fit it (tfmot PR #1123)."""

    def build(self, input_shape):
        super().build(input_shape)
        self.built = True


class _LoadableQuantizeWrapperV2(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot's `QuantizeWrapperV2`, loading a `.keras` file saved around an already built layer."""

    def load_own_variables(self, store):
        load_wrapper_variables(self, store)


# Saved under tfmot's names, so a file written after loading is a tfmot file as before.
_LoadableQuantizeLayer.__name__ = _LoadableQuantizeLayer.__qualname__ = "QuantizeLayer"
_LoadableQuantizeWrapperV2.__name__ = _LoadableQuantizeWrapperV2.__qualname__ = "QuantizeWrapperV2"


def custom_objects():
    """Every class a tfcompress or tfmot model file may name, by the name it is saved under.

    Returns:
        A dict `{name: class}` for `tf_keras.models.load_model(...,
        custom_objects=...)` or `tf_keras.utils.custom_object_scope(...)`.

    Example:

    ```python
    model = tf_keras.models.load_model("pruned.h5", custom_objects=tfc.custom_objects())
    ```
    """
    objects = {}
    for scope in (
        tfmot.quantization.keras.quantize_scope(),
        tfmot.sparsity.keras.prune_scope(),
        tfmot.clustering.keras.cluster_scope(),
    ):
        for mapping in scope.custom_objects:
            objects.update(mapping)
    # tfmot's cluster_scope() names its base wrapper; files written by its cluster_weights() need it.
    objects["ClusterWeights"] = _ClusterWeightsByConfig
    objects["PruneLowMagnitude"] = _PruneLowMagnitudeByConfig
    # A model's own class is saved by its bare name in .h5 files.
    objects["ChannelPruned"] = ChannelPruned
    objects["QuantizeLayer"] = _LoadableQuantizeLayer
    objects["QuantizeWrapperV2"] = _LoadableQuantizeWrapperV2
    for module in (prune_preserve_quantize_registry, cluster_preserve_quantize_registry):
        objects.update(
            {
                name: value
                for name, value in vars(module).items()
                if isinstance(value, type) and issubclass(value, tfmot.quantization.keras.quantizers.Quantizer)
            }
        )
    # Bare class names stay tfmot's; tfcompress's classes are registered (and saved) as "tfcompress>Name".
    objects.update({name: cls for name, cls in keras.utils.get_custom_objects().items() if name.startswith("tfcompress>")})
    return objects


@contextlib.contextmanager
def custom_object_scope(extra_objects=None):
    """Context manager in which `tf_keras` finds every tfcompress and tfmot class.

    Arguments:
        extra_objects: optional dict of the user's own custom layers, losses
            or functions that the file refers to.

    Example:

    ```python
    with tfc.custom_object_scope():
        model = tf_keras.models.load_model("qat_model.keras")
    ```
    """
    with keras.utils.custom_object_scope({**custom_objects(), **(extra_objects or {})}):
        yield


def load_model(path, *, compile=True, custom_objects=None):
    """Loads a model saved during or after compression, from any tf_keras or Keras 3 format.

    Pruned, quantization-aware and clustered models (tfcompress's or tfmot's
    wrappers, still training or stripped) load from `.keras`, `.h5` and
    SavedModel directories. A wrapped model loaded from `.keras` or `.h5`
    keeps its schedules and optimizer state: train it on with
    `tfc.CompressionCallback()` and `fit(initial_epoch=k)` to continue where
    epoch k begins. From a SavedModel the schedules continue the same way, but
    the optimizer starts afresh (tf_keras does not restore its state; logged).

    A `.keras` (or `.h5`) file written by Keras 3 (`import keras`) loads as a
    Keras 3 model, pruning and clustering constraints included; its masks are
    rebuilt from the kernels' zeros when `fit` starts, so the schedules resume
    on their course.

    Arguments:
        path: a `.keras` or `.h5` file, or a SavedModel directory.
        compile: restore the optimizer, loss and metrics saved with the model.
        custom_objects: dict of the user's own custom objects, if any.

    Returns:
        The tf_keras or Keras 3 model, as the file was written.

    Example:

    ```python
    pruned.save("pruned.keras")
    model = tfc.load_model("pruned.keras")
    model.fit(x, y, epochs=4, initial_epoch=2, callbacks=[tfc.CompressionCallback()])
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist. Save the model first with model.save('model.keras') "
            "(or '.h5', or a directory for a SavedModel)."
        )
    if _saved_by_keras3(path):
        return _load_keras3(path, compile, custom_objects)
    with custom_object_scope(custom_objects):
        model = keras.models.load_model(path, compile=compile)
    if os.path.isdir(path):
        _drop_revived_reports(model)
        if compile and getattr(model, "optimizer", None) is not None:
            logging.warning(
                "%s is a SavedModel: tf_keras does not restore optimizer state from it, so further "
                "training starts with a fresh optimizer (compression schedules continue as saved). "
                "To resume with the optimizer state, save the model as .keras or .h5.", path,
            )
    return model


def _load_keras3(path, compile, custom_objects):
    """Loads a Keras 3 file; tfcompress's constraints are registered with Keras 3 on import.

    On JAX, `CompressionCallback` lists the masks and centroids with the
    optimizer's variables while an epoch runs, so a checkpoint written
    mid-epoch holds them after the optimizer's own. Keras then skips the whole
    optimizer state; the leading entries are the optimizer's, so they load here.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras3.models.load_model(path, compile=compile, custom_objects=custom_objects)
    skipped = False
    for warning in caught:
        if "Skipping variable loading for optimizer" in str(warning.message) and compression_constraints(model):
            skipped = True
            continue
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if skipped and not _load_leading_optimizer_variables(path, model.optimizer):
        logging.warning("%s: the optimizer state did not fit this model; training goes on with a fresh optimizer.", path)
    return model


def _load_leading_optimizer_variables(path, optimizer):
    """Assigns the optimizer's variables from the first entries saved for it; True when they all fit."""
    import h5py

    if optimizer is None or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as file:
        saved = file.get("optimizer/vars")
        variables = optimizer.variables
        if saved is None or len(saved) < len(variables):
            return False
        values = [saved[str(i)][()] for i in range(len(variables))]
    if any(tuple(value.shape) != tuple(variable.shape) for value, variable in zip(values, variables)):
        return False
    for value, variable in zip(values, variables):
        variable.assign(value)
    return True


def _saved_by_keras3(path):
    """True for a `.keras` or `.h5` file that Keras 3 (`import keras`) wrote; False for tf_keras's and SavedModels."""
    if os.path.isdir(path):
        return False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "metadata.json" not in archive.namelist():
                return False
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
    else:
        try:
            import h5py

            with h5py.File(path, "r") as file:
                version = file.attrs.get("keras_version", "")
        except (ImportError, OSError):
            return False
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.split(".")[0] == "3"


def _drop_revived_reports(model):
    """Removes the `sparsity` / `qat_phase` metrics that a SavedModel revives with their saved values.

    tf_keras's `add_metric` keeps reporting a metric already on the layer under
    the same name and leaves it un-updated, so History would repeat the value
    from saving time; `CompressionCallback` attaches live ones when fit starts.
    """
    for layer in walk(model, include_self=True):
        for metric in [metric for metric in layer._metrics if isinstance(metric, CurrentValue)]:
            layer._metrics.remove(metric)
