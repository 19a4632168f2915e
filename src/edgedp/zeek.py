"""Zeek `conn.log` conventions: field names, markers, headers and line splitting.

This module uses only the standard library. The host readers use it for log
headers, and the gateway runtime uses it to parse live `conn.log` lines one at
a time.

A Zeek TSV log starts with a header block of directives::

    #separator \\x09
    #set_separator  ,
    #empty_field    (empty)
    #unset_field    -
    #path   conn
    #open   2019-03-15-14-50-49
    #fields ts  uid  id.orig_h  ...
    #types  time  string  addr  ...

Data lines follow, and a `#close` line may end the block. A file can hold
several blocks. IoT-23's `conn.log.labeled` files separate the last three
fields (`tunnel_parents`, `label`, `detailed-label`) with three spaces
instead of the separator, in `#fields`, in `#types` and on every data line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

# Zeek's default markers for an unset field and for an empty set or vector.
UNSET = "-"
EMPTY = "(empty)"
DEFAULT_SEPARATOR = "\t"
DEFAULT_SET_SEPARATOR = ","

# IoT-23's labeling tool appended its columns with this separator.
IOT23_LABEL_SEPARATOR = "   "

CONN_FIELDS: tuple[str, ...] = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
)
"""The `conn.log` fields that IoT-23 keeps, in Zeek's order."""

LABEL = "label"
DETAILED_LABEL = "detailed-label"
LABEL_FIELDS: tuple[str, ...] = (LABEL, DETAILED_LABEL)
LABELED_CONN_FIELDS: tuple[str, ...] = CONN_FIELDS + LABEL_FIELDS
"""The 23 columns of an IoT-23 `conn.log.labeled` file."""

NUMERIC_FIELDS: tuple[str, ...] = (
    "ts",
    "id.orig_p",
    "id.resp_p",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "missed_bytes",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
)
"""Fields of Zeek type time, port, interval or count, read as float64."""

BOOL_FIELDS: tuple[str, ...] = ("local_orig", "local_resp")

STRING_FIELDS: tuple[str, ...] = tuple(
    name for name in LABELED_CONN_FIELDS if name not in NUMERIC_FIELDS + BOOL_FIELDS
)

# Other spellings of field names found in exports, folded by `canonical_field`.
_FIELD_ALIASES = {
    "detailed_label": DETAILED_LABEL,
    "detailedlabel": DETAILED_LABEL,
    "id_orig_h": "id.orig_h",
    "id_orig_p": "id.orig_p",
    "id_resp_h": "id.resp_h",
    "id_resp_p": "id.resp_p",
}

# IoT-23's label vocabulary. `normalize_label` maps any letter case of these
# onto the spelling below, so `benign` becomes `Benign`.
KNOWN_LABELS: tuple[str, ...] = (
    "Benign",
    "Malicious",
    "Attack",
    "C&C",
    "C&C-FileDownload",
    "C&C-HeartBeat",
    "C&C-HeartBeat-Attack",
    "C&C-HeartBeat-FileDownload",
    "C&C-Mirai",
    "C&C-PartOfAHorizontalPortScan",
    "C&C-Torii",
    "DDoS",
    "FileDownload",
    "Okiru",
    "Okiru-Attack",
    "PartOfAHorizontalPortScan",
    "PartOfAHorizontalPortScan-Attack",
)
_LABELS_BY_FOLDED = {name.casefold(): name for name in KNOWN_LABELS}

_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


class ZeekFormatError(ValueError):
    """A header directive or data line does not follow the Zeek log format."""


@dataclass(frozen=True)
class Header:
    """The directives of one Zeek log header block."""

    separator: str = DEFAULT_SEPARATOR
    set_separator: str = DEFAULT_SET_SEPARATOR
    empty_field: str = EMPTY
    unset_field: str = UNSET
    path: str | None = None
    open: str | None = None
    fields: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    label_quirk: bool = False
    """True when the last fields are joined by three spaces (IoT-23)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Directives this module does not interpret, by name."""


def unescape_separator(value: str) -> str:
    r"""Turn a `#separator` value such as `\x09` into the character it names."""
    return _HEX_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), value)


def is_directive(line: str) -> bool:
    """Return True for a header or footer line (one that starts with `#`)."""
    return line.startswith("#")


def _split_quirky(value: str, separator: str) -> tuple[tuple[str, ...], bool]:
    """Split a `#fields` or `#types` value, undoing the three-space quirk."""
    parts = value.split(separator)
    if parts and IOT23_LABEL_SEPARATOR in parts[-1]:
        tail = [p.strip() for p in parts[-1].split(IOT23_LABEL_SEPARATOR)]
        return tuple(parts[:-1] + [p for p in tail if p]), True
    return tuple(parts), False


def apply_directive(header: Header, line: str) -> Header:
    """Return `header` updated with one directive line.

    A `#separator` line starts a new header block, so it resets every other
    directive. `#close` lines leave the header as it is; IoT-23 sometimes
    appends `   benign   -` to them, which is why their value is ignored.

    Raises:
        ZeekFormatError: the line is not a directive, or `#separator` has no
            value.
    """
    line = line.rstrip("\r\n")
    if not is_directive(line):
        raise ZeekFormatError(f"not a Zeek directive: {line[:60]!r}")

    if line.startswith("#separator"):
        value = line[len("#separator") :].strip()
        if not value:
            raise ZeekFormatError("#separator has no value; expected e.g. \\x09")
        return Header(separator=unescape_separator(value))

    name, found, value = line[1:].partition(header.separator)
    if not found and " " in line:
        # A hand-edited header may use spaces after the directive name.
        name, _, value = line[1:].partition(" ")
    if name == "set_separator":
        return replace(header, set_separator=value)
    if name == "empty_field":
        return replace(header, empty_field=value)
    if name == "unset_field":
        return replace(header, unset_field=value)
    if name == "path":
        return replace(header, path=value)
    if name == "open":
        return replace(header, open=value)
    if name == "fields":
        fields, quirk = _split_quirky(value, header.separator)
        fields = tuple(canonical_field(f) for f in fields)
        return replace(header, fields=fields, label_quirk=header.label_quirk or quirk)
    if name == "types":
        types, quirk = _split_quirky(value, header.separator)
        return replace(header, types=types, label_quirk=header.label_quirk or quirk)
    if name == "close":
        return header
    return replace(header, extra={**header.extra, name: value})


def parse_header(lines: Iterable[str]) -> Header:
    """Return the header that a sequence of directive lines describes."""
    header = Header()
    for line in lines:
        header = apply_directive(header, line)
    return header


def split_line(line: str, header: Header) -> list[str]:
    """Split one data line into its fields.

    The line may end in LF or CRLF. When the header shows the IoT-23
    three-space quirk, the last field is split on three spaces as well. The
    caller checks the field count against `header.fields`.
    """
    values = line.rstrip("\r\n").split(header.separator)
    if header.label_quirk and IOT23_LABEL_SEPARATOR in values[-1]:
        values[-1:] = values[-1].split(IOT23_LABEL_SEPARATOR)
    return values


def canonical_field(name: str) -> str:
    """Return the Zeek spelling of a column name from a log or an export.

    Surrounding spaces and quotes are dropped, and spellings such as
    `detailed_label` become `detailed-label`.
    """
    cleaned = name.strip().strip('"').strip()
    return _FIELD_ALIASES.get(cleaned.lower(), cleaned)


def is_missing(value: str | None, header: Header | None = None) -> bool:
    """Return True for a value that means "no value".

    That is None, the empty string, and the header's unset and empty-set
    markers (`-` and `(empty)` by default).
    """
    if value is None or value == "":
        return True
    if header is None:
        return value in (UNSET, EMPTY)
    return value in (header.unset_field, header.empty_field)


def parse_float(value: str | float) -> float:
    """Parse a number as `float` does, but reject underscores and non-ASCII.

    Python's `float` reads `1_000` as 1000 and Arabic-Indic digits as their
    values. Zeek writes neither, so such text is rejected like any other
    unparsable number.
    `nan`, `inf` and values that overflow to infinity are returned as they
    are, an integer too large for a float (from JSON) as infinity of its
    sign. The caller decides whether they are allowed.

    Raises:
        ValueError: `float` rejects the value, or it is text with an
            underscore or a non-ASCII character.
    """
    if isinstance(value, str) and ("_" in value or not value.isascii()):
        raise ValueError(f"could not convert string to float: {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def json_error_text(error: ValueError) -> str:
    """Describe why `json.loads` rejected a line, without Python's advice.

    Python refuses integers of more than 4300 digits (`sys.int_info`) with
    a message that suggests changing an interpreter limit.
    """
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    if "digits" in str(error):
        return "an integer with too many digits to read"
    return str(error)


def json_type_problem(name: str, value: object) -> str | None:
    """Return why a JSON value of `ts` or a numeric field has the wrong type.

    Returns None for a value that may fit: a number or a string, which is
    parsed later, or null. A list, a bool or an object is never a number or
    a time. A list with one number is not unwrapped, so every reader skips
    such a line alike.
    """
    if isinstance(value, bool):
        kind = "a bool"
    elif isinstance(value, list):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "an object"
    else:
        return None
    expected = "a number or an ISO 8601 string" if name == "ts" else "a number"
    return f"{name} is {kind}, expected {expected}"


def number_problem(value: object) -> str:
    """Name what is wrong with a number that `parse_number` rejected.

    Returns `unparsable number` for text that `parse_float` rejects, and
    `not a finite number` for nan, inf and values too large for a float,
    such as 1e400.
    """
    try:
        parse_float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unparsable number"
    return "not a finite number"


def parse_number(value: str | None, header: Header | None = None) -> float | None:
    """Parse a Zeek time, port, interval or count field.

    Returns None for a missing value (see `is_missing`).

    Raises:
        ValueError: the value is present but not a finite decimal number,
            or it contains an underscore (see `parse_float`).
    """
    if is_missing(value, header):
        return None
    number = parse_float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def normalize_label(value: str | None) -> str | None:
    """Return an IoT-23 label or detailed-label in its canonical spelling.

    Known labels (`KNOWN_LABELS`) are matched without regard to letter case,
    so `benign` becomes `Benign`. Other labels keep their spelling, without
    surrounding spaces. Missing values (`-`, `(empty)`, empty) become None.
    """
    if value is None:
        return None
    stripped = value.strip()
    if is_missing(stripped):
        return None
    return _LABELS_BY_FOLDED.get(stripped.casefold(), stripped)


ALWAYS_LOGGED: tuple[str, ...] = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "conn_state",
)
"""Fields that Zeek writes on every conn.log line, unset or not.

`Conn::Info` declares `conn_state` `&optional`, but `set_conn` in Zeek's
`base/protocols/conn/main.zeek` sets it for every connection before the line
is written, and the other logs (dns, http, ...) have no such field. A JSON
line without one of these fields that the parser reads is not a conn.log
record. The gateway and `prepare` skip such a line, and `prepare` rejects
a JSON file whose first object lacks one. Every other field may be absent,
because Zeek's JSON writer leaves unset fields out.
"""


def flatten_json(record: dict[str, Any]) -> dict[str, Any]:
    """Return a JSON log object's fields under dotted, canonical names.

    Nested objects (`{"id": {"orig_h": ...}}`) are flattened and every name
    goes through `canonical_field`. An object in a numeric field
    (`"ts": {...}`) is kept whole, so that the line is skipped for a field
    of the wrong type. A later duplicate name replaces an earlier one.
    """
    flat: dict[str, Any] = {}
    _flatten_into(flat, record, "")
    return flat


def _flatten_into(flat: dict[str, Any], value: dict[str, Any], prefix: str) -> None:
    for key, item in value.items():
        path = f"{prefix}{key}"
        name = canonical_field(path)
        if isinstance(item, dict) and name not in NUMERIC_FIELDS:
            _flatten_into(flat, item, f"{path}.")
        else:
            flat[name] = item
