"""Membership inference (`edgedp audit`) on bundles trained on the IoT-23 samples."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgedp import config
from edgedp.atomic import OutputError
from edgedp.bundle import BundleError, add_files, load_bundle
from edgedp.dataset import MANIFEST_NAME, load_prepared
from edgedp.membership import (
    MembershipError,
    advantage_bound,
    attack_metrics,
    audit_bundle,
    draw_sample,
    privacy_bounds,
    roc_auc_bound,
    rows_in,
    tpr_bound,
)
from edgedp.privacy import non_private_ledger
from edgedp.report.collect import collect_membership
from edgedp.report.markdown import _membership_section
from edgedp.train import train_bundle

EDGEDP = str(Path(sys.executable).with_name("edgedp"))


@pytest.fixture(scope="module")
def classifier(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("membership")
    return train_bundle(prepared_iot23, root / "ff", epochs=2)


@pytest.fixture(scope="module")
def autoencoder(prepared_iot23, tmp_path_factory):
    root = tmp_path_factory.mktemp("membership")
    return train_bundle(prepared_iot23, root / "ae", model="ae", epochs=2)


def _copy_dataset(dataset, folder: Path):
    shutil.copytree(dataset.root, folder)
    return folder


def _rewrite_split(folder: Path, split: str, keep: np.ndarray) -> pa.Table:
    table = pq.read_table(folder / f"{split}.parquet").take(np.sort(keep))
    pq.write_table(table, folder / f"{split}.parquet")
    return table


# The bounds that (epsilon, delta)-DP puts on any membership test.


def test_advantage_bound_known_values():
    assert advantage_bound(1.0, 0.0) == pytest.approx(0.46211715726000974)
    assert advantage_bound(0.0, 0.0) == 0.0
    assert advantage_bound(0.0, 1e-5) == pytest.approx(1e-5)
    for epsilon, delta in ((0.5, 1e-5), (1.0, 1e-5), (2.0, 1e-5), (3.0, 0.01)):
        expected = (math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1)
        assert advantage_bound(epsilon, delta) == pytest.approx(expected, rel=1e-12)
    assert advantage_bound(1000.0, 1e-5) == pytest.approx(1.0)


def test_tpr_bound_known_values():
    assert tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert tpr_bound(0.0, 0.0, 0.3) == pytest.approx(0.3)
    assert tpr_bound(2.0, 0.0, 0.0) == 0.0
    # Past the kink the second inequality, 1 - FPR <= e^eps (1 - TPR) + delta,
    # is the tighter one.
    assert tpr_bound(1.0, 0.0, 0.5) == pytest.approx(1 - 0.5 / math.e)
    assert tpr_bound(1000.0, 1e-5, 0.01) == 1.0


def test_bounds_trace_one_tradeoff_curve():
    for epsilon, delta in ((0.5, 1e-5), (1.0, 1e-5), (2.0, 0.01)):
        kink = (1 - delta) / (math.exp(epsilon) + 1)
        fpr = np.union1d(np.linspace(0, 1, 20001), [kink, 1 - delta])
        tpr = np.array([tpr_bound(epsilon, delta, value) for value in fpr])

        assert np.max(tpr - fpr) == pytest.approx(advantage_bound(epsilon, delta))
        # The curve is piecewise linear with its corners on the grid, so the
        # trapezoid rule integrates it exactly up to rounding.
        area = float(np.trapezoid(tpr, fpr))
        assert area == pytest.approx(roc_auc_bound(epsilon, delta), abs=1e-9)
    assert roc_auc_bound(0.0, 0.0) == pytest.approx(0.5)


def test_bounds_reject_invalid_privacy():
    with pytest.raises(ValueError, match="epsilon must be finite"):
        advantage_bound(math.inf, 1e-5)
    with pytest.raises(ValueError, match="delta must be in"):
        roc_auc_bound(1.0, 1.5)
    with pytest.raises(ValueError, match="fpr must be in"):
        tpr_bound(1.0, 1e-5, 2.0)


def test_privacy_bounds_of_ledgers():
    plain = privacy_bounds(non_private_ledger(population="rows", rows=10, steps=1))
    private = privacy_bounds(
        {"private": True, "epsilon": 0.9955, "delta": 1e-5, "rows": 10}
    )

    assert plain["advantage"] is None
    assert plain["roc_auc"] is None
    assert plain["tpr_at_fpr"] == {"0.01": None, "0.001": None}
    assert math.isinf(plain["epsilon"])
    assert private["advantage"] == pytest.approx(advantage_bound(0.9955, 1e-5))
    assert private["tpr_at_fpr"]["0.01"] == pytest.approx(
        math.exp(0.9955) * 0.01 + 1e-5
    )


# Sampling, duplicates and the attack's metrics on constructed cases.


def test_draw_sample_same_count_per_class():
    members = np.array([0] * 100 + [1] * 10 + [2] * 5)
    non_members = np.array([0] * 50 + [1] * 3 + [3] * 40)

    first, second = draw_sample(members, non_members, 80, np.random.default_rng(7))

    member_counts = np.bincount(members[first], minlength=4)
    non_member_counts = np.bincount(non_members[second], minlength=4)
    assert list(member_counts) == list(non_member_counts)
    assert member_counts[1] <= 3
    assert member_counts[2] == 0
    assert member_counts[3] == 0
    assert len(first) <= 80
    assert len(set(first)) == len(first)
    assert len(set(second)) == len(second)
    again = draw_sample(members, non_members, 80, np.random.default_rng(7))
    assert np.array_equal(again[0], first)
    assert np.array_equal(again[1], second)


def test_draw_sample_capped_by_population():
    members = np.zeros(30, dtype=np.int64)
    non_members = np.zeros(500, dtype=np.int64)

    first, second = draw_sample(members, non_members, 5000, np.random.default_rng(0))

    assert sorted(first) == list(range(30))
    assert len(second) == 30


def test_draw_sample_rejects_empty_sample():
    members = np.zeros(10, dtype=np.int64)
    with pytest.raises(MembershipError, match="samples must be at least 1"):
        draw_sample(members, members, 0, np.random.default_rng(0))
    with pytest.raises(MembershipError, match="no class has flows among both"):
        draw_sample(members, members + 1, 10, np.random.default_rng(0))
    with pytest.raises(MembershipError, match="no class has flows among both"):
        draw_sample(members[:0], members, 10, np.random.default_rng(0))


def test_rows_in_counts_identical_rows():
    reference = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    reference[1, 0] = 0.0
    nearly = reference[2].copy()
    nearly[3] = np.nextafter(nearly[3], np.float32(2))
    negative_zero = reference[1].copy()
    negative_zero[0] = -0.0
    queries = np.stack(
        [reference[0], nearly, reference[5], reference[0] + 0.5, negative_zero]
    )

    found = rows_in(queries, reference)

    assert list(found) == [True, False, True, False, True]
    assert not rows_in(queries, reference[:0]).any()


def test_attack_metrics_on_separated_scores():
    members = np.arange(1000, 2000, dtype=np.float64)
    non_members = np.arange(0, 1000, dtype=np.float64)

    separated = attack_metrics(members, non_members)
    reversed_scores = attack_metrics(non_members, members)
    small = attack_metrics(members[:50], non_members[:50])

    assert separated["roc_auc"] == 1.0
    assert separated["advantage"] == 1.0
    assert separated["tpr_at_fpr"]["0.01"] == 1.0
    # 1000 non-members are too few for 10 of them above a 0.1% threshold.
    assert separated["tpr_at_fpr"]["0.001"] is None
    assert reversed_scores["roc_auc"] == 0.0
    assert reversed_scores["advantage"] == 0.0
    assert small["tpr_at_fpr"]["0.01"] is None


# The attack on real models.


@pytest.fixture(scope="module")
def memorizing(prepared_iot23, tmp_path_factory):
    """A classifier that can fit its training rows only by memorizing them.

    IoT-23's classes are easy to tell apart, so a model trained on their real
    labels scores test flows about as well as its training flows, and the
    loss gives an attack little to work with. Here 300 training rows with
    distinct features (50 per class at most) get their labels permuted among
    them. The model can then fit them only by remembering each row. The test
    split keeps its real labels.
    """
    from edgedp.membership import _row_keys

    folder = _copy_dataset(prepared_iot23, tmp_path_factory.mktemp("memorize") / "d")
    rng = np.random.default_rng(0)
    train = prepared_iot23.split("train")
    _, distinct = np.unique(_row_keys(train.features), return_index=True)
    keep = np.concatenate(
        [
            rng.choice(
                distinct[train.labels[distinct] == label],
                min(50, int(np.sum(train.labels[distinct] == label))),
                replace=False,
            )
            for label in np.unique(train.labels)
        ]
    )
    table = _rewrite_split(folder, "train", keep)
    order = rng.permutation(table.num_rows)
    for column in ("label", "label_index"):
        position = table.schema.get_field_index(column)
        permuted = table.column(column).take(pa.array(order))
        table = table.set_column(position, column, permuted)
    pq.write_table(table, folder / "train.parquet")
    # A small validation split keeps the per-epoch validation loss cheap.
    validation = prepared_iot23.split("validation")
    _rewrite_split(
        folder, "validation", rng.choice(len(validation), 600, replace=False)
    )

    dataset = load_prepared(folder)
    bundle = train_bundle(
        dataset,
        folder.parent / "ff",
        epochs=1000,
        batch_size=len(keep),
        learning_rate=3e-3,
    )
    return bundle, dataset


def test_memorizing_model_leaks_membership(memorizing):
    bundle, dataset = memorizing

    result = audit_bundle(bundle, dataset)

    assert result["members"] == result["non_members"]
    assert result["members"] > 200
    assert result["member_population_rows"] == len(dataset.split("train"))
    # Chance is 0.5 and 0; this model scores about 0.83 and 0.5.
    assert result["roc_auc"] > 0.7
    assert result["advantage"] > 0.3
    assert result["unique_rows"]["roc_auc"] > 0.7
    assert result["bound"]["advantage"] is None


def test_audit_counts_duplicates_on_constructed_split(prepared_iot23, tmp_path):
    """Seven benign test rows copy training rows; 30 are distinct and unseen."""
    folder = _copy_dataset(prepared_iot23, tmp_path / "dataset")
    benign = prepared_iot23.classes.index(config.BENIGN_CLASS)
    train = prepared_iot23.split("train")
    test = prepared_iot23.split("test")
    train_benign = train.features[train.labels == benign]
    unseen = np.flatnonzero(
        (test.labels == benign) & ~rows_in(test.features, train_benign)
    )
    _, first = np.unique(test.features[unseen], axis=0, return_index=True)
    unseen = unseen[np.sort(first)]
    malicious = np.flatnonzero(test.labels != benign)
    copied = pq.read_table(prepared_iot23.root / "train.parquet").take(
        np.flatnonzero(train.labels == benign)[:7]
    )
    kept = pq.read_table(prepared_iot23.root / "test.parquet").take(
        np.concatenate([unseen[:30], malicious[:20]])
    )
    pq.write_table(pa.concat_tables([copied, kept]), folder / "test.parquet")
    # audit accepts only the dataset a bundle was trained on, split files
    # included, so the model is trained on the constructed dataset.
    autoencoder = train_bundle(
        load_prepared(folder), tmp_path / "ae", model="ae", epochs=2
    )

    result = audit_bundle(autoencoder, folder, samples=1000, seed=3)

    assert result["non_member_population_rows"] == 37
    assert result["member_population_rows"] == len(train_benign)
    assert result["members"] == 37
    assert result["non_members"] == 37
    assert result["per_class"] == {config.BENIGN_CLASS: 37}
    duplicates = result["duplicates"]
    assert duplicates["non_members_matching_training_features"] == 7
    assert duplicates["fraction"] == pytest.approx(7 / 37)
    unique = result["unique_rows"]
    assert unique["non_members"] == 30
    assert 0 < unique["members"] <= 37
    assert 0 <= unique["roc_auc"] <= 1
    # 37 non-members are too few for a TPR at 1% or 0.1% FPR.
    assert result["tpr_at_fpr"] == {"0.01": None, "0.001": None}


def test_audit_classifier_sample_per_class(classifier, prepared_iot23):
    test_counts = np.bincount(
        prepared_iot23.split("test").labels, minlength=len(prepared_iot23.classes)
    )

    result = audit_bundle(classifier, samples=600, seed=1)

    assert result["members"] == result["non_members"]
    assert 0 < result["members"] <= 600
    assert sum(result["per_class"].values()) == result["members"]
    for name, count in result["per_class"].items():
        assert count <= test_counts[prepared_iot23.classes.index(name)], name
    assert result["member_population_rows"] == len(prepared_iot23.split("train"))
    assert result["dataset"] == str(prepared_iot23.root.resolve())
    assert 0 <= result["advantage"] <= 1
    assert 0 <= result["roc_auc"] <= 1


def test_audit_records_membership(autoencoder):
    before = load_bundle(autoencoder.root).manifest

    result = audit_bundle(autoencoder.root, samples=400, seed=2)

    manifest = load_bundle(autoencoder.root).manifest
    assert manifest["membership"] == json.loads(json.dumps(result))
    assert manifest["metrics"] == before["metrics"]
    assert manifest["files"] == before["files"]
    assert manifest["membership"]["seed"] == 2
    assert manifest["membership"]["samples"] == 400
    assert manifest["membership"]["score"] == "minus the reconstruction error"


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_audit_single_class_classifier(iot23, tmp_path, epsilon):
    from edgedp.data.prepare import prepare_dataset

    # Every flow of this capture is Benign.
    dataset = prepare_dataset(
        [iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"],
        tmp_path / "benign",
    )
    assert dataset.classes == ["Benign"]
    bundle = train_bundle(
        dataset, tmp_path / "ff", epsilon=epsilon, epochs=1, batch_size=32
    )

    result = audit_bundle(bundle, samples=100, seed=0)

    assert result["members"] == 100
    assert result["roc_auc"] == 0.5
    assert result["advantage"] == 0.0
    assert result["unique_rows"]["roc_auc"] == 0.5
    assert load_bundle(bundle.root).manifest["membership"]["roc_auc"] == 0.5


def test_audit_rejects_other_training_split(classifier, prepared_iot23, tmp_path):
    folder = _copy_dataset(prepared_iot23, tmp_path / "smaller")
    _rewrite_split(folder, "train", np.arange(len(prepared_iot23.split("train")) - 1))

    with pytest.raises(BundleError, match="pass the dataset it was trained on"):
        audit_bundle(classifier, folder)


def test_audit_rejects_other_split_seed(classifier, resplit_iot23):
    before = (classifier.root / "bundle.json").read_bytes()

    with pytest.raises(BundleError, match="split files differ.*omit --data"):
        audit_bundle(classifier, resplit_iot23, samples=50)

    assert (classifier.root / "bundle.json").read_bytes() == before


def test_audit_rejects_dataset_prepared_again(
    classifier, prepared_iot23, resplit_iot23, tmp_path
):
    # A bundle whose recorded dataset folder is then prepared again in place
    # with another split seed, and audited without --data.
    folder = _copy_dataset(prepared_iot23, tmp_path / "dataset")
    shutil.copytree(classifier.root, tmp_path / "ff")
    bundle = load_bundle(tmp_path / "ff")
    recorded = {**bundle.manifest["dataset"], "path": str(folder)}
    add_files(bundle, {}, {"dataset": recorded})
    audit_bundle(tmp_path / "ff", samples=50)
    for split in ("train", "validation", "test"):
        shutil.copy(resplit_iot23.root / f"{split}.parquet", folder)

    with pytest.raises(BundleError, match="prepared again since training"):
        audit_bundle(tmp_path / "ff", samples=50)


def test_audit_rejects_read_only_bundle(classifier, tmp_path, read_only_folder):
    shutil.copytree(classifier.root, tmp_path / "ff")
    read_only_folder(tmp_path / "ff")

    with pytest.raises(OutputError, match="cannot write"):
        audit_bundle(tmp_path / "ff", samples=50)


# The command line.


def _audit(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EDGEDP, "audit", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_audit_prints_and_records(classifier, prepared_iot23):
    done = _audit(
        str(classifier.root),
        "--data",
        str(prepared_iot23.root),
        "--samples",
        "300",
        "--seed",
        "4",
    )

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "ROC-AUC" in output
    assert "no bound (no DP)" in output
    assert "under membership" in output
    stored = load_bundle(classifier.root).manifest["membership"]
    assert stored["samples"] == 300
    assert stored["seed"] == 4
    assert f"{stored['roc_auc']:.4f}" in output
    leftovers = [path.name for path in classifier.root.iterdir()]
    assert not [name for name in leftovers if name.endswith(".tmp")], leftovers


def _another_encoder(dataset, folder: Path) -> Path:
    _copy_dataset(dataset, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["encoder_version"] = "0-other"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("samples 0", "Invalid value for '--samples'"),
        ("samples 1", "1 is below the minimum of 100"),
        ("missing bundle", "is not a bundle (bundle.json not found)"),
        ("another encoder", "was encoded with feature encoder 0-other"),
        ("another split", "split files differ"),
    ],
)
def test_cli_audit_rejects(
    case, message, classifier, prepared_iot23, resplit_iot23, tmp_path
):
    bundle = str(classifier.root)
    data = str(prepared_iot23.root)
    if case.startswith("samples"):
        arguments = [bundle, "--data", data, "--samples", case.split()[1]]
    elif case == "missing bundle":
        arguments = [str(tmp_path / "no-bundle"), "--data", data]
    elif case == "another split":
        arguments = [bundle, "--data", str(resplit_iot23.root)]
    else:
        arguments = [
            bundle,
            "--data",
            str(_another_encoder(prepared_iot23, tmp_path / "d")),
        ]
    before = (classifier.root / "bundle.json").read_bytes()

    done = _audit(*arguments)

    assert done.returncode == 2, done.stdout + done.stderr
    assert message in " ".join((done.stdout + done.stderr).split())
    assert (classifier.root / "bundle.json").read_bytes() == before


# The report section, from bundles audited here.


def test_report_section_quotes_audits(classifier, autoencoder):
    for number, bundle in enumerate((classifier, autoencoder)):
        audit_bundle(bundle, samples=500, seed=number)
    manifests = []
    for bundle in (classifier, autoencoder):
        manifest = load_bundle(bundle.root).manifest
        manifest["name"] = bundle.root.name
        manifests.append(manifest)

    rows = collect_membership(manifests)
    text = "\n".join(_membership_section(rows))

    assert [row["model"] for row in rows] == ["classifier", "autoencoder"]
    assert "## 6. Membership inference" in text
    for row, manifest in zip(rows, manifests, strict=True):
        result = manifest["membership"]
        assert row["metrics"]["roc_auc"]["values"] == [result["roc_auc"]]
        assert row["metrics"]["advantage"]["values"] == [result["advantage"]]
        assert "bound_advantage" not in row["metrics"]
        (line,) = [
            line for line in text.splitlines() if line.startswith(f"| {row['model']}")
        ]
        assert f"| {result['roc_auc']:.4f} |" in line
        assert f"| {result['advantage']:.4f} |" in line
        assert "| no bound | no bound |" in line
    assert "TPR at 0.1% FPR is not reported" in text
    assert "lower bound on leakage for this one attack" in text


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_audit_seed_out_of_range(tmp_path, seed):
    from typer.testing import CliRunner

    from edgedp.cli import app, membership  # noqa: F401  (registers `audit`)

    result = CliRunner().invoke(app, ["audit", str(tmp_path), "--seed", seed])

    assert result.exit_code == 2
    assert "Invalid value for '--seed'" in result.output
