"""The LiteRT runner: a bundle's float32 or int8 model, from features to scores.

`load_runner(bundle, "fp32" | "int8")` returns a `Runner` whose `predict`
takes float32 features of shape (flows, features) and returns class
probabilities (classifier) or the per-flow reconstruction error
(autoencoder), the same quantities as the torch model. `edgedp evaluate`,
`edgedp bench` and the gateway share it.

The gateway needs two more things that `predict` hides:

- One flow at a time (`predict_one`), one `invoke` per flow, with the input
  and output buffers allocated once, so that a steady stream of flows does
  not allocate tensors.
- For the int8 model, integer input. The int8 model's input tensor is int8
  (its output is float32, dequantized inside the graph). A gateway can
  quantize its features once with the model's own scale and zero point
  (`Runner.input_quantization`) and call `predict_quantized` or
  `predict_one_quantized`, instead of paying for the float to int8
  conversion on every call.

This module imports only numpy, ai_edge_litert, the standard library and
edgedp.bundle, because it runs on the gateway.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    Bundle,
    BundleError,
    load_bundle,
)

logger = logging.getLogger(__name__)

MODEL_FILES: dict[str, str] = {"fp32": FP32_MODEL, "int8": INT8_MODEL}
"""Model format name to the bundle file that contains it."""

CLASSIFIER = "classifier"
AUTOENCODER = "autoencoder"

DEFAULT_MAX_BATCH = 4096
"""Rows per invoke in `predict`. Larger inputs run in chunks of this size."""


class ModelFileError(BundleError):
    """A .tflite file that LiteRT cannot load or that does not fit its bundle."""


@dataclass(frozen=True)
class QuantizationParameters:
    """Affine int8 quantization of one tensor: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray, *, out: np.ndarray | None = None):
        """Return `values` as int8: round(values / scale) + zero_point, clipped.

        Args:
            values: real values of any shape.
            out: an int8 array of the same shape to write into. With it, the
                call allocates only one float32 temporary of that shape.
        """
        scaled = np.divide(values, np.float32(self.scale), dtype=np.float32)
        np.rint(scaled, out=scaled)
        scaled += self.zero_point
        # np.minimum and np.maximum cost less per call than np.clip on the
        # one-flow arrays of the gateway.
        np.minimum(scaled, 127, out=scaled)
        np.maximum(scaled, -128, out=scaled)
        if out is None:
            return scaled.astype(np.int8)
        out[...] = scaled
        return out

    def dequantization_table(self) -> np.ndarray:
        """Return the real value of every int8 code, indexed by its uint8 view."""
        codes = np.arange(256, dtype=np.uint8).view(np.int8)
        return self.dequantize(codes)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Return int8 `values` as float32 real numbers."""
        return (np.asarray(values, dtype=np.float32) - self.zero_point) * np.float32(
            self.scale
        )


def _tensor_quantization(detail: dict) -> QuantizationParameters | None:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] != np.int8:
        return None
    return QuantizationParameters(scale=float(scale), zero_point=int(zero_point))


class LiteRTModel:
    """One LiteRT interpreter with a one-flow path and a micro-batch path.

    The model must have one input of shape (1, features) and one output of
    shape (1, outputs), as `edgedp optimize` writes them. The one-flow path
    keeps the interpreter at batch size 1 and copies each flow into a buffer
    allocated once. The batch path resizes the input tensor only when the
    batch size changes, and switching between the two paths resizes it
    again, so a caller that alternates should keep two `LiteRTModel`s.

    Raises:
        ModelFileError: the file is not a LiteRT model, is truncated, or
            does not have one (1, features) input and one output.
    """

    def __init__(
        self, model: str | Path | bytes, *, num_threads: int = 1, name: str = ""
    ) -> None:
        if isinstance(model, (str, Path)):
            name = name or str(model)
            model = Path(model).read_bytes()
        self.name = name or "model"
        try:
            self._interpreter = Interpreter(
                model_content=bytes(model), num_threads=num_threads
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelFileError(
                f"{self.name} is not a loadable LiteRT model ({error}); "
                "the file is corrupt or truncated, so rerun `edgedp optimize "
                "--force` on its bundle"
            ) from error

        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 2:
            raise ModelFileError(
                f"{self.name} has inputs {[list(d['shape']) for d in inputs]} and "
                f"outputs {[list(d['shape']) for d in outputs]}; edgedp models "
                "have one (1, features) input and one output"
            )
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self.output_dtype = np.dtype(outputs[0]["dtype"])
        self.n_features = int(inputs[0]["shape"][1])
        self.n_outputs = int(outputs[0]["shape"][-1])
        self.input_quantization = _tensor_quantization(inputs[0])
        self.output_quantization = _tensor_quantization(outputs[0])

        self._batch_rows = int(inputs[0]["shape"][0])
        self._row = np.zeros((1, self.n_features), dtype=self.input_dtype)
        self._output_row = np.zeros((1, self.n_outputs), dtype=self.output_dtype)

    def _resize(self, rows: int) -> None:
        if rows == self._batch_rows:
            return
        self._interpreter.resize_tensor_input(
            self._input_index, [rows, self.n_features], strict=False
        )
        self._interpreter.allocate_tensors()
        self._batch_rows = rows

    def invoke_one(self, row: np.ndarray) -> np.ndarray:
        """Run one flow and return the raw output row, shape (outputs,).

        `row` must already have the input dtype (float32, or int8 for the
        int8 model). The returned array is a buffer that the next call
        overwrites, so copy it to keep it.
        """
        self._resize(1)
        self._row[0] = row
        self._interpreter.set_tensor(self._input_index, self._row)
        self._interpreter.invoke()
        self._output_row[...] = self._interpreter.get_tensor(self._output_index)
        return self._output_row[0]

    def invoke_batch(self, rows: np.ndarray) -> np.ndarray:
        """Run a micro-batch of flows in one invoke; return raw outputs (n, outputs).

        `rows` must have the input dtype and shape (n, features). The input
        tensor is resized to n rows unless it already has that size.
        """
        self._resize(len(rows))
        self._interpreter.set_tensor(
            self._input_index, np.ascontiguousarray(rows, dtype=self.input_dtype)
        )
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)


class Runner:
    """A bundle's LiteRT model in one format, returning what the torch model returns.

    Attributes:
        kind: `classifier` or `autoencoder`.
        classes: class names, the column order of classifier probabilities.
        model_format: `fp32` or `int8`.
        model: the underlying `LiteRTModel`.
    """

    def __init__(
        self,
        model: LiteRTModel,
        *,
        kind: str,
        classes: list[str],
        model_format: str,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if kind not in (CLASSIFIER, AUTOENCODER):
            raise ValueError(
                f"unknown model kind {kind!r}; use {CLASSIFIER} or {AUTOENCODER}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.kind = kind
        self.classes = list(classes)
        self.model_format = model_format
        self.max_batch = max_batch

        # Buffers of the one-flow path, so that it allocates no arrays of its
        # own per flow beyond numpy temporaries of one row.
        self._quantized_row = np.zeros(model.n_features, dtype=np.int8)
        self._output_values = np.zeros(model.n_outputs, dtype=np.float32)
        self._output_table = None
        if model.output_quantization is not None:
            self._output_table = model.output_quantization.dequantization_table()
        self._input_table = None
        if model.input_quantization is not None:
            self._input_table = model.input_quantization.dequantization_table()

    @property
    def n_features(self) -> int:
        return self.model.n_features

    @property
    def input_quantization(self) -> QuantizationParameters | None:
        """Scale and zero point of the int8 input tensor; None for a float model."""
        return self.model.input_quantization

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Return float32 features as the int8 input of this model.

        Raises:
            ValueError: the model takes float input.
        """
        if self.input_quantization is None:
            raise ValueError(
                f"the {self.model_format} model takes float32 input; "
                "quantize only for the int8 model"
            )
        return self.input_quantization.quantize(features)

    def _check_features(self, features: np.ndarray, dtype: np.dtype) -> np.ndarray:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features have shape {features.shape}, but the {self.model_format} "
                f"model takes (flows, {self.n_features})"
            )
        return features.astype(dtype, copy=False)

    def _outputs(self, raw: np.ndarray) -> np.ndarray:
        if self.model.output_quantization is None:
            return np.asarray(raw, dtype=np.float32)
        return self.model.output_quantization.dequantize(raw)

    def _scores(self, reference: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Turn raw outputs into probabilities or reconstruction errors."""
        outputs = self._outputs(raw)
        if self.kind == CLASSIFIER:
            return outputs
        return np.mean((reference - outputs) ** 2, axis=-1, dtype=np.float32)

    def _run_chunks(self, inputs: np.ndarray) -> np.ndarray:
        """Invoke on chunks of `max_batch` rows, padding the last chunk."""
        rows = len(inputs)
        if rows == 0:
            return np.zeros((0, self.model.n_outputs), dtype=self.model.output_dtype)
        chunk = min(rows, self.max_batch)
        raw = np.empty((rows, self.model.n_outputs), dtype=self.model.output_dtype)
        padded = None
        for start in range(0, rows, chunk):
            part = inputs[start : start + chunk]
            if len(part) < chunk:
                # Padding keeps the tensor at one size, so it is not resized
                # again for the short last chunk.
                if padded is None:
                    padded = np.zeros((chunk, self.n_features), dtype=inputs.dtype)
                padded[: len(part)] = part
                raw[start:] = self.model.invoke_batch(padded)[: len(part)]
            else:
                raw[start : start + chunk] = self.model.invoke_batch(part)
        return raw

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Score float32 features of shape (flows, features).

        Returns:
            float32 class probabilities of shape (flows, classes) for a
            classifier, or the mean squared reconstruction error of each
            flow, shape (flows,), for an autoencoder. The int8 model
            quantizes the features first and dequantizes its output.
        """
        features = self._check_features(features, np.dtype(np.float32))
        if self.input_quantization is None:
            inputs = features
        else:
            inputs = self.input_quantization.quantize(features)
        return self._scores(features, self._run_chunks(inputs))

    def predict_quantized(self, quantized: np.ndarray) -> np.ndarray:
        """Score int8 features that `quantize` produced; int8 model only.

        The autoencoder's reconstruction error is measured against the
        dequantized input, because the original float features are not given.
        """
        if self.input_quantization is None:
            raise ValueError(f"the {self.model_format} model takes float32 input")
        quantized = self._check_features(quantized, np.dtype(np.int8))
        reference = None
        if self.kind == AUTOENCODER:
            reference = self.input_quantization.dequantize(quantized)
        return self._scores(reference, self._run_chunks(quantized))

    def predict_one(self, row: np.ndarray) -> np.ndarray | float:
        """Score one float32 flow of shape (features,) with one invoke.

        Returns the probabilities of shape (classes,) for a classifier and
        the reconstruction error as a float for an autoencoder. The
        probabilities are a buffer that the next call overwrites, so copy
        them to keep them. The int8 model quantizes the row on every call.
        """
        quantization = self.input_quantization
        if quantization is None:
            return self._score_one(row, self.model.invoke_one(row))
        quantization.quantize(row, out=self._quantized_row)
        return self._score_one(row, self.model.invoke_one(self._quantized_row))

    def predict_one_quantized(
        self, row: np.ndarray, features: np.ndarray | None = None
    ) -> np.ndarray | float:
        """Score one int8 flow of shape (features,); int8 model only.

        Args:
            row: the flow's int8 features, from `quantize`.
            features: the float32 features that `row` was quantized from,
                if the caller still has them. The autoencoder then measures
                its error against them, as `predict_one` does, instead of
                against the dequantized row, which also saves a lookup.
        """
        if self.input_quantization is None:
            raise ValueError(f"the {self.model_format} model takes float32 input")
        raw = self.model.invoke_one(row)
        if self.kind == AUTOENCODER and features is None:
            # One table lookup costs less than dequantize's three numpy calls.
            features = self._input_table[row.view(np.uint8)]
        return self._score_one(features, raw)

    def _score_one(self, reference: np.ndarray | None, raw: np.ndarray):
        if self._output_table is None:
            outputs = raw
        else:
            # One table lookup replaces the subtract and multiply of
            # dequantize, which cost more than the invoke itself.
            np.take(self._output_table, raw.view(np.uint8), out=self._output_values)
            outputs = self._output_values
        if self.kind == CLASSIFIER:
            return outputs
        # A dot product costs a fraction of np.mean on one flow's features.
        difference = reference - outputs
        return float(np.dot(difference, difference)) / difference.size


def load_runner(
    bundle: Bundle | str | Path,
    model_format: str,
    *,
    num_threads: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Runner:
    """Open the LiteRT model of a bundle in one format.

    Args:
        bundle: an opened bundle or its folder.
        model_format: `fp32` or `int8`.
        num_threads: LiteRT CPU threads. One is fastest for one flow at a time
            on models of this size.
        max_batch: rows per invoke in `predict`.

    Raises:
        ValueError: unknown format.
        BundleError: the bundle has no model in that format (run `edgedp
            optimize`), or the file's sha256 differs from `bundle.json`.
        ModelFileError: LiteRT cannot load the file, or its input width
            differs from the bundle's feature count.
    """
    if model_format not in MODEL_FILES:
        raise ValueError(
            f"unknown model format {model_format!r}; "
            f"choose one of {', '.join(MODEL_FILES)}"
        )
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, verify=False)

    path = bundle.path(MODEL_FILES[model_format])
    if not path.is_file():
        raise BundleError(f"{path} is listed in bundle.json but missing")
    content = path.read_bytes()
    recorded = bundle.manifest["files"][path.name]["sha256"]
    actual = hashlib.sha256(content).hexdigest()
    if actual != recorded:
        raise ModelFileError(
            f"{path} has sha256 {actual[:12]}…, but bundle.json records "
            f"{recorded[:12]}…; the file was altered or truncated, so rerun "
            "`edgedp optimize --force` on the bundle"
        )

    model = LiteRTModel(content, num_threads=num_threads, name=str(path))
    expected = int(bundle.manifest["model"]["input_dim"])
    if model.n_features != expected:
        raise ModelFileError(
            f"{path} takes {model.n_features} features, but the bundle's model "
            f"takes {expected}; rerun `edgedp optimize --force` on the bundle"
        )
    logger.debug("loaded %s (%s input)", path, model.input_dtype)
    return Runner(
        model,
        kind=bundle.model_kind,
        classes=bundle.classes,
        model_format=model_format,
        max_batch=max_batch,
    )
