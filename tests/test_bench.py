"""`edgedp bench` in real fresh processes: what each variant loads and reports,
the JSON layout, and errors for bundles it cannot measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export_bundles import edge_bundles
from typer.testing import CliRunner

import edgedp.cli.shrinking  # noqa: F401  (registers optimize and bench)
from edgedp.bench import VARIANTS, BenchError, bench_bundles, run_worker
from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    TORCH_WEIGHTS,
    BundleError,
    write_manifest,
)
from edgedp.cli import app

FLOWS = 300


@pytest.fixture(scope="session")
def bundles(iot23, tmp_path_factory):
    return edge_bundles(iot23, tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="session")
def classifier_results(bundles):
    return bench_bundles([bundles.classifier.root], samples=FLOWS, repeat=2)


def test_result_layout(classifier_results, bundles):
    (result,) = classifier_results["bundles"]

    assert classifier_results["settings"]["flows"] == FLOWS
    assert classifier_results["machine"]["cores"] >= 1
    assert result["bundle_id"] == bundles.classifier.bundle_id
    assert result["kind"] == "classifier"
    assert result["features"].startswith("test split of ")
    assert list(result["variants"]) == list(VARIANTS)
    json.dumps(classifier_results)


def test_spreads_cover_repeats(classifier_results):
    (result,) = classifier_results["bundles"]

    for name, variant in result["variants"].items():
        measured = ["peak_rss_bytes"]
        if name != "python":
            measured += [
                "single_seconds",
                "single_cpu_seconds",
                "batch_seconds",
                "batch_cpu_seconds",
                "single_peak_rss_bytes",
            ]
        for key in measured:
            spread = variant[key]
            assert len(spread["values"]) == 2, (name, key)
            assert spread["min"] <= spread["median"] <= spread["max"], (name, key)
            assert spread["min"] > 0, (name, key)


def test_file_sizes_match_bundle(classifier_results, bundles):
    (result,) = classifier_results["bundles"]
    variants = result["variants"]
    files = bundles.classifier.manifest["files"]

    assert variants["python"]["file_bytes"] is None
    assert variants["torch"]["file_bytes"] == files[TORCH_WEIGHTS]["bytes"]
    assert variants["fp32"]["file_bytes"] == files[FP32_MODEL]["bytes"]
    assert variants["int8"]["file_bytes"] == files[INT8_MODEL]["bytes"]
    assert variants["int8-input"]["file_bytes"] == files[INT8_MODEL]["bytes"]


def test_litert_processes_never_load_torch(classifier_results):
    (result,) = classifier_results["bundles"]
    variants = result["variants"]

    assert variants["torch"]["loaded_modules"]["torch"] is True
    for name in ("python", "fp32", "int8", "int8-input"):
        loaded = variants[name]["loaded_modules"]
        assert not any(loaded.values()), (name, loaded)


def test_litert_peak_memory_below_torch(classifier_results):
    (result,) = classifier_results["bundles"]
    peaks = {
        name: variant["peak_rss_bytes"]["median"]
        for name, variant in result["variants"].items()
    }

    # The parent process has torch loaded, so these also show that its memory
    # is not counted in the workers' peaks.
    assert peaks["python"] < peaks["fp32"] < peaks["torch"]
    assert peaks["int8"] < peaks["torch"]
    for name in ("torch", "fp32", "int8", "int8-input"):
        variant = result["variants"][name]
        one_at_a_time = variant["single_peak_rss_bytes"]["median"]
        assert one_at_a_time <= variant["peak_rss_bytes"]["median"], name


def test_cli_writes_json_and_table(bundles, tmp_path):
    out = tmp_path / "bench.json"

    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(bundles.autoencoder.root),
            "--samples",
            "50",
            "--repeat",
            "1",
            "--variant",
            "fp32",
            "--variant",
            "int8-input",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["bundles"][0]["kind"] == "autoencoder"
    assert written["bundles"][0]["flows"] == 50
    assert list(written["bundles"][0]["variants"]) == ["fp32", "int8-input"]
    assert "int8-input" in result.output
    assert f"wrote {out}" in " ".join(result.output.split())


def test_unoptimized_bundle_rejected_before_measuring(bundles):
    path = bundles.copy(bundles.classifier, "bench-unoptimized")
    manifest = json.loads((path / "bundle.json").read_text())
    del manifest["files"][FP32_MODEL]
    write_manifest(path / "bundle.json", manifest)

    with pytest.raises(BundleError, match="run `edgedp optimize`"):
        bench_bundles([path], samples=10, repeat=1)


def test_worker_failure_reported(bundles, tmp_path):
    features = tmp_path / "narrow.npy"
    np.save(features, np.zeros((5, 3), dtype=np.float32))

    with pytest.raises(BenchError, match=r"model takes \(flows, 109\)"):
        run_worker(bundles.classifier.root, "fp32", features)


def test_invalid_settings_rejected(bundles):
    with pytest.raises(ValueError, match="repeat must be at least 1"):
        bench_bundles([bundles.classifier.root], repeat=0)
    with pytest.raises(ValueError, match="unknown variant 'onnx'"):
        bench_bundles([bundles.classifier.root], variants=["onnx"])
