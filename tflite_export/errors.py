"""Errors raised by tflite_export; each message says what to change."""


class InvalidModelFileError(ValueError):
    """The file is missing, empty, truncated, or not a TFLite flatbuffer."""


class RepresentativeDataError(ValueError):
    """Calibration data that cannot calibrate this model (empty, NaN, wrong shape or type)."""


class EdgeTPUCompatibilityError(ValueError):
    """The model cannot become a flatbuffer that the Edge TPU compiler accepts."""


class VerificationError(AssertionError):
    """The flatbuffer's accuracy on LiteRT fell further below Keras than allowed."""


class ConversionError(ValueError):
    """The TFLite converter cannot produce the requested precision for this model's ops."""
