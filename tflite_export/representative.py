"""Calibration ("representative") data: accepted forms, bounded size, validated contents."""

import numpy as np

from tflite_export.errors import RepresentativeDataError

_ACCEPTED = ("a numpy array of inputs, an (x, y) tuple, a tf.data.Dataset (batched or not) "
             "or a generator of arrays")


def _to_numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def _first_of_pair(element, pair_types=(tuple, list)):
    """(x, y) or (x, y, sample_weight) elements contribute their x.

    A one-element list is TFLiteConverter's own `representative_dataset`
    convention (`yield [x]`), so it contributes its only array.
    """
    if isinstance(element, (tuple, list)) and len(element) == 1:
        return element[0]
    if isinstance(element, pair_types) and len(element) in (2, 3):
        return element[0]
    if isinstance(element, dict):
        raise RepresentativeDataError(
            "representative_data yielded a dict; tflite_export calibrates single-input "
            "models. Yield the input array itself (or an (x, y) tuple)."
        )
    return element


def _iter_arrays(data):
    """Yields numpy arrays, each either one sample or a batch."""
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            for element in data.as_numpy_iterator():
                yield _to_numpy(_first_of_pair(element))
            return
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    if hasattr(data, "__next__"):  # generators and other iterators
        for element in data:
            yield _to_numpy(_first_of_pair(element))
        return
    # At the top level only a tuple means (x, y); a list is a list of samples.
    yield _to_numpy(_first_of_pair(data, pair_types=(tuple,)))


def _integer_samples(array, dtype, name):
    """Token ids (or other integer inputs) as the model's integer dtype; floats only when whole."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise RepresentativeDataError(
                f"{name} has non-integer values (dtype {array.dtype}), but the model takes {dtype} "
                "inputs such as token ids. Pass the integer ids the model is fed in training."
            )
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise RepresentativeDataError(
            f"{name} has values in [{array.min()}, {array.max()}], outside the model's {dtype} input "
            f"range [{info.min}, {info.max}]. Pass the ids the model is fed in training."
        )
    return array.astype(dtype)


def collect_samples(data, input_shape, max_samples=256, name="representative_data", dtype="float32"):
    """Draws at most `max_samples` validated calibration samples.

    Arguments:
        data: numpy array of inputs, `(x, y)` tuple, `tf.data.Dataset` (batched or
            not, elements `x` or `(x, y)`), a generator, or a callable returning one.
        input_shape: the model's input shape without the batch axis, e.g. `(8, 8, 1)`;
            `None` entries match any size.
        max_samples: upper bound on samples taken (the rest is never read).
        name: argument name shown in errors.
        dtype: the model's input dtype. Float models take float data (integer data is
            refused: it is usually not preprocessed like the training inputs); integer
            models (token ids for an Embedding) take integer data, kept as integers.

    Returns:
        An array of shape `(n, *input_shape)` with `1 <= n <= max_samples`: float32
        for a float model, `dtype` for an integer one.

    Raises:
        RepresentativeDataError: empty data, NaN/inf, wrong shape, or the wrong kind of type.

    Example:

    >>> collect_samples(x_train, (8, 8, 1), max_samples=100).shape
    (100, 8, 8, 1)
    >>> collect_samples(token_ids, (24,), dtype="int32").dtype
    dtype('int32')
    """
    if data is None:
        raise RepresentativeDataError(f"{name} is None; pass {_ACCEPTED}.")
    if isinstance(data, (str, bytes, dict)):
        raise RepresentativeDataError(f"{name} got a {type(data).__name__}; pass {_ACCEPTED}.")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}.")
    dtype = np.dtype(dtype)
    integer_model = np.issubdtype(dtype, np.integer)
    kind = f"{dtype} (integer)" if integer_model else "float"
    input_shape = tuple(input_shape)
    expected = "(batch, " + ", ".join("?" if d is None else str(d) for d in input_shape) + ")"
    chunks, count = [], 0
    for array in _iter_arrays(data):
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise RepresentativeDataError(
                f"{name} has dtype {array.dtype}; expected {kind} inputs shaped {expected}, "
                "preprocessed exactly like the training inputs."
            )
        if not integer_model and not np.issubdtype(array.dtype, np.floating):
            raise RepresentativeDataError(
                f"{name} has integer/bool dtype {array.dtype}, but the model takes float inputs. "
                "Preprocess it exactly like the training inputs (e.g. x.astype('float32') / 255.0) "
                "so the calibrated ranges match what the model sees."
            )
        if array.ndim == len(input_shape):
            array = array[None]  # one unbatched sample
        if array.ndim != len(input_shape) + 1 or any(
            d is not None and d != a for d, a in zip(input_shape, array.shape[1:])
        ):
            raise RepresentativeDataError(
                f"{name} has samples shaped {tuple(array.shape[1:]) if array.ndim else ()} "
                f"(array shape {array.shape}), but the model's input is {expected}. "
                "Pass model inputs only (not labels), with the same shape as in training."
            )
        array = array[: max_samples - count]
        if integer_model:
            array = _integer_samples(array, dtype, name)
        else:
            array = array.astype(np.float32)
            if not np.isfinite(array).all():
                raise RepresentativeDataError(
                    f"{name} contains NaN or infinite values; calibration would produce invalid "
                    "quantization ranges. Clean the data (e.g. np.nan_to_num or drop those rows)."
                )
        chunks.append(array)
        count += len(array)
        if count >= max_samples:
            break
    if count == 0:
        raise RepresentativeDataError(
            f"{name} is empty: it yielded no samples. Pass at least one (ideally 100-500) "
            f"real input(s) shaped {expected}."
        )
    return np.concatenate(chunks, axis=0)


def as_converter_dataset(samples):
    """Wraps calibration samples as the callable `TFLiteConverter.representative_dataset` wants.

    Arguments:
        samples: array `(n, *input_shape)` from `collect_samples` (float32, or the model's
            integer dtype).

    Returns:
        A zero-argument callable yielding `[sample[None]]`, one sample at a time.

    Example:

    >>> converter.representative_dataset = as_converter_dataset(samples)
    """

    def representative_dataset():
        for sample in samples:
            yield [sample[None]]

    return representative_dataset
