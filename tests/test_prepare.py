"""`prepare_dataset` and the `inspect` / `prepare` commands on real IoT-23 logs."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from edgedp import config, features
from edgedp.data.prepare import PrepareError, prepare_dataset
from edgedp.data.sources import FlowLogError
from edgedp.dataset import SPLITS, load_prepared

CSV_20_1 = "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv"
BLANK_20_1 = "variants/CTU-IoT-Malware-Capture-20-1.blank-markers.csv"
SUBSET_TSV = "variants/CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv"


@pytest.fixture(scope="module")
def prepared(iot23, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    inputs = [iot23 / "zeek", iot23 / CSV_20_1, iot23 / BLANK_20_1]
    return prepare_dataset(inputs, out, class_mapping={"C&C-*": "C&C"}, seed=3)


def test_layout_and_contract(prepared):
    manifest = prepared.manifest
    names = features.feature_names("extended")

    assert sorted(p.name for p in prepared.root.iterdir()) == [
        "dataset.json",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    schema = pq.read_schema(prepared.root / "train.parquet")
    assert schema.names == ["uid", "ts", "source", "label", "label_index", *names]
    assert str(schema.field("ts").type) == "double"
    assert str(schema.field("label_index").type) == "int64"
    assert {str(schema.field(n).type) for n in names} == {"float"}
    assert manifest["encoder_version"] == features.ENCODER_VERSION
    assert manifest["feature_names"] == names
    assert manifest["split"] == {
        "method": "random",
        "fractions": config.SPLIT_FRACTIONS,
        "seed": 3,
    }
    assert manifest["edgedp_version"]


def test_classes_and_counts(prepared):
    manifest = prepared.manifest

    # Okiru and Attack occur in none of these files, so they are dropped.
    assert prepared.classes == ["Benign", "PartOfAHorizontalPortScan", "DDoS", "C&C"]
    assert set(manifest["dropped_classes"]) == {"Okiru", "Attack"}
    assert manifest["excluded"] == {"FileDownload": 3}
    assert manifest["duplicates_dropped"] == 3209
    totals = {
        name: sum(manifest["splits"][s]["classes"][name] for s in SPLITS)
        for name in prepared.classes
    }
    assert totals == {
        "Benign": 1923 + 4420 + 452 + 1374 + 3193,
        "PartOfAHorizontalPortScan": 122,
        "DDoS": 14394,
        "C&C": 6706 + 3 + 16,
    }


def test_random_split_is_stratified(prepared):
    counts = prepared.manifest["splits"]

    for name in prepared.classes:
        total = sum(counts[s]["classes"][name] for s in SPLITS)
        for split, fraction in config.SPLIT_FRACTIONS.items():
            assert abs(counts[split]["classes"][name] - fraction * total) <= 1


def test_splits_match_manifest(prepared):
    seen = set()
    for name in SPLITS:
        split = prepared.split(name)
        counts = np.bincount(split.labels, minlength=len(prepared.classes))

        assert len(split) == prepared.manifest["splits"][name]["rows"]
        assert counts.tolist() == list(
            prepared.manifest["splits"][name]["classes"].values()
        )
        assert np.isfinite(split.features).all()
        assert split.features.min() >= 0.0
        assert split.features.max() <= 1.0
        seen |= set(split.uids)
    assert len(seen) == sum(prepared.manifest["splits"][s]["rows"] for s in SPLITS)


def test_inputs_recorded(prepared, iot23):
    inputs = {
        entry["path"].split("/")[-1]: entry for entry in prepared.manifest["inputs"]
    }

    entry = inputs["CTU-IoT-Malware-Capture-42-1.conn.log.labeled"]
    assert entry["format"] == "zeek-tsv"
    assert entry["rows_read"] == 4426
    assert entry["rows_skipped"]["total"] == 0
    assert entry["labels"] == {"Benign": 4420, "Malicious": 6}
    blank = inputs["CTU-IoT-Malware-Capture-20-1.blank-markers.csv"]
    assert blank["duplicates_dropped"] == 3209


def test_same_seed_same_split(iot23, tmp_path):
    inputs = [iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"]
    options = {"classes": ["Benign"], "seed": 7}

    first = prepare_dataset(inputs, tmp_path / "a", **options)
    second = prepare_dataset(inputs, tmp_path / "b", **options)
    other = prepare_dataset(inputs, tmp_path / "c", classes=["Benign"], seed=8)

    for name in SPLITS:
        uids = list(first.split(name).uids)
        assert uids == list(second.split(name).uids)
    assert list(first.split("test").uids) != list(other.split("test").uids)


def test_capture_split_keeps_files_whole(iot23, tmp_path):
    dataset = prepare_dataset(
        [iot23 / "zeek"],
        tmp_path / "capture",
        classes=["Benign"],
        split="capture",
        feature_set="paper",
    )

    by_split = {}
    for name in SPLITS:
        table = pq.read_table(dataset.root / f"{name}.parquet", columns=["source"])
        by_split[name] = set(table.column("source").to_pylist())
    assert sum(len(files) for files in by_split.values()) == 4
    assert all(by_split.values())
    recorded = {entry["split"] for entry in dataset.manifest["inputs"]}
    assert recorded == set(SPLITS)
    assert dataset.feature_names == features.feature_names("paper")


def test_too_small_class_dropped(iot23, tmp_path, caplog):
    dataset = prepare_dataset(
        [iot23 / SUBSET_TSV],
        tmp_path / "small",
        classes=["Benign", "PartOfAHorizontalPortScan", "DDoS"],
    )

    assert dataset.classes == ["Benign", "DDoS"]
    assert dataset.manifest["dropped_classes"]["PartOfAHorizontalPortScan"] == {
        "train": 1,
        "validation": 0,
        "test": 1,
    }
    assert "dropping class PartOfAHorizontalPortScan" in caplog.text


def test_max_rows_per_file(iot23, tmp_path):
    dataset = prepare_dataset(
        [iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"],
        tmp_path / "sample",
        max_rows_per_file=300,
    )

    assert sum(dataset.manifest["splits"][s]["rows"] for s in SPLITS) == 300


def test_no_matching_class_is_error(iot23, tmp_path):
    with pytest.raises(PrepareError, match="no flow of the classes Okiru"):
        prepare_dataset(
            [iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"],
            tmp_path / "none",
            classes=["Okiru"],
        )

    assert list(tmp_path.iterdir()) == []


def test_unlabeled_log_is_error(iot23, tmp_path):
    lines = (iot23 / CSV_20_1).read_text().splitlines()
    header = lines[0].split(",")[:-2]
    rows = [",".join(line.split(",")[:-2]) for line in lines[1:]]
    path = tmp_path / "conn.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")

    with pytest.raises(PrepareError, match="has no labels"):
        prepare_dataset([path], tmp_path / "out")


def test_failure_leaves_no_folder(iot23, tmp_path):
    damaged = tmp_path / "logs" / "late.conn.log"
    damaged.parent.mkdir()
    source = (iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled").read_text()
    # A second header block whose #fields line is lost: readable header,
    # then data the reader cannot place, found only while reading.
    damaged.write_text(source + "#separator \\x09\n" + source.split("\n")[9] + "\n")
    out = tmp_path / "out"

    with pytest.raises(FlowLogError, match="data before any #fields line"):
        prepare_dataset([iot23 / "zeek", damaged.parent], out)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_existing_output_needs_overwrite(prepared):
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_dataset([prepared.root], prepared.root)


def test_invalid_settings(iot23, tmp_path):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"

    with pytest.raises(PrepareError, match="unknown feature set 'all'"):
        prepare_dataset([path], tmp_path / "x", feature_set="all")
    with pytest.raises(PrepareError, match="unknown split method 'time'"):
        prepare_dataset([path], tmp_path / "x", split="time")
    with pytest.raises(PrepareError, match="classes are repeated: Benign"):
        prepare_dataset([path], tmp_path / "x", classes=["Benign", "benign"])


def _edgedp(*args):
    command = [sys.executable, "-c", "from edgedp.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_prepare_and_inspect(iot23, tmp_path):
    out = tmp_path / "cli"

    prepared = _edgedp(
        "prepare",
        str(iot23 / "variants" / "CTU-Honeypot-Capture-4-1.noheader-merged-label.csv"),
        str(iot23 / SUBSET_TSV),
        "--out",
        str(out),
        "--columns",
        "conn-labeled",
        "--features",
        "paper",
        "--classes",
        "Benign,DDoS,C&C",
        "--map",
        "C&C-*=C&C",
    )
    inspected = _edgedp("inspect", str(iot23 / "variants"))

    assert prepared.returncode == 0, prepared.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["classes"] == ["Benign", "DDoS", "C&C"]
    assert manifest["inputs"][0]["rows_skipped"]["total"] == 1
    assert load_prepared(out).feature_names == features.feature_names("paper")
    assert inspected.returncode == 1
    assert "noheader-merged-label.csv" in inspected.stderr
    assert "--columns conn-labeled" in inspected.stderr
    assert "rows read" in inspected.stderr


def test_cli_rejects_bad_mapping(tmp_path):
    result = _edgedp(
        "prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--map", "C&C"
    )

    assert result.returncode == 2
    assert "PATTERN=CLASS" in result.stderr


def test_unreadable_file_in_folder_skipped(iot23, tmp_path):
    out = tmp_path / "dataset"
    headerless = (
        iot23 / "variants" / "CTU-Honeypot-Capture-4-1.noheader-merged-label.csv"
    )

    dataset = prepare_dataset([iot23 / "variants"], out)

    rejected = dataset.manifest["rejected"]
    assert [entry["path"] for entry in rejected] == [str(headerless.resolve())]
    assert "--columns" in rejected[0]["reason"]
    assert len(dataset.manifest["inputs"]) == 2


def test_unreadable_named_file_is_error(iot23, tmp_path):
    headerless = (
        iot23 / "variants" / "CTU-Honeypot-Capture-4-1.noheader-merged-label.csv"
    )

    with pytest.raises(FlowLogError, match="no header row"):
        prepare_dataset([headerless, iot23 / CSV_20_1], tmp_path / "dataset")


def test_excluded_counts_each_flow_once(iot23, tmp_path):
    inputs = [iot23 / CSV_20_1, iot23 / BLANK_20_1]

    dataset = prepare_dataset(inputs, tmp_path / "dataset")

    assert dataset.manifest["excluded"] == {"C&C-Torii": 16}
    assert dataset.manifest["duplicates_dropped"] == 3193


def test_absent_classes_and_single_class_warned(iot23, tmp_path, caplog):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"

    dataset = prepare_dataset([honeypot], tmp_path / "benign")

    assert dataset.classes == ["Benign"]
    assert "dropping class Okiru: no input flow has this class" in caplog.text
    assert "only class Benign is left" in caplog.text
