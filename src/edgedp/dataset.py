"""The prepared dataset that `edgedp prepare` writes and later stages read.

A prepared dataset is a folder with one Parquet file per split
(`train.parquet`, `validation.parquet`, `test.parquet`) and `dataset.json`.
Each Parquet file has the identifying columns in `ID_COLUMNS`, the class name
in `label` and its index into `dataset.json["classes"]` in `label_index`, and
one float32 column per feature, named as in `dataset.json["feature_names"]`.

Only the training stack reads these files, so this module may use pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "validation", "test")
ID_COLUMNS: tuple[str, ...] = ("uid", "ts", "source")
LABEL_COLUMN = "label"
LABEL_INDEX_COLUMN = "label_index"
MANIFEST_NAME = "dataset.json"
FINGERPRINT_KEY_NAME = "fingerprint.key"
"""A random secret of the dataset folder that keys its fingerprint, so that
the fingerprint in a bundle cannot be matched against candidate datasets."""
FINGERPRINT_KEY_BYTES = 32


class DatasetError(ValueError):
    """A prepared dataset is missing, incomplete or from another encoder."""


@dataclass(frozen=True)
class Split:
    """One split of a prepared dataset, as arrays."""

    name: str
    features: np.ndarray
    """float32 array of shape (flows, features), every value in [0, 1]."""
    labels: np.ndarray
    """int64 array of class indices into `PreparedDataset.classes`."""
    uids: np.ndarray
    """Zeek connection uids, for tracing a prediction back to its flow."""

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder and its manifest."""

    root: Path
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    @property
    def encoder_version(self) -> str:
        return str(self.manifest["encoder_version"])

    @property
    def fingerprint_key(self) -> bytes | None:
        """The secret that keys the dataset's fingerprint.

        None means the folder has no key file, as folders written before
        datasets had a key do.

        Raises:
            DatasetError: the key file is unreadable or is not
                `FINGERPRINT_KEY_BYTES` bytes written as hex.
        """
        path = self.root / FINGERPRINT_KEY_NAME
        if not path.exists():
            return None

        fix = (
            "rerun `edgedp prepare` into this folder, and retrain the bundles "
            "that use it"
        )
        try:
            key = bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path} is not a hex key ({error}); {fix}") from error
        if len(key) != FINGERPRINT_KEY_BYTES:
            raise DatasetError(
                f"{path} contains a key of {len(key)} bytes, but a fingerprint key "
                f"has {FINGERPRINT_KEY_BYTES} bytes "
                f"({2 * FINGERPRINT_KEY_BYTES} hex digits); {fix}"
            )
        return key

    def require_fingerprint_key(self) -> bytes:
        """Check that the folder has a valid fingerprint key, and return it.

        Without a key the fingerprint is the plain hash of the split files,
        an exact membership test for anyone who can prepare candidate
        datasets.

        Raises:
            DatasetError: the folder has no key file, or `fingerprint_key`
                rejects it.
        """
        key = self.fingerprint_key
        if key is None:
            raise DatasetError(
                f"{self.root} has no {FINGERPRINT_KEY_NAME}, so a bundle's "
                "dataset fingerprint would be a plain hash that anyone can "
                "test against candidate datasets; rerun `edgedp prepare` into "
                "this folder"
            )
        return key

    def split(self, name: str) -> Split:
        """Read one split into memory."""
        import pyarrow.parquet as pq

        if name not in SPLITS:
            raise DatasetError(
                f"unknown split {name!r}; choose one of {', '.join(SPLITS)}"
            )
        path = self.root / f"{name}.parquet"
        if not path.is_file():
            raise DatasetError(f"{path} is missing; rerun `edgedp prepare`")
        columns = [*self.feature_names, LABEL_INDEX_COLUMN, "uid"]
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, ValueError) as error:
            # pyarrow's ArrowInvalid is a ValueError, and a cut file an OSError.
            raise DatasetError(
                f"{path} cannot be read ({error}); rerun `edgedp prepare` "
                "to write the dataset again"
            ) from error

        features = np.column_stack(
            [table.column(n).to_numpy().astype(np.float32) for n in self.feature_names]
        )
        labels = table.column(LABEL_INDEX_COLUMN).to_numpy().astype(np.int64)
        uids = table.column("uid").to_numpy(zero_copy_only=False)
        return Split(name=name, features=features, labels=labels, uids=uids)


def load_prepared(
    path: str | Path, *, encoder_version: str | None = None
) -> PreparedDataset:
    """Open a prepared dataset folder and check its manifest.

    Args:
        path: folder written by `edgedp prepare`.
        encoder_version: when given, the dataset must have been encoded with
            this feature encoder version.

    Raises:
        DatasetError: the folder or its manifest is missing, or the encoder
            version differs.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetError(
            f"{root} is not a prepared dataset ({MANIFEST_NAME} not found); "
            "create one with `edgedp prepare LOGS --out DIR`"
        )
    manifest = json.loads(manifest_path.read_text())

    dataset = PreparedDataset(root=root, manifest=manifest)
    if encoder_version is not None and dataset.encoder_version != encoder_version:
        raise DatasetError(
            f"{root} was encoded with feature encoder {dataset.encoder_version}, "
            f"but this edgedp uses {encoder_version}; rerun `edgedp prepare`"
        )
    return dataset
