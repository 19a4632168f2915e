"""Trained and optimized bundles shared by the export, inference and bench tests.

pytest collects no tests from this module. The export, inference and bench
test modules call `edge_bundles` from their session fixtures, and the module
cache makes the prepare, train and convert steps run once per session.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedp.bundle import Bundle
from edgedp.data.prepare import prepare_dataset
from edgedp.dataset import PreparedDataset
from edgedp.export import optimize_bundle
from edgedp.train import train_bundle

EPOCHS = 3
"""Enough for a classifier well above the majority class on these flows,
and short enough for the test suite."""


@dataclass(frozen=True)
class EdgeBundles:
    dataset: PreparedDataset
    classifier: Bundle
    autoencoder: Bundle
    root: Path

    def copy(self, bundle: Bundle, name: str) -> Path:
        """Copy a bundle folder, for tests that alter or re-optimize it."""
        destination = self.root / name
        shutil.copytree(bundle.root, destination)
        return destination


_cache: dict[str, EdgeBundles] = {}


def edge_bundles(iot23: Path, root: Path) -> EdgeBundles:
    """Prepare IoT-23, train both models briefly (plain), optimize both bundles."""
    if "bundles" in _cache:
        return _cache["bundles"]

    dataset = prepare_dataset(
        [iot23 / "zeek", iot23 / "csv", iot23 / "mixed"], root / "prepared"
    )
    bundles = {}
    for name, model in (("classifier", "ff"), ("autoencoder", "ae")):
        trained = train_bundle(dataset, root / name, model=model, epochs=EPOCHS)
        bundles[name] = optimize_bundle(trained)

    _cache["bundles"] = EdgeBundles(
        dataset=dataset,
        classifier=bundles["classifier"],
        autoencoder=bundles["autoencoder"],
        root=root,
    )
    return _cache["bundles"]


def validation_sample(bundles: EdgeBundles, rows: int = 2000) -> np.ndarray:
    """Return the first `rows` validation flows."""
    return bundles.dataset.split("validation").features[:rows]
