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
import torch

from edgedp.bundle import TORCH_WEIGHTS, Bundle, create_bundle
from edgedp.data.prepare import prepare_dataset
from edgedp.dataset import PreparedDataset
from edgedp.export import optimize_bundle
from edgedp.models import (
    autoencoder_spec,
    build_model,
    classifier_spec,
    reconstruction_error,
)

EPOCHS = 3
BATCH_SIZE = 256


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


def _fit(model, loss, features: torch.Tensor, labels: torch.Tensor | None) -> None:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            batch_labels = None if labels is None else labels[rows]
            loss(model, features[rows], batch_labels).backward()
            optimizer.step()


def _classifier_loss(model, features, labels):
    return torch.nn.functional.cross_entropy(model.net(features), labels)


def _autoencoder_loss(model, features, _labels):
    return reconstruction_error(features, model(features)).mean()


def _write_bundle(path: Path, dataset: PreparedDataset, spec, model) -> Bundle:
    manifest = {
        "model": spec.to_json(),
        "classes": dataset.classes,
        "feature_names": dataset.feature_names,
        "encoder_version": dataset.encoder_version,
        "dataset": {
            "path": str(dataset.root),
            "encoder_version": dataset.encoder_version,
        },
        "privacy": {"epsilon": None},
    }

    def write_weights(weights_path: Path) -> None:
        torch.save(model.state_dict(), weights_path)

    return create_bundle(path, manifest, {TORCH_WEIGHTS: write_weights})


def edge_bundles(iot23: Path, root: Path) -> EdgeBundles:
    """Prepare IoT-23, train both models briefly, and optimize both bundles."""
    if "bundles" in _cache:
        return _cache["bundles"]

    dataset = prepare_dataset(
        [iot23 / "zeek", iot23 / "csv", iot23 / "mixed"], root / "prepared"
    )
    train = dataset.split("train")
    features = torch.from_numpy(train.features)
    labels = torch.from_numpy(train.labels)
    width = features.shape[1]

    torch.manual_seed(0)
    classifier_model = build_model(classifier_spec(width, len(dataset.classes)))
    _fit(classifier_model, _classifier_loss, features, labels)
    benign = features[labels == dataset.classes.index("Benign")]
    autoencoder_model = build_model(autoencoder_spec(width))
    _fit(autoencoder_model, _autoencoder_loss, benign, None)

    bundles = {}
    for name, model in (
        ("classifier", classifier_model),
        ("autoencoder", autoencoder_model),
    ):
        written = _write_bundle(root / name, dataset, model.spec, model.eval())
        bundles[name] = optimize_bundle(written)

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
