"""tfcompress: compression scheduled inside one `model.fit`, on top of tfmot.

    import tf_keras as keras
    import tfcompress as tfc

    model = tfc.prune(model, final_sparsity=0.8)        # magnitude pruning
    model = tfc.quantize(model, start=0.6)              # QAT from 60% of the fit
    distiller = tfc.Distiller(teacher=teacher, student=model, temperature=4.0)
    distiller.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    distiller.fit(x, y, epochs=5, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(distiller.student)
    tfc.summary(final)

Keras 3 models (`import keras`, TensorFlow or JAX backend) take the same
`prune`, `cluster`, `CompressionCallback`, `strip`, `summary` and `load_model`:
their kernels get serializable constraints instead of wrapper layers. Given
Keras 3 teacher and student, `Distiller` is a Keras 3 model with the same
arguments (`tfc.distillation.Keras3Distiller`).
"""

from tfcompress import clustering, distillation, pruning, quantization, saving
from tfcompress.callbacks import CompressionCallback
from tfcompress.clustering import cluster
from tfcompress.distillation import Distiller
from tfcompress.pruning import prune
from tfcompress.quantization import quantize
from tfcompress.quantization import keras3_layers as _keras3_layers  # noqa: F401 (registers them for loading)
from tfcompress.saving import custom_object_scope, custom_objects, load_model
from tfcompress.sensitivity import SensitivityResult, sensitivity
from tfcompress.strip import strip
from tfcompress.summary import summary
from tfcompress.version import __version__

__all__ = [
    "CompressionCallback",
    "Distiller",
    "cluster",
    "clustering",
    "custom_object_scope",
    "custom_objects",
    "distillation",
    "load_model",
    "prune",
    "pruning",
    "quantization",
    "quantize",
    "saving",
    "sensitivity",
    "SensitivityResult",
    "strip",
    "summary",
    "__version__",
]
