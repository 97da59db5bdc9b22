"""Errors raised by tflite_export; each message says what to change."""


class InvalidModelFileError(ValueError):
    """The file is missing, empty, truncated, or not a TFLite flatbuffer."""


class RepresentativeDataError(ValueError):
    """Calibration data that cannot calibrate this model (empty, NaN, wrong shape or type)."""


class _CarriesConverterLog:
    """An error of the TFLite converter: its message ends with the converter's last log lines.

    Exports hide the converter's log (see `tflite_export._quiet`); a failed
    conversion keeps its tail in `converter_log` so nothing needed to debug it is lost.
    """

    converter_log = ""

    def __str__(self):
        message = super().__str__()
        if self.converter_log:
            message += "\n\nLast lines of the TFLite converter's log:\n" + self.converter_log
        return message


class EdgeTPUCompatibilityError(_CarriesConverterLog, ValueError):
    """The model cannot become a flatbuffer that the Edge TPU compiler accepts."""


class VerificationError(AssertionError):
    """The flatbuffer's accuracy on LiteRT fell further below Keras than allowed."""


class ConversionError(_CarriesConverterLog, ValueError):
    """The TFLite converter cannot produce the requested precision for this model's ops."""
