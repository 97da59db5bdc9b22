"""Teacher outputs computed once and carried beside the inputs they belong to.

The teacher is frozen and runs in inference mode, so on unaugmented inputs its
outputs never change: computing them once makes distillation cost about a plain
fit. They travel *with* their inputs, as one structure
`{"tfc_inputs": x, "tfc_teacher_outputs": {...}}`, so `fit`'s shuffling (and
`validation_split`) moves each example and its teacher outputs together.
"""

import numpy as np
import tensorflow as tf

INPUTS_KEY = "tfc_inputs"
TEACHER_KEY = "tfc_teacher_outputs"

# Beyond this the cache would take more memory than most users expect; the teacher runs per batch.
MAX_CACHE_BYTES = 2 * 1024**3


def pack(inputs, teacher_outputs):
    """The structure a cached `fit` trains on: inputs beside their teacher outputs."""
    return {INPUTS_KEY: inputs, TEACHER_KEY: teacher_outputs}


def is_packed(x):
    """True when `x` carries cached teacher outputs."""
    return isinstance(x, dict) and set(x) == {INPUTS_KEY, TEACHER_KEY}


def unpack(x):
    """Returns `(inputs, teacher_outputs)`; teacher outputs are None when not cached."""
    if is_packed(x):
        return x[INPUTS_KEY], x[TEACHER_KEY]
    return x, None


def array_inputs(x):
    """True when `x` (a structure of arrays) is fixed data: numpy arrays or eager tensors."""
    leaves = tf.nest.flatten(x)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or (tf.is_tensor(leaf) and hasattr(leaf, "numpy")) for leaf in leaves
    )


def is_stream(x):
    """True for inputs produced anew on every pass: datasets, generators, `keras.utils.Sequence`."""
    if isinstance(x, tf.data.Dataset) or hasattr(x, "__next__"):
        return True
    return hasattr(x, "__getitem__") and hasattr(x, "on_epoch_end")


def describe_inputs(x):
    """A short name for the kind of inputs `fit` got, for log lines."""
    if isinstance(x, tf.data.Dataset):
        return "a tf.data.Dataset"
    return f"a {type(x).__name__}"


def cache_bytes(num_examples, output_shapes):
    """Bytes the cache of float32 teacher outputs takes for `num_examples` examples."""
    per_example = sum(int(np.prod([d for d in shape[1:]])) for shape in output_shapes)
    return num_examples * per_example * 4


def format_bytes(size):
    """`size` in B / KB / MB / GB for log lines."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def num_examples(x):
    """Number of examples in a structure of arrays."""
    return int(tf.nest.flatten(x)[0].shape[0])


def dataset_inputs(dataset):
    """The inputs part of an unbatched `(x, y[, w])` or `x` dataset."""
    if isinstance(dataset.element_spec, tuple):
        return dataset.map(lambda *element: element[0])
    return dataset


def packed_dataset(dataset, teacher_outputs):
    """Zips an unbatched dataset with its teacher outputs, packed into each element's inputs."""
    outputs = tf.data.Dataset.from_tensor_slices(teacher_outputs)
    if isinstance(dataset.element_spec, tuple):
        return tf.data.Dataset.zip((dataset, outputs)).map(
            lambda element, teacher: (pack(element[0], teacher),) + tuple(element[1:])
        )
    return tf.data.Dataset.zip((dataset, outputs)).map(pack)


def dataset_is_packed(dataset):
    """True when a dataset's elements carry teacher outputs (`Distiller.cache_teacher_outputs`)."""
    spec = dataset.element_spec
    x_spec = spec[0] if isinstance(spec, tuple) else spec
    return is_packed(x_spec)


def check_repeatable(dataset, probe=8):
    """Raises when two passes over `dataset` give different first elements (shuffled or augmented).

    Arguments:
        dataset: an unbatched dataset.
        probe: how many leading elements to compare.
    """
    inputs = dataset_inputs(dataset).take(probe)
    first = [tf.nest.flatten(e) for e in inputs]
    second = [tf.nest.flatten(e) for e in inputs]
    for a, b in zip(first, second):
        if any(not np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b)):
            raise ValueError(
                "Distiller.cache_teacher_outputs needs a dataset that yields the same examples in "
                "the same order on every pass, but two passes over this one differ (it is shuffled "
                "or augmented). Call cache_teacher_outputs before .shuffle() and augmentation, "
                "then shuffle and batch the dataset it returns; for augmented data, train without "
                "the cache (Distiller(teacher_cache=False))."
            )
