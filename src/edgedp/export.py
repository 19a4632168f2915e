"""Shrinking: LiteRT float32 and full-int8 models for a trained bundle.

`optimize_bundle` converts a bundle's torch weights to `model_fp32.tflite`
with litert-torch and quantizes that file to `model_int8.tflite` with
ai-edge-quantizer: int8 weights, int8 activations, an int8 input tensor and
a float32 output tensor. It scores the torch, float32 and int8 models on the
validation split and records in `bundle.json`:

- `formats`: per format its file, size in bytes and validation score
  (`accuracy` for a classifier, `roc_auc` of benign against malicious
  flows for an autoencoder). The int8 entry also records the calibration
  source and size and the scale and zero point of the int8 input tensor.
- `privacy.calibration`: the calibration source, whether the DP-SGD
  guarantee still covers the training rows in the int8 model, and which
  flows the int8 scales expose outside DP (see `CALIBRATION_SOURCES`).

Only the training stack runs this module (torch, litert-torch,
ai-edge-quantizer, scikit-learn). It imports them inside the functions that
use them, so the command line can read its defaults cheaply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgedp.atomic import check_writable
from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    MODEL_FILES,
    TORCH_WEIGHTS,
    Bundle,
    BundleError,
    add_files,
    load_bundle,
)
from edgedp.config import BENIGN_CLASS, DEFAULT_SEED
from edgedp.dataset import PreparedDataset, load_prepared

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSource:
    """A source of int8 calibration flows and its effect on the DP guarantee.

    The int8 file carries the activation ranges, min and max over the
    calibration flows, in its scales. Two questions follow, and the ledger
    records both: does the bundle's (epsilon, delta) still hold for the
    training rows, and which flows do the scales expose outside DP.
    """

    name: str
    training_rows_covered: bool
    """The bundle's (epsilon, delta) holds for the training rows in the int8
    file: it is post-processing of the DP weights with data that does not
    depend on the training rows."""
    exposed_flows: str | None
    """The split whose flows the int8 scales expose outside DP, or None."""
    effect: str
    """The ledger's sentences on what the source does to the guarantee."""


CALIBRATION_SOURCES: dict[str, CalibrationSource] = {
    source.name: source
    for source in (
        CalibrationSource(
            "validation",
            training_rows_covered=True,
            exposed_flows="validation",
            effect=(
                "Activation ranges are min and max over validation-split flows. "
                "The DP guarantee still covers the training rows, because the "
                "int8 model is post-processing of the DP weights with flows "
                "that are not training rows and that adding or removing a "
                "training row does not change. It does not cover the "
                "validation flows, whose ranges the int8 scales reveal."
            ),
        ),
        CalibrationSource(
            "train",
            training_rows_covered=False,
            exposed_flows="train",
            effect=(
                "Activation ranges are min and max over training flows, "
                "computed outside DP-SGD, so the DP guarantee does not cover "
                "the int8 model: its scales reveal ranges of training rows."
            ),
        ),
        CalibrationSource(
            "synthetic",
            training_rows_covered=True,
            exposed_flows=None,
            effect=(
                "Activation ranges come from synthetic flows drawn from the "
                "feature encoder's fixed vocabularies and caps. No data is "
                "read, so the int8 model is post-processing of the DP weights "
                "and the DP guarantee covers it whole."
            ),
        ),
    )
}

NO_GUARANTEE = "the bundle was trained without DP, so it has no DP guarantee"
"""The calibration `effect` recorded for a bundle trained without DP."""

AUTO_CALIBRATION = "auto"
DEFAULT_CALIBRATION = AUTO_CALIBRATION
"""`auto` picks `synthetic` for a DP-trained bundle and `validation` for a
non-private one (see `resolve_calibration`)."""
AUTO_MAX_LOSS = 0.01
"""Largest drop of int8's validation score below float32's (accuracy or
ROC-AUC, as a fraction) that `auto` accepts from synthetic calibration before
it calibrates on validation flows instead."""
DEFAULT_CALIBRATION_SIZE = 1000
"""Calibration flows; the accuracy table in docs/shrinking.md was measured
with this many."""

QUANTIZATION_RECIPE = "static_wi8_ai8"
"""ai-edge-quantizer recipe: int8 channelwise weights, int8 activations and
int8 input. `quantize_int8` keeps the output tensor float32."""

FEATURE_RANGE = (0.0, 1.0)
"""The feature encoder maps every feature into this closed range."""


class CalibrationError(ValueError):
    """Calibration data that cannot calibrate the bundle's model."""


def _library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


# Loading the bundle's torch model and its data.


def load_torch_model(bundle: Bundle):
    """Rebuild a bundle's torch model from `model.pt`, in eval mode.

    Raises:
        BundleError: the bundle lists no torch weights, or they do not fit
            the architecture recorded in `bundle.json`.
    """
    from edgedp.models import ModelSpec, load_model

    weights = bundle.path(TORCH_WEIGHTS)
    try:
        return load_model(ModelSpec.from_json(bundle.manifest["model"]), weights)
    except (ValueError, EOFError) as error:
        raise BundleError(f"{error}; retrain the bundle") from error


def _dataset_path(bundle: Bundle) -> str | None:
    recorded = bundle.manifest.get("dataset")
    if isinstance(recorded, dict):
        return recorded.get("path")
    return recorded


def is_training_dataset(bundle: Bundle, dataset: PreparedDataset) -> bool:
    """Tell whether `dataset` is the prepared dataset `bundle` was trained on.

    Compares `dataset_fingerprint` with the fingerprint in `bundle.json`.
    A bundle trained before fingerprints were recorded has only the
    dataset's path, so for it the resolved paths are compared.
    """
    from edgedp.train import dataset_fingerprint

    recorded = bundle.manifest.get("dataset")
    if not isinstance(recorded, dict):
        recorded = {"path": recorded}
    if recorded.get("fingerprint"):
        return recorded["fingerprint"] == dataset_fingerprint(dataset)
    path = recorded.get("path")
    return path is not None and Path(path).resolve() == dataset.root.resolve()


def require_training_dataset(
    bundle: Bundle, dataset: PreparedDataset, *, named: bool, risk: str
) -> None:
    """Reject a dataset other than the one `bundle` was trained on.

    A re-split of the same logs has the same classes, features and row
    counts, so only the split files (see `is_training_dataset`) tell it
    apart. Its validation and test splits then contain training rows of the
    bundle.

    Args:
        named: the dataset was given with --data, rather than read from the
            path recorded in `bundle.json`.
        risk: what would go wrong with this dataset, as a clause for the
            error message.

    Raises:
        BundleError: `dataset` is not the bundle's training dataset.
    """
    if is_training_dataset(bundle, dataset):
        return
    if named:
        fix = "pass the dataset it was trained on with --data, or omit --data"
    else:
        fix = (
            "the folder was prepared again since training; pass the dataset "
            "the bundle was trained on with --data, or retrain the bundle"
        )
    raise BundleError(
        f"{dataset.root} is not the prepared dataset {bundle.root} was trained "
        "on: its fingerprint does not match, because its split files differ "
        "or it has another or no fingerprint.key (as when the same logs are "
        f"prepared again into a new folder), so {risk}; {fix}"
    )


def open_dataset(
    bundle: Bundle, data: str | Path | PreparedDataset | None
) -> PreparedDataset:
    """Open the prepared dataset given, or the one recorded in `bundle.json`.

    Raises:
        BundleError: no dataset is given and the bundle records none, or the
            dataset's encoder version, classes or feature count differ from
            the bundle's.
        DatasetError: the dataset is missing.
    """
    if isinstance(data, PreparedDataset):
        dataset = data
    else:
        path = data if data is not None else _dataset_path(bundle)
        if path is None:
            raise BundleError(
                f"{bundle.root}/bundle.json records no prepared dataset; "
                "pass the dataset the bundle was trained on with --data"
            )
        dataset = load_prepared(path)
    if dataset.encoder_version != bundle.encoder_version:
        raise BundleError(
            f"{dataset.root} was encoded with feature encoder "
            f"{dataset.encoder_version}, but {bundle.root} expects "
            f"{bundle.encoder_version}; pass the dataset it was trained on"
        )
    if dataset.classes != bundle.classes:
        raise BundleError(
            f"{dataset.root} has classes {dataset.classes}, but {bundle.root} "
            f"predicts {bundle.classes}; pass the dataset it was trained on"
        )
    width = int(bundle.manifest["model"]["input_dim"])
    if len(dataset.feature_names) != width:
        raise BundleError(
            f"{dataset.root} has {len(dataset.feature_names)} features, but the "
            f"model in {bundle.root} takes {width}; pass the dataset it was "
            "trained on"
        )
    return dataset


def calibration_features(
    source: str,
    *,
    size: int,
    n_features: int,
    dataset: PreparedDataset | None,
    feature_names: list[str] | None = None,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Draw `size` calibration flows (fewer if the split is smaller).

    Args:
        source: `validation` or `train` (rows of that split, sampled without
            replacement) or `synthetic` (see `synthetic_features`).
        size: the number of flows.
        n_features: the model's input width.
        dataset: the prepared dataset; unused for `synthetic`.
        feature_names: the bundle's feature names, for `synthetic`.
        seed: seeds the row sample and the synthetic draws.

    Returns:
        float32 array of shape (flows, n_features).

    Raises:
        CalibrationError: unknown source, size below 1, no dataset for a
            data source, an empty split, or flows of another width.
    """
    if source not in CALIBRATION_SOURCES:
        raise CalibrationError(
            f"unknown calibration source {source!r}; "
            f"choose one of {', '.join(CALIBRATION_SOURCES)}"
        )
    if size < 1:
        raise CalibrationError(f"calibration size must be at least 1, got {size}")
    generator = np.random.default_rng(seed)

    if source == "synthetic":
        return synthetic_features(
            size, n_features=n_features, feature_names=feature_names, seed=seed
        )

    if dataset is None:
        raise CalibrationError(
            f"calibration source {source!r} needs the prepared dataset; "
            "pass --data or use --calibration synthetic"
        )
    features = dataset.split(source).features
    if len(features) == 0:
        raise CalibrationError(f"the {source} split of {dataset.root} is empty")
    rows = generator.choice(len(features), min(size, len(features)), replace=False)
    flows = features[np.sort(rows)]
    _check_width(flows, n_features)
    return flows


def _synthetic_records(size: int, generator: np.random.Generator) -> dict:
    """Draw raw flow fields from the encoder's fixed vocabularies and caps."""
    from edgedp import features

    def choose(values, missing: bool = False) -> list:
        options = [*values, None] if missing else list(values)
        return [options[i] for i in generator.integers(0, len(options), size)]

    letters = [
        c for letter in features.HISTORY_LETTERS for c in (letter, letter.lower())
    ]
    histories = [
        "".join(letters[i] for i in generator.integers(0, len(letters), length)) or None
        for length in generator.integers(0, 9, size)
    ]
    # Half of the responder ports come from the vocabulary, so that each of
    # its slots is set about as often as the "other" slot.
    vocabulary = np.array(features.RESP_PORTS)
    known = vocabulary[generator.integers(0, len(vocabulary), size)]
    any_port = generator.integers(0, 65_536, size)
    records = {
        "id.orig_p": generator.integers(0, 65_536, size).astype(float),
        "id.resp_p": np.where(generator.random(size) < 0.5, known, any_port).astype(
            float
        ),
        "proto": choose(features.PROTOCOLS),
        "conn_state": choose(features.CONN_STATES),
        "service": choose(features.SERVICES, missing=True),
        "history": histories,
    }
    for field, cap in features.LOG_CAPS.items():
        # Uniform on the encoder's log scale, with one value in ten missing.
        values = np.expm1(generator.random(size) * np.log1p(cap))
        values[generator.random(size) < 0.1] = np.nan
        records[field] = values
    return records


def synthetic_features(
    size: int,
    *,
    n_features: int,
    feature_names: list[str] | None,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Draw calibration flows that read no data.

    When the bundle's features are one of the fixed encoder's feature sets,
    this draws raw flow fields (ports, protocol, connection state, service,
    history, log-uniform counts and durations) from the encoder's own
    vocabularies and caps. It then encodes them, so every one-hot group has
    exactly one slot set, as in real flows. For other feature names it
    draws each feature uniformly from [0, 1], the range the encoder
    guarantees.

    Returns:
        float32 array of shape (size, n_features).
    """
    from edgedp import features

    generator = np.random.default_rng(seed)
    for feature_set in features.FEATURE_SETS:
        if feature_names == features.feature_names(feature_set):
            records = _synthetic_records(size, generator)
            return features.encode(records, feature_set)

    logger.warning(
        "the bundle's features are not a feature set of encoder %s; "
        "drawing synthetic calibration flows uniformly from [0, 1]",
        features.ENCODER_VERSION,
    )
    low, high = FEATURE_RANGE
    return generator.uniform(low, high, (size, n_features)).astype(np.float32)


def _check_width(calibration: np.ndarray, width: int) -> None:
    if calibration.ndim != 2 or calibration.shape[1] != width:
        raise CalibrationError(
            f"calibration data has shape {calibration.shape}, but the model takes "
            f"(flows, {width}); calibrate with flows encoded like its training data"
        )


# Conversion and quantization.


# Third-party messages that every conversion repeats and that contain nothing
# about the bundle, as (logger name, message pattern). torchao 0.18 logs the
# first two when it is imported on a machine without CUDA kernels or Triton,
# and torch 2.13 logs the third when torchao registers an Enum as a pytree
# constant. The records are created on these loggers, so filters there catch
# them before any handler, and `_HeldBack` writes them to edgedp's debug log.
_HELD_BACK_RECORDS: tuple[tuple[str, str], ...] = (
    ("torchao", r"^Failed to load .*torchao/_C"),
    ("torchao.kernel.intmm", r"^Warning: Detected no triton"),
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported"),
)
# Python warnings of the same kind, as (category, message pattern): torch
# 2.13 warns that litert-torch 0.10 still uses `LeafSpec` while it exports.
_HELD_BACK_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
# TensorFlow's C++ log level for the converter, read from the environment:
# 1 drops INFO lines such as the converter's op count and keeps warnings
# and errors. A value the user set is kept.
_CONVERTER_LOG_LEVEL = ("TF_CPP_MIN_LOG_LEVEL", "1")


class _HeldBack(logging.Filter):
    """Drop records below ERROR that match `pattern` and keep their text.

    `logging.disable` in `_quiet_libraries` also drops edgedp's DEBUG
    records, so the held-back messages are logged after the block.
    """

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR or not self.pattern.search(message):
            return True
        self.messages.append(f"{record.levelname} from {record.name}: {message}")
        return False


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Hold back the converters' progress output and their known noise.

    Inside the block: litert-torch and the quantizer log per-op INFO records
    on the root logger, which only `logging.disable` can drop, and
    litert-torch prints each step to its own Rich console. The records in
    `_HELD_BACK_RECORDS` and the warnings in `_HELD_BACK_WARNINGS` go to the
    debug log. Every other warning and record passes. Lines that native code
    writes to stderr with no documented switch (absl's first-use notice,
    "oneDNN custom operations are on", XNNPACK's delegate line) still appear.
    """
    variable, level = _CONVERTER_LOG_LEVEL
    previous_level = os.environ.get(variable)
    os.environ.setdefault(variable, level)
    filters = [
        (logging.getLogger(name), _HeldBack(pattern))
        for name, pattern in _HELD_BACK_RECORDS
    ]
    for target, held_back in filters:
        target.addFilter(held_back)
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # The quantizer's calibration interpreter warns that it keeps
            # every tensor, which is what calibration needs.
            warnings.filterwarnings("ignore", message=".*preserve_all_tensors")
            # The first import of litert-torch loads torchao, which logs.
            from litert_torch import progress

            previous_quiet = progress.console.quiet
            progress.console.quiet = True
            try:
                yield
            finally:
                progress.console.quiet = previous_quiet
    finally:
        logging.disable(previous)
        for target, held_back in filters:
            target.removeFilter(held_back)
            for message in held_back.messages:
                logger.debug("held back %s", message)
        _release_warnings(caught)
        if previous_level is None:
            os.environ.pop(variable, None)


def _release_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Log the known warnings at DEBUG and issue every other one again."""
    for warning in caught:
        text = str(warning.message)
        known = any(
            issubclass(warning.category, category) and re.search(pattern, text)
            for category, pattern in _HELD_BACK_WARNINGS
        )
        if known:
            logger.debug("held back %s: %s", warning.category.__name__, text)
            continue
        warnings.warn_explicit(
            warning.message,
            warning.category,
            warning.filename,
            warning.lineno,
            source=warning.source,
        )


def _strip_names(content: bytes) -> bytes:
    """Drop tensor and subgraph names, which no interpreter needs.

    The names are the torch module paths of the tensors: about 2 KB, which
    is 6% of the default classifier's int8 file. Signature definitions are
    kept.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.description = None
    for subgraph in model.subgraphs:
        subgraph.name = None
        for tensor in subgraph.tensors:
            tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_fp32(model, n_features: int) -> bytes:
    """Convert an eval-mode torch model to a LiteRT float32 flatbuffer.

    The model gets one input of shape (1, n_features). Tensor names are
    kept, because the quantizer keys its calibration by them.
    """
    import torch

    sample = torch.zeros(1, n_features, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        with _quiet_libraries():
            import litert_torch

            litert_torch.convert(model.eval(), (sample,)).export(str(path))
        return path.read_bytes()


def quantize_int8(fp32_content: bytes, calibration: np.ndarray) -> bytes:
    """Quantize a float32 flatbuffer to full int8 with static ranges.

    Activation ranges are the exact min/max over all `calibration` flows,
    which run as one batch. (Feeding them one by one would make the
    quantizer keep a moving average of per-flow ranges instead, which
    depends on their order.) The input tensor's
    range is set to the encoder's fixed feature range instead, so its scale
    and zero point (1/255 and -128) do not depend on the calibration data,
    and no real feature value is clipped.

    Raises:
        CalibrationError: `calibration` is not (flows, input width).
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    float_interpreter = Interpreter(model_content=fp32_content)
    (input_detail,) = float_interpreter.get_input_details()
    _check_width(calibration, int(input_detail["shape"][1]))
    (signature,) = float_interpreter.get_signature_list().items()
    signature_key, names = signature
    input_name = names["inputs"][0]

    engine = quantizer.Quantizer(bytearray(fp32_content))
    engine.load_quantization_recipe(getattr(recipe, QUANTIZATION_RECIPE)())
    # The output stays float32: a DEQUANTIZE op at the end of the graph runs
    # inside the invoke. On the host it would add numpy calls to every flow,
    # each costing microseconds, the order of the invoke of these models.
    engine.update_quantization_recipe(
        ".*",
        qtyping.TFLOperationName.OUTPUT,
        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE,
    )
    batch = np.ascontiguousarray(calibration, dtype=np.float32)
    with _quiet_libraries():
        ranges = engine.calibrate({signature_key: [{input_name: batch}]})

    low, high = FEATURE_RANGE
    ranges[input_detail["name"]] = {
        "min": np.array([[low]], dtype=np.float32),
        "max": np.array([[high]], dtype=np.float32),
    }
    with _quiet_libraries():
        result = engine.quantize(ranges, enable_progress_report=False)
    return bytes(result.quantized_model)


# Scoring on the validation split.


def validation_score(kind: str, classes: list[str], labels, outputs) -> dict:
    """Score a model's outputs on labelled flows.

    Returns `{"accuracy": ...}` for a classifier (outputs are probabilities)
    and `{"roc_auc": ...}` of benign against malicious flows for an
    autoencoder (outputs are reconstruction errors, higher means more
    anomalous). ROC-AUC is None when the flows hold only one of the two.
    """
    labels = np.asarray(labels)
    if kind != "autoencoder":
        predicted = np.argmax(outputs, axis=1)
        return {"accuracy": float(np.mean(predicted == labels))}

    from sklearn.metrics import roc_auc_score

    malicious = labels != classes.index(BENIGN_CLASS)
    if malicious.all() or not malicious.any():
        return {"roc_auc": None}
    return {"roc_auc": float(roc_auc_score(malicious, outputs))}


def torch_outputs(model, features: np.ndarray) -> np.ndarray:
    """Return what the LiteRT runner returns, computed by the torch model."""
    from edgedp.evaluate import predict_torch

    return predict_torch(model, np.asarray(features, dtype=np.float32))


# The bundle step.


def resolve_calibration(bundle: Bundle, calibration: str) -> str:
    """Return the calibration source to use; `auto` depends on the ledger.

    `auto` is `synthetic` for a bundle whose privacy ledger records DP
    training, or that has no ledger, and `validation` for a
    non-private bundle. The choice follows the measurements in
    docs/shrinking.md (benchmarks/bench_calibration.py). On the IoT-23
    samples, synthetic calibration scored within 0.1 percentage point of
    real flows for every DP model and every classifier, and keeps the int8
    model under the DP guarantee. For the plain autoencoder it cost 1.1
    points of ROC-AUC. A non-private bundle has no guarantee to keep, so
    it gets the validation flows, which cost it 0.2 points.
    `optimize_bundle` may still replace synthetic with validation flows
    when the int8 model scores too low (`AUTO_MAX_LOSS`).

    Raises:
        CalibrationError: an unknown source.
    """
    if calibration == AUTO_CALIBRATION:
        private = bundle.manifest.get("privacy", {}).get("private")
        return "validation" if private is False else "synthetic"
    if calibration not in CALIBRATION_SOURCES:
        raise CalibrationError(
            f"unknown calibration source {calibration!r}; choose "
            f"{AUTO_CALIBRATION} or one of {', '.join(CALIBRATION_SOURCES)}"
        )
    return calibration


def _is_current(
    bundle: Bundle, calibration: dict[str, Any], dataset: str | None
) -> bool:
    """Tell whether the recorded models were made from these weights and settings.

    `dataset` is the prepared dataset the caller named, or None to accept
    the one the models were scored on.
    """
    formats = bundle.manifest.get("formats", {})
    if dataset is not None and formats.get("dataset") != dataset:
        return False
    files = bundle.manifest.get("files", {})
    if not (bundle.has_file(FP32_MODEL) and bundle.has_file(INT8_MODEL)):
        return False
    if formats.get("source_weights_sha256") != files[TORCH_WEIGHTS]["sha256"]:
        return False
    recorded = dict(formats.get("int8", {}).get("calibration", {}))
    if "fallback_from" in recorded:
        # `auto` asked for the source it fell back from.
        recorded["source"] = recorded["fallback_from"]
    return all(recorded.get(key) == value for key, value in calibration.items())


def optimize_bundle(
    bundle: Bundle | str | Path,
    *,
    data: str | Path | PreparedDataset | None = None,
    calibration: str = DEFAULT_CALIBRATION,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = DEFAULT_SEED,
    force: bool = False,
) -> Bundle:
    """Add LiteRT float32 and int8 models to a bundle and record their scores.

    Args:
        bundle: an opened bundle or its folder.
        data: the prepared dataset for validation scores and calibration;
            by default the one recorded in `bundle.json`.
        calibration: `auto` (see `resolve_calibration`), `synthetic`,
            `validation` or `train` (see `CALIBRATION_SOURCES` for what each
            does to the DP guarantee).
        calibration_size: flows used to calibrate int8 activation ranges.
        seed: seeds the choice of calibration flows.
        force: convert again even if the bundle already contains models
            made from its current weights with these calibration settings.

    Returns:
        The updated bundle.

    Raises:
        BundleError: the bundle lacks torch weights or its files are altered.
        CalibrationError: unknown source, or data of the wrong width.
        DatasetError: the prepared dataset is missing or unreadable.
        OutputError: the bundle folder is not writable, checked before the
            conversion starts.
        KeyboardInterrupt: Ctrl-C, also one that a converter's callback
            swallowed (see `_interrupt_checkpoints`). `bundle.json` then
            lists the old LiteRT files, the new ones, or neither (when
            `add_files` was cut short), and always loads.
    """
    with _interrupt_checkpoints() as checkpoint:
        return _optimize_bundle(
            bundle,
            data=data,
            calibration=calibration,
            calibration_size=calibration_size,
            seed=seed,
            force=force,
            checkpoint=checkpoint,
        )


def _optimize_bundle(
    bundle: Bundle | str | Path,
    *,
    data: str | Path | PreparedDataset | None,
    calibration: str,
    calibration_size: int,
    seed: int,
    force: bool,
    checkpoint: Callable[[], None],
) -> Bundle:
    """Do the work of `optimize_bundle`, calling `checkpoint` between steps."""
    if isinstance(bundle, Bundle):
        bundle = load_bundle(bundle.root)
    else:
        bundle = load_bundle(bundle)
    if not bundle.has_file(TORCH_WEIGHTS):
        raise BundleError(
            f"{bundle.root} has no {TORCH_WEIGHTS}, so there is nothing to "
            "convert; retrain the bundle with `edgedp train`"
        )
    automatic = calibration == AUTO_CALIBRATION
    calibration = resolve_calibration(bundle, calibration)
    requested = {
        "source": calibration,
        "requested_size": calibration_size,
        "seed": seed,
        "auto": automatic,
    }
    named_dataset = None
    if isinstance(data, PreparedDataset):
        named_dataset = str(data.root)
    elif data is not None:
        named_dataset = str(Path(data))
    if not force and _is_current(bundle, requested, named_dataset):
        logger.info("skipped %s: its LiteRT models are up to date", bundle.root)
        return bundle

    check_writable(bundle.root / "bundle.json")
    model = load_torch_model(bundle)
    n_features = model.spec.input_dim
    dataset = open_dataset(bundle, data)
    require_training_dataset(
        bundle,
        dataset,
        named=data is not None,
        risk=(
            "its validation rows may be training rows of the bundle: "
            "calibrating on them would read private training rows outside "
            "DP-SGD, and the recorded validation scores would overstate accuracy"
        ),
    )

    def calibrate(source: str) -> np.ndarray:
        flows = calibration_features(
            source,
            size=calibration_size,
            n_features=n_features,
            dataset=dataset,
            feature_names=bundle.manifest.get("feature_names"),
            seed=seed,
        )
        _check_width(flows, n_features)
        return flows

    flows = calibrate(calibration)

    logger.info("converting %s to LiteRT float32", bundle.root)
    fp32_named = convert_fp32(model, n_features)
    checkpoint()
    logger.info("quantizing to int8 on %d %s flows", len(flows), calibration)
    int8_content = _strip_names(quantize_int8(fp32_named, flows))
    fp32_content = _strip_names(fp32_named)
    checkpoint()

    validation = dataset.split("validation")
    formats = _score_formats(bundle, model, fp32_content, int8_content, validation)
    recorded = {**requested, "size": len(flows)}

    loss = _int8_loss(formats)
    if automatic and calibration == "synthetic" and loss > AUTO_MAX_LOSS:
        # Synthetic flows can miss activation ranges that real flows reach,
        # and the int8 model then saturates. Validation flows are not
        # training rows, so the training rows stay covered, but the int8
        # scales then expose validation flows (see CALIBRATION_SOURCES).
        logger.warning(
            "int8 from synthetic calibration scores %.4f below float32 on "
            "validation flows; calibrating on validation flows instead, whose "
            "ranges the int8 scales then expose outside DP (the training rows "
            "stay covered)",
            loss,
        )
        calibration = "validation"
        flows = calibrate(calibration)
        int8_content = _strip_names(quantize_int8(fp32_named, flows))
        formats = _score_formats(bundle, model, fp32_content, int8_content, validation)
        checkpoint()
        recorded = {
            **requested,
            "source": calibration,
            "size": len(flows),
            "fallback_from": "synthetic",
            "synthetic_validation_loss": loss,
        }
    formats["int8"]["calibration"] = recorded
    formats["source_weights_sha256"] = bundle.manifest["files"][TORCH_WEIGHTS]["sha256"]
    formats["validation_flows"] = len(validation)
    formats["dataset"] = str(dataset.root)

    privacy = dict(bundle.manifest.get("privacy", {}))
    privacy["calibration"] = calibration_ledger(
        CALIBRATION_SOURCES[calibration],
        flows=len(flows),
        seed=seed,
        private=privacy.get("private") is not False,
        fallback=recorded,
    )

    checkpoint()
    updated = add_files(
        bundle,
        {
            FP32_MODEL: _bytes_writer(fp32_content),
            INT8_MODEL: _bytes_writer(int8_content),
        },
        {"formats": formats, "privacy": privacy},
    )
    logger.info(
        "wrote %s (%d bytes) and %s (%d bytes) to %s",
        FP32_MODEL,
        len(fp32_content),
        INT8_MODEL,
        len(int8_content),
        bundle.root,
    )
    return updated


@contextlib.contextmanager
def _interrupt_checkpoints() -> Iterator[Callable[[], None]]:
    """Raise KeyboardInterrupt for a Ctrl-C that a library swallowed.

    litert-torch's conversion imports JAX, which registers a garbage
    collection callback when it is imported (`_xla_gc_callback` in jax
    0.10.2). Python prints an exception raised inside such a callback as
    "Exception ignored" and goes on, so a Ctrl-C that lands there is lost.
    Inside the block, SIGINT also sets a flag, and a dropped
    KeyboardInterrupt goes to the debug log instead of its traceback. The
    yielded function raises KeyboardInterrupt when the flag is set, and so
    does leaving the block. Ctrl-C still raises at once wherever Python
    can raise it. Outside the main thread, or when SIGINT is not handled by
    a Python function, the block changes nothing.

    NOTE: JAX's callback stays registered after the block, so a Ctrl-C that
    it swallows later in the process, such as while `edgedp optimize`
    prints its table, is still lost.
    """
    received = threading.Event()

    def checkpoint() -> None:
        if received.is_set():
            raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not (in_main_thread and callable(previous)):
        yield checkpoint
        return

    def handle(number: int, frame: Any) -> None:
        received.set()
        previous(number, frame)

    previous_hook = sys.unraisablehook
    # Logged after the block, because `_quiet_libraries` disables logging
    # during the conversion.
    swallowed: list[str] = []

    def report_unraisable(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            swallowed.append(repr(unraisable.object))
            return
        previous_hook(unraisable)

    signal.signal(signal.SIGINT, handle)
    sys.unraisablehook = report_unraisable
    try:
        yield checkpoint
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, previous)
        for location in swallowed:
            logger.debug("Ctrl-C was dropped in %s; stopped at the next step", location)
    checkpoint()


def calibration_ledger(
    source: CalibrationSource,
    *,
    flows: int,
    seed: int,
    private: bool,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the privacy ledger's `calibration` entry.

    `training_rows_covered` is None for a bundle trained without DP, which
    has no guarantee to keep. `exposed_flows` names the split whose flows
    the int8 scales reveal, with or without DP. `fallback` is the int8
    calibration record: when `auto` replaced synthetic flows, its
    `fallback_from` and `synthetic_validation_loss` are copied.
    """
    entry: dict[str, Any] = {
        "source": source.name,
        "flows": flows,
        "seed": seed,
        "training_rows_covered": source.training_rows_covered if private else None,
        "exposed_flows": source.exposed_flows,
        "effect": source.effect if private else NO_GUARANTEE,
    }
    for key in ("fallback_from", "synthetic_validation_loss"):
        if fallback and key in fallback:
            entry[key] = fallback[key]
    return entry


def _int8_loss(formats: dict[str, Any]) -> float:
    """Return how far int8's validation score is below float32's (0 if above)."""
    fp32_score = next(iter(formats["fp32"]["validation"].values()))
    int8_score = next(iter(formats["int8"]["validation"].values()))
    if fp32_score is None or int8_score is None:
        return 0.0
    return max(0.0, float(fp32_score) - float(int8_score))


def _bytes_writer(content: bytes):
    # add_files stages this write under a temporary name and moves it into
    # place, so a plain write is atomic as seen from the bundle.
    def write(path: Path) -> None:
        path.write_bytes(content)

    return write


def _score_formats(
    bundle: Bundle,
    model,
    fp32_content: bytes,
    int8_content: bytes,
    validation,
) -> dict[str, Any]:
    """Score the torch, float32 and int8 models on the validation split."""
    from edgedp.edge.inference import LiteRTModel, Runner

    kind, classes = bundle.model_kind, bundle.classes
    reference = torch_outputs(model, validation.features)
    weights_bytes = bundle.manifest["files"][TORCH_WEIGHTS]["bytes"]
    formats: dict[str, Any] = {
        "torch": {
            "file": TORCH_WEIGHTS,
            "bytes": weights_bytes,
            "validation": validation_score(kind, classes, validation.labels, reference),
        }
    }

    for name, content in (("fp32", fp32_content), ("int8", int8_content)):
        runner = Runner(
            LiteRTModel(content, name=MODEL_FILES[name]),
            kind=kind,
            classes=classes,
            model_format=name,
        )
        outputs = runner.predict(validation.features)
        entry: dict[str, Any] = {
            "file": MODEL_FILES[name],
            "bytes": len(content),
            "validation": validation_score(kind, classes, validation.labels, outputs),
            "max_abs_difference_from_torch": float(
                np.max(np.abs(outputs - reference), initial=0.0)
            ),
        }
        if name == "fp32":
            entry["converter"] = f"litert-torch {_library_version('litert-torch')}"
        else:
            quantizer_version = _library_version("ai-edge-quantizer")
            entry["quantizer"] = f"ai-edge-quantizer {quantizer_version}"
            entry["recipe"] = QUANTIZATION_RECIPE
            parameters = runner.model.input_quantization
            entry["input_dtype"] = str(runner.model.input_dtype)
            entry["input_quantization"] = {
                "scale": parameters.scale,
                "zero_point": parameters.zero_point,
            }
            entry["output_dtype"] = str(runner.model.output_dtype)
        formats[name] = entry
    return formats
