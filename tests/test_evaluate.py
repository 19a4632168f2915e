"""Scoring bundles on the prepared IoT-23 samples, in torch and LiteRT."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedp import config
from edgedp.atomic import OutputError
from edgedp.bundle import BundleError, load_bundle
from edgedp.dataset import MANIFEST_NAME
from edgedp.evaluate import EvaluationError, evaluate_bundle, score_outputs
from edgedp.metrics import classification_metrics
from edgedp.train import train_bundle


@pytest.fixture(scope="module")
def classifier(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return train_bundle(prepared_iot23, root / "ff", epochs=3)


@pytest.fixture(scope="module")
def autoencoder(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return train_bundle(prepared_iot23, root / "ae", model="ae", epochs=10)


def test_classifier_metrics_recorded(classifier, prepared_iot23):
    test = prepared_iot23.split("test")

    metrics = evaluate_bundle(classifier.root)

    stored = load_bundle(classifier.root).manifest["metrics"]
    assert stored["test"]["torch"] == json.loads(json.dumps(metrics))
    assert "validation" in stored
    assert metrics["rows"] == len(test)
    assert metrics["dataset"] == str(prepared_iot23.root.resolve())
    assert sum(metrics["per_class"][c]["support"] for c in config.STUDY_CLASSES) == len(
        test
    )


def test_classifier_beats_majority_on_test(classifier, prepared_iot23):
    test = prepared_iot23.split("test")
    majority = np.bincount(test.labels).argmax()
    baseline = classification_metrics(
        test.labels,
        np.eye(len(config.STUDY_CLASSES))[np.full(len(test), majority)],
        prepared_iot23.classes,
    )

    metrics = evaluate_bundle(classifier, prepared_iot23)

    assert metrics["f1_weighted"] > baseline["f1_weighted"] + 0.2
    assert metrics["f1_macro"] > baseline["f1_macro"] + 0.3


def test_autoencoder_metrics(autoencoder, prepared_iot23):
    test = prepared_iot23.split("test")
    counts = np.bincount(test.labels, minlength=len(config.STUDY_CLASSES))

    metrics = evaluate_bundle(autoencoder, prepared_iot23, split="test")

    assert metrics["benign"] == counts[0]
    assert metrics["malicious"] == len(test) - counts[0]
    assert set(metrics["thresholds"]) == {"study", "validation_fpr"}
    chosen = autoencoder.manifest["thresholds"]["validation_fpr"]["value"]
    assert metrics["thresholds"]["validation_fpr"]["threshold"] == chosen
    assert metrics["thresholds"]["study"]["threshold"] == config.STUDY_AE_THRESHOLD
    per_class = metrics["reconstruction_error"]["per_class"]
    for index, name in enumerate(config.STUDY_CLASSES):
        assert per_class[name]["count"] == counts[index]
        assert sum(per_class[name]["histogram"]) == counts[index]
    # A chance-level detector scores 0.5; a plain autoencoder trained for 10
    # epochs scores above 0.9 on these captures.
    assert metrics["roc_auc"] > 0.75


def test_litert_formats_match_torch(classifier, prepared_iot23):
    from edgedp.export import optimize_bundle

    optimized = optimize_bundle(classifier, data=prepared_iot23)
    torch_metrics = evaluate_bundle(optimized, split="validation")
    fp32 = evaluate_bundle(optimized, split="validation", model_format="fp32")
    int8 = evaluate_bundle(optimized, split="validation", model_format="int8")

    stored = load_bundle(classifier.root).manifest["metrics"]["validation"]
    assert set(stored) == {"torch", "fp32", "int8"}
    assert fp32["accuracy"] == pytest.approx(torch_metrics["accuracy"], abs=1e-3)
    assert int8["accuracy"] == pytest.approx(torch_metrics["accuracy"], abs=0.02)


def test_unknown_format_rejected(classifier):
    with pytest.raises(ValueError, match="unknown model format 'onnx'"):
        evaluate_bundle(classifier, model_format="onnx")


def test_other_classes_rejected(classifier, prepared_iot23, tmp_path):
    copy = tmp_path / "renamed"
    shutil.copytree(prepared_iot23.root, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["classes"] = [*manifest["classes"][:-1], "Scan"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))

    with pytest.raises(BundleError, match="has classes .* trained on"):
        evaluate_bundle(classifier, copy)


def test_altered_bundle_rejected(prepared_iot23, tmp_path):
    bundle = train_bundle(prepared_iot23, tmp_path / "ff", epochs=1)
    with open(bundle.root / "model.pt", "ab") as weights:
        weights.write(b"\0")

    with pytest.raises(BundleError, match="altered or truncated"):
        evaluate_bundle(bundle.root)


def test_cli_evaluate_prints_and_records(autoencoder):
    edgedp = str(Path(sys.executable).with_name("edgedp"))

    done = subprocess.run(
        [edgedp, "evaluate", str(autoencoder.root), "--split", "validation"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    assert "ROC-AUC" in done.stdout + done.stderr
    stored = load_bundle(autoencoder.root).manifest["metrics"]["validation"]
    assert "roc_auc" in stored["torch"]
    # Only evaluation records the dataset; training's own entry does not.
    assert stored["torch"]["dataset"] == autoencoder.manifest["dataset"]["path"]


@pytest.fixture(scope="module")
def private_classifier(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return train_bundle(prepared_iot23, root / "ff_dp", epsilon=2.0, epochs=1)


def test_training_split_of_dp_bundle_rejected(private_classifier):
    before = (private_classifier.root / "bundle.json").read_bytes()

    with pytest.raises(EvaluationError, match="trained with DP.*private rows"):
        evaluate_bundle(private_classifier, split="train")

    assert (private_classifier.root / "bundle.json").read_bytes() == before


def test_training_split_of_plain_bundle_recorded(classifier):
    metrics = evaluate_bundle(classifier, split="train")

    stored = load_bundle(classifier.root).manifest["metrics"]["train"]["torch"]
    assert stored["rows"] == metrics["rows"]


def test_other_split_dataset_rejected(private_classifier, resplit_iot23):
    before = (private_classifier.root / "bundle.json").read_bytes()

    with pytest.raises(EvaluationError, match="may be training rows"):
        evaluate_bundle(private_classifier, resplit_iot23)

    assert (private_classifier.root / "bundle.json").read_bytes() == before


def test_other_dataset_scored_not_recorded(private_classifier, resplit_iot23):
    before = (private_classifier.root / "bundle.json").read_bytes()

    metrics = evaluate_bundle(private_classifier, resplit_iot23, other_dataset=True)

    assert metrics["rows"] == len(resplit_iot23.split("test"))
    assert (private_classifier.root / "bundle.json").read_bytes() == before


def test_read_only_bundle_rejected_before_scoring(
    classifier, tmp_path, read_only_folder
):
    copy = tmp_path / "ff"
    shutil.copytree(classifier.root, copy)
    read_only_folder(copy)

    with pytest.raises(OutputError, match=f"cannot write {copy / 'bundle.json'}"):
        evaluate_bundle(copy, split="validation")

    # --other-dataset records nothing, so it needs no writable bundle.
    metrics = evaluate_bundle(copy, split="validation", other_dataset=True)
    assert metrics["rows"] > 0


def test_copied_dataset_accepted(classifier, prepared_iot23, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(prepared_iot23.root, copy)

    metrics = evaluate_bundle(classifier, copy, split="validation")

    stored = load_bundle(classifier.root).manifest["metrics"]["validation"]["torch"]
    assert stored["dataset"] == str(copy.resolve())
    assert stored["rows"] == metrics["rows"]


def test_cli_evaluate_rejects_training_split(private_classifier):
    from typer.testing import CliRunner

    from edgedp.cli import app, training  # noqa: F401  (registers `evaluate`)

    result = CliRunner().invoke(
        app, ["evaluate", str(private_classifier.root), "--split", "train"]
    )

    assert result.exit_code == 2
    assert "trained with DP" in result.output
    assert "Traceback" not in result.output


def test_single_class_predictions_warned(caplog):
    labels = np.array([0, 0, 1, 2])
    outputs = np.tile(np.array([[0.9, 0.05, 0.05]], dtype=np.float32), (4, 1))

    with caplog.at_level("WARNING", logger="edgedp.evaluate"):
        metrics = score_outputs(
            "classifier", ["Benign", "DDoS", "C&C"], labels, outputs, {}
        )

    assert "predicts only Benign for these 4 flows" in caplog.text
    assert metrics["accuracy"] == 0.5
