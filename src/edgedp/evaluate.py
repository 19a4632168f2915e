"""Score a bundle on a split of a prepared dataset (`edgedp evaluate`).

The classifier gets classification metrics over its classes. The autoencoder
is scored as a benign-versus-malicious detector at the thresholds stored in
its bundle, with the distribution of its reconstruction error per class.
Results go into `bundle.json` under `metrics[split][model_format]`, with the
sha256 of the model file they scored.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import config
from edgedp.atomic import check_writable
from edgedp.bundle import (
    MODEL_FILES,
    SCORED_FILE_SHA256,
    TORCH_WEIGHTS,
    Bundle,
    add_files,
    load_bundle,
)
from edgedp.dataset import PreparedDataset, Split
from edgedp.export import is_training_dataset, open_dataset
from edgedp.metrics import anomaly_metrics, classification_metrics, score_distribution

logger = logging.getLogger(__name__)

MODEL_FORMATS: tuple[str, ...] = ("torch", "fp32", "int8")
PREDICT_CHUNK_ROWS = 65536


def predict_torch(model, features: np.ndarray) -> np.ndarray:
    """Run a torch model from `edgedp.models` over float32 features.

    Returns:
        Class probabilities (rows, classes) for a classifier, or each flow's
        mean squared reconstruction error (rows,) for an autoencoder, the
        same outputs as the LiteRT runner's `predict`.
    """
    import torch

    from edgedp.models import Autoencoder, reconstruction_error

    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(features), PREDICT_CHUNK_ROWS):
            chunk = torch.from_numpy(
                np.ascontiguousarray(features[start : start + PREDICT_CHUNK_ROWS])
            )
            result = model(chunk)
            if isinstance(model, Autoencoder):
                result = reconstruction_error(chunk, result)
            outputs.append(result.numpy())
    return np.concatenate(outputs)


def anomaly_thresholds(manifest: Mapping[str, Any]) -> dict[str, float]:
    """Return threshold name to value from an autoencoder's `bundle.json`."""
    thresholds = manifest.get("thresholds") or {}
    result: dict[str, float] = {}
    for name, entry in thresholds.items():
        result[name] = float(entry["value"] if isinstance(entry, dict) else entry)
    return result


def score_outputs(
    kind: str,
    classes: list[str],
    labels: np.ndarray,
    outputs: np.ndarray,
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """Compute the metrics of one model's outputs on one split.

    Args:
        kind: `classifier` or `autoencoder`.
        classes: class names of the bundle, in index order.
        labels: true class indices (rows,).
        outputs: probabilities (classifier) or reconstruction errors
            (autoencoder), as `predict_torch` returns them.
        thresholds: the autoencoder's anomaly thresholds by name.
    """
    from edgedp.models import CLASSIFIER

    if kind == CLASSIFIER:
        predicted = np.unique(np.argmax(outputs, axis=1))
        if len(predicted) == 1 and len(np.unique(labels)) > 1:
            logger.warning(
                "the classifier predicts only %s for these %d flows; train longer, "
                "with a larger learning rate or a larger epsilon",
                classes[int(predicted[0])],
                len(labels),
            )
        return classification_metrics(labels, outputs, classes)

    benign = classes.index(config.BENIGN_CLASS)
    result = anomaly_metrics(labels != benign, outputs, thresholds)
    result["reconstruction_error"] = score_distribution(outputs, labels, classes)
    return result


def predict_bundle(bundle: Bundle, split: Split, model_format: str) -> np.ndarray:
    """Return a bundle's outputs on a split in one model format.

    Raises:
        ValueError: an unknown format.
        BundleError: the bundle has no model in that format.
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(
            f"unknown model format {model_format!r}; "
            f"choose one of {', '.join(MODEL_FORMATS)}"
        )
    if model_format == "torch":
        from edgedp.models import ModelSpec, load_model

        spec = ModelSpec.from_json(bundle.manifest["model"])
        model = load_model(spec, bundle.path(TORCH_WEIGHTS))
        return predict_torch(model, split.features)

    from edgedp.edge.inference import load_runner

    runner = load_runner(bundle, model_format)
    return np.asarray(runner.predict(split.features))


class EvaluationError(ValueError):
    """A split or dataset whose scores must not be recorded in the bundle."""


def _check_scored_rows(
    bundle: Bundle,
    dataset: PreparedDataset,
    split: str,
    *,
    own_dataset: bool,
    other_dataset: bool,
) -> None:
    """Reject scores on private training rows or on a dataset of other splits."""
    private = bool(bundle.manifest.get("privacy", {}).get("private"))
    if private and split == "train":
        raise EvaluationError(
            f"{bundle.root} was trained with DP, and metrics on its training "
            "split would be computed on private rows outside the DP mechanism "
            "and published in bundle.json, which the guarantee does not cover; "
            "score the validation or test split instead"
        )
    if own_dataset or other_dataset:
        return
    raise EvaluationError(
        f"{dataset.root} is not the prepared dataset {bundle.root} was trained "
        "on (its split files differ), so its test and validation rows may be "
        "training rows of the bundle and the scores would overstate accuracy; "
        "pass the dataset it was trained on with --data (the folder recorded "
        "in bundle.json is used without --data, unless it was prepared again "
        "since training), or pass --other-dataset to score it anyway without "
        "recording the result in bundle.json"
    )


def evaluate_bundle(
    bundle: Bundle | str | Path,
    data: str | Path | PreparedDataset | None = None,
    *,
    split: str = "test",
    model_format: str = "torch",
    other_dataset: bool = False,
) -> dict[str, Any]:
    """Score a bundle on one split and record the result in its `bundle.json`.

    Args:
        bundle: an opened bundle or its folder; its files are verified by
            sha256 and `bundle.json` is read again.
        data: the prepared dataset, by default the one in `bundle.json`.
        split: `train`, `validation` or `test`. `train` is rejected for a
            DP-trained bundle.
        model_format: `torch` (the trained weights), or `fp32` / `int8`, the
            LiteRT models that `edgedp optimize` adds.
        other_dataset: score `data` even when it is not the dataset the
            bundle was trained on (see `is_training_dataset`), and return
            the scores without recording them.

    Returns:
        The metrics, also stored as `metrics[split][model_format]` unless
        `other_dataset` is set.

    Raises:
        BundleError: the bundle is altered, lacks the requested model, or the
            dataset has another encoder version, classes or features.
        DatasetError: the dataset or split is missing.
        EvaluationError: `train` on a DP-trained bundle, or another dataset
            without `other_dataset`.
        OutputError: the bundle folder is not writable and the result would
            be recorded, checked before scoring.
    """
    # Reread bundle.json even for an opened bundle, so that metrics another
    # call recorded since it was opened are kept.
    bundle = load_bundle(bundle.root if isinstance(bundle, Bundle) else bundle)
    if not other_dataset:
        check_writable(bundle.root / "bundle.json")
    dataset = open_dataset(bundle, data)
    own_dataset = is_training_dataset(bundle, dataset)
    _check_scored_rows(
        bundle, dataset, split, own_dataset=own_dataset, other_dataset=other_dataset
    )
    rows = dataset.split(split)
    logger.info(
        "evaluating %s (%s) on %d %s rows of %s",
        bundle.root,
        model_format,
        len(rows),
        split,
        dataset.root,
    )

    outputs = predict_bundle(bundle, rows, model_format)
    result = score_outputs(
        bundle.model_kind,
        bundle.classes,
        rows.labels,
        outputs,
        anomaly_thresholds(bundle.manifest),
    )
    result["dataset"] = str(dataset.root.resolve())
    result["rows"] = len(rows)
    # load_bundle verified this hash against the file that was just scored.
    model_file = MODEL_FILES[model_format]
    result["model_file"] = model_file
    result[SCORED_FILE_SHA256] = bundle.manifest["files"][model_file]["sha256"]
    if other_dataset:
        logger.info(
            "not recording the scores of %s in %s (other dataset)",
            dataset.root,
            bundle.root,
        )
        return result

    metrics = copy.deepcopy(bundle.manifest.get("metrics") or {})
    metrics.setdefault(split, {})[model_format] = result
    add_files(bundle, {}, {"metrics": metrics})
    return result
