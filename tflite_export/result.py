"""What export, verify and inspect return: printable as a table, serializable to JSON."""

import json
from dataclasses import dataclass, field

from tflite_export.errors import VerificationError


def _table(rows, title):
    """Two-column text table; `rows` are (label, value) pairs, None values skipped."""
    rows = [(k, str(v)) for k, v in rows if v is not None]
    width = max(len(k) for k, _ in rows) if rows else 0
    lines = [title, "-" * max(len(title), 20)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def _io(tensors):
    parts = []
    for t in tensors:
        text = f"{t['name']} {t['dtype']}{list(t['shape'])}"
        if "scale" in t:
            text += f" scale={t['scale']:.6g} zero_point={t['zero_point']}" if isinstance(
                t["scale"], float) else " per-channel"
        parts.append(text)
    return "; ".join(parts)


def _ops(counts):
    return ", ".join(f"{name} x{n}" for name, n in counts.items())


def _pct(value):
    return None if value is None else f"{100 * value:.2f}%"


def _ms(value):
    return None if value is None else f"{value:.4f} ms"


@dataclass
class VerificationResult:
    """How a flatbuffer behaves on the LiteRT interpreter, next to its reference.

    Attributes:
        samples: number of validation examples run.
        tflite_accuracy: top-1 accuracy of the flatbuffer (None without labels).
        keras_accuracy: top-1 accuracy of the Keras model (None without one).
        agreement: fraction of examples whose top-1 class equals the reference's.
        agreement_with: what `agreement` compares to: `"keras"` or `"fp32 flatbuffer"`.
        max_abs_diff: largest absolute difference between output values and the reference's.
        latency_ms: median single-example latency on LiteRT with `num_threads` threads.
        fp32_latency_ms: the same for the model's FP32 flatbuffer (None when not measured).
        num_threads: interpreter threads used for the latency.
        cpu: `{"name", "simd", "machine"}` of the machine that measured the latency.
        runtime: how LiteRT ran the file (`"default (XNNPACK)"` or `"builtin kernels"`).
    """

    samples: int
    tflite_accuracy: float = None
    keras_accuracy: float = None
    agreement: float = None
    agreement_with: str = None
    max_abs_diff: float = None
    latency_ms: float = None
    fp32_latency_ms: float = None
    num_threads: int = 1
    cpu: dict = field(default_factory=dict)
    runtime: str = "default (XNNPACK)"

    @property
    def accuracy_drop(self):
        """Keras accuracy minus TFLite accuracy (positive = the flatbuffer is worse)."""
        if self.tflite_accuracy is None or self.keras_accuracy is None:
            return None
        return self.keras_accuracy - self.tflite_accuracy

    def check(self, min_accuracy=None, max_accuracy_drop=None):
        """Raises `VerificationError` when the flatbuffer misses a threshold.

        Arguments:
            min_accuracy: lowest acceptable TFLite accuracy in [0, 1], or None.
            max_accuracy_drop: largest acceptable Keras-minus-TFLite accuracy, or None.

        Returns:
            self, so calls can be chained.

        Example:

        >>> tfe.verify("m.tflite", x, y).check(min_accuracy=0.9)
        """
        if min_accuracy is not None:
            if self.tflite_accuracy is None:
                raise VerificationError("min_accuracy needs labels: pass y to verify().")
            if self.tflite_accuracy < min_accuracy:
                raise VerificationError(
                    f"TFLite accuracy {self.tflite_accuracy:.4f} is below min_accuracy "
                    f"{min_accuracy:.4f} on {self.samples} examples. Calibrate with more "
                    "representative data, use a milder precision (int16x8, dynamic, fp16), "
                    "or train with quantization-aware training."
                )
        if max_accuracy_drop is not None:
            if self.accuracy_drop is None:
                raise VerificationError("max_accuracy_drop needs labels and the Keras model.")
            if self.accuracy_drop > max_accuracy_drop:
                raise VerificationError(
                    f"TFLite accuracy {self.tflite_accuracy:.4f} is {self.accuracy_drop:.4f} "
                    f"below Keras ({self.keras_accuracy:.4f}); max_accuracy_drop is "
                    f"{max_accuracy_drop:.4f}. Calibrate with more representative data, use a "
                    "milder precision, or train with quantization-aware training."
                )
        return self

    def rows(self):
        latency = _ms(self.latency_ms)
        if latency and self.fp32_latency_ms is not None:
            latency += f" (fp32 flatbuffer: {self.fp32_latency_ms:.4f} ms)"
        return [
            ("validation examples", self.samples),
            ("tflite accuracy", _pct(self.tflite_accuracy)),
            ("keras accuracy", _pct(self.keras_accuracy)),
            (f"top-1 agreement ({self.agreement_with})" if self.agreement_with else "top-1 agreement",
             _pct(self.agreement)),
            ("max abs output diff", None if self.max_abs_diff is None else f"{self.max_abs_diff:.6g}"),
            (f"median latency ({self.num_threads} thread)", latency),
            ("measured on", f"{self.cpu.get('name')} [{' '.join(self.cpu.get('simd', []))}]"
             if self.cpu and self.latency_ms is not None else None),
            ("runtime", self.runtime if self.runtime != "default (XNNPACK)" else None),
        ]

    def to_dict(self):
        d = dict(vars(self))
        d["accuracy_drop"] = self.accuracy_drop
        return d

    def to_json(self, **kwargs):
        """Returns the result as a JSON string (keyword arguments go to `json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        return _table(self.rows(), "LiteRT verification")


@dataclass
class ModelReport:
    """What a `.tflite` file contains (returned by `tflite_export.inspect`).

    Attributes:
        path: the file.
        bytes: file size.
        gzip_bytes: size after gzip -9 (what a download or an APK would carry).
        inputs / outputs: list of dicts with name, shape, dtype, scale, zero_point.
        op_counts: `{op name: count}`.
        tensor_dtypes: `{dtype: number of tensors}`.
        float_ops: names of ops computing in float (excluding the IO (de)quantize boundary).
        fully_integer: True when `float_ops` is empty.
        sparse_tensors: number of tensors stored with sparse encoding.
        metadata: names of the flatbuffer's metadata entries (e.g. `TFLITE_METADATA`).
        model_metadata: decoded Android metadata (name, normalization, labels) when present.
        weights: elements of the kernels (constant float/int8/int16 tensors of rank >= 2), dense count.
        nonzero_weights: nonzero values stored in those kernels.
        weight_deflate_bytes: the kernels' stored values, concatenated and deflated (level 9): zeros
            included for a dense tensor, only the kept values for a sparse-encoded one.
        index_deflate_bytes: the sparse-encoded kernels' index arrays, deflated (0 when none is sparse).
        bits_per_nonzero: `8 * weight_deflate_bytes / nonzero_weights`: what one kept weight costs in
            the download, the zeros' share included for dense tensors.
        index_bits_per_nonzero: `8 * index_deflate_bytes / nonzero_weights`: the sparse index's cost
            per kept weight (0.0 for a dense file).
    """

    path: str
    bytes: int
    gzip_bytes: int
    inputs: list
    outputs: list
    op_counts: dict
    tensor_dtypes: dict
    float_ops: list
    fully_integer: bool
    sparse_tensors: int = 0
    metadata: list = field(default_factory=list)
    model_metadata: dict = None
    weights: int = 0
    nonzero_weights: int = 0
    weight_deflate_bytes: int = 0
    index_deflate_bytes: int = 0

    @property
    def bits_per_nonzero(self):
        return 8.0 * self.weight_deflate_bytes / self.nonzero_weights if self.nonzero_weights else None

    @property
    def index_bits_per_nonzero(self):
        return 8.0 * self.index_deflate_bytes / self.nonzero_weights if self.nonzero_weights else None

    def _weight_row(self):
        if not self.weights:
            return None
        text = (f"{self.nonzero_weights:,} of {self.weights:,} nonzero; after deflate "
                f"{self.bits_per_nonzero:.2f} bits per nonzero")
        if self.index_deflate_bytes:
            text += f" + {self.index_bits_per_nonzero:.2f} index bits (sparse encoding)"
        return text

    def rows(self):
        return [
            ("file", self.path),
            ("bytes", f"{self.bytes:,}"),
            ("gzip bytes", f"{self.gzip_bytes:,}"),
            ("kernel weights", self._weight_row()),
            ("inputs", _io(self.inputs)),
            ("outputs", _io(self.outputs)),
            ("ops", _ops(self.op_counts)),
            ("tensor dtypes", ", ".join(f"{k} x{v}" for k, v in self.tensor_dtypes.items())),
            ("fully integer", "yes" if self.fully_integer else f"no (float ops: {', '.join(self.float_ops)})"),
            ("sparse tensors", self.sparse_tensors or None),
            ("metadata", ", ".join(self.metadata) or None),
            ("android metadata", None if not self.model_metadata else
             f"{self.model_metadata.get('name')!r}, "
             f"{len(self.model_metadata.get('labels') or [])} labels"),
        ]

    def to_dict(self):
        return {**vars(self), "bits_per_nonzero": self.bits_per_nonzero,
                "index_bits_per_nonzero": self.index_bits_per_nonzero}

    def to_json(self, **kwargs):
        """Returns the report as a JSON string (keyword arguments go to `json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        return _table(self.rows(), "TFLite model")


@dataclass
class ExportResult:
    """What `tflite_export.export` wrote, and how it behaves.

    Attributes:
        path: the written `.tflite` file.
        precision: one of `fp32 fp16 dynamic int8 int16x8 edgetpu`.
        report: the `ModelReport` of the written file (bytes, gzip bytes, IO, ops).
        verification: a `VerificationResult` when `validation_data` was given, else None.
        edgetpu: an `EdgeTPUReport` for the `edgetpu` precision, else None.
        calibration_samples: number of representative samples used (0 when none).
        stripped: the compression wrappers `tfcompress.strip` removed before conversion, e.g.
            `["pruning", "quantization"]` (empty, so falsy, when the model needed no stripping).
        quantization_aware: True when the model carried QAT ranges (no calibration needed).
        sparse_encoding: `"used"`, `"off"`, `"not sparse"` or why it was not used. Unless forced,
            the sparse file is used only when it is smaller after gzip (the download) and LiteRT's
            default runtime invokes it.
        dense_bytes: size without sparse encoding (equals `bytes` unless sparse was used).
        sparse_bytes: size with sparse encoding when it was tried, else None.
        dense_gzip_bytes / sparse_gzip_bytes: the same after gzip -9 (None when not measured).
        bits_per_nonzero / index_bits_per_nonzero: what one kept kernel weight costs after deflate,
            and its sparse index apart (see `ModelReport`).
        conversion_seconds: wall time the TFLite converter took for this file (the sparse
            variant included when tried, and for a recurrent model calibrated, the FP32
            conversion that checks its graph for loops; verification not).
        notes: human-readable log of decisions taken during the export.
        names_dropped: bytes of intermediate tensor names dropped (`strip_names=True`), else 0.
        fixed_batch: the batch size the file's input is fixed to (1 for the Edge TPU and for
            models with recurrent layers, which convert only from a fixed-batch signature),
            None when the batch axis is dynamic.
        unrolled: names of recurrent layers converted unrolled over their time steps (the
            converter's calibration cannot run the loop a GRU or SimpleRNN becomes).
        float32_copy: True when the model computes in float16/bfloat16 (a mixed-precision
            policy) and its float32 copy, same weights, was converted.
        edgetpu_fully_mapped: for `edgetpu`, whether every op is predicted on the Edge TPU
            (None for other precisions).
        first_cpu_op: for a partly mapped `edgetpu` file, the first op predicted on the CPU
            and why, e.g. `"LEAKY_RELU (op 3): LEAKY_RELU is not in Coral's ... table"`.
    """

    path: str
    precision: str
    report: ModelReport
    verification: VerificationResult = None
    edgetpu: object = None
    calibration_samples: int = 0
    stripped: list = field(default_factory=list)
    quantization_aware: bool = False
    sparse_encoding: str = "off"
    dense_bytes: int = None
    sparse_bytes: int = None
    dense_gzip_bytes: int = None
    sparse_gzip_bytes: int = None
    notes: list = field(default_factory=list)
    conversion_seconds: float = None
    names_dropped: int = 0
    fixed_batch: int = None
    unrolled: list = field(default_factory=list)
    float32_copy: bool = False

    @property
    def edgetpu_fully_mapped(self):
        return None if self.edgetpu is None else self.edgetpu.fully_mapped

    @property
    def first_cpu_op(self):
        if self.edgetpu is None:
            return None
        if self.edgetpu.first_cpu_op is not None:
            op = self.edgetpu.ops[self.edgetpu.first_cpu_op]
            return f"{op.op} (op {op.index}): {op.reason}"
        if self.edgetpu.model_problems:
            return f"the whole file: {self.edgetpu.model_problems[0]}"
        return None

    @property
    def bytes(self):
        return self.report.bytes

    @property
    def gzip_bytes(self):
        return self.report.gzip_bytes

    @property
    def bits_per_nonzero(self):
        return self.report.bits_per_nonzero

    @property
    def index_bits_per_nonzero(self):
        return self.report.index_bits_per_nonzero

    @property
    def inputs(self):
        return self.report.inputs

    @property
    def outputs(self):
        return self.report.outputs

    @property
    def op_counts(self):
        return self.report.op_counts

    def to_dict(self):
        d = {
            "path": self.path, "precision": self.precision, "bytes": self.bytes,
            "gzip_bytes": self.gzip_bytes, "calibration_samples": self.calibration_samples,
            "stripped": self.stripped, "quantization_aware": self.quantization_aware,
            "sparse_encoding": self.sparse_encoding, "dense_bytes": self.dense_bytes,
            "sparse_bytes": self.sparse_bytes, "dense_gzip_bytes": self.dense_gzip_bytes,
            "sparse_gzip_bytes": self.sparse_gzip_bytes, "bits_per_nonzero": self.bits_per_nonzero,
            "index_bits_per_nonzero": self.index_bits_per_nonzero, "conversion_seconds": self.conversion_seconds,
            "names_dropped": self.names_dropped, "fixed_batch": self.fixed_batch, "unrolled": self.unrolled, "float32_copy": self.float32_copy,
            "edgetpu_fully_mapped": self.edgetpu_fully_mapped, "first_cpu_op": self.first_cpu_op,
            "notes": self.notes,
            "model": self.report.to_dict(),
            "verification": self.verification.to_dict() if self.verification else None,
            "edgetpu": self.edgetpu.to_dict() if self.edgetpu else None,
        }
        return d

    def to_json(self, **kwargs):
        """Returns the result as a JSON string (keyword arguments go to `json.dumps`).

        Example:

        >>> open("export.json", "w").write(result.to_json(indent=2))
        """
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        rows = [("precision", self.precision)] + self.report.rows()
        if self.sparse_bytes is not None:
            gzipped = (f", gzip {self.dense_gzip_bytes:,} / {self.sparse_gzip_bytes:,} B"
                       if self.sparse_gzip_bytes is not None else "")
            rows.append(("sparse encoding", f"{self.sparse_encoding} (dense {self.dense_bytes:,} B, "
                                            f"sparse {self.sparse_bytes:,} B{gzipped})"))
        rows += [
            ("calibration samples", self.calibration_samples or None),
            ("stripped", f"compression wrappers ({', '.join(self.stripped)}) with tfcompress.strip before conversion"
             if self.stripped else None),
            ("quantization-aware", "yes" if self.quantization_aware else None),
            ("float32 copy", "converted: the model computes in half precision (mixed policy)"
             if self.float32_copy else None),
            ("fixed batch", self.fixed_batch),
            ("unrolled", f"{', '.join(self.unrolled)} (for calibration)" if self.unrolled else None),
            ("tensor names", f"{self.names_dropped:,} B of intermediate names dropped" if self.names_dropped else None),
            ("conversion time", None if self.conversion_seconds is None else f"{self.conversion_seconds:.2f} s"),
        ]
        if self.verification:
            rows += self.verification.rows()
        if self.edgetpu:
            rows.append(("edge tpu (offline)", self.edgetpu.summary()))
            rows.append(("edge tpu fully mapped", "yes" if self.edgetpu_fully_mapped
                         else f"no: CPU from {self.first_cpu_op}"))
        return _table(rows, f"tflite_export: {self.path}")
