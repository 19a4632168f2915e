"""Flow log readers on the real IoT-23 sample files and on damaged copies."""

import gzip
import json
import os
import struct
import threading
import zlib
from collections import Counter
from datetime import UTC, datetime

import polars as pl
import pytest

from edgedp import features, zeek
from edgedp.data import delimited, readers, records, sources
from edgedp.data.inspect import inspect_logs
from edgedp.data.prefetch import prefetch
from edgedp.data.records import LINE
from edgedp.data.sources import FlowLogError

# Rows and label counts of every readable sample file, as its manifest lists
# them (label case and the empty detailed-label spellings are merged, as the
# readers normalise them).
EXPECTED = {
    "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz": (
        "zeek-tsv",
        23145,
        {"Malicious": 21222, "Benign": 1923},
        {"DDoS": 14394, "C&C": 6706, "-": 1923, "PartOfAHorizontalPortScan": 122},
    ),
    "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled": (
        "zeek-tsv",
        4426,
        {"Benign": 4420, "Malicious": 6},
        {"-": 4420, "FileDownload": 3, "C&C-FileDownload": 3},
    ),
    "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled": (
        "zeek-tsv",
        452,
        {"Benign": 452},
        {"-": 452},
    ),
    "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled": (
        "zeek-tsv",
        1374,
        {"Benign": 1374},
        {"-": 1374},
    ),
    "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv": (
        "csv",
        3209,
        {"Benign": 3193, "Malicious": 16},
        {"-": 3193, "C&C-Torii": 16},
    ),
    "csv/CTU-IoT-Malware-Capture-44-1.labeled.csv": (
        "csv",
        237,
        {"Benign": 211, "Malicious": 26},
        {"-": 211, "C&C": 14, "C&C-FileDownload": 11, "DDoS": 1},
    ),
    "variants/CTU-IoT-Malware-Capture-20-1.blank-markers.csv": (
        "csv",
        3209,
        {"Benign": 3193, "Malicious": 16},
        {"-": 3193, "C&C-Torii": 16},
    ),
    "variants/CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv": (
        "tsv",
        2500,
        {"Benign": 1500, "Malicious": 1000},
        {"-": 1500, "DDoS": 688, "C&C": 310, "PartOfAHorizontalPortScan": 2},
    ),
    "mixed/S12_benign-vs-Okiru.csv.gz": (
        "csv",
        21000,
        {"Benign": 19998 + 2, "Malicious": 1000},
        {"-": 20000, "Okiru": 1000},
    ),
    "mixed/S22_benign-vs-Attack.csv.gz": (
        "csv",
        33000,
        {"Benign": 29997 + 3, "Malicious": 3000},
        {"-": 30000, "Attack": 3000},
    ),
    "mixed/S52_benign-vs-CC-HeartBeat-Attack.csv.gz": (
        "csv",
        30834,
        {"Benign": 29997 + 3, "Malicious": 834},
        {"-": 30000, "C&C-HeartBeat-Attack": 834},
    ),
}
HEADERLESS = "variants/CTU-Honeypot-Capture-4-1.noheader-merged-label.csv"


def read(path, **options):
    report = readers.open_report(path, columns=options.pop("columns", None))
    frames = list(readers.read_flows(path, report=report, **options))
    frame = pl.concat(frames) if frames else None
    return report, frame


def test_every_sample_file_is_covered(iot23):
    on_disk = {
        str(path.relative_to(iot23))
        for path in iot23.rglob("*")
        if path.is_file() and path.name != "MANIFEST.md"
    }

    assert on_disk == set(EXPECTED) | {HEADERLESS}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_counts(iot23, name):
    fmt, rows, labels, detailed = EXPECTED[name]

    report, frame = read(iot23 / name)

    assert report.format == fmt
    assert report.rows_read == rows
    assert frame.height == rows
    assert report.skipped.total == 0
    assert dict(report.labels) == labels
    assert dict(report.detailed_labels) == detailed


def test_headerless_rejected_by_default(iot23):
    path = iot23 / HEADERLESS

    with pytest.raises(FlowLogError) as error:
        readers.open_report(path)

    assert path.name in str(error.value)
    assert "no header row" in str(error.value)
    assert "--columns conn-labeled" in str(error.value)


def test_headerless_with_columns(iot23):
    columns = sources.resolve_columns("conn-labeled")

    report, frame = read(iot23 / HEADERLESS, columns=columns)
    _, reference = read(iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled")

    assert report.rows_read == 451
    assert report.skipped.total == 1
    assert report.skipped.examples == [
        f"{(iot23 / HEADERLESS).name}:364: wrong field count: expected 23, found 20"
    ]
    assert dict(report.labels) == {"Benign": 451}
    kept = reference.filter(pl.col("uid") != "CsKIVp4cDCI73tkKll")
    assert frame["uid"].to_list() == kept["uid"].to_list()
    assert frame["ts"].to_list() == kept["ts"].to_list()
    assert frame["duration"].equals(kept["duration"])


def test_blank_markers_match_original(iot23):
    _, original = read(iot23 / "csv" / "CTU-IoT-Malware-Capture-20-1.labeled.csv")
    _, blank = read(
        iot23 / "variants" / "CTU-IoT-Malware-Capture-20-1.blank-markers.csv"
    )

    assert blank.equals(original)
    assert original["service"].null_count() == 2617
    assert original["duration"].null_count() == 885


def test_tsv_export_matches_zeek_log(iot23):
    _, export = read(
        iot23 / "variants" / "CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv"
    )
    _, log = read(iot23 / "zeek" / "CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz")

    shared = export.join(log, on=["uid", "ts"], suffix="_log")

    assert shared.height == 1266
    for name in ("duration", "orig_bytes", "history", "label", "detailed-label"):
        assert shared[name].equals(shared[f"{name}_log"], check_names=False)


def test_empty_set_marker_is_null(iot23):
    _, frame = read(iot23 / "mixed" / "S12_benign-vs-Okiru.csv.gz")

    assert (frame["tunnel_parents"] == zeek.EMPTY).sum() == 0
    assert frame["tunnel_parents"].drop_nulls().str.starts_with("C").all()


def test_small_blocks_give_same_records(iot23):
    path = iot23 / "zeek" / "CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz"

    _, whole = read(path)
    _, blocks = read(path, chunk_bytes=1 << 16)

    assert blocks.equals(whole)


def _fifo_with(path, content):
    os.mkfifo(path)

    def write():
        with open(path, "wb") as handle:
            handle.write(content)

    writer = threading.Thread(target=write)
    writer.start()
    return writer


@pytest.mark.parametrize("kind", ["plain", "gzip", "pipe"])
def test_read_chunks_end_on_line_breaks(tmp_path, kind):
    content = b"".join(b"x" * (i % 23) + b"\n" for i in range(200)) + b"no break"
    path = tmp_path / "lines.log"
    writer = None
    if kind == "plain":
        path.write_bytes(content)
    elif kind == "gzip":
        path.write_bytes(gzip.compress(content))
    else:
        writer = _fifo_with(path, content)

    blocks = list(sources.read_chunks(path, chunk_bytes=16))
    if writer is not None:
        writer.join()

    assert b"".join(block.data for block in blocks) == content
    assert all(block.data.endswith(b"\n") for block in blocks[:-1])
    assert blocks[-1].data.endswith(b"no break")
    assert [block.first_line for block in blocks[1:]] == [
        block.first_line + block.newlines for block in blocks[:-1]
    ]
    assert max(len(block.data) for block in blocks) < 16 + 23


def test_read_chunks_empty_file(tmp_path):
    path = tmp_path / "empty.log"
    path.write_bytes(b"")

    assert list(sources.read_chunks(path)) == []


def test_max_rows(iot23):
    report, frame = read(
        iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled", max_rows=100
    )

    assert frame.height == 100
    assert report.rows_read == 100


@pytest.fixture(scope="module")
def honeypot_lines(iot23):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    return path.read_bytes().split(b"\n")


def test_damaged_lines_are_counted(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:18]
    damaged = list(data)
    damaged[2] = b"\t".join(data[2].split(b"\t")[:10])
    damaged[4] = data[4].replace(b"\t0\t", b"\tzero\t", 1)
    damaged[6] = data[6].replace(b"udp", b"u\xffp", 1)
    path = tmp_path / "damaged.conn.log"
    path.write_bytes(b"\n".join(header + damaged) + b"\n")

    report, frame = read(path)

    assert report.rows_read == 7
    assert frame.height == 7
    assert report.skipped.counts == {
        "wrong field count: expected 23, found 10": 1,
        "unparsable number in missed_bytes": 1,
        "invalid UTF-8": 1,
    }
    assert report.skipped.examples == [
        "damaged.conn.log:11: wrong field count: expected 23, found 10",
        "damaged.conn.log:13: unparsable number in missed_bytes",
        "damaged.conn.log:15: invalid UTF-8",
    ]


PAPER_FIELDS = (*features.input_fields("paper"), "uid", "ts")


@pytest.mark.parametrize(
    "name",
    [
        "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz",
        "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled",
        "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv",
        "variants/CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv",
    ],
)
def test_fields_subset_matches_full_read(iot23, name):
    full_report, full = read(iot23 / name)

    report, subset = read(iot23 / name, fields=PAPER_FIELDS)

    assert subset.columns == [LINE, *records.output_fields(PAPER_FIELDS)]
    assert "label" in subset.columns
    assert "id.orig_h" not in subset.columns
    assert subset.equals(full.select(subset.columns))
    assert report.to_json() == full_report.to_json()


def test_fields_subset_checks_every_line(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:20]
    damaged = list(data)
    # One line too long and one too short keep the block's separator total.
    damaged[1] = data[1] + b"\textra"
    damaged[3] = b"\t".join(data[3].split(b"\t")[:-1])
    # Damage in fields outside the paper feature set's inputs.
    damaged[5] = data[5].replace(b"\t0\t", b"\tzero\t", 1)
    damaged[7] = data[7].replace(b"192.168", b"19\xff.168", 1)
    damaged[9] = b"\t".join([data[9].split(b"\t")[0], b"-", *data[9].split(b"\t")[2:]])
    path = tmp_path / "damaged.conn.log"
    path.write_bytes(b"\n".join(header + damaged) + b"\n")

    full_report, full = read(path)
    report, subset = read(path, fields=PAPER_FIELDS)

    assert full_report.skipped.total == 5
    assert report.skipped.counts == full_report.skipped.counts
    assert report.skipped.examples == full_report.skipped.examples
    assert [line.split(":")[1] for line in report.skipped.examples] == [
        "10",
        "12",
        "14",
        "16",
        "18",
    ]
    assert subset.equals(full.select(subset.columns))


@pytest.mark.parametrize("damaged", [False, True])
def test_fields_subset_numeric_last_column(tmp_path, iot23, damaged):
    lines = (iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv").read_text()
    rows = [line.split(",") for line in lines.splitlines()]
    # Move resp_ip_bytes to the end, where a subset read cannot use it to
    # find short lines.
    moved = [row[:19] + row[20:] + [row[19]] for row in rows]
    if damaged:
        moved[5] = moved[5][:-1]
    path = tmp_path / "numeric-last.csv"
    path.write_text("\n".join(",".join(row) for row in moved) + "\n")

    full_report, full = read(path)
    report, subset = read(path, fields=PAPER_FIELDS)

    assert full_report.skipped.examples == (
        ["numeric-last.csv:6: wrong field count: expected 23, found 22"]
        if damaged
        else []
    )
    assert report.to_json() == full_report.to_json()
    assert subset.equals(full.select(subset.columns))


def test_unknown_field_rejected(iot23):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"

    with pytest.raises(ValueError, match="unknown flow record fields 'bytes'"):
        read(path, fields=["bytes"])


def test_label_tail_markers_are_null(iot23):
    _, frame = read(iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled")

    assert frame["tunnel_parents"].null_count() == frame.height
    assert frame["detailed-label"].null_count() == frame.height
    assert frame["label"].unique().to_list() == ["Benign"]


@pytest.mark.parametrize("fields", [None, PAPER_FIELDS])
def test_clean_logs_take_fast_path(iot23, monkeypatch, fields):
    def line_by_line(*args, **kwargs):
        raise AssertionError("a clean block was parsed line by line")

    monkeypatch.setattr(delimited, "_split_lines", line_by_line)

    for name in ("zeek", "csv"):
        for path in sorted((iot23 / name).iterdir()):
            report, _ = read(path, fields=fields)
            assert report.rows_read == EXPECTED[f"{name}/{path.name}"][1]


def test_prefetch_keeps_order_and_errors():
    def numbers():
        yield from range(50)
        raise FlowLogError("damaged after 50")

    received = []
    with pytest.raises(FlowLogError, match="damaged after 50"):
        for number in prefetch(numbers(), depth=3):
            received.append(number)

    assert received == list(range(50))


def test_prefetch_close_stops_source():
    produced = []
    closed = []

    def numbers():
        try:
            for number in range(1000):
                produced.append(number)
                yield number
        finally:
            closed.append(True)

    items = prefetch(numbers())
    first = next(items)
    items.close()

    assert first == 0
    assert closed == [True]
    assert len(produced) <= 3


def test_error_in_later_block_reaches_caller(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:-2]
    dns = [line.replace(b"#path\tconn", b"#path\tdns") for line in header]
    path = tmp_path / "switched.conn.log"
    path.write_bytes(b"\n".join(header + data + dns + data[:5]) + b"\n")
    report = readers.open_report(path)
    frames = readers.read_flows(path, report=report, chunk_bytes=1 << 12)

    with pytest.raises(FlowLogError, match="starts a Zeek dns log"):
        for _ in frames:
            pass

    assert report.rows_read == len(data)


def test_hash_inside_field_is_data(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:20]
    fields = data[4].split(b"\t")
    fields[7] = b"x#y"
    changed = [*data[:4], b"\t".join(fields), *data[5:]]
    path = tmp_path / "hash.conn.log"
    path.write_bytes(b"\n".join(header + changed) + b"\n")

    report, frame = read(path)

    assert report.skipped.total == 0
    assert frame.height == len(changed)
    assert frame["service"][4] == "x#y"


def test_header_blocks_crlf_and_no_close(tmp_path, honeypot_lines, iot23):
    header, data = honeypot_lines[:8], honeypot_lines[8:-2]
    close = [honeypot_lines[-2]]
    lines = header + data[:100] + close + header + data[100:]
    path = tmp_path / "blocks.conn.log"
    path.write_bytes(b"\r\n".join(lines))

    report, frame = read(path)
    _, reference = read(iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled")

    assert report.skipped.total == 0
    assert frame.drop(LINE).equals(reference.drop(LINE))
    assert frame[LINE][100] == 9 + 100 + 9


def test_gzip_csv_matches_plain(tmp_path, iot23):
    original = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    path = tmp_path / "44-1.csv.gz"
    path.write_bytes(gzip.compress(original.read_bytes()))

    _, plain = read(original)
    _, packed = read(path)

    assert packed.equals(plain)


def _json_line(row: dict, iso: bool) -> str:
    value = {}
    for name, item in row.items():
        if item is None or name == LINE:
            continue
        value[name] = item
    if iso:
        moment = datetime.fromtimestamp(value["ts"], tz=UTC)
        value["ts"] = moment.isoformat().replace("+00:00", "Z")
    for name in ("id.orig_p", "id.resp_p", "orig_pkts"):
        if name in value:
            value[name] = int(value[name])
    return json.dumps(value)


def test_json_matches_tsv(tmp_path, iot23):
    _, reference = read(iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv")
    rows = reference.to_dicts()
    lines = [_json_line(row, iso=index % 2 == 1) for index, row in enumerate(rows)]
    lines.insert(3, "{not json")
    path = tmp_path / "conn.json"
    path.write_text("\n".join(lines) + "\n")

    report, frame = read(path)

    assert report.format == "zeek-json"
    assert report.rows_read == reference.height
    assert report.skipped.examples[0].startswith("conn.json:4: invalid JSON")
    expected = reference.drop(LINE)
    actual = frame.drop(LINE).select(expected.columns)
    assert actual.drop("ts").equals(expected.drop("ts"))
    assert (actual["ts"] - expected["ts"]).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"# Notes\nsome text\n", "is not a flow log"),
        (b"#separator \\x09\n#path\tconn\n1\t2\n", "no #fields line"),
        (b"hello, world\nfoo, bar\n", "is not a flow log"),
        (b"\x00\x01\x02binary", "binary data"),
        (b"ts,uid,proto\n1,C1,tcp\n", "lacks the conn.log fields id.orig_p, id.resp_p"),
        (b"#separator \\x09\n#path\tdns\n#fields\tts\tuid\n", "Zeek dns log"),
    ],
)
def test_not_a_flow_log(tmp_path, content, message):
    path = tmp_path / "input.log"
    path.write_bytes(content)

    with pytest.raises(FlowLogError, match=message) as error:
        readers.open_report(path)

    assert str(path) in str(error.value)


def test_manifest_markdown_rejected(iot23):
    with pytest.raises(FlowLogError, match="MANIFEST.md is not a flow log"):
        readers.open_report(iot23 / "MANIFEST.md")


def test_find_logs_in_folder(iot23):
    found = sources.find_logs([iot23])

    names = Counter(path.suffix for path in found)
    assert len(found) == len(EXPECTED) + 1
    assert all(path.name != "MANIFEST.md" for path in found)
    assert names[".gz"] == 4


def test_gzip_checksum_error_explained(tmp_path, iot23):
    source = (iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled").read_bytes()
    changed = bytearray(source)
    changed[len(changed) // 2] ^= 0x01
    compressed = gzip.compress(bytes(changed), mtime=0)
    trailer = struct.pack("<II", zlib.crc32(source), len(source) & 0xFFFFFFFF)
    path = tmp_path / "conn.log.gz"
    path.write_bytes(compressed[:-8] + trailer)

    with pytest.raises(FlowLogError) as error:
        list(sources.read_chunks(path))

    message = str(error.value)
    lines = source.count(b"\n")
    assert "its gzip checksum does not match" in message
    assert f"here after line {lines}" in message
    assert "may be on any earlier line" in message


def test_find_logs_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.find_logs([tmp_path / "absent"])


def test_json_without_conn_fields_rejected(tmp_path, prepared_iot23):
    indented = prepared_iot23.root / "dataset.json"
    one_line = tmp_path / "summary.json"
    one_line.write_text(json.dumps({"ts": 1.0, "classes": ["Benign"]}) + "\n")

    with pytest.raises(FlowLogError, match="none of its first lines is a whole JSON"):
        readers.open_report(indented)
    with pytest.raises(FlowLogError, match="lacks the conn.log fields uid"):
        readers.open_report(one_line)


def test_json_of_other_zeek_logs_rejected(tmp_path):
    connection = {
        "ts": 1.5,
        "uid": "CAbc",
        "id": {"orig_h": "10.0.0.1", "orig_p": 5353, "resp_h": "10.0.0.2"},
        "proto": "udp",
    }
    dns = tmp_path / "dns.json"
    dns.write_text(json.dumps({**connection, "id.resp_p": 53, "query": "a"}) + "\n")
    named = tmp_path / "all.json"
    named.write_text(
        json.dumps({**connection, "_path": "http", "id.resp_p": 80}) + "\n"
    )

    with pytest.raises(FlowLogError, match="first JSON object has no conn_state"):
        readers.open_report(dns)
    with pytest.raises(FlowLogError, match="is a Zeek http log, not a conn log"):
        readers.open_report(named)


def test_nested_json_conn_record_accepted(tmp_path):
    record = {
        "ts": 1.5,
        "uid": "CAbc",
        "id": {"orig_h": "10.0.0.1", "orig_p": 1, "resp_h": "10.0.0.2", "resp_p": 2},
        "proto": "tcp",
        "conn_state": "SF",
    }
    path = tmp_path / "conn.json"
    path.write_text(json.dumps(record) + "\n")

    report = readers.open_report(path)

    assert report.format == "zeek-json"


def test_json_line_without_conn_fields_skipped(tmp_path, iot23):
    _, reference = read(iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv")
    rows = [
        json.loads(_json_line(row, iso=False)) for row in reference.head(5).to_dicts()
    ]
    nested = rows[2]
    nested["id"] = {
        "orig": {"h": nested.pop("id.orig_h"), "p": nested.pop("id.orig_p")}
    }
    del rows[3]["conn_state"]
    path = tmp_path / "conn.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    report, frame = read(path)
    inspected = inspect_logs([path])[0]

    assert report.rows_read == 3
    assert frame.height == 3
    assert report.skipped.examples == [
        "conn.json:3: no id.orig_h, id.orig_p, which every conn.log line has",
        "conn.json:4: no conn_state, which every conn.log line has",
    ]
    assert inspected.rows_read == 3
    assert inspected.skipped.total == 2


def test_find_logs_skips_edgedp_outputs(tmp_path, iot23, caplog):
    log_name = "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    source = (iot23 / "zeek" / log_name).read_bytes()
    outputs = {
        "runs/quick": ("state.json", {"format": 1, "stages": {}, "invocations": []}),
        "dataset": (
            "dataset.json",
            {"encoder_version": "2", "feature_set": "extended", "splits": {}},
        ),
        "b": ("bundle.json", {"bundle_format": 1, "bundle_id": "x", "files": {}}),
    }
    (tmp_path / log_name).write_bytes(source)
    for folder, (marker, content) in outputs.items():
        (tmp_path / folder / "inner").mkdir(parents=True)
        (tmp_path / folder / marker).write_text(json.dumps(content))
        (tmp_path / folder / "inner" / log_name).write_bytes(source)
    caplog.set_level("WARNING")

    search = sources.search_logs([tmp_path])

    assert search.files == [(tmp_path / log_name).resolve()]
    skipped = {(item.path, item.marker) for item in search.skipped_folders}
    assert skipped == {(tmp_path / f, m) for f, (m, _) in outputs.items()}
    for folder, (marker, _) in outputs.items():
        expected = f"not searching {tmp_path / folder} for flow logs: its {marker}"
        assert caplog.text.count(expected) == 1

    caplog.clear()
    quiet = sources.find_logs([tmp_path], warn=False)

    assert quiet == search.files
    assert "not searching" not in caplog.text


@pytest.mark.parametrize("marker", ["state.json", "dataset.json", "bundle.json"])
@pytest.mark.parametrize("content", ["{}", "[1, 2]", "not json", '{"format": 1}'])
def test_find_logs_reads_lookalike_markers(tmp_path, iot23, marker, content):
    log_name = "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    inner = tmp_path / "captures"
    inner.mkdir()
    (inner / marker).write_text(content)
    (inner / log_name).write_bytes((iot23 / "zeek" / log_name).read_bytes())

    search = sources.search_logs([tmp_path])

    # The marker file itself has a `.json` name, so the search lists it too.
    assert (inner / log_name).resolve() in search.files
    assert search.skipped_folders == []


@pytest.mark.parametrize(
    "name",
    [
        "csv/CTU-IoT-Malware-Capture-44-1.labeled.csv",
        "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled",
    ],
)
def test_byte_order_mark_ignored(tmp_path, iot23, name):
    original = iot23 / name
    path = tmp_path / original.name
    path.write_bytes(b"\xef\xbb\xbf" + original.read_bytes())

    report, frame = read(path)
    _, reference = read(original)

    assert report.skipped.total == 0
    assert frame.equals(reference)


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("csv/CTU-IoT-Malware-Capture-44-1.labeled.csv", None),
        (HEADERLESS, zeek.LABELED_CONN_FIELDS),
    ],
)
def test_semicolon_export_matches_comma(tmp_path, iot23, name, columns):
    original = iot23 / name
    path = tmp_path / original.name
    path.write_bytes(original.read_bytes().replace(b",", b";"))

    report, frame = read(path, columns=columns)
    reference_report, reference = read(original, columns=columns)

    assert report.format == "csv"
    assert report.layout.separator == ";"
    assert dict(report.skipped.counts) == dict(reference_report.skipped.counts)
    assert frame.equals(reference)


def _complete_lines(compressed: bytes) -> int:
    """Count the line breaks that decompress before a gzip stream ends early."""
    decompressor = zlib.decompressobj(wbits=31)
    return decompressor.decompress(compressed).count(b"\n")


@pytest.mark.parametrize("chunk_bytes", [1 << 12, sources.DEFAULT_CHUNK_BYTES])
def test_truncated_gzip_names_last_line(tmp_path, iot23, chunk_bytes):
    original = iot23 / "zeek" / "CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    compressed = gzip.compress(original.read_bytes())
    path = tmp_path / "cut.conn.log.labeled.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    expected = _complete_lines(compressed[: len(compressed) // 2])

    with pytest.raises(FlowLogError) as caught:
        read(path, chunk_bytes=chunk_bytes)

    assert expected > 1000
    assert f"is damaged after line {expected} (EOFError" in str(caught.value)
    assert "download it again" in str(caught.value)


def test_corrupt_gzip_member_names_line(tmp_path, iot23):
    original = iot23 / "zeek" / "CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    lines = original.read_bytes().split(b"\n")
    second = gzip.compress(b"\n".join(lines[3000:]))
    # Deflate block type 3 is reserved, so zlib rejects the second member.
    second = second[:10] + b"\x07" + second[11:]
    path = tmp_path / "corrupt.conn.log.labeled.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines[:3000]) + b"\n") + second)

    with pytest.raises(FlowLogError) as caught:
        read(path)

    assert "is damaged after line 3000 (error: " in str(caught.value)
    assert "invalid block type" in str(caught.value)
    assert "download it again" in str(caught.value)


def test_gzip_cut_in_header_hints_download(tmp_path, iot23):
    original = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    path = tmp_path / "cut_header.log.gz"
    path.write_bytes(gzip.compress(original.read_bytes())[:20])

    with pytest.raises(FlowLogError, match="download it again") as caught:
        readers.open_report(path)

    assert str(path) in str(caught.value)


def test_every_line_skipped_warns(iot23, caplog):
    path = iot23 / HEADERLESS

    results = inspect_logs([path], columns=zeek.CONN_FIELDS)

    (report,) = results
    assert report.rows_read == 0
    assert report.skipped.total == 452
    message = report.no_rows_message()
    assert str(path.resolve()) in message
    assert "'wrong field count: expected 21, found 23' (451 lines)" in message
    assert "--columns" in message
    assert message in caplog.text


@pytest.mark.parametrize(
    ("name", "ending"),
    [
        ("csv/CTU-IoT-Malware-Capture-44-1.labeled.csv", "\n"),
        ("csv/CTU-IoT-Malware-Capture-44-1.labeled.csv", ""),
        ("variants/CTU-IoT-Malware-Capture-34-1+35-1.subset-2500.tsv", "\r\n"),
    ],
)
def test_header_only_export_reads_no_rows(tmp_path, iot23, name, ending):
    header = (iot23 / name).read_text().splitlines()[0]
    path = tmp_path / f"empty{(iot23 / name).suffix}"
    path.write_text(header + ending, newline="")

    report, frame = read(path)
    (inspected,) = inspect_logs([path])

    assert frame is None
    assert report.rows_read == 0
    assert report.skipped.total == 0
    assert inspected.rows_read == 0
    assert inspected.no_rows_message() is None


def _concatenated_export(source, path, *, reorder=False, quote=False, upper=False):
    """Write `source` (a CSV export) as two exports joined after row 100.

    With `reorder`, the second part swaps the origin and responder port
    columns in its header row and its rows. With `quote`, the second
    header row quotes its names, and with `upper` it writes them in upper
    case. Returns the second header row's line.
    """
    header, *rows = source.read_text().splitlines()
    names = header.split(",")
    second = [row.split(",") for row in rows[100:]]
    if reorder:
        origin, responder = names.index("id.orig_p"), names.index("id.resp_p")
        for fields in [names, *second]:
            fields[origin], fields[responder] = fields[responder], fields[origin]
    if upper:
        names = [name.upper() for name in names]
    if quote:
        names = [f'"{name}"' for name in names]
    lines = [header, *rows[:100], ",".join(names), *map(",".join, second)]
    path.write_text("\n".join(lines) + "\n")
    return 102


@pytest.mark.parametrize(
    ("quote", "upper"), [(False, False), (True, False), (False, True)]
)
def test_repeated_header_row_skipped(tmp_path, iot23, quote, upper):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    path = tmp_path / "joined.csv"
    line = _concatenated_export(source, path, quote=quote, upper=upper)

    report, frame = read(path)
    _, original = read(source)

    assert report.rows_read == 237
    assert dict(report.skipped.counts) == {"repeated header row": 1}
    assert report.skipped.examples == [f"joined.csv:{line}: repeated header row"]
    assert frame.drop(LINE).equals(original.drop(LINE))


@pytest.mark.parametrize(
    ("quote", "upper"), [(False, False), (True, False), (False, True)]
)
def test_reordered_header_row_rejected(tmp_path, iot23, quote, upper):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    path = tmp_path / "joined.csv"
    line = _concatenated_export(source, path, reorder=True, quote=quote, upper=upper)

    with pytest.raises(FlowLogError) as caught:
        read(path)
    (inspected,) = inspect_logs([tmp_path])

    message = str(caught.value)
    assert f"{path}:{line}" in message
    assert "id.resp_p" in message
    assert "split the file" in message
    assert inspected.path == path.resolve()
    assert inspected.reason == message


def test_non_finite_numbers_named(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:16]
    values = [b"nan", b"inf", b"-inf", b"1e400", b"NaN", b"1.5x"]
    damaged = list(data)
    for row, value in enumerate(values):
        fields = data[row].split(b"\t")
        fields[8] = value
        damaged[row] = b"\t".join(fields)
    path = tmp_path / "numbers.conn.log"
    path.write_bytes(b"\n".join(header + damaged) + b"\n")

    report, _ = read(path)

    assert report.rows_read == 2
    assert report.skipped.counts == {
        "not a finite number in duration": 5,
        "unparsable number in duration": 1,
    }


@pytest.mark.parametrize("rows_have_extra", [False, True])
def test_field_after_label_group(tmp_path, honeypot_lines, iot23, rows_have_extra):
    header, data = honeypot_lines[:8], honeypot_lines[8:58]
    header[6] += b"\textra"
    if rows_have_extra:
        data = [line + b"\tX" for line in data]
    path = tmp_path / "extra.conn.log"
    path.write_bytes(b"\n".join(header + data) + b"\n")

    report, frame = read(path)
    _, original = read(iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled")

    if rows_have_extra:
        assert report.skipped.total == 0
        assert frame.equals(original.head(50))
    else:
        assert report.rows_read == 0
        assert report.skipped.counts == {"wrong field count: expected 24, found 23": 50}


@pytest.mark.parametrize(
    ("change", "columns", "named"),
    [("drop", 22, "it lacks detailed-label"), ("add", 24, "it adds extra")],
)
def test_header_row_column_count_changed(tmp_path, iot23, change, columns, named):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    header, *rows = source.read_text().splitlines()
    second = []
    for row in [header, *rows[100:]]:
        fields = row.split(",")
        fields = fields[:-1] if change == "drop" else [*fields, "extra"]
        second.append(",".join(fields))
    path = tmp_path / "joined.csv"
    path.write_text("\n".join([header, *rows[:100], *second]) + "\n")

    with pytest.raises(FlowLogError) as caught:
        read(path)

    message = str(caught.value)
    assert f"{path}:102" in message
    assert f"with {columns} columns where the first header row has 23" in message
    assert named in message
    assert "instead of" not in message
    assert "split the file before line 102" in message


def test_repeated_header_only_export_reads_no_rows(tmp_path, iot23):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    header = source.read_text().splitlines()[0]
    path = tmp_path / "empty.csv"
    path.write_text(f"{header}\n{header}\n")

    report, frame = read(path)
    (inspected,) = inspect_logs([path])

    assert frame is None
    assert report.rows_read == 0
    assert dict(report.skipped.counts) == {"repeated header row": 1}
    assert report.no_rows_message() is None
    assert inspected.no_rows_message() is None


def test_no_rows_message_leaves_out_header_rows(tmp_path, iot23):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    header, *rows = source.read_text().splitlines()
    short = [row.rsplit(",", 1)[0] for row in rows[:3]]
    path = tmp_path / "short.csv"
    path.write_text("\n".join([header, short[0], header, *short[1:]]) + "\n")

    report, _ = read(path)
    message = report.no_rows_message()

    assert report.rows_read == 0
    assert report.skipped.total == 4
    assert "all 3 data lines were skipped" in message
    assert "'wrong field count: expected 23, found 22' (3 lines)" in message


def test_unset_or_empty_ts_skipped(tmp_path, honeypot_lines):
    header, data = honeypot_lines[:8], honeypot_lines[8:14]
    damaged = list(data)
    for row, value in ((1, b"-"), (3, b"")):
        damaged[row] = value + data[row][data[row].index(b"\t") :]
    path = tmp_path / "nots.conn.log"
    path.write_bytes(b"\n".join(header + damaged) + b"\n")

    report, frame = read(path)

    assert report.rows_read == 4
    assert report.skipped.examples == [
        "nots.conn.log:10: missing ts",
        "nots.conn.log:12: missing ts",
    ]
    assert frame["ts"].null_count() == 0


def test_header_row_with_other_separator_rejected(tmp_path, iot23):
    source = iot23 / "csv" / "CTU-IoT-Malware-Capture-44-1.labeled.csv"
    header, *rows = source.read_text().splitlines()
    second = [line.replace(",", ";") for line in [header, *rows[50:]]]
    path = tmp_path / "joined.csv"
    path.write_text("\n".join([header, *rows[:50], *second]) + "\n")

    with pytest.raises(FlowLogError) as caught:
        read(path)

    message = str(caught.value)
    assert f"{path}:52 is a header row separated by ';'" in message
    assert "split the file before line 52" in message
