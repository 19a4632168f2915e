"""Zeek header directives, line splitting and label spelling (standard library)."""

import pytest

from edgedp import zeek

IOT23_HEADER = [
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#open\t2019-12-05-15-46-36",
    "#fields\t" + "\t".join(zeek.CONN_FIELDS) + "   label   detailed-label",
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount"
    "\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount"
    "\tset[string]   string   string",
]


def test_separator_hex_escape():
    assert zeek.unescape_separator("\\x09") == "\t"
    assert zeek.unescape_separator("\\x2c") == ","


def test_header_iot23_quirk():
    header = zeek.parse_header(IOT23_HEADER)

    assert header.separator == "\t"
    assert header.fields == zeek.LABELED_CONN_FIELDS
    assert len(header.types) == len(zeek.LABELED_CONN_FIELDS)
    assert header.types[-3:] == ("set[string]", "string", "string")
    assert header.label_quirk
    assert header.path == "conn"
    assert header.unset_field == "-"
    assert header.empty_field == "(empty)"


def test_close_with_label_suffix_keeps_header():
    header = zeek.parse_header(IOT23_HEADER)

    closed = zeek.apply_directive(header, "#close\t2019-12-05-15-46-36   benign   -")

    assert closed == header


def test_separator_starts_new_block():
    header = zeek.parse_header(IOT23_HEADER)

    fresh = zeek.apply_directive(header, "#separator \\x09")

    assert fresh.fields == ()
    assert not fresh.label_quirk


def test_split_line_quirk_and_crlf(iot23):
    path = iot23 / "zeek" / "CTU-IoT-Malware-Capture-42-1.conn.log.labeled"
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    header = zeek.parse_header(line for line in lines if line.startswith("#f"))
    data = [line for line in lines if line and not zeek.is_directive(line)]

    rows = [zeek.split_line(line, header) for line in data]

    assert all(line.endswith("\r") for line in data)
    assert {len(row) for row in rows} == {len(zeek.LABELED_CONN_FIELDS)}
    labels = [zeek.normalize_label(row[-2]) for row in rows]
    assert labels.count("Benign") == 4420
    assert labels.count("Malicious") == 6
    assert not any(row[-1].endswith("\r") for row in rows)


def test_split_line_without_quirk():
    header = zeek.Header(fields=("a", "b", "c"))

    assert zeek.split_line("1\t-\t(empty)\n", header) == ["1", "-", "(empty)"]


def test_directive_without_separator_value():
    with pytest.raises(zeek.ZeekFormatError, match="#separator has no value"):
        zeek.apply_directive(zeek.Header(), "#separator")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("benign", "Benign"),
        (" Benign ", "Benign"),
        ("MALICIOUS", "Malicious"),
        ("c&c-torii", "C&C-Torii"),
        ("PartOfAHorizontalPortScan", "PartOfAHorizontalPortScan"),
        ("SomethingNew", "SomethingNew"),
        ("-", None),
        ("", None),
        ("(empty)", None),
        (None, None),
    ],
)
def test_normalize_label(raw, expected):
    assert zeek.normalize_label(raw) == expected


def test_parse_number():
    assert zeek.parse_number("1.5") == 1.5
    assert zeek.parse_number("-") is None
    assert zeek.parse_number("") is None
    with pytest.raises(ValueError):
        zeek.parse_number("abc")
    with pytest.raises(ValueError, match="not a finite number"):
        zeek.parse_number("inf")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("detailed_label", "detailed-label"),
        ("tunnel_parents ", "tunnel_parents"),
        ('"uid"', "uid"),
        ("id.orig_h", "id.orig_h"),
    ],
)
def test_canonical_field(raw, expected):
    assert zeek.canonical_field(raw) == expected


@pytest.mark.parametrize(
    "value", ["1_000", "1_540_469_302.5", "1e1_0", " 1_0 ", "\u0661\u0662"]
)
def test_parse_number_rejects_underscores(value):
    with pytest.raises(ValueError, match="could not convert"):
        zeek.parse_number(value)
    with pytest.raises(ValueError, match="could not convert"):
        zeek.parse_float(value)


def test_parse_float_keeps_float_rules():
    assert zeek.parse_float(" 1.5e3 ") == 1500.0
    assert zeek.parse_float(7) == 7.0
    assert zeek.parse_float("inf") == float("inf")
