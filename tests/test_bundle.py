"""Bundle folders: atomic creation, hashes, and rejection of altered files."""

import json

import pytest

from edgedp import bundle as bundles


def _write(text: str):
    def write(path):
        path.write_text(text)

    return write


def test_create_and_load_roundtrip(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"model": {"kind": "classifier"}, "encoder_version": "v1", "classes": ["A"]},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )
    loaded = bundles.load_bundle(created.root, encoder_versions=["v1"])

    assert loaded.bundle_id == created.bundle_id
    assert loaded.model_kind == "classifier"
    assert loaded.path(bundles.TORCH_WEIGHTS).read_text() == "weights"


def test_existing_folder_rejected(tmp_path):
    (tmp_path / "b").mkdir()

    with pytest.raises(FileExistsError, match="already exists"):
        bundles.create_bundle(
            tmp_path / "b", {}, {bundles.TORCH_WEIGHTS: _write("weights")}
        )


def test_failed_write_leaves_nothing(tmp_path):
    def crash(path):
        path.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        bundles.create_bundle(tmp_path / "b", {}, {bundles.TORCH_WEIGHTS: crash})

    assert list(tmp_path.iterdir()) == []


def test_altered_file_rejected(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"encoder_version": "v1"},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )
    (created.root / bundles.TORCH_WEIGHTS).write_text("weightz")

    with pytest.raises(bundles.BundleError, match="altered or truncated"):
        bundles.load_bundle(created.root)


def test_unknown_encoder_rejected(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"encoder_version": "v0"},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )

    with pytest.raises(bundles.BundleError, match="feature encoder v0"):
        bundles.load_bundle(created.root, encoder_versions=["v1"])


def test_add_files_replaces_and_rehashes(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"encoder_version": "v1"},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )
    bundles.add_files(created, {bundles.FP32_MODEL: _write("one")}, {"step": 1})
    again = bundles.load_bundle(created.root)
    updated = bundles.add_files(again, {bundles.FP32_MODEL: _write("two")}, {"step": 2})

    reloaded = bundles.load_bundle(updated.root)
    manifest = json.loads((created.root / bundles.MANIFEST_NAME).read_text())
    assert reloaded.path(bundles.FP32_MODEL).read_text() == "two"
    assert manifest["step"] == 2
    assert set(manifest["files"]) == {bundles.FP32_MODEL, bundles.TORCH_WEIGHTS}
    assert [p.name for p in created.root.iterdir() if p.name.endswith(".tmp")] == []


def test_edited_manifest_rejected(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"encoder_version": "v1", "classes": ["Benign", "C&C"]},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )
    manifest_path = created.root / bundles.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["classes"] = ["C&C", "Benign"]
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(bundles.BundleError, match="changed after edgedp wrote it"):
        bundles.load_bundle(created.root)


def test_manifest_digest_survives_updates(tmp_path):
    created = bundles.create_bundle(
        tmp_path / "b",
        {"encoder_version": "v1", "privacy": {"epsilon": float("inf")}},
        {bundles.TORCH_WEIGHTS: _write("weights")},
    )
    bundles.add_files(created, {}, {"metrics": {"test": {"f1": 0.5}}})

    reloaded = bundles.load_bundle(created.root)
    assert reloaded.manifest["metrics"] == {"test": {"f1": 0.5}}
    assert reloaded.manifest["privacy"]["epsilon"] == float("inf")
