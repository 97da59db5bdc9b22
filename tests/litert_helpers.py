"""Helpers the tests share for running converted models on the LiteRT interpreter."""

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def int8_flatbuffer(model):
    """The converter's default-optimized flatbuffer (full INT8 for a QAT model).

    Converted from the model's traced inference call: `from_keras_model` first exports a
    SavedModel, nine tenths of a digits QAT model's conversion (1.9 CPU s against 0.2), for
    the same ops, tensor types, int8 kernels and LiteRT outputs (only tensor names differ).
    That route stays tested where the tests convert with it themselves (test_saving,
    test_distillation, test_inspect, test_quantization_coverage's text model).
    """
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def litert_predict(flatbuffer, x):
    """Outputs of `flatbuffer` on LiteRT for the whole batch `x`."""
    interpreter = Interpreter(model_content=flatbuffer)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def int8_kernels(flatbuffer):
    """The 2-D int8 constant tensors (Dense kernels) stored in `flatbuffer`."""
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    return [
        interpreter.get_tensor(t["index"])
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and len(t["shape"]) == 2 and t["shape"][0] > 1
    ]
