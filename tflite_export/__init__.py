"""tflite_export: FP32/FP16/INT8/INT16x8/Edge TPU TFLite flatbuffers, verified on LiteRT."""
