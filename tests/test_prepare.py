"""`prepare_dataset` and the `inspect` / `prepare` commands on real IoT-23 logs."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from edgedp import config, features, zeek
from edgedp.atomic import OutputError
from edgedp.data import splits
from edgedp.data.prepare import PrepareError, prepare_dataset
from edgedp.data.sources import FlowLogError
from edgedp.dataset import SPLITS, load_prepared

CSV_20_1 = "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv"
BLANK_20_1 = "variants/CTU-IoT-Malware-Capture-20-1.blank-markers.csv"
SUBSET_TSV = "variants/CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv"
HEADERLESS = "variants/CTU-Honeypot-Capture-4-1.noheader-merged-label.csv"


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
        "fingerprint.key",
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


def _write_zeek_subset(source, path, keep, count):
    """Write the header of a Zeek log and its first `count` rows that `keep` takes."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as handle:
        lines = handle.read().splitlines()
    header = [line for line in lines[:8] if line.startswith("#")]
    rows = [line for line in lines if not line.startswith("#") and keep(line)]
    path.write_text("\n".join(header + rows[:count]) + "\n")
    return path


def test_all_classes_too_small_random(iot23, tmp_path):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    two = _write_zeek_subset(honeypot, tmp_path / "two.conn.log", bool, 2)

    with pytest.raises(PrepareError) as caught:
        prepare_dataset([two], tmp_path / "out")

    message = str(caught.value)
    assert "too small for the random split" in message
    assert "Benign 2 flows (train 1, validation 0, test 1)" in message
    assert "no flows of PartOfAHorizontalPortScan, Okiru" in message
    assert "add flows of these classes" in message
    assert "--split random" not in message
    assert "{" not in message


def test_all_classes_too_small_capture(iot23, tmp_path):
    capture = iot23 / "zeek" / "CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz"
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    inputs = [
        _write_zeek_subset(
            capture, tmp_path / "ddos.conn.log", lambda line: "DDoS" in line, 30
        ),
        _write_zeek_subset(
            capture, tmp_path / "cc.conn.log", lambda line: "C&C" in line, 20
        ),
        _write_zeek_subset(honeypot, tmp_path / "benign.conn.log", bool, 10),
    ]

    with pytest.raises(PrepareError) as caught:
        prepare_dataset(inputs, tmp_path / "out", split="capture")

    message = str(caught.value)
    assert "too small for the capture split" in message
    assert "DDoS 30 flows (train 30, validation 0, test 0)" in message
    assert "add input files with these classes or use --split random" in message
    assert "{" not in message


def test_max_rows_per_file(iot23, tmp_path):
    dataset = prepare_dataset(
        [iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"],
        tmp_path / "sample",
        max_rows_per_file=300,
    )

    assert sum(dataset.manifest["splits"][s]["rows"] for s in SPLITS) == 300


def test_class_cap_keeps_every_class(iot23, tmp_path):
    capped = prepare_dataset([iot23], tmp_path / "capped", max_rows_per_class=2000)
    again = prepare_dataset([iot23], tmp_path / "again", max_rows_per_class=2000)
    first_rows = prepare_dataset([iot23], tmp_path / "first", max_rows_per_file=2000)

    manifest = capped.manifest
    totals = {
        name: sum(manifest["splits"][s]["classes"][name] for s in SPLITS)
        for name in capped.classes
    }
    assert totals == {
        "Benign": 2000,
        "PartOfAHorizontalPortScan": 122,
        "Okiru": 1000,
        "DDoS": 2000,
        "C&C": 2000,
        "Attack": 2000,
    }
    assert manifest["rows"] == {
        "read": 123386,
        "duplicates_dropped": 54490,
        "excluded": 867,
        "over_class_cap": 58907,
        "in_dropped_classes": 0,
        "kept": 9122,
    }
    assert manifest["max_rows_per_class"] == 2000
    assert sum(entry["rows_over_class_cap"] for entry in manifest["inputs"]) == 58907
    for name in SPLITS:
        assert list(capped.split(name).uids) == list(again.split(name).uids)
    # The first rows of the files contain only three of the classes.
    assert first_rows.classes == ["Benign", "DDoS", "C&C"]


def _train_uids(dataset) -> set[str]:
    table = pq.read_table(dataset.root / "train.parquet", columns=["uid"])
    return set(table.column("uid").to_pylist())


@pytest.mark.parametrize(
    ("split", "cap", "most_changed"),
    [
        ("independent", None, 1),
        ("independent", 300, 2),
        ("random", None, 2),
        ("random", 300, 4),
    ],
)
def test_one_more_line_moves_few_flows(iot23, tmp_path, split, cap, most_changed):
    source = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    lines = source.read_text().splitlines()
    extra = lines[8].replace("CJAF5z3MDFg4XVDXB", "CZZZZZZZZZZZZZZZZ", 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "conn.log").write_text("\n".join(lines) + "\n")
    more = [*lines[:9], extra, *lines[9:]]
    (tmp_path / "b" / "conn.log").write_text("\n".join(more) + "\n")
    options = {"classes": ["Benign"], "max_rows_per_class": cap, "split": split}

    before = prepare_dataset([tmp_path / "a"], tmp_path / "before", **options)
    after = prepare_dataset([tmp_path / "b"], tmp_path / "after", **options)

    changed = _train_uids(before) ^ _train_uids(after)
    assert len(changed) <= most_changed
    assert changed <= {"CZZZZZZZZZZZZZZZZ", *_train_uids(before)}


def test_rerun_keeps_fingerprint_key(iot23, tmp_path):
    source = [iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"]
    first = prepare_dataset(source, tmp_path / "out", classes=["Benign"])
    key = first.fingerprint_key

    again = prepare_dataset(
        source, tmp_path / "out", classes=["Benign"], overwrite=True
    )
    elsewhere = prepare_dataset(source, tmp_path / "other", classes=["Benign"])

    assert key is not None
    assert len(key) == 32
    assert again.fingerprint_key == key
    assert elsewhere.fingerprint_key != key


def test_flow_draws_fixed_by_seed():
    split_draws, cap_draws = splits.flow_draws(["CJAF5z3MDFg4XVDXB"], [1.5], 7)
    again, _ = splits.flow_draws(["CJAF5z3MDFg4XVDXB"], [1.5], 7)
    other, _ = splits.flow_draws(["CJAF5z3MDFg4XVDXB"], [1.5], 8)

    assert split_draws.tolist() == again.tolist()
    assert split_draws.tolist() != other.tolist()
    assert split_draws.tolist() != cap_draws.tolist()
    assert 0 <= split_draws[0] < 1


def test_tiny_class_cap_error_names_cap(iot23, tmp_path):
    with pytest.raises(PrepareError, match=r"raise --max-rows-per-class \(now 1\)"):
        prepare_dataset(
            [iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"],
            tmp_path / "tiny",
            max_rows_per_class=1,
        )


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


def _write_header_only(iot23, folder, kind):
    """Write a labeled log of `kind` that has no data rows.

    `kind` is zeek, csv, or csv-twice: a CSV export whose header row is
    repeated, as when two header-only exports are joined.
    """
    if kind == "zeek":
        source = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
        lines = source.read_text().splitlines(keepends=True)
        path = folder / "empty.conn.log.labeled"
        path.write_text("".join(line for line in lines if line.startswith("#")))
        return path
    header = (iot23 / CSV_20_1).read_text().splitlines()[0] + "\n"
    path = folder / "empty.csv"
    path.write_text(header * (2 if kind == "csv-twice" else 1))
    return path


@pytest.mark.parametrize("kind", ["zeek", "csv", "csv-twice"])
def test_header_only_file_in_folder(iot23, tmp_path, kind):
    logs = tmp_path / "logs"
    logs.mkdir()
    empty = _write_header_only(iot23, logs, kind)
    (logs / "conn.csv").write_bytes((iot23 / CSV_20_1).read_bytes())

    dataset = prepare_dataset([logs], tmp_path / "out")

    inputs = {entry["path"]: entry for entry in dataset.manifest["inputs"]}
    assert dataset.manifest["rejected"] == []
    assert inputs[str(empty.resolve())]["rows_read"] == 0
    assert dataset.manifest["rows"]["read"] == 3209


@pytest.mark.parametrize("kind", ["zeek", "csv", "csv-twice"])
def test_header_only_file_named_alone(iot23, tmp_path, kind):
    empty = _write_header_only(iot23, tmp_path, kind)

    with pytest.raises(PrepareError, match="the input files have no data rows"):
        prepare_dataset([empty], tmp_path / "out")

    assert sorted(p.name for p in tmp_path.iterdir()) == [empty.name]


def test_reordered_header_row_set_aside(iot23, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    header, *rows = (iot23 / CSV_20_1).read_text().splitlines()
    names = header.split(",")
    names[2], names[3] = names[3], names[2]
    joined = logs / "joined.csv"
    joined.write_text("\n".join([header, *rows[:10], ",".join(names)]) + "\n")
    (logs / "conn.csv").write_bytes((iot23 / CSV_20_1).read_bytes())

    dataset = prepare_dataset([logs], tmp_path / "out")

    (rejected,) = dataset.manifest["rejected"]
    assert rejected["path"] == str(joined.resolve())
    assert f"{joined.resolve()}:12" in rejected["reason"]
    assert dataset.manifest["rows"]["read"] == 3209


def test_failure_leaves_no_folder(iot23, tmp_path):
    damaged = tmp_path / "logs" / "late.conn.log"
    damaged.parent.mkdir()
    source = (iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled").read_text()
    # A second header block whose #fields line is lost: readable header,
    # then data the reader cannot place, found only while reading.
    damaged.write_text(source + "#separator \\x09\n" + source.split("\n")[9] + "\n")
    out = tmp_path / "out"

    with pytest.raises(FlowLogError, match="data before any #fields line"):
        prepare_dataset([iot23 / "zeek", damaged], out)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_existing_output_needs_overwrite(prepared):
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_dataset([prepared.root], prepared.root)


def test_overwrite_keeps_folder_of_logs(iot23, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    source = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    copy = logs / source.name
    copy.write_bytes(source.read_bytes())

    with pytest.raises(FileExistsError, match="has no dataset.json"):
        prepare_dataset([logs], logs, overwrite=True)

    assert copy.read_bytes() == source.read_bytes()


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
        "--max-rows-per-class",
        "500",
    )
    inspected = _edgedp("inspect", str(iot23 / "variants"))

    assert prepared.returncode == 0, prepared.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["classes"] == ["Benign", "DDoS", "C&C"]
    totals = [
        sum(manifest["splits"][s]["classes"][name] for s in SPLITS)
        for name in manifest["classes"]
    ]
    assert totals == [500, 500, 310]
    assert "over the class cap: 1639" in " ".join(prepared.stderr.split())
    assert manifest["inputs"][0]["rows_skipped"]["total"] == 1
    assert load_prepared(out).feature_names == features.feature_names("paper")
    assert inspected.returncode == 1
    assert "noheader-merged-label.csv" in inspected.stderr
    assert "--columns conn-labeled" in inspected.stderr
    assert "rows read" in inspected.stderr


def test_cli_inspect_folder_total(iot23):
    plain = _edgedp("inspect", str(iot23 / "variants"))
    columns = _edgedp("inspect", str(iot23 / "variants"), "--columns", "conn-labeled")

    assert plain.returncode == 1
    assert "total: 3 files, 1 rejected; rows read: 5709; lines skipped: 0" in (
        " ".join(plain.stderr.split())
    )
    assert columns.returncode == 0
    assert "total: 3 files; rows read: 6160; lines skipped: 1" in (
        " ".join(columns.stderr.split())
    )


def test_default_feature_set_documented(iot23, tmp_path):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    docs = Path(__file__).resolve().parent.parent / "docs" / "data.md"

    result = _edgedp("prepare", str(honeypot), "--out", str(tmp_path / "out"))

    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["feature_set"] == features.EXTENDED
    assert f"The default is `{features.EXTENDED}`." in docs.read_text()


def test_one_flow_class_message_singular(iot23, tmp_path):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    single_flow = _write_zeek_subset(honeypot, tmp_path / "one.conn.log", bool, 1)

    with pytest.raises(PrepareError) as caught:
        prepare_dataset([single_flow], tmp_path / "out")

    message = str(caught.value)
    assert "Benign 1 flow (" in message
    assert "1 flows" not in message


def test_cli_prepare_nothing_excluded(iot23, tmp_path):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"

    result = _edgedp("prepare", str(honeypot), "--out", str(tmp_path / "out"))

    output = " ".join(result.stderr.split())
    assert result.returncode == 0, result.stderr
    assert "excluded: 0;" in output
    assert "(-)" not in output


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

    # The second file repeats every flow of the first, so all 3209 of its
    # rows are duplicates, the 16 C&C-Torii rows included.
    manifest = dataset.manifest
    assert manifest["excluded"] == {"C&C-Torii": 16}
    assert manifest["duplicates_dropped"] == 3209
    assert manifest["rows"] == {
        "read": 6418,
        "duplicates_dropped": 3209,
        "excluded": 16,
        "over_class_cap": 0,
        "in_dropped_classes": 0,
        "kept": 3193,
    }
    blank = manifest["inputs"][1]
    assert blank["duplicates_dropped"] == 3209
    assert blank["rows_excluded"] == 0


def test_row_counts_add_up(iot23, tmp_path):
    dataset = prepare_dataset([iot23], tmp_path / "dataset")

    manifest = dataset.manifest
    assert manifest["rows"] == {
        "read": 123386,
        "duplicates_dropped": 54490,
        "excluded": 867,
        "over_class_cap": 0,
        "in_dropped_classes": 0,
        "kept": 68029,
    }
    assert manifest["excluded"] == {
        "C&C-HeartBeat-Attack": 834,
        "C&C-Torii": 16,
        "C&C-FileDownload": 14,
        "FileDownload": 3,
    }
    assert [manifest["splits"][s]["rows"] for s in SPLITS] == [34015, 13605, 20409]
    for entry in manifest["inputs"]:
        parts = (
            entry["duplicates_dropped"]
            + entry["rows_excluded"]
            + entry["rows_over_class_cap"]
            + entry["rows_in_dropped_classes"]
            + entry["rows_kept"]
        )
        assert parts == entry["rows_read"], entry["path"]
    blank = [e for e in manifest["inputs"] if e["path"].endswith(BLANK_20_1)]
    assert blank[0]["duplicates_dropped"] == 3209


def test_dropped_class_rows_counted(iot23, tmp_path):
    dataset = prepare_dataset(
        [iot23 / SUBSET_TSV],
        tmp_path / "small",
        classes=["Benign", "PartOfAHorizontalPortScan", "DDoS"],
    )

    rows = dataset.manifest["rows"]
    assert rows["in_dropped_classes"] == 2
    assert rows["excluded"] == 310
    assert rows["kept"] == sum(dataset.manifest["splits"][s]["rows"] for s in SPLITS)
    assert rows["read"] == sum(v for k, v in rows.items() if k != "read")


def test_edgedp_outputs_in_folder_ignored(iot23, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    (data / honeypot.name).write_bytes(honeypot.read_bytes())
    first = prepare_dataset([data], data / "dataset", classes=["Benign"])
    lone = data / "report.json"
    lone.write_text((first.root / "dataset.json").read_text())
    lookalike = data / "notes"
    lookalike.mkdir()
    (lookalike / "dataset.json").write_text("{}\n")
    (lookalike / honeypot.name).write_bytes(honeypot.read_bytes())

    second = prepare_dataset([data], tmp_path / "again", classes=["Benign"])

    inputs = [entry["path"] for entry in second.manifest["inputs"]]
    assert inputs == [
        str((data / honeypot.name).resolve()),
        str((lookalike / honeypot.name).resolve()),
    ]
    rejected = second.manifest["rejected"]
    assert [entry["path"] for entry in rejected] == [
        str((lookalike / "dataset.json").resolve()),
        str(lone.resolve()),
    ]
    assert "lacks the conn.log fields" in rejected[0]["reason"]
    assert "is not a flow log" in rejected[1]["reason"]
    assert second.manifest["skipped_folders"] == [
        {
            "path": str(data / "dataset"),
            "marker": "dataset.json",
            "kind": "prepared dataset",
        }
    ]
    assert second.manifest["rows"]["read"] == 2 * 1374


def _truncated_gzip(source, path):
    compressed = gzip.compress(source.read_bytes())
    path.write_bytes(compressed[: len(compressed) // 2])


def test_damaged_gzip_in_folder_set_aside(iot23, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("CTU-Honeypot-Capture-4-1", "CTU-Honeypot-Capture-5-1"):
        log = iot23 / "zeek" / f"{name}.conn.log.labeled"
        (data / log.name).write_bytes(log.read_bytes())
    damaged = data / "damaged.conn.log.labeled.gz"
    _truncated_gzip(
        iot23 / "zeek" / "CTU-IoT-Malware-Capture-42-1.conn.log.labeled", damaged
    )

    # Small blocks make the damaged file yield rows before its damage.
    dataset = prepare_dataset(
        [data], tmp_path / "dataset", classes=["Benign"], chunk_bytes=1 << 14
    )

    manifest = dataset.manifest
    assert [entry["path"] for entry in manifest["rejected"]] == [str(damaged.resolve())]
    assert "is damaged after line" in manifest["rejected"][0]["reason"]
    assert len(manifest["inputs"]) == 2
    assert manifest["rows"]["read"] == 452 + 1374
    assert manifest["rows"]["kept"] == 452 + 1374
    sources = set()
    for name in SPLITS:
        table = pq.read_table(dataset.root / f"{name}.parquet", columns=["source"])
        sources |= set(table.column("source").to_pylist())
    assert damaged.name not in sources


def test_damaged_gzip_named_is_error(iot23, tmp_path):
    damaged = tmp_path / "damaged.conn.log.labeled.gz"
    _truncated_gzip(
        iot23 / "zeek" / "CTU-IoT-Malware-Capture-42-1.conn.log.labeled", damaged
    )

    with pytest.raises(FlowLogError, match="is damaged after line"):
        prepare_dataset([iot23 / "zeek", damaged], tmp_path / "dataset")

    assert sorted(p.name for p in tmp_path.iterdir()) == [damaged.name]


def test_every_line_skipped_file(iot23, tmp_path):
    headerless = iot23 / HEADERLESS
    conn = list(zeek.CONN_FIELDS)

    with pytest.raises(FlowLogError, match="no rows read, all 452 data lines"):
        prepare_dataset([headerless], tmp_path / "named", columns=conn)
    dataset = prepare_dataset([iot23 / "variants"], tmp_path / "found", columns=conn)

    rejected = dataset.manifest["rejected"]
    assert [entry["path"] for entry in rejected] == [str(headerless.resolve())]
    assert "--columns" in rejected[0]["reason"]


def test_invalid_seed_rejected(iot23, tmp_path):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"

    for seed in (-1, 2**32):
        with pytest.raises(PrepareError, match="seed must be a whole number from 0"):
            prepare_dataset([path], tmp_path / "x", seed=seed)


def test_unwritable_output_rejected(iot23, tmp_path):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    (tmp_path / "file").write_text("a regular file\n")

    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_dataset([path], tmp_path / "file" / "sub" / "dataset")


def test_cli_option_and_output_errors(iot23, tmp_path):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    (tmp_path / "file").write_text("a regular file\n")

    negative = _edgedp(
        "prepare", str(path), "--out", str(tmp_path / "x"), "--seed", "-1"
    )
    unwritable = _edgedp("prepare", str(path), "--out", str(tmp_path / "file" / "sub"))
    skipped = _edgedp("inspect", str(iot23 / HEADERLESS), "--columns", "conn")

    assert negative.returncode == 2
    assert "'--seed'" in negative.stderr
    assert unwritable.returncode == 2
    assert "cannot write" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    assert skipped.returncode == 1
    assert "no rows read" in skipped.stderr


def test_absent_classes_and_single_class_warned(iot23, tmp_path, caplog):
    honeypot = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"

    dataset = prepare_dataset([honeypot], tmp_path / "benign")

    assert dataset.classes == ["Benign"]
    assert "dropping class Okiru: no input flow has this class" in caplog.text
    assert "only class Benign is left" in caplog.text
