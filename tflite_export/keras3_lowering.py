"""Keras 3 layers that convert badly at integer precisions, lowered as tf_keras lowers them.

An integer export (int8, edgetpu, int16x8) of a Keras 3 model converts a copy
whose layers below compute the same function with the same weights, in the
TensorFlow ops tf_keras uses for them:

* `LayerNormalization` computes its offset as `-mean * inv + beta`. The `-mean`
  is a NEG, which TFLite has no integer kernel for: the converter left a float
  NEG in every LayerNormalization of an int8 file (a Transformer encoder's int8
  export was not fully integer, its Edge TPU export refused). tf_keras computes
  `beta - mean * inv`, a MUL and a SUB, which quantize.
* `LSTM` runs Keras 3's step loop, a WHILE in the converted graph, which the
  converter's calibration cannot run: it was unrolled over the time steps (an
  Embedding + LSTM text classifier: 121 KB and 365 ops in int8, not fully
  integer, against 49 KB in fp32). tf_keras's LSTM calls a function the
  converter recognizes and fuses into one UNIDIRECTIONAL_SEQUENCE_LSTM op, which
  calibrates: 16 KB, fully integer, 8 ops. The copy's LSTM calls that same
  tf_keras function (`lstm_with_backend_selection`) when tf_keras's own LSTM
  would: tanh and sigmoid activations, a bias, no mask, not unrolled, not stateful.
"""

import functools

INTEGER_PRECISIONS = ("int8", "edgetpu", "int16x8")


@functools.lru_cache(maxsize=None)  # one class per process, defined once Keras 3 is needed
def _layer_norm_class():
    import keras as keras3

    class SubtractingLayerNormalization(keras3.layers.LayerNormalization):
        """`keras.layers.LayerNormalization` with its offset as `beta - mean * inv` (MUL and SUB, no NEG)."""

        def call(self, inputs):
            ops = keras3.ops
            x = ops.cast(inputs, "float32")
            axes = sorted([self.axis] if isinstance(self.axis, int) else self.axis)
            axes = [axis % len(x.shape) for axis in axes]
            mean, variance = ops.moments(x, axes=axes, keepdims=True)
            inv = ops.rsqrt(variance + self.epsilon)
            # gamma and beta hold the normalized axes' sizes; broadcast them over the other axes.
            shape = [x.shape[axis] if axis in axes else 1 for axis in range(len(x.shape))]

            def broadcast(weight):
                weight = ops.cast(weight, "float32")
                return weight if axes == [len(x.shape) - 1] else ops.reshape(weight, shape)

            if self.gamma is not None:
                inv = inv * broadcast(self.gamma)
            offset = mean * inv
            if self.beta is not None:
                outputs = x * inv + (broadcast(self.beta) - offset)
            else:
                outputs = x * inv - offset
            return ops.cast(outputs, self.compute_dtype)

    return SubtractingLayerNormalization


@functools.lru_cache(maxsize=None)
def _lstm_class():
    import keras as keras3
    import tensorflow as tf

    class FusedLSTM(keras3.layers.LSTM):
        """`keras.layers.LSTM` whose loop is tf_keras's, which the TFLite converter fuses into one op."""

        fuses_in_tflite = True

        def inner_loop(self, sequences, initial_state, mask, training=False):
            if isinstance(mask, (list, tuple)):
                mask = mask[0]
            if mask is not None or tf.executing_eagerly():
                return super().inner_loop(sequences, initial_state, mask, training=training)
            from tf_keras.src.layers.rnn.lstm import lstm_with_backend_selection

            cell = self.cell
            last, outputs, h, c, _ = lstm_with_backend_selection(
                inputs=sequences, init_h=initial_state[0], init_c=initial_state[1],
                kernel=tf.convert_to_tensor(cell.kernel), recurrent_kernel=tf.convert_to_tensor(cell.recurrent_kernel),
                bias=tf.convert_to_tensor(cell.bias), mask=None, time_major=False, go_backwards=self.go_backwards,
                sequence_lengths=None, zero_output_for_mask=self.zero_output_for_mask,
                return_sequences=self.return_sequences)
            return last, outputs, [h, c]

    return FusedLSTM


def _fusable_lstm(layer):
    """True for a Keras 3 LSTM that tf_keras's fused implementation computes (as tf_keras's LSTM decides)."""
    import keras as keras3

    def name(function):
        return getattr(function, "__name__", "")

    return (
        type(layer) is keras3.layers.LSTM
        and name(layer.cell.activation) == "tanh"
        and name(layer.cell.recurrent_activation) == "sigmoid"
        and layer.cell.use_bias
        and not layer.unroll
        and not layer.stateful
    )


def _receives_mask(layer):
    """True when a call of `layer` in its model's graph is given a mask (an Embedding's mask_zero, Masking)."""
    from keras.src import backend

    for node in getattr(layer, "_inbound_nodes", []):
        arguments = getattr(node, "arguments", None)
        if arguments is not None and arguments.kwargs.get("mask") is not None:
            return True
        if any(backend.get_keras_mask(tensor) is not None for tensor in node.input_tensors):
            return True
    return False


def fusable_lstms(model):
    """The model's Keras 3 LSTM layers (a Bidirectional's too) that convert to TFLite's fused LSTM op.

    A masked LSTM keeps Keras 3's loop, as tf_keras's keeps its own when masked.
    """
    import keras as keras3

    layers = list(model._flatten_layers(include_self=False, recursive=True))
    found, inside = [], set()
    for layer in layers:
        if isinstance(layer, keras3.layers.Bidirectional):
            # Its LSTMs are called by the wrapper, not by the graph: the wrapper's call says whether it masks.
            directions = (layer.forward_layer, layer.backward_layer)
            inside.update(id(inner) for inner in directions)
            if not _receives_mask(layer):
                found += [inner for inner in directions if _fusable_lstm(inner)]
    found += [layer for layer in layers if id(layer) not in inside and _fusable_lstm(layer) and not _receives_mask(layer)]
    return found


def negating_layer_norms(model):
    """The model's Keras 3 LayerNormalization layers that convert with a float NEG (not RMS-scaled)."""
    import keras as keras3

    return [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) is keras3.layers.LayerNormalization and not layer.rms_scaling
    ]


def lowered_for_integer(model, precision, notes):
    """`model`, or its copy with int8-friendly LayerNormalization layers for an integer `precision`.

    Arguments:
        model: a Keras 3 model.
        precision: the export precision; only int8, edgetpu and int16x8 lower.
        notes: the export's notes; the copy (or why it could not be made) is noted there.

    Returns:
        The model to convert: the same function, with the same weights.
    """
    if precision not in INTEGER_PRECISIONS:
        return model
    import keras as keras3

    norms, lstms = negating_layer_norms(model), fusable_lstms(model)
    if not norms and not lstms:
        return model
    from tfcompress._layers import clone_with_weights, fresh_copy

    layer_norm, fused_lstm = _layer_norm_class(), _lstm_class()
    norm_ids, lstm_ids = {id(layer) for layer in norms}, {id(layer) for layer in lstms}

    def clone(layer):
        if id(layer) in norm_ids:
            return layer_norm.from_config(layer.get_config())
        if id(layer) in lstm_ids:
            return fused_lstm.from_config(layer.get_config())
        new = fresh_copy(layer)
        if isinstance(layer, keras3.layers.Bidirectional):
            # Bidirectional builds its two LSTMs from their configs; the copy's are retyped in place
            # (FusedLSTM adds no state to keras.layers.LSTM).
            for inner, new_inner in ((layer.forward_layer, new.forward_layer), (layer.backward_layer, new.backward_layer)):
                if id(inner) in lstm_ids:
                    new_inner.__class__ = fused_lstm
        return new

    described = []
    if norms:
        described.append(f"LayerNormalization layers ({', '.join(layer.name for layer in norms)}) compute their "
                         "offset as beta - mean * inv, as tf_keras does: Keras 3's -mean is a NEG, which has no "
                         "integer TFLite kernel and would stay float")
    if lstms:
        described.append(f"LSTM layers ({', '.join(layer.name for layer in lstms)}) run tf_keras's LSTM "
                         "function, which the converter fuses into one UNIDIRECTIONAL_SEQUENCE_LSTM op that "
                         "calibrates: Keras 3's loop converts to a WHILE, which calibration can only unroll")
    try:
        copy = clone_with_weights(model, clone)
    except Exception as error:  # a subclassed model: its layers stay as Keras 3 computes them
        notes.append(f"converted as Keras 3 computes it: the model could not be copied layer by layer "
                     f"({type(error).__name__}: {error}) to lower its LayerNormalization / LSTM layers")
        return model
    notes.append("converted a copy (same function, same weights) whose " + "; whose ".join(described))
    return copy
