"""`edgedp optimize` on real IoT-23 bundles: what it records, the accuracy of
each format, skipping and forcing, calibration sources and bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_export_bundles import edge_bundles
from typer.testing import CliRunner

import edgedp.cli.shrinking  # noqa: F401  (registers optimize and bench)
from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    MANIFEST_NAME,
    TORCH_WEIGHTS,
    Bundle,
    BundleError,
    load_bundle,
    sha256_file,
    write_manifest,
)
from edgedp.cli import app
from edgedp.data.prepare import prepare_dataset
from edgedp.dataset import FINGERPRINT_KEY_NAME
from edgedp.export import (
    CALIBRATION_SOURCES,
    CalibrationError,
    _quiet_libraries,
    calibration_features,
    optimize_bundle,
    quantize_int8,
    resolve_calibration,
    synthetic_features,
)
from edgedp.features import feature_names


@pytest.fixture(scope="session")
def bundles(iot23, tmp_path_factory):
    return edge_bundles(iot23, tmp_path_factory.mktemp("edge"))


def _plain(output: str) -> str:
    """Join Rich's wrapped lines and drop its box drawing."""
    return " ".join(output.replace("│", " ").split())


def _manifest(path):
    return json.loads((path / MANIFEST_NAME).read_text())


@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_formats_recorded(bundles, kind):
    bundle = getattr(bundles, kind)
    manifest = _manifest(bundle.root)
    formats = manifest["formats"]

    for name, file in (("torch", TORCH_WEIGHTS), ("fp32", FP32_MODEL)):
        assert formats[name]["file"] == file
    assert formats["int8"]["file"] == INT8_MODEL
    for name in ("torch", "fp32", "int8"):
        path = bundle.root / formats[name]["file"]
        assert formats[name]["bytes"] == path.stat().st_size
        assert manifest["files"][path.name]["sha256"] == sha256_file(path)
    assert (
        formats["source_weights_sha256"] == manifest["files"][TORCH_WEIGHTS]["sha256"]
    )
    assert formats["validation_flows"] == len(bundles.dataset.split("validation"))
    assert formats["int8"]["input_dtype"] == "int8"
    assert formats["int8"]["input_quantization"]["zero_point"] == -128
    assert formats["int8"]["output_dtype"] == "float32"
    load_bundle(bundle.root)


def test_calibration_in_privacy_ledger(bundles):
    manifest = _manifest(bundles.classifier.root)
    recorded = manifest["privacy"]["calibration"]

    # The fixture's bundles are trained without DP, so `auto` chose the
    # validation flows.
    assert manifest["privacy"]["private"] is False
    assert recorded["source"] == "validation"
    assert recorded["flows"] == 1000
    assert recorded["training_rows_covered"] is None
    assert recorded["exposed_flows"] == "validation"
    assert "fallback_from" not in recorded
    assert manifest["formats"]["int8"]["calibration"]["size"] == 1000


def test_classifier_accuracy_per_format(bundles):
    formats = _manifest(bundles.classifier.root)["formats"]
    torch_accuracy = formats["torch"]["validation"]["accuracy"]
    fp32_accuracy = formats["fp32"]["validation"]["accuracy"]
    int8_accuracy = formats["int8"]["validation"]["accuracy"]

    # Majority class (Benign) share of the validation split is about 0.62.
    assert torch_accuracy > 0.9
    assert abs(fp32_accuracy - torch_accuracy) < 1e-3
    assert abs(int8_accuracy - fp32_accuracy) <= 0.01
    assert formats["fp32"]["max_abs_difference_from_torch"] < 1e-5


def test_autoencoder_roc_auc_per_format(bundles):
    formats = _manifest(bundles.autoencoder.root)["formats"]
    torch_auc = formats["torch"]["validation"]["roc_auc"]

    assert 0.5 < torch_auc <= 1.0
    assert formats["fp32"]["validation"]["roc_auc"] == pytest.approx(
        torch_auc, abs=1e-4
    )
    assert formats["int8"]["validation"]["roc_auc"] == pytest.approx(
        torch_auc, abs=0.01
    )


def test_int8_file_smaller_than_fp32(bundles):
    formats = _manifest(bundles.classifier.root)["formats"]

    assert formats["int8"]["bytes"] < 0.4 * formats["fp32"]["bytes"]


def test_no_temporary_files_left(bundles):
    for bundle in (bundles.classifier, bundles.autoencoder):
        names = {path.name for path in bundle.root.iterdir()}
        listed = set(_manifest(bundle.root)["files"])
        assert {TORCH_WEIGHTS, FP32_MODEL, INT8_MODEL} <= listed
        assert names - listed == {MANIFEST_NAME}


def test_cli_synthetic_then_skip_then_force(bundles, caplog):
    path = bundles.copy(bundles.classifier, "synthetic")

    result = CliRunner().invoke(
        app, ["optimize", str(path), "--calibration", "synthetic"]
    )

    # The fixture's bundles are trained without DP, so there is no guarantee
    # for synthetic calibration to keep.
    assert result.exit_code == 0, result.output
    assert "no DP guarantee" in _plain(result.output)
    assert "covered" not in _plain(result.output)
    manifest = _manifest(path)
    assert manifest["privacy"]["calibration"]["source"] == "synthetic"
    assert manifest["privacy"]["calibration"]["training_rows_covered"] is None
    assert manifest["privacy"]["calibration"]["exposed_flows"] is None
    assert (
        abs(
            manifest["formats"]["int8"]["validation"]["accuracy"]
            - manifest["formats"]["fp32"]["validation"]["accuracy"]
        )
        <= 0.01
    )

    int8_time = os.stat(path / INT8_MODEL).st_mtime_ns
    with caplog.at_level("INFO", logger="edgedp.export"):
        optimize_bundle(path, calibration="synthetic")
    assert "up to date" in caplog.text
    assert os.stat(path / INT8_MODEL).st_mtime_ns == int8_time

    optimize_bundle(path, calibration="synthetic", force=True)
    assert os.stat(path / INT8_MODEL).st_mtime_ns != int8_time
    load_bundle(path)


@pytest.fixture(scope="session")
def paper_dataset(bundles, iot23):
    """A prepared dataset of the same encoder with the narrower paper features."""
    return prepare_dataset(
        [iot23 / "zeek", iot23 / "csv", iot23 / "mixed"],
        bundles.root / "prepared-paper",
        feature_set="paper",
    )


def test_dataset_of_wrong_width_rejected(bundles, paper_dataset):
    before = (bundles.classifier.root / MANIFEST_NAME).read_bytes()

    with pytest.raises(BundleError, match="has 51 features, but the model"):
        optimize_bundle(bundles.classifier, data=paper_dataset, force=True)

    assert (bundles.classifier.root / MANIFEST_NAME).read_bytes() == before


def test_calibration_of_wrong_width_rejected(bundles, paper_dataset):
    with pytest.raises(CalibrationError, match=r"shape \(7, 51\)"):
        calibration_features(
            "validation", size=7, n_features=109, dataset=paper_dataset
        )


def test_quantizer_rejects_wrong_width(bundles):
    content = (bundles.classifier.root / FP32_MODEL).read_bytes()

    with pytest.raises(CalibrationError, match=r"shape \(10, 108\)"):
        quantize_int8(content, np.zeros((10, 108), dtype=np.float32))


def test_unknown_calibration_source_rejected(bundles):
    with pytest.raises(CalibrationError, match="unknown calibration source 'test'"):
        optimize_bundle(bundles.classifier, calibration="test", force=True)


def test_bundle_without_weights_rejected(bundles):
    path = bundles.copy(bundles.classifier, "no-weights")
    manifest = _manifest(path)
    del manifest["files"][TORCH_WEIGHTS]
    write_manifest(path / MANIFEST_NAME, manifest)
    (path / TORCH_WEIGHTS).unlink()

    with pytest.raises(BundleError, match="has no model.pt"):
        optimize_bundle(path)


def test_bundle_with_missing_weights_file_rejected(bundles):
    path = bundles.copy(bundles.classifier, "missing-weights")
    (path / TORCH_WEIGHTS).unlink()

    with pytest.raises(BundleError, match="model.pt is listed in bundle.json"):
        optimize_bundle(path)


def test_cli_reports_bad_bundle(tmp_path):
    result = CliRunner().invoke(app, ["optimize", str(tmp_path)])

    assert result.exit_code == 2
    assert "is not a bundle (bundle.json not found)" in _plain(result.output)


def test_cli_rejects_unknown_source(tmp_path):
    result = CliRunner().invoke(
        app, ["optimize", str(tmp_path), "--calibration", "test"]
    )

    assert result.exit_code == 2
    assert "'test' is not one of auto, validation, train, synthetic" in _plain(
        result.output
    )


def test_calibration_sources_sample_their_split(bundles):
    dataset = bundles.dataset
    validation = dataset.split("validation").features

    drawn = calibration_features(
        "validation", size=50, n_features=109, dataset=dataset, seed=1
    )
    everything = calibration_features(
        "validation", size=10**9, n_features=109, dataset=dataset
    )

    assert drawn.shape == (50, 109)
    assert {row.tobytes() for row in drawn} <= {row.tobytes() for row in validation}
    assert len(everything) == len(validation)


@pytest.mark.parametrize(
    ("privacy", "expected"),
    [
        ({"private": True, "epsilon": 1.0}, "synthetic"),
        ({"private": False, "epsilon": float("inf")}, "validation"),
        (None, "synthetic"),
    ],
)
def test_auto_calibration_follows_ledger(tmp_path, privacy, expected):
    manifest = {} if privacy is None else {"privacy": privacy}
    bundle = Bundle(root=tmp_path, manifest=manifest)

    assert resolve_calibration(bundle, "auto") == expected
    assert resolve_calibration(bundle, "train") == "train"


def test_dp_coverage_per_source():
    coverage = {
        name: (source.training_rows_covered, source.exposed_flows)
        for name, source in CALIBRATION_SOURCES.items()
    }

    assert coverage == {
        "validation": (True, "validation"),
        "train": (False, "train"),
        "synthetic": (True, None),
    }
    assert "still covers the training rows" in CALIBRATION_SOURCES["validation"].effect
    assert "does not cover the" in CALIBRATION_SOURCES["validation"].effect


def test_synthetic_flows_are_valid_encodings():
    names = feature_names("extended")
    flows = synthetic_features(500, n_features=len(names), feature_names=names)

    assert flows.shape == (500, len(names))
    assert flows.min() >= 0.0
    assert flows.max() <= 1.0
    for group in ("proto=", "conn_state=", "service="):
        columns = [i for i, name in enumerate(names) if name.startswith(group)]
        assert (flows[:, columns].sum(axis=1) == 1).all(), group


def test_synthetic_flows_for_unknown_features_are_uniform():
    flows = synthetic_features(200, n_features=7, feature_names=["a"] * 7, seed=2)

    assert flows.shape == (200, 7)
    assert flows.min() >= 0.0
    assert flows.max() <= 1.0
    assert 0.3 < flows.mean() < 0.7


def test_auto_falls_back_to_validation(bundles, monkeypatch, caplog):
    path = bundles.copy(bundles.classifier, "auto-fallback")
    manifest = _manifest(path)
    manifest["privacy"] = {**manifest["privacy"], "private": True}
    write_manifest(path / MANIFEST_NAME, manifest)
    # Any int8 score, even one above float32's, now counts as too low.
    monkeypatch.setattr("edgedp.export.AUTO_MAX_LOSS", -1.0)

    with caplog.at_level("WARNING", logger="edgedp.export"):
        result = CliRunner().invoke(app, ["optimize", str(path), "--force"])

    assert result.exit_code == 0, result.output
    recorded = _manifest(path)
    calibration = recorded["formats"]["int8"]["calibration"]
    ledger = recorded["privacy"]["calibration"]
    assert "calibrating on validation flows instead" in caplog.text
    assert calibration["source"] == "validation"
    assert calibration["fallback_from"] == "synthetic"
    assert calibration["synthetic_validation_loss"] >= 0.0
    assert ledger["source"] == "validation"
    assert ledger["fallback_from"] == "synthetic"
    assert (
        ledger["synthetic_validation_loss"] == calibration["synthetic_validation_loss"]
    )
    assert ledger["training_rows_covered"] is True
    assert ledger["exposed_flows"] == "validation"
    output = _plain(result.output)
    assert "1000 validation flows (fell back from synthetic" in output
    assert "Training rows covered by DP" in output
    assert "exposed outside DP: the validation-split calibration flows" in output

    caplog.clear()
    with caplog.at_level("INFO", logger="edgedp.export"):
        optimize_bundle(path)
    assert "up to date" in caplog.text


def test_cli_optimize_prints_no_library_noise(bundles):
    path = bundles.copy(bundles.classifier, "quiet")
    edgedp = str(Path(sys.executable).with_name("edgedp"))

    # A fresh process, because the libraries print most of it on first import.
    done = subprocess.run(
        [edgedp, "optimize", str(path), "--force"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    output = _plain(done.stdout + done.stderr)
    assert done.returncode == 0, output
    for noise in (
        "Failed to load",
        "Detected no triton",
        "register_constant",
        "FutureWarning",
        "Estimated count of arithmetic ops",
    ):
        assert noise not in output
    assert "converting" in output
    assert "the bundle was trained without DP, so it has no DP guarantee" in output


def test_quiet_libraries_hold_back_known_noise(caplog):
    torchao = logging.getLogger("torchao")

    with caplog.at_level("DEBUG"), pytest.warns(UserWarning, match="other"):
        with _quiet_libraries():
            torchao.warning("Failed to load /x/torchao/_C_mxfp8.so: not found")
            torchao.error("Failed to load /x/torchao/_C_mxfp8.so: broken")
            torchao.warning("an unknown torchao warning")
            warnings.warn(
                "`isinstance(treespec, LeafSpec)` is deprecated",
                FutureWarning,
                stacklevel=1,
            )
            warnings.warn("other", UserWarning, stacklevel=1)

    shown = [(r.levelname, r.name, r.getMessage()) for r in caplog.records]
    assert (
        "ERROR",
        "torchao",
        "Failed to load /x/torchao/_C_mxfp8.so: broken",
    ) in shown
    assert ("WARNING", "torchao", "an unknown torchao warning") in shown
    assert not any(
        level == "WARNING" and "not found" in message for level, _, message in shown
    )
    debug = [message for level, _, message in shown if level == "DEBUG"]
    assert any("held back WARNING from torchao" in m for m in debug)
    assert any("held back FutureWarning" in m for m in debug)


def test_cli_bench_unwritable_out_fails_first(bundles, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")

    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(bundles.classifier.root),
            "--out",
            str(tmp_path / "a-file" / "bench.json"),
        ],
    )

    assert result.exit_code == 2
    assert "cannot write" in _plain(result.output)
    assert "Traceback" not in result.output


def test_cli_bench_rejects_folder_out(bundles, tmp_path):
    result = CliRunner().invoke(
        app, ["bench", str(bundles.classifier.root), "--out", str(tmp_path)]
    )

    assert result.exit_code == 2
    assert "it is a folder" in _plain(result.output)
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


# A dataset other than the bundle's, or a bundle that cannot be written.


def test_dataset_of_other_split_rejected(bundles, resplit_iot23):
    before = (bundles.classifier.root / MANIFEST_NAME).read_bytes()

    with pytest.raises(BundleError, match="split files differ"):
        optimize_bundle(
            bundles.classifier,
            data=resplit_iot23,
            calibration="validation",
            force=True,
        )

    assert (bundles.classifier.root / MANIFEST_NAME).read_bytes() == before


def test_cli_optimize_rejects_other_split(bundles, resplit_iot23):
    before = (bundles.classifier.root / MANIFEST_NAME).read_bytes()

    result = CliRunner().invoke(
        app,
        [
            "optimize",
            str(bundles.classifier.root),
            "--data",
            str(resplit_iot23.root),
            "--calibration",
            "validation",
            "--force",
        ],
    )

    assert result.exit_code == 2
    output = _plain(result.output)
    assert "its validation rows may be training rows of the bundle" in output
    assert "omit --data" in output
    assert (bundles.classifier.root / MANIFEST_NAME).read_bytes() == before


def test_rekeyed_dataset_names_fingerprint_key(bundles, tmp_path):
    copy = tmp_path / "rekeyed"
    shutil.copytree(bundles.dataset.root, copy)
    (copy / FINGERPRINT_KEY_NAME).write_text("ab" * 32 + "\n")

    with pytest.raises(BundleError) as raised:
        optimize_bundle(bundles.classifier, data=copy, force=True)

    message = str(raised.value)
    assert "its fingerprint does not match" in message
    assert "split files differ" in message
    assert "another or no fingerprint.key" in message
    assert "prepared again into a new folder" in message


def test_cli_optimize_force_on_read_only_bundle(bundles, read_only_folder):
    path = bundles.copy(bundles.classifier, "read-only")
    read_only_folder(path)

    result = CliRunner().invoke(app, ["optimize", str(path), "--force"])

    assert result.exit_code == 2
    assert f"cannot write {path / MANIFEST_NAME}" in _plain(result.output)
    assert "Traceback" not in result.output


# Scores recorded by `edgedp evaluate` and files that `optimize` replaces.


def test_optimize_drops_scores_of_replaced_files(bundles):
    from edgedp.bundle import unmatched_scores
    from edgedp.evaluate import evaluate_bundle

    path = bundles.copy(bundles.autoencoder, "rescored")
    for model_format in ("torch", "int8"):
        evaluate_bundle(path, model_format=model_format)
    scored = _manifest(path)
    old_int8 = scored["files"][INT8_MODEL]["sha256"]
    assert scored["metrics"]["test"]["int8"]["model_sha256"] == old_int8
    assert scored["metrics"]["test"]["torch"]["model_sha256"] == sha256_file(
        path / TORCH_WEIGHTS
    )
    assert unmatched_scores(scored, "test") == {}

    optimize_bundle(path, calibration="synthetic", calibration_size=50, force=True)

    replaced = _manifest(path)
    assert replaced["files"][INT8_MODEL]["sha256"] != old_int8
    assert list(replaced["metrics"]["test"]) == ["torch"]
    assert unmatched_scores(replaced, "test") == {}

    rescored = evaluate_bundle(path, model_format="int8")
    assert rescored["model_sha256"] == replaced["files"][INT8_MODEL]["sha256"]
    assert rescored["model_file"] == INT8_MODEL


def test_scores_of_another_file_unmatched(bundles):
    from edgedp.bundle import unmatched_scores

    manifest = _manifest(bundles.classifier.root)
    manifest["metrics"] = {
        "test": {
            "torch": {"accuracy": 0.9},
            "fp32": {"accuracy": 0.9, "model_sha256": "0" * 64},
            "int8": {
                "accuracy": 0.9,
                "model_sha256": manifest["files"][INT8_MODEL]["sha256"],
            },
        }
    }

    unmatched = unmatched_scores(manifest, "test")

    assert set(unmatched) == {"torch", "fp32"}
    assert "record no sha256" in unmatched["torch"]
    assert "had sha256 000000000000…" in unmatched["fp32"]


def test_cli_bench_table_fits_80_columns(bundles, tmp_path):
    import re

    edgedp = str(Path(sys.executable).with_name("edgedp"))
    out = tmp_path / "bench.json"

    done = subprocess.run(
        [
            edgedp,
            "bench",
            str(bundles.classifier.root),
            *("--variant", "fp32", "--variant", "int8"),
            *("--samples", "50", "--repeat", "2", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80"},
    )

    # The console, the table included, writes to stderr.
    output = done.stderr
    assert done.returncode == 0, output
    assert max(len(line) for line in output.splitlines()) <= 80
    assert "…" not in output
    results = json.loads(out.read_text())["bundles"][0]["variants"]
    for variant in ("fp32", "int8"):
        spread = results[variant]["single_seconds"]
        shown = f"{spread['min']:.4f}-{spread['max']:.4f}"
        assert re.search(rf"│ +{re.escape(shown)} │", output), variant


def test_interrupt_dropped_by_gc_callback_stops(bundles):
    import gc
    import signal

    path = bundles.copy(bundles.classifier, "interrupted")
    before = _manifest(path)
    hook = sys.unraisablehook
    calls = []

    # JAX's garbage-collection callback drops a Ctrl-C that lands in it in
    # the same way: Python reports the exception as unraisable and goes on.
    def interrupt_once(phase: str, info: dict) -> None:
        if phase == "start" and not calls:
            calls.append(phase)
            signal.raise_signal(signal.SIGINT)

    gc.callbacks.append(interrupt_once)
    try:
        with pytest.raises(KeyboardInterrupt):
            optimize_bundle(path, force=True)
    finally:
        gc.callbacks.remove(interrupt_once)

    assert calls == ["start"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook is hook
    after = load_bundle(path)
    assert after.manifest["files"] == before["files"]
