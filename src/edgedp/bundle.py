"""Bundles: the folder that carries one trained model to a gateway.

A bundle folder contains the torch weights (`model.pt`), the LiteRT models
that `edgedp optimize` adds (`model_fp32.tflite`, `model_int8.tflite`) and
`bundle.json`. The manifest records the model architecture, the feature
encoder version, the class names, the anomaly thresholds, the privacy ledger,
the metrics and the sha256 of every file. `bundle.json` is written last, so a
file that it does not list is not part of the bundle.

This module uses only the standard library, because the gateway runtime
imports it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedp import atomic

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST_NAME = "bundle.json"
TORCH_WEIGHTS = "model.pt"
FP32_MODEL = "model_fp32.tflite"
INT8_MODEL = "model_int8.tflite"
MODEL_FILES = {"torch": TORCH_WEIGHTS, "fp32": FP32_MODEL, "int8": INT8_MODEL}
"""The bundle file of each model format."""
SCORED_FILE_SHA256 = "model_sha256"
"""Key of a `metrics[split][format]` entry: the sha256 of the file it scored."""

FileWriter = Callable[[Path], None]
"""Writes one bundle file at the path it is given."""


class BundleError(ValueError):
    """A bundle is missing, altered, or made for another encoder."""


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """An opened bundle folder."""

    root: Path
    manifest: dict[str, Any]

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def model_kind(self) -> str:
        """`classifier` or `autoencoder`."""
        return str(self.manifest["model"]["kind"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def encoder_version(self) -> str:
        return str(self.manifest["encoder_version"])

    def has_file(self, name: str) -> bool:
        return name in self.manifest.get("files", {})

    def path(self, name: str) -> Path:
        """Return the path of a bundle file that the manifest lists."""
        if not self.has_file(name):
            raise BundleError(
                f"{self.root} has no {name}; "
                + (
                    "run `edgedp optimize` on it"
                    if name.endswith(".tflite")
                    else "retrain it"
                )
            )
        return self.root / name


def load_bundle(
    path: str | Path,
    *,
    verify: bool = True,
    encoder_versions: Iterable[str] | None = None,
) -> Bundle:
    """Open a bundle and check that its files are the ones it was made with.

    Args:
        path: the bundle folder.
        verify: compare the sha256 of every listed file with the manifest.
        encoder_versions: feature encoder versions that the caller can run.
            A bundle made with any other version is rejected.

    Raises:
        BundleError: the manifest is missing or unreadable, a listed file is
            missing or altered, or the encoder version is not supported.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle ({MANIFEST_NAME} not found)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON: {error}") from error
    if manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{root} has bundle format {manifest.get('bundle_format')!r}; "
            f"this edgedp reads format {BUNDLE_FORMAT}"
        )
    bundle = Bundle(root=root, manifest=manifest)

    if encoder_versions is not None:
        supported = sorted(encoder_versions)
        if bundle.encoder_version not in supported:
            raise BundleError(
                f"{root} was made with feature encoder {bundle.encoder_version}, "
                f"but this edgedp runs only {', '.join(supported)}; "
                "retrain the bundle or install the matching edgedp"
            )
    if verify:
        recorded = manifest.get(MANIFEST_DIGEST)
        if recorded != manifest_digest(manifest):
            raise BundleError(
                f"{manifest_path} was changed after edgedp wrote it "
                f"({MANIFEST_DIGEST} does not match its content); "
                "recreate the bundle instead of editing it"
            )
        for name, entry in manifest.get("files", {}).items():
            file_path = root / name
            if not file_path.is_file():
                raise BundleError(
                    f"{file_path} is listed in {MANIFEST_NAME} but missing"
                )
            actual = sha256_file(file_path)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"{file_path} has sha256 {actual[:12]}…, but {MANIFEST_NAME} "
                    f"records {entry['sha256'][:12]}…; the file was altered or "
                    "truncated, so recreate the bundle"
                )
    return bundle


MANIFEST_DIGEST = "manifest_sha256"


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """Return the sha256 of a manifest's canonical JSON, without the digest.

    The digest catches a `bundle.json` edited by hand or by another tool (for
    example swapped class names), which file hashes alone would miss. It is
    not a signature: anyone who can write the folder can recompute it.
    """
    content = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write `manifest` to `path` atomically, with its digest."""
    content = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    atomic.write_json(path, {**content, MANIFEST_DIGEST: manifest_digest(content)})


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def create_bundle(
    path: str | Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, FileWriter],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write a new bundle folder atomically.

    Args:
        path: the bundle folder; it must not exist unless `overwrite` is set.
        manifest: everything for `bundle.json` except `bundle_format`,
            `bundle_id` and `files`, which this function fills in.
        files: bundle file name to the function that writes it.
        overwrite: replace an existing bundle folder.

    Raises:
        FileExistsError: `path` exists and `overwrite` is not set.
    """
    with atomic.directory(path, overwrite=overwrite, marker=MANIFEST_NAME) as temporary:
        entries = {}
        for name, write in files.items():
            write(temporary / name)
            entries[name] = _file_entry(temporary / name)

        if TORCH_WEIGHTS not in entries:
            raise ValueError(
                f"a new bundle needs {TORCH_WEIGHTS}; got {sorted(entries)}"
            )
        full_manifest = {
            "bundle_format": BUNDLE_FORMAT,
            # The id names the trained weights, so it survives re-optimizing.
            "bundle_id": entries[TORCH_WEIGHTS]["sha256"][:12],
            **manifest,
            "files": entries,
        }
        write_manifest(temporary / MANIFEST_NAME, full_manifest)
    return load_bundle(path, verify=False)


def add_files(
    bundle: Bundle,
    files: Mapping[str, FileWriter],
    updates: Mapping[str, Any],
) -> Bundle:
    """Add or replace files in a bundle and merge `updates` into its manifest.

    The order of writes keeps the bundle loadable after a crash at any point.
    New files go to temporary names first. Then the manifest drops the entries
    that are about to be replaced, together with the metrics of the model
    formats those files hold, the files move into place, and finally the
    manifest lists them with their new hashes. So no score of a replaced
    file survives, even when the new file is byte for byte the same.
    """
    root = bundle.root
    staged: dict[str, Path] = {}
    try:
        for name, write in files.items():
            temporary = root / f".{name}.staged.tmp"
            write(temporary)
            staged[name] = temporary

        manifest = dict(bundle.manifest)
        kept = {n: e for n, e in manifest.get("files", {}).items() if n not in staged}
        replaced = [f for f, name in MODEL_FILES.items() if name in staged]
        if "metrics" in manifest:
            manifest["metrics"] = _drop_scores(manifest["metrics"], replaced, root)
        write_manifest(root / MANIFEST_NAME, {**manifest, "files": kept})

        entries = dict(kept)
        for name, temporary in staged.items():
            os.replace(temporary, root / name)
            entries[name] = _file_entry(root / name)
        manifest.update(updates)
        manifest["files"] = entries
        write_manifest(root / MANIFEST_NAME, manifest)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
    return Bundle(root=root, manifest=manifest)


def _drop_scores(
    metrics: Mapping[str, Any], formats: list[str], root: Path
) -> dict[str, Any]:
    """Return `metrics` without the entries of `formats`, on every split."""
    remaining = copy.deepcopy(dict(metrics))
    for split, scores in remaining.items():
        dropped = [name for name in formats if scores.pop(name, None) is not None]
        if dropped:
            logger.info(
                "dropped the %s scores of %s in %s: the model files were replaced; "
                "run `edgedp evaluate` to score the new files",
                split,
                ", ".join(dropped),
                root,
            )
    return remaining


def unmatched_scores(manifest: Mapping[str, Any], split: str) -> dict[str, str]:
    """Return the formats whose `split` scores are not of the current files.

    A metrics entry names the sha256 of the model file it scored
    (`SCORED_FILE_SHA256`). An entry written before edgedp recorded that
    hash, or one whose file has been replaced or removed since, cannot be
    trusted to describe the file in the bundle.

    Returns:
        Format name to the reason, as a sentence for an error message.
    """
    files = manifest.get("files", {})
    scores = (manifest.get("metrics") or {}).get(split) or {}
    unmatched = {}
    for model_format, entry in scores.items():
        name = MODEL_FILES.get(model_format)
        scored = entry.get(SCORED_FILE_SHA256) if isinstance(entry, dict) else None
        if name is None:
            continue
        if name not in files:
            unmatched[model_format] = "the scored file is no longer in the bundle"
        elif scored is None:
            unmatched[model_format] = "the scores record no sha256 of the scored file"
        elif scored != files[name]["sha256"]:
            unmatched[model_format] = (
                f"the scored file had sha256 {scored[:12]}…, the bundle's "
                f"{name} has {files[name]['sha256'][:12]}…"
            )
    return unmatched
