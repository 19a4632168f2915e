"""Training on the prepared IoT-23 samples: bundles, ledgers, bad input."""

import json
import math
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from edgedp import config
from edgedp.atomic import OutputError
from edgedp.bundle import TORCH_WEIGHTS, load_bundle
from edgedp.dataset import (
    FINGERPRINT_KEY_NAME,
    MANIFEST_NAME,
    DatasetError,
    load_prepared,
)
from edgedp.metrics import classification_metrics
from edgedp.models import ModelSpec, build_model, classifier_spec, load_model
from edgedp.privacy import (
    DPSettings,
    PrivacyConfigError,
    calibrate_noise,
    compute_epsilon,
    private_ledger,
)
from edgedp.train import (
    TRAIN_LOG,
    TrainingData,
    TrainingError,
    TrainSettings,
    dataset_fingerprint,
    fit,
    train_bundle,
)


def _majority_baseline(labels, classes):
    majority = np.bincount(labels, minlength=len(classes)).argmax()
    probabilities = np.eye(len(classes))[np.full(len(labels), majority)]
    return classification_metrics(labels, probabilities, classes)


@pytest.fixture(scope="module")
def bundles(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {
        "ff_plain": train_bundle(prepared_iot23, root / "ff_plain", epochs=3),
        "ff_dp": train_bundle(prepared_iot23, root / "ff_dp", epsilon=1.0, epochs=2),
        "ae_dp": train_bundle(
            prepared_iot23, root / "ae_dp", model="ae", epsilon=2.0, epochs=2
        ),
    }


def test_bundle_files_and_manifest(bundles, prepared_iot23):
    bundle = load_bundle(bundles["ff_dp"].root, encoder_versions=["conn-1"])
    manifest = bundle.manifest

    assert set(manifest["files"]) == {TORCH_WEIGHTS, TRAIN_LOG}
    assert manifest["encoder_version"] == prepared_iot23.encoder_version
    assert manifest["feature_names"] == prepared_iot23.feature_names
    assert manifest["classes"] == list(config.STUDY_CLASSES)
    assert manifest["dataset"]["path"] == str(prepared_iot23.root.resolve())
    assert manifest["training"]["seed"] == 0
    assert manifest["training"]["epochs"] == 2
    assert manifest["training"]["versions"]["opacus"]
    assert "accuracy" in manifest["metrics"]["validation"]["torch"]
    assert "thresholds" not in manifest


def test_weights_reload(bundles, prepared_iot23):
    bundle = bundles["ff_plain"]
    model = load_model(
        ModelSpec.from_json(bundle.manifest["model"]), bundle.path(TORCH_WEIGHTS)
    )
    features = torch.from_numpy(prepared_iot23.split("validation").features[:50])

    probabilities = model(features)

    assert probabilities.shape == (50, len(config.STUDY_CLASSES))
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(50))


def test_log_has_epochs_and_ledger(bundles):
    log = bundles["ff_dp"].path(TRAIN_LOG).read_text()

    assert "epoch 1/2" in log
    assert "epoch 2/2" in log
    assert "achieved epsilon" in log
    assert "wrote bundle" not in log


def test_private_ledger(bundles, prepared_iot23):
    ledger = bundles["ff_dp"].manifest["privacy"]
    train_rows = len(prepared_iot23.split("train"))

    assert ledger["private"] is True
    assert ledger["epsilon"] <= ledger["target_epsilon"] == 1.0
    assert ledger["delta"] == config.DEFAULT_DELTA
    assert ledger["rows"] == train_rows
    assert ledger["sample_rate"] == pytest.approx(2048 / train_rows)
    assert ledger["steps"] == 2 * round(train_rows / 2048)
    assert ledger["noise_multiplier"] > 0
    assert ledger["sampling"] == "poisson"
    assert ledger["accountant"] == "prv"
    assert ledger["population"] == "training split rows"
    recomputed = compute_epsilon(
        [(ledger["noise_multiplier"], ledger["sample_rate"], ledger["steps"])],
        delta=ledger["delta"],
    )
    assert ledger["epsilon"] == pytest.approx(recomputed)


def test_plain_ledger_is_infinite(bundles):
    raw = json.loads((bundles["ff_plain"].root / "bundle.json").read_text())

    assert raw["privacy"]["private"] is False
    assert math.isinf(raw["privacy"]["epsilon"])
    assert raw["privacy"]["noise_multiplier"] == 0.0


def test_plain_classifier_beats_majority(bundles, prepared_iot23):
    validation = prepared_iot23.split("validation")
    baseline = _majority_baseline(validation.labels, prepared_iot23.classes)
    metrics = bundles["ff_plain"].manifest["metrics"]["validation"]["torch"]

    assert metrics["f1_weighted"] > baseline["f1_weighted"] + 0.2
    assert metrics["f1_macro"] > baseline["f1_macro"] + 0.3


def test_autoencoder_ledger_and_thresholds(bundles, prepared_iot23):
    manifest = bundles["ae_dp"].manifest
    train = prepared_iot23.split("train")
    benign = int(np.count_nonzero(train.labels == 0))

    assert manifest["privacy"]["population"] == "Benign training split rows"
    assert manifest["privacy"]["rows"] == benign
    assert manifest["privacy"]["sample_rate"] == pytest.approx(2048 / benign)
    assert manifest["privacy"]["epsilon"] <= 2.0
    assert manifest["thresholds"]["study"]["value"] == config.STUDY_AE_THRESHOLD
    assert manifest["thresholds"]["validation_fpr"]["target_fpr"] == 0.01
    metrics = manifest["metrics"]["validation"]["torch"]
    chosen = metrics["thresholds"]["validation_fpr"]
    assert chosen["false_positive_rate"] <= 0.01
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    assert set(metrics["reconstruction_error"]["per_class"]) == set(
        config.STUDY_CLASSES
    )


def test_same_seed_same_model(prepared_iot23, tmp_path):
    runs = [
        train_bundle(prepared_iot23, tmp_path / name, epsilon=2.0, epochs=1, seed=seed)
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    ]
    metrics = [run.manifest["metrics"]["validation"]["torch"] for run in runs]

    assert metrics[0] == metrics[1]
    assert runs[0].bundle_id == runs[1].bundle_id
    assert runs[0].bundle_id != runs[2].bundle_id


def test_secure_randomness_not_replayable(bundles, prepared_iot23, tmp_path):
    seeded = bundles["ff_dp"]

    secret = train_bundle(
        prepared_iot23,
        tmp_path / "secret",
        epsilon=1.0,
        epochs=2,
        secure_randomness=True,
    )

    assert seeded.manifest["privacy"]["randomness"] == "seeded"
    assert secret.manifest["privacy"]["randomness"] == "secret"
    # Same seed, same init: only the secret batches and noise differ.
    assert secret.bundle_id != seeded.bundle_id
    assert secret.manifest["privacy"]["epsilon"] <= 1.0


def test_dp_steps_taken_match_calibration(prepared_iot23):
    # 99 rows in batches of 2: 49.5 steps per epoch, a tie.
    train = prepared_iot23.split("train")
    features = torch.from_numpy(np.ascontiguousarray(train.features[:99]))
    data = TrainingData(features, torch.from_numpy(train.labels[:99]), "rows")
    settings = TrainSettings(epsilon=1.0, delta=1e-3, batch_size=2, epochs=1)
    planned = DPSettings(
        target_epsilon=1.0,
        target_delta=1e-3,
        max_grad_norm=1.0,
        expected_batch_size=2,
        epochs=1,
        rows=99,
    )
    sigma = calibrate_noise(planned)
    spec = classifier_spec(len(prepared_iot23.feature_names), 6)

    history = fit(build_model(spec), data, settings, noise_multiplier=sigma)
    ledger = private_ledger(
        planned,
        noise_multiplier=sigma,
        history=history,
        clipping="ghost",
        secure_randomness=False,
    )

    assert sum(steps for _, _, steps in history) == planned.steps == 50
    assert ledger["epsilon"] <= 1.0


def test_existing_bundle_rejected_first(prepared_iot23, tmp_path):
    (tmp_path / "taken").mkdir()

    with pytest.raises(FileExistsError, match="--overwrite"):
        train_bundle(prepared_iot23, tmp_path / "taken")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"epsilon": 0.0}, TrainingError, "positive"),
        ({"epsilon": -2.0}, TrainingError, "positive"),
        ({"epsilon": 1.0, "delta": 1e-3}, PrivacyConfigError, "below 1/N"),
        ({"delta": 1.5}, TrainingError, r"in \(0, 1\)"),
        ({"delta": 1.0}, TrainingError, "goes unused, but bundle.json records it"),
        ({"max_grad_norm": 0.0}, TrainingError, r"without DP \(epsilon none\)"),
        (
            {"epsilon": 1.0, "delta": 9.99999999999e-11},
            TrainingError,
            "at least 1e-10, got 9.99999999999e-11",
        ),
        ({"epsilon": 1.0, "max_grad_norm": 0.0}, TrainingError, "clipping norm"),
        ({"epsilon": 1.0, "batch_size": 10**6}, PrivacyConfigError, "smaller batch"),
        ({"epsilon": 0.005}, PrivacyConfigError, "larger epsilon"),
        ({"model": "cnn"}, TrainingError, "use ff"),
        ({"epsilon": 1000.0}, TrainingError, "above the maximum of 20"),
        ({"seed": -3}, TrainingError, "seed must be a whole number from 0"),
        ({"seed": 2**32}, TrainingError, "seed must be a whole number from 0"),
        ({"clipping": "none"}, TrainingError, "clipping mode"),
    ],
)
def test_bad_settings_rejected(prepared_iot23, tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        train_bundle(prepared_iot23, tmp_path / "bundle", **options)

    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("model", ["ff", "ae"])
def test_large_delta_rejected_before_reading(prepared_iot23, tmp_path, model):
    copy = _copy_dataset(prepared_iot23, tmp_path / "data")
    # Parquet cannot read this, so only a check before reading passes it.
    (copy / "train.parquet").write_bytes(b"not parquet")

    with pytest.raises(PrivacyConfigError, match="below 1/N"):
        train_bundle(
            load_prepared(copy),
            tmp_path / "bundle",
            model=model,
            epsilon=1.0,
            delta=1e-3,
        )


def test_damaged_split_file_named(prepared_iot23, tmp_path):
    copy = _copy_dataset(prepared_iot23, tmp_path / "data")
    path = copy / "validation.parquet"
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(DatasetError, match="validation.parquet cannot be read"):
        train_bundle(load_prepared(copy), tmp_path / "bundle", epochs=1)

    assert not (tmp_path / "bundle").exists()


def test_unwritable_out_rejected_before_training(prepared_iot23, tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a folder")

    with caplog.at_level("INFO", logger="edgedp"):
        with pytest.raises(OutputError, match="cannot write .*a-file"):
            train_bundle(prepared_iot23, tmp_path / "a-file" / "bundle", epochs=1)

    assert "training classifier" not in caplog.text


def test_fingerprint_recorded_not_path(bundles, prepared_iot23, tmp_path):
    copy = load_prepared(_copy_dataset(prepared_iot23, tmp_path / "copy"))
    recorded = bundles["ff_plain"].manifest["dataset"]

    assert recorded["fingerprint"] == dataset_fingerprint(prepared_iot23)
    assert dataset_fingerprint(copy) == recorded["fingerprint"]


def test_fingerprint_changes_with_split(prepared_iot23, tmp_path):
    copy = _copy_dataset(prepared_iot23, tmp_path / "fewer")
    table = pq.read_table(copy / "test.parquet")
    pq.write_table(table.slice(1), copy / "test.parquet")

    assert dataset_fingerprint(load_prepared(copy)) != dataset_fingerprint(
        prepared_iot23
    )


def test_fingerprint_needs_dataset_key(prepared_iot23, tmp_path):
    copy = _copy_dataset(prepared_iot23, tmp_path / "rekeyed")
    (copy / FINGERPRINT_KEY_NAME).write_text("00" * 32 + "\n")
    unkeyed = _copy_dataset(prepared_iot23, tmp_path / "unkeyed")
    (unkeyed / FINGERPRINT_KEY_NAME).unlink()

    keyed = dataset_fingerprint(prepared_iot23)

    assert dataset_fingerprint(load_prepared(copy)) != keyed
    assert dataset_fingerprint(load_prepared(unkeyed)) != keyed


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "has no fingerprint.key"),
        ("", "a key of 0 bytes"),
        ("0123abcd", "a key of 4 bytes"),
        ("ab" * 33, "a key of 33 bytes"),
    ],
    ids=["missing", "empty", "4 bytes", "33 bytes"],
)
def test_train_rejects_unkeyed_dataset(prepared_iot23, tmp_path, caplog, key, message):
    copy = _copy_dataset(prepared_iot23, tmp_path / "data")
    if key is None:
        (copy / FINGERPRINT_KEY_NAME).unlink()
    else:
        (copy / FINGERPRINT_KEY_NAME).write_text(key + "\n")

    with caplog.at_level("INFO", logger="edgedp"):
        with pytest.raises(DatasetError, match=message) as raised:
            train_bundle(copy, tmp_path / "bundle", epochs=1)

    assert "rerun `edgedp prepare` into this folder" in str(raised.value)
    assert "training classifier" not in caplog.text
    assert not (tmp_path / "bundle").exists()


def test_cli_train_rejects_unkeyed_dataset(prepared_iot23, tmp_path):
    from typer.testing import CliRunner

    from edgedp.cli import app, training  # noqa: F401  (registers `train`)

    copy = _copy_dataset(prepared_iot23, tmp_path / "nokey")
    (copy / FINGERPRINT_KEY_NAME).unlink()
    out = ["--out", str(tmp_path / "bundle"), "--epochs", "1", "--epsilon", "none"]

    result = CliRunner().invoke(app, ["train", "--data", str(copy), *out])

    assert result.exit_code == 2, result.output
    assert "has no fingerprint.key" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "bundle").exists()


def _copy_dataset(dataset, destination):
    shutil.copytree(dataset.root, destination)
    return destination


def test_other_encoder_rejected(prepared_iot23, tmp_path):
    copy = _copy_dataset(prepared_iot23, tmp_path / "old")
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["encoder_version"] = "conn-0"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))

    with pytest.raises(DatasetError, match="encoder conn-0.*rerun `edgedp prepare`"):
        train_bundle(copy, tmp_path / "bundle")


def test_missing_class_rejected(prepared_iot23, tmp_path):
    copy = _copy_dataset(prepared_iot23, tmp_path / "no_okiru")
    table = pq.read_table(copy / "train.parquet")
    pq.write_table(
        table.filter(pc.not_equal(table["label"], "Okiru")), copy / "train.parquet"
    )

    with pytest.raises(TrainingError, match="no rows of class Okiru.*--classes"):
        train_bundle(copy, tmp_path / "bundle")


@pytest.fixture(scope="module")
def benign_only(iot23, tmp_path_factory):
    """A honeypot capture prepared alone, so it has Benign flows only."""
    from edgedp.data.prepare import prepare_dataset

    log = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    return prepare_dataset([log], tmp_path_factory.mktemp("prepared") / "benign")


def test_autoencoder_needs_malicious_validation(benign_only, tmp_path, caplog):
    with caplog.at_level("INFO", logger="edgedp"):
        with pytest.raises(TrainingError) as error:
            train_bundle(benign_only, tmp_path / "bundle", model="ae", epochs=1)

    message = str(error.value)
    benign = len(benign_only.split("validation"))
    assert f"has {benign} Benign and 0 malicious flows" in message
    assert "logs with benign and malicious traffic" in message
    assert "epoch 1/1" not in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_diverged_model_rejected(prepared_iot23, tmp_path, caplog):
    with caplog.at_level("INFO", logger="edgedp"):
        with pytest.raises(TrainingError) as error:
            train_bundle(
                prepared_iot23, tmp_path / "bundle", learning_rate=1e30, epochs=3
            )

    message = str(error.value)
    assert "the model diverged" in message
    assert "after epoch 1/3 at learning rate 1e+30" in message
    assert "lower the learning rate" in message
    assert "epoch 2/3" not in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_single_class_classifier_warns_once(benign_only, tmp_path, caplog):
    with caplog.at_level("INFO", logger="edgedp"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_bundle(benign_only, tmp_path / "bundle", epochs=1)

    single = [r for r in caplog.records if "has the single class Benign" in r.message]
    assert [str(w.message) for w in caught if w.category is UserWarning] == []
    assert len(single) == 1
    assert single[0].levelname == "WARNING"


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("benign_only", ["--model", "ae", "--epsilon", "none"], "0 malicious flows"),
        (
            "prepared_iot23",
            ["--epsilon", "none", "--learning-rate", "1e30"],
            "the model diverged",
        ),
    ],
)
def test_cli_train_error_is_clean(request, tmp_path, dataset, options, message):
    from typer.testing import CliRunner

    from edgedp.cli import app, training  # noqa: F401  (registers `train`)

    data = request.getfixturevalue(dataset)
    out = ["--out", str(tmp_path / "bundle"), "--epochs", "1"]

    result = CliRunner().invoke(
        app, ["train", "--data", str(data.root), *out, *options]
    )

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert list(tmp_path.iterdir()) == []


def test_cli_train_writes_bundle(prepared_iot23, tmp_path):
    out = tmp_path / "cli"
    edgedp = str(Path(sys.executable).with_name("edgedp"))
    options = ["--data", str(prepared_iot23.root), "--model", "ae", "--epochs", "1"]

    done = subprocess.run(
        [edgedp, "train", *options, "--epsilon", "none", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    assert "ROC-AUC" in done.stdout + done.stderr
    assert load_bundle(out).model_kind == "autoencoder"


def test_cli_train_reports_bad_input(prepared_iot23, tmp_path):
    from typer.testing import CliRunner

    from edgedp.cli import app, training  # noqa: F401  (registers `train`)

    (tmp_path / "taken").mkdir()
    data = ["train", "--data", str(prepared_iot23.root)]

    taken = CliRunner().invoke(
        app, [*data, "--epsilon", "1", "--out", str(tmp_path / "taken")]
    )
    not_a_number = CliRunner().invoke(
        app, [*data, "--epsilon", "high", "--out", str(tmp_path / "new")]
    )

    assert taken.exit_code == 2
    assert "already exists" in taken.output
    assert not_a_number.exit_code == 2
    assert "'high' is not a number" in not_a_number.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epsilon", "inf"], "pass --epsilon none to train without DP"),
        (["--epsilon", "nan"], "'nan' is not a number"),
        (["--epsilon", "1_0"], "'1_0' is not a number"),
        (["--epsilon", "\u0661"], "ASCII digits without underscores"),
        (["--epsilon", "1", "--delta", "1_0e-6"], "'1_0e-6' is not a number"),
        (["--epsilon", "1", "--delta", "\u0661e-5"], "ASCII digits without"),
        (["--epsilon", "1000"], "above the maximum of 20"),
        (["--epsilon", "1e6"], "above the maximum of 20"),
        (["--epsilon", "1", "--seed", "-3"], "--seed"),
        (["--epsilon", "none", "--delta", "1"], "without DP (epsilon none)"),
        (
            ["--epsilon", "20", "--delta", "1e-10", "--epochs", "200"]
            + ["--batch-size", "64"],
            "above edgedp's limit of 2,097,152; use fewer steps",
        ),
        (["--epsilon", "none", "--out", "{file}/bundle"], "cannot write"),
    ],
)
def test_cli_train_rejects_before_work(prepared_iot23, tmp_path, options, message):
    from typer.testing import CliRunner

    from edgedp.cli import app, training  # noqa: F401  (registers `train`)

    (tmp_path / "a-file").write_text("not a folder")
    options = [o.replace("{file}", str(tmp_path / "a-file")) for o in options]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "bundle")]

    result = CliRunner().invoke(
        app, ["train", "--data", str(prepared_iot23.root), *options]
    )

    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cli_interrupt_leaves_no_bundle(prepared_iot23, tmp_path):
    out = tmp_path / "interrupted"
    edgedp = str(Path(sys.executable).with_name("edgedp"))
    command = [edgedp, "train", "--data", str(prepared_iot23.root), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--model", "ff", "--epsilon", "1", "--epochs", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell that starts this suite in the background ignores SIGINT,
        # and children inherit that; Python only handles SIGINT left at the
        # default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    # Wait until training has started, then press Ctrl-C.
    output = []
    for line in process.stdout:
        output.append(line)
        if "noise multiplier" in line or "training" in line.lower():
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    text = " ".join((("".join(output)) + rest).split())

    assert process.returncode == 130
    assert "interrupted." in text
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
