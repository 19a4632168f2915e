"""The gateway's line parser and alert lines, on the IoT-23 Zeek logs."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from edgedp import features, zeek
from edgedp.atomic import OutputError
from edgedp.data import readers
from edgedp.data.inspect import inspect_logs
from edgedp.data.records import LINE
from edgedp.edge.alerts import AlertWriter, _TimeFormatter
from edgedp.edge.follow import Chunk, FileSource
from edgedp.edge.records import (
    FlowColumns,
    LineParser,
    categorical,
    flow_time,
    foreign_format,
    needed_fields,
)
from edgedp.edge.verdicts import Verdicts

FIELDS = needed_fields(features.EXTENDED)

# Data rows per file, as the data set's manifest counts them.
ZEEK_ROWS = {
    "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz": 23145,
    "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled": 4426,
    "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled": 452,
    "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled": 1374,
}


class Recorder:
    """Collects what a parser reports."""

    def __init__(self) -> None:
        self.bad: list[tuple[str, int]] = []
        self.absurd: list[tuple[str, int, float]] = []
        self.notices: list[str] = []

    def parser(self, **options) -> LineParser:
        return LineParser(
            FIELDS,
            on_bad_line=lambda reason, source, line, detail: self.bad.append(
                (reason, line)
            ),
            on_absurd_value=lambda field, source, line, value: self.absurd.append(
                (field, line, value)
            ),
            on_notice=self.notices.append,
            **options,
        )


def _parse_file(parser: LineParser, path) -> FlowColumns:
    source = FileSource(path)
    parts = []
    while not source.finished:
        chunk = source.read(0)
        if chunk is not None:
            parts.append(parser.parse(chunk))
    return FlowColumns.concat([part for part in parts if len(part)])


def _chunk(lines: list[bytes | None], generation: int = 1) -> Chunk:
    return Chunk(lines, "conn.log", 1, generation)


def _encode(flows: FlowColumns) -> np.ndarray:
    columns = dict(flows.columns)
    for name in ("proto", "conn_state", "service", "history"):
        columns[name] = categorical(columns[name])
    return features.encode(columns, features.EXTENDED)


@pytest.mark.parametrize("name", sorted(ZEEK_ROWS))
def test_zeek_logs_parse_every_row(iot23, name):
    recorder = Recorder()

    flows = _parse_file(recorder.parser(), iot23 / name)

    assert len(flows) == ZEEK_ROWS[name]
    assert recorder.bad == []
    assert recorder.notices == []
    assert all(flow_time(value) is not None for value in flows.columns["ts"])


def test_tsv_values_match_zeek_module(iot23):
    """Every parsed value equals what edgedp.zeek makes of the same line."""
    path = iot23 / "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    flows = _parse_file(Recorder().parser(), path)
    lines = path.read_text().splitlines()
    header = zeek.parse_header(line for line in lines if line.startswith("#"))
    rows = [zeek.split_line(line, header) for line in lines if line[:1] != "#"]

    for name in FIELDS:
        position = header.fields.index(name)
        expected = [row[position] for row in rows]
        if name == "ts":
            assert [flow_time(v) for v in flows.columns[name]] == [
                float(v) for v in expected
            ]
        elif name in zeek.NUMERIC_FIELDS:
            parsed = [zeek.parse_number(value, header) for value in expected]
            want = np.array([math.nan if v is None else v for v in parsed])
            np.testing.assert_array_equal(flows.columns[name], want)
        else:
            assert list(flows.columns[name]) == expected


def _json_records(tsv: FlowColumns) -> list[dict]:
    """Return parsed TSV flows as Zeek writes them in JSON: unset fields left out."""
    records = []
    for row in range(len(tsv)):
        record = {}
        for name in FIELDS:
            value = tsv.columns[name][row]
            if name == "ts":
                record[name] = flow_time(value)
            elif isinstance(value, float):
                if not math.isnan(value):
                    record[name] = int(value) if value.is_integer() else value
            elif value not in ("-", "(empty)"):
                record[name] = value
        records.append(record)
    return records


def test_json_lines_encode_like_tsv(iot23):
    path = iot23 / "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled"
    tsv = _parse_file(Recorder().parser(), path)
    records = _json_records(tsv)
    # Zeek writes ISO 8601 timestamps when LogAscii::json_timestamps is set.
    records[0]["ts"] = datetime.fromtimestamp(records[0]["ts"], UTC).isoformat()
    lines = [json.dumps(record).encode() for record in records]

    recorder = Recorder()
    parsed = recorder.parser(log_format="auto").parse(_chunk(lines))

    assert recorder.bad == []
    assert len(parsed) == len(tsv)
    np.testing.assert_array_equal(_encode(parsed), _encode(tsv))
    assert flow_time(parsed.columns["ts"][0]) == pytest.approx(
        flow_time(tsv.columns["ts"][0]), abs=1e-6
    )


def _nest_id(record: dict) -> dict:
    """Move the `id.*` fields into an `id` object, as some JSON exporters do."""
    nested: dict = {}
    for name, value in record.items():
        if name.startswith("id."):
            nested.setdefault("id", {})[name.removeprefix("id.")] = value
        else:
            nested[name] = value
    return nested


def test_nested_json_encodes_like_flat(iot23):
    path = iot23 / "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    tsv = _parse_file(Recorder().parser(), path)
    records = _json_records(tsv)
    nested = [_nest_id(record) for record in records]
    # Exports spell the dotted names with underscores; prepare folds them too.
    nested[1] = {name.replace(".", "_"): value for name, value in records[1].items()}
    flat_lines = [json.dumps(record).encode() for record in records]
    nested_lines = [json.dumps(record).encode() for record in nested]

    recorder = Recorder()
    flat = recorder.parser().parse(_chunk(flat_lines))
    parsed = recorder.parser().parse(_chunk(nested_lines))

    assert b'"id": {"orig_h"' in nested_lines[0]
    assert recorder.bad == []
    assert len(parsed) == len(tsv)
    np.testing.assert_array_equal(_encode(parsed), _encode(flat))
    for name in ("uid", "id.orig_h", "id.resp_h"):
        assert list(parsed.columns[name]) == list(flat.columns[name]), name
    np.testing.assert_array_equal(parsed.columns["id.orig_p"], tsv.columns["id.orig_p"])


def test_nested_object_in_numeric_field_is_bad_json():
    record = json.loads(GOOD_JSON)
    record["duration"] = {"value": 3.1}
    details: list[tuple[str, str]] = []
    parser = LineParser(
        FIELDS,
        on_bad_line=lambda reason, source, line, detail: details.append(
            (reason, detail)
        ),
    )

    flows = parser.parse(_chunk([json.dumps(record).encode()]))

    assert len(flows) == 0
    assert details == [("bad_json", "duration is an object, expected a number")]


def test_json_lines_without_conn_fields_skipped():
    record = json.loads(GOOD_JSON)
    no_state = {name: value for name, value in record.items() if name != "conn_state"}
    lines = [
        GOOD_JSON.encode(),
        b"{}",
        b'{"uid": "x"}',
        json.dumps(no_state).encode(),
        json.dumps({**record, "service": None, "duration": None}).encode(),
    ]
    details: list[tuple[str, int, str]] = []
    parser = LineParser(
        FIELDS,
        on_bad_line=lambda reason, source, line, detail: details.append(
            (reason, line, detail)
        ),
    )

    flows = parser.parse(_chunk(lines))

    assert list(flows.lines) == [1, 5]
    assert [(reason, line) for reason, line, _ in details] == [
        ("missing_fields", 2),
        ("missing_fields", 3),
        ("missing_fields", 4),
    ]
    assert details[0][2].startswith("no ts, uid, id.orig_h, id.orig_p, id.resp_h")
    assert details[1][2].startswith("no ts, id.orig_h")
    assert details[2][2] == "no conn_state, which every conn.log line has"


def test_json_dns_log_noticed_once(iot23):
    dns = [
        json.dumps(
            {
                "ts": 1545403816.5 + index,
                "uid": f"Cdns{index}",
                "id.orig_h": "192.168.1.195",
                "id.orig_p": 5353,
                "id.resp_h": "192.168.1.1",
                "id.resp_p": 53,
                "proto": "udp",
                "trans_id": index,
                "query": "example.com",
            }
        ).encode()
        for index in range(3)
    ]
    recorder = Recorder()
    parser = recorder.parser()

    flows = parser.parse(_chunk(dns))

    assert len(flows) == 0
    assert len(recorder.notices) == 1
    assert "its first JSON object lacks conn_state" in recorder.notices[0]
    assert recorder.bad == [("missing_fields", 1), ("missing_fields", 2)] + [
        ("missing_fields", 3)
    ]


HEADER = [
    b"#separator \\x09",
    b"#unset_field\t-",
    b"#fields\t" + "\t".join(zeek.CONN_FIELDS).encode(),
]
GOOD = (
    b"1545403816.962094\tCgood1\t192.168.1.195\t41040\t185.244.25.235\t80\ttcp\t-"
    b"\t3.139211\t0\t0\tS0\t-\t-\t0\tS\t3\t180\t0\t0\t-"
)

GOOD_JSON = json.dumps(
    {
        name: float(value) if name in zeek.NUMERIC_FIELDS else value
        for name, value in zip(zeek.CONN_FIELDS, GOOD.decode().split("\t"), strict=True)
        if value != "-"
    }
)


def _variant(uid: bytes, **changes: bytes) -> bytes:
    fields = GOOD.split(b"\t")
    fields[1] = uid
    for name, value in changes.items():
        fields[zeek.CONN_FIELDS.index(name.replace("__", "."))] = value
    return b"\t".join(fields)


def test_bad_lines_counted_and_skipped():
    lines = HEADER + [
        GOOD,
        GOOD + b"\textra",
        _variant(b"Cbadnum", orig_bytes=b"12x"),
        _variant(b"Cnan", duration=b"nan"),
        b"\xff\xfe" + GOOD[2:],
        None,
        b"",
        _variant(b"Cgood2"),
        b"#close\t2019-03-15-14-50-54",
    ]
    recorder = Recorder()

    flows = recorder.parser().parse(_chunk(lines))

    assert list(flows.columns["uid"]) == ["Cgood1", "Cgood2"]
    assert list(flows.lines) == [4, 11]
    assert recorder.bad == [
        ("field_count", 5),
        ("bad_number", 6),
        ("bad_number", 7),
        ("invalid_utf8", 8),
        ("overlong", 9),
    ]


def test_bad_number_names_its_fields():
    lines = HEADER + [
        _variant(b"Cone", duration=b"1e400"),
        _variant(b"Ctwo", orig_bytes=b"12x", resp_pkts=b"nan"),
        GOOD,
    ]
    details: list[tuple[int, str]] = []
    parser = LineParser(
        FIELDS,
        on_bad_line=lambda reason, source, line, detail: details.append((line, detail)),
    )

    flows = parser.parse(_chunk(lines))

    assert list(flows.lines) == [6]
    assert details == [
        (4, "not a finite number in duration='1e400'"),
        (
            5,
            "unparsable number in orig_bytes='12x'; "
            "not a finite number in resp_pkts='nan'",
        ),
    ]


def test_absurd_values_kept_and_reported():
    lines = HEADER + [
        _variant(b"Cneg", duration=b"-4.5", id__resp_p=b"70000"),
        _variant(b"Chuge", orig_pkts=b"1e12"),
    ]
    recorder = Recorder()

    flows = recorder.parser().parse(_chunk(lines))
    encoded = _encode(flows)

    assert list(flows.columns["uid"]) == ["Cneg", "Chuge"]
    assert sorted(recorder.absurd) == [
        ("duration", 4, -4.5),
        ("id.resp_p", 4, 70000.0),
        ("orig_pkts", 5, 1e12),
    ]
    assert np.isfinite(encoded).all()
    assert encoded.min() >= 0.0
    assert encoded.max() <= 1.0


def test_new_header_block_changes_layout():
    reordered = list(zeek.CONN_FIELDS)
    reordered[3], reordered[5] = reordered[5], reordered[3]
    fields = GOOD.split(b"\t")
    fields[3], fields[5] = fields[5], fields[3]
    lines = HEADER + [
        GOOD,
        b"#close\t2019-03-15-14-50-54",
        b"#separator \\x09",
        b"#fields\t" + "\t".join(reordered).encode(),
        b"\t".join(fields),
    ]

    flows = Recorder().parser().parse(_chunk(lines))

    np.testing.assert_array_equal(flows.columns["id.orig_p"], [41040, 41040])
    np.testing.assert_array_equal(flows.columns["id.resp_p"], [80, 80])


def test_generation_resets_header():
    parser = Recorder().parser()
    parser.parse(_chunk(HEADER + [GOOD], generation=1))
    recorder = Recorder()
    parser._on_notice = recorder.notices.append

    flows = parser.parse(_chunk([GOOD], generation=2))

    assert len(flows) == 1
    assert len(recorder.notices) == 1
    assert "no #fields header" in recorder.notices[0]


def test_missing_header_uses_standard_layout(iot23):
    path = iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"
    data = [line for line in path.read_bytes().split(b"\n") if line[:1] != b"#"]
    recorder = Recorder()

    flows = recorder.parser().parse(_chunk([line for line in data if line]))

    assert len(flows) == ZEEK_ROWS["zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"]
    assert recorder.bad == []
    assert "standard 23-field" in recorder.notices[0]


def test_header_without_needed_field():
    fields = [name for name in zeek.CONN_FIELDS if name != "history"]
    lines = [b"#fields\t" + "\t".join(fields).encode(), b"\t".join([b"x"] * 20)]
    recorder = Recorder()

    flows = recorder.parser().parse(_chunk(lines))

    assert len(flows) == 0
    assert recorder.bad == [("missing_fields", 2)]
    assert "lacks history" in recorder.notices[0]


def test_custom_unset_marker():
    lines = [
        b"#unset_field\tNA",
        HEADER[2],
        _variant(b"Cna", service=b"NA", orig_bytes=b"NA"),
    ]
    recorder = Recorder()

    flows = recorder.parser().parse(_chunk(lines))

    assert recorder.bad == []
    assert flows.columns["service"] == [None]
    assert np.isnan(flows.columns["orig_bytes"][0])
    assert flows.columns["duration"][0] == pytest.approx(3.139211)


def test_time_formatter_matches_datetime():
    rng = np.random.default_rng(0)
    formatter = _TimeFormatter()
    stamps = rng.uniform(0, 2e9, size=2000).tolist() + [1545403816.9999996]

    for ts in stamps:
        expected = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert formatter(ts) == (repr(ts), f'"{expected}"')
    assert formatter("1545403816.962094") == (
        "1545403816.962094",
        '"2018-12-21T14:50:16.962094Z"',
    )
    assert formatter("garbage") == ("null", "null")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (-62135596800.0, ("-62135596800.0", '"0001-01-01T00:00:00.000000Z"')),
        (
            "-62135596800.000000",
            ("-62135596800.000000", '"0001-01-01T00:00:00.000000Z"'),
        ),
        ("-0.500000", ("-0.500000", '"1969-12-31T23:59:59.500000Z"')),
        (
            "253402300799.999999",
            ("253402300799.999999", '"9999-12-31T23:59:59.999999Z"'),
        ),
        (253402300799.99997, ("253402300799.99997", '"9999-12-31T23:59:59.999969Z"')),
        (-62135596800.5, ("-62135596800.5", "null")),
        (253402300800.0, ("253402300800.0", "null")),
        ("253402300800.000000", ("253402300800.000000", "null")),
        (1e20, ("1e+20", "null")),
        ("1e20", ("1e+20", "null")),
        ("01.000000", ("1.0", '"1970-01-01T00:00:01.000000Z"')),
    ],
)
def test_time_formatter_year_range(raw, expected):
    assert _TimeFormatter()(raw) == expected


@pytest.mark.parametrize(
    ("iso", "ts"),
    [
        ("9999-12-31T23:59:59.999999999Z", "253402300799.999999"),
        ("0001-01-01T00:00:00Z", "-62135596800.000000"),
        ("1969-12-31T23:59:59.25", "-0.750000"),
        ("2018-12-21T15:50:16.962094+01:00", "1545403816.962094"),
        ("0001-01-01T00:00:00+01:00", "-62135600400.000000"),
    ],
)
def test_json_iso_ts_kept_exact(iso, ts):
    record = json.loads(GOOD_JSON)
    record["ts"] = iso
    recorder = Recorder()

    flows = recorder.parser(log_format="json").parse(
        _chunk([json.dumps(record).encode()])
    )

    assert recorder.bad == []
    assert flows.columns["ts"] == [ts]


def test_alert_lines_are_json(tmp_path):
    lines = HEADER + [GOOD, _variant(b'Cq"uote\\', id__orig_h=b"fe80::1")]
    flows = Recorder().parser().parse(_chunk(lines))
    verdicts = Verdicts(
        alert=np.array([False, True]),
        class_index=np.array([0, 1]),
        probability=np.array([0.75, 0.5], dtype=np.float32),
    )
    path = tmp_path / "alerts.jsonl"
    writer = AlertWriter(
        path,
        bundle_id="abc",
        model_format="int8",
        classes=["Benign", "C&C"],
        threshold=None,
    )

    written = writer.write(flows, verdicts)
    writer.close()
    alerts = [json.loads(line) for line in path.read_text().splitlines()]

    assert written == 1
    assert alerts == [
        {
            "ts": 1545403816.962094,
            "time": "2018-12-21T14:50:16.962094Z",
            "uid": 'Cq"uote\\',
            "id.orig_h": "fe80::1",
            "id.orig_p": 41040,
            "id.resp_h": "185.244.25.235",
            "id.resp_p": 80,
            "proto": "tcp",
            "alert": True,
            "class": "C&C",
            "probability": 0.5,
            "bundle_id": "abc",
            "model_format": "int8",
            "log": "conn.log",
            "line": 5,
        }
    ]


def _writer(path) -> AlertWriter:
    return AlertWriter(
        path, bundle_id="abc", model_format="int8", classes=["Benign"], threshold=None
    )


def test_alert_writer_rejects_folder(tmp_path):
    with pytest.raises(OutputError) as raised:
        _writer(tmp_path)

    assert str(tmp_path) in str(raised.value)
    assert "is a folder" in str(raised.value)


def test_alert_writer_rejects_unwritable_path(tmp_path):
    # A regular file where a folder should be fails even for root.
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "logs" / "alerts.jsonl"

    with pytest.raises(OutputError) as raised:
        _writer(path)

    assert str(path) in str(raised.value)


def test_alert_writer_creates_folders(tmp_path):
    path = tmp_path / "new" / "alerts.jsonl"

    _writer(path).close()

    assert path.is_file()


def test_failed_reopen_keeps_file(tmp_path):
    path = tmp_path / "alerts.jsonl"
    writer = _writer(path)
    path.unlink()
    path.mkdir()

    with pytest.raises(OutputError):
        writer.reopen()
    flows = Recorder().parser().parse(_chunk(HEADER + [GOOD]))
    written = writer.write(flows, _flagged(1))
    writer.close()

    assert written == 1


@pytest.mark.parametrize(
    ("existing", "kept", "message"),
    [
        (b"", b"", None),
        (b'{"ts":1.0}\n{"ts":2.0,"uid":"C', b'{"ts":1.0}\n', "unfinished alert line"),
        (b'{"ts":2.0,"uid":"C', b"", "unfinished alert line"),
        (b"notes without newline", b"notes without newline\n", "appended one"),
        (b'{"ts":1.0}\n', b'{"ts":1.0}\n', None),
    ],
    ids=["empty", "cut-alert", "only-cut-alert", "other-text", "whole"],
)
def test_alert_file_opened_at_line_boundary(tmp_path, caplog, existing, kept, message):
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(existing)
    flows = Recorder().parser().parse(_chunk(HEADER + [GOOD]))

    with caplog.at_level(logging.WARNING, logger="edgedp.edge.alerts"):
        writer = _writer(path)
    writer.write(flows, _flagged(1))
    writer.close()
    content = path.read_bytes()

    assert content.startswith(kept)
    assert json.loads(content[len(kept) :])["uid"] == "Cgood1"
    if message is None:
        assert caplog.records == []
    else:
        (record,) = caplog.records
        assert message in record.getMessage()


def _flagged(count: int) -> Verdicts:
    return Verdicts(
        alert=np.ones(count, dtype=bool),
        class_index=np.zeros(count, dtype=np.intp),
        probability=np.ones(count, dtype=np.float32),
    )


def test_categorical_marks_missing():
    column = categorical(["tcp", "-", None, "udp", "tcp", "(empty)"])

    decoded = [column.categories[code] if code >= 0 else None for code in column.codes]

    assert decoded == ["tcp", None, None, "udp", "tcp", None]
    assert Counter(column.codes.tolist())[-1] == 3


def test_field_count_counted_like_inspect(iot23, tmp_path):
    from edgedp.data.inspect import inspect_logs

    name = "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    lines = (iot23 / name).read_bytes().split(b"\n")
    first_data = next(i for i, line in enumerate(lines) if line[:1] not in (b"#", b""))
    lines[first_data] += b"\textra"
    path = tmp_path / "conn.log"
    path.write_bytes(b"\n".join(lines))
    details: list[str] = []
    parser = LineParser(
        FIELDS, on_bad_line=lambda reason, source, line, detail: details.append(detail)
    )

    _parse_file(parser, path)
    (report,) = inspect_logs([path])

    assert details == ["wrong field count: expected 23, found 24"]
    assert report.skipped.examples == [f"conn.log:{first_data + 1}: {details[0]}"]


def test_field_count_with_field_after_labels(iot23, tmp_path):
    """The message splits a three-space label group that more fields follow."""
    name = "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"
    lines = (iot23 / name).read_bytes().split(b"\n")
    fields = next(i for i, line in enumerate(lines) if line.startswith(b"#fields"))
    lines[fields] += b"\textra"
    first_data = next(i for i, line in enumerate(lines) if line[:1] not in (b"#", b""))
    path = tmp_path / "conn.log"
    # Three rows without `extra`, then one row with it.
    rows = lines[: first_data + 3] + [lines[first_data + 3] + b"\tX"]
    path.write_bytes(b"\n".join(rows) + b"\n")
    details: list[str] = []
    parser = LineParser(
        FIELDS, on_bad_line=lambda reason, source, line, detail: details.append(detail)
    )

    flows = _parse_file(parser, path)

    assert list(flows.lines) == [first_data + 4]
    # The header names 21 conn fields, `label`, `detailed-label` and `extra`,
    # and the first three rows contain all but `extra`.
    assert details == ["wrong field count: expected 24, found 23"] * 3


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"#separator \\x09", b"#fields\tts"], None),
        ([GOOD_JSON.encode()], None),
        ([b'{"ts": 1.0, "id": {"orig_h": "10', GOOD_JSON.encode()], None),
        ([b'{"ts": 1.0, "uid": "C1"}'], "lacks id.orig_h, id.orig_p"),
        ([b'{"_path": "dns", "ts": 1.0}'], "Zeek dns log"),
        ([b'{"_path": "conn", ' + GOOD_JSON.encode()[1:]], None),
        ([b"", GOOD], None),
        ([], None),
        ([b"ts,uid,id.orig_h", b"1.0,C1,10.0.0.1"], "looks like a CSV export"),
        ([b"\x00\x01\x02\xff", b"more"], "NUL bytes"),
        ([b"\xff\xfe\xfd binary"], "not UTF-8 text"),
        ([b"\x1f\x8b\x08\x00"], "gzip-compressed"),
        ([b"a\tb\tc"], "3 tab-separated fields"),
        ([None], "longer than --max-line-bytes"),
        ([b"hello world"], "neither a Zeek header line"),
        ([b"#separator \\x09", b"#path\tconn", b"#fields\tts"], None),
        ([b"#separator \\x09", b"#path\tdns", b"#fields\tts"], "Zeek dns log"),
        ([b"", b"#separator \\x09", b"#path\thttp"], "Zeek http log"),
    ],
)
def test_foreign_format_cases(lines, expected):
    description = foreign_format(lines)

    if expected is None:
        assert description is None
    else:
        assert description is not None
        assert expected in description


def test_nul_head_explained(tmp_path):
    # A writer that does not append refills a copytruncated log at its old
    # offset, so the file starts with a hole that reads as NUL bytes.
    path = tmp_path / "conn.log"
    path.write_bytes(b"\x00" * 70_000 + b"\n".join([*HEADER, GOOD]) + b"\n")
    details: list[tuple[str, int, str]] = []
    notices: list[str] = []
    parser = LineParser(
        FIELDS,
        on_bad_line=lambda reason, source, line, detail: details.append(
            (reason, line, detail)
        ),
        on_notice=notices.append,
        max_line_bytes=65_536,
    )

    flows = _parse_file(parser, path)

    assert list(flows.columns["uid"]) == ["Cgood1"]
    assert len(notices) == 1
    assert (
        "it starts with NUL bytes, as a log does when logrotate's copytruncate"
        in (notices[0])
    )
    assert "--max-line-bytes" not in notices[0]
    assert details == [
        (
            "overlong",
            1,
            "longer than --max-line-bytes 65536; raise it if the log has such lines",
        )
    ]


def test_labeled_line_without_header_is_conn_log(iot23):
    path = iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"
    data = [line for line in path.read_bytes().split(b"\n") if line[:1] != b"#"]

    assert foreign_format(data) is None


def test_csv_export_noticed_once(iot23):
    path = iot23 / "csv/CTU-IoT-Malware-Capture-20-1.labeled.csv"
    recorder = Recorder()
    parser = recorder.parser()

    source = FileSource(path)
    flows = 0
    while not source.finished:
        chunk = source.read(0)
        if chunk is not None:
            flows += len(parser.parse(chunk))

    foreign = [notice for notice in recorder.notices if "not a Zeek conn log" in notice]
    assert flows == 0
    assert len(foreign) == 1
    assert foreign[0].startswith("CTU-IoT-Malware-Capture-20-1.labeled.csv is not")
    assert "looks like a CSV export" in foreign[0]
    assert "looks like a CSV export" in parser.foreign_input
    assert {reason for reason, _ in recorder.bad} == {"field_count"}


def test_other_log_after_rotation_noticed_once():
    dns = [
        b"#separator \\x09",
        b"#path\tdns",
        b"#fields\tts\tuid\tquery",
        b"1.0\tCabc\texample.com",
        b"2.0\tCdef\texample.org",
    ]
    recorder = Recorder()
    parser = recorder.parser()

    conn_flows = parser.parse(_chunk(HEADER + [GOOD], generation=1))
    dns_flows = parser.parse(_chunk(dns, generation=2))

    other = [notice for notice in recorder.notices if "Zeek dns log" in notice]
    assert len(conn_flows) == 1
    assert len(dns_flows) == 0
    assert len(other) == 1
    assert "edgedp reads conn logs (#path conn)" in other[0]
    assert recorder.bad == [("missing_fields", 4), ("missing_fields", 5)]


def _write_json_log(iot23, path, count: int, timestamps: dict[int, object]) -> None:
    """Write the first flows of an IoT-23 log as Zeek JSON lines.

    Numeric fields become JSON numbers, and `timestamps` maps a 1-based line
    number to the `ts` value written on that line in place of the logged one.
    """
    source = iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"
    text = source.read_text().splitlines()
    header = zeek.parse_header(line for line in text if line.startswith("#"))
    rows = [zeek.split_line(line, header) for line in text if line[:1] != "#"]

    lines = []
    for number, values in enumerate(rows[:count], start=1):
        record: dict[str, object] = {}
        for name, value in zip(header.fields, values, strict=True):
            if zeek.is_missing(value, header):
                continue
            record[name] = float(value) if name in zeek.NUMERIC_FIELDS else value
        if number in timestamps:
            record["ts"] = timestamps[number]
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


def _detail_parser(details: list[tuple[int, str, str]]) -> LineParser:
    """Return a parser that appends `(line, reason, detail)` for each bad line."""
    return LineParser(
        FIELDS,
        on_bad_line=lambda reason, source, line, detail: details.append(
            (line, reason, detail)
        ),
    )


def test_wrong_ts_type_skipped_by_both_readers(iot23, tmp_path):
    expected = {
        1: "ts is an object, expected a number or an ISO 8601 string",
        2: "ts is a list, expected a number or an ISO 8601 string",
        3: "ts is a bool, expected a number or an ISO 8601 string",
        4: "ts is a list, expected a number or an ISO 8601 string",
    }
    path = tmp_path / "conn.json"
    timestamps = {
        1: {"a": 1},
        2: [1538478769.6],
        3: True,
        4: [],
        5: "1545403816.962094",
        6: "2018-12-21T14:50:16.5Z",
    }
    _write_json_log(iot23, path, 8, timestamps)
    details: list[tuple[int, str, str]] = []
    parser = _detail_parser(details)

    flows = _parse_file(parser, path)
    (inspected,) = inspect_logs([path])
    records = pl.concat(readers.read_flows(path))

    assert details == [(line, "bad_json", reason) for line, reason in expected.items()]
    assert list(flows.lines) == [5, 6, 7, 8]
    assert dict(inspected.skipped.counts) == dict(Counter(expected.values()))
    assert inspected.skipped.examples == [
        f"conn.json:{line}: {reason}" for line, reason in expected.items()
    ]
    assert inspected.rows_read == 4
    assert records[LINE].to_list() == [5, 6, 7, 8]
    assert records["ts"][0] == pytest.approx(1545403816.962094, abs=1e-6)
    assert records["ts"][1] == pytest.approx(1545403816.5, abs=1e-6)
    assert flow_time(flows.columns["ts"][0]) == records["ts"][0]
    assert flow_time(flows.columns["ts"][1]) == records["ts"][1]


def test_underscore_numbers_rejected_by_both_readers(iot23, tmp_path):
    source = iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled"
    header, data = _split_zeek_lines(source.read_bytes())
    duration = zeek.LABELED_CONN_FIELDS.index("duration")
    # Python's float reads all four; Zeek writes none of them.
    damaged = {
        3: b"1_000",
        50: b"2_5.0",
        120: "\u0661\u0662".encode(),
        200: b"1e1_0",
    }
    for row, value in damaged.items():
        fields = data[row].split(b"\t")
        fields[duration] = value
        data[row] = b"\t".join(fields)
    path = tmp_path / "underscores.conn.log"
    path.write_bytes(b"\n".join(header + data) + b"\n")
    lines = [len(header) + row + 1 for row in damaged]
    details: list[tuple[int, str, str]] = []
    parser = _detail_parser(details)

    flows = _parse_file(parser, path)
    (inspected,) = inspect_logs([path])

    assert len(flows) == len(data) - len(damaged)
    assert details == [
        (line, "bad_number", f"unparsable number in duration={value.decode()!r}")
        for line, value in zip(lines, damaged.values(), strict=True)
    ]
    assert dict(inspected.skipped.counts) == {"unparsable number in duration": 4}
    assert inspected.skipped.examples == [
        f"underscores.conn.log:{line}: unparsable number in duration" for line in lines
    ]


def _split_zeek_lines(text: bytes) -> tuple[list[bytes], list[bytes]]:
    """Return the leading directive lines and the data lines of a Zeek log."""
    lines = [line for line in text.split(b"\n") if line]
    count = next(i for i, line in enumerate(lines) if not line.startswith(b"#"))
    data = [line for line in lines[count:] if not line.startswith(b"#")]
    return lines[:count], data


def test_underscore_json_ts_is_unparsable(iot23, tmp_path):
    path = tmp_path / "conn.json"
    _write_json_log(iot23, path, 4, {2: "1_540_469_302", 3: "1545403816.962094"})
    recorder = Recorder()

    flows = _parse_file(recorder.parser(), path)
    (inspected,) = inspect_logs([path])
    alerts = tmp_path / "alerts.jsonl"
    writer = _writer(alerts)
    writer.write(flows, _flagged(len(flows)))
    writer.close()
    written = [json.loads(line) for line in alerts.read_text().splitlines()]

    assert recorder.bad == []
    assert flow_time(flows.columns["ts"][1]) is None
    assert [alert["ts"] for alert in written][1:3] == [None, 1545403816.962094]
    assert [alert["time"] for alert in written][1] is None
    assert inspected.skipped.examples == ["conn.json:2: unparsable timestamp in ts"]
    assert inspected.rows_read == 3


def test_huge_json_integers_skipped_not_fatal(iot23, tmp_path):
    path = tmp_path / "conn.json"
    _write_json_log(iot23, path, 6, {2: 10**400})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[2]["orig_bytes"] = "HUGE"
    records[3]["orig_bytes"] = "LONG"
    text = "\n".join(json.dumps(record) for record in records) + "\n"
    path.write_text(
        text.replace('"HUGE"', "1" + "0" * 400).replace('"LONG"', "1" + "0" * 5000)
    )
    details: list[tuple[int, str, str]] = []
    parser = _detail_parser(details)

    flows = _parse_file(parser, path)
    (inspected,) = inspect_logs([path])

    assert [(line, reason) for line, reason, _ in details] == [
        (3, "bad_number"),
        (4, "bad_json"),
    ]
    assert details[0][2].startswith("not a finite number in orig_bytes=10000")
    assert len(details[0][2]) < 80
    assert details[1][2] == "an integer with too many digits to read"
    assert list(flows.lines) == [1, 2, 5, 6]
    assert flow_time(flows.columns["ts"][1]) is None
    assert inspected.skipped.examples == [
        "conn.json:2: not a finite number in ts",
        "conn.json:3: not a finite number in orig_bytes",
        "conn.json:4: invalid JSON: an integer with too many digits to read",
    ]


def test_wrong_number_type_skipped_by_both_readers(iot23, tmp_path):
    path = tmp_path / "conn.json"
    _write_json_log(iot23, path, 6, {})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["duration"] = [1]
    records[2]["duration"] = {"a": 1}
    records[3]["orig_bytes"] = True
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    expected = {
        2: "duration is a list, expected a number",
        3: "duration is an object, expected a number",
        4: "orig_bytes is a bool, expected a number",
    }
    details: list[tuple[int, str, str]] = []
    parser = _detail_parser(details)

    flows = _parse_file(parser, path)
    (inspected,) = inspect_logs([path])

    assert details == [(line, "bad_json", reason) for line, reason in expected.items()]
    assert list(flows.lines) == [1, 5, 6]
    assert inspected.skipped.examples == [
        f"conn.json:{line}: {reason}" for line, reason in expected.items()
    ]
