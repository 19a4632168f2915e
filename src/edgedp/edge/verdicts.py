"""Model outputs to verdicts: which flows raise an alert, and why.

A classifier flags a flow when its most probable class (the argmax of the
probabilities, the first class on a tie, as `numpy.argmax` and
`edgedp evaluate` do) is not the benign class. An autoencoder flags a flow
when its reconstruction error is strictly greater than the anomaly threshold.

This module uses only numpy and the standard library, because the gateway
runtime imports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedp.bundle import Bundle, BundleError

log = logging.getLogger(__name__)

BENIGN_CLASS = "Benign"
CLASSIFIER = "classifier"
AUTOENCODER = "autoencoder"


@dataclass(frozen=True)
class Verdicts:
    """Verdicts for a batch of flows.

    Attributes:
        alert: bool per flow, True when the flow is flagged.
        class_index: classifier only, the predicted class per flow.
        probability: classifier only, the predicted class's probability.
        score: autoencoder only, the reconstruction error per flow.
    """

    alert: np.ndarray
    class_index: np.ndarray | None = None
    probability: np.ndarray | None = None
    score: np.ndarray | None = None


class VerdictRule:
    """The alert rule of one bundle.

    Args:
        bundle: the opened bundle.
        threshold: autoencoder only: a threshold name from the bundle's
            `thresholds` (`validation_fpr`, `study`) or a number. None takes
            `validation_fpr` when the bundle has it, else `study`. A
            classifier has no threshold, so it ignores one with a warning.

    Raises:
        BundleError: a classifier without a `Benign` class, or an autoencoder
            without the requested threshold.
        ValueError: a threshold that is NaN, infinite, or 0 or less.
    """

    def __init__(self, bundle: Bundle, *, threshold: str | float | None = None) -> None:
        self.kind = bundle.model_kind
        self.classes = bundle.classes
        self.threshold: float | None = None
        self.threshold_name: str | None = None
        if self.kind == CLASSIFIER:
            if BENIGN_CLASS not in self.classes:
                raise BundleError(
                    f"{bundle.root} classifies {self.classes}, which has no "
                    f"{BENIGN_CLASS!r} class to tell normal traffic from attacks"
                )
            self.benign_index = self.classes.index(BENIGN_CLASS)
            if threshold is not None:
                log.warning(
                    "threshold %s ignored: %s is a classifier, which flags a "
                    "flow by its predicted class; thresholds apply only to "
                    "autoencoder bundles",
                    threshold,
                    bundle.root,
                )
        elif self.kind == AUTOENCODER:
            self.threshold_name, self.threshold = resolve_threshold(
                bundle.manifest.get("thresholds", {}), threshold, bundle
            )
        else:
            raise BundleError(f"{bundle.root} has unknown model kind {self.kind!r}")

    def decide(self, outputs: np.ndarray) -> Verdicts:
        """Return the verdicts for a runner's `predict` output."""
        if self.kind == CLASSIFIER:
            class_index = np.argmax(outputs, axis=1)
            probability = outputs[np.arange(len(outputs)), class_index]
            return Verdicts(
                alert=class_index != self.benign_index,
                class_index=class_index,
                probability=probability,
            )
        assert self.threshold is not None
        return Verdicts(alert=outputs > self.threshold, score=outputs)


def resolve_threshold(
    thresholds: Mapping[str, Any], requested: str | float | None, bundle: Bundle
) -> tuple[str, float]:
    """Return the name and value of an autoencoder threshold.

    A bundle records each threshold either as a number or as a dict with the
    number under `value` (and details such as the target false-positive
    rate beside it).

    Raises:
        BundleError: the bundle does not record the requested name.
        ValueError: the requested number is NaN, infinite, or 0 or less. A
            NaN threshold would flag no flow, because every comparison with
            NaN is false. A reconstruction error is a mean squared error, so
            it is 0 or more, and a threshold of 0 or less flags every flow.
    """
    number: float | None = None
    if isinstance(requested, (int, float)):
        number = float(requested)
    elif requested is not None:
        try:
            number = float(requested)
        except ValueError:
            pass
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(
                f"threshold must be a finite number, got {requested}; pass a "
                "reconstruction error such as 0.16, or validation_fpr or study"
            )
        if number <= 0:
            raise ValueError(
                f"threshold must be positive, got {requested}; reconstruction "
                "errors are 0 or more, so it would flag every flow. Pass a "
                "reconstruction error such as 0.16, or validation_fpr or study"
            )
        return "custom", number

    names = [requested] if requested else ["validation_fpr", "study"]
    for name in names:
        if name in thresholds:
            entry = thresholds[name]
            value = entry.get("value") if isinstance(entry, Mapping) else entry
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return name, float(value)
    recorded = ", ".join(sorted(thresholds)) or "none"
    raise BundleError(
        f"{bundle.root} has no anomaly threshold {' or '.join(map(str, names))} "
        f"(it records {recorded}); pass --threshold with a number or one of the "
        "recorded names"
    )
