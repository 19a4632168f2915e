"""The fixed feature encoder: Zeek `conn.log` columns to numbers in [0, 1].

The encoder is never fitted on data. Its vocabularies (ports, protocols,
connection states, services, history letters) and its numeric caps are
written below, so the same flow gets the same numbers on every machine and in
every run. Because nothing is learned from the training data before DP-SGD,
the privacy guarantee of training covers the whole pipeline.

This module imports only numpy and the standard library: the gateway runtime
imports it as well as the host.

Two feature sets exist:

- `paper`: the features of the study being reproduced (ports, protocol,
  connection state, duration).
- `extended`: `paper` plus service, byte and packet counts, missed bytes and
  history flags.

Source and destination addresses, `uid` and `ts` are never features.

Encodings:

- Ports (`id.orig_p`, `id.resp_p`): `<field>` is port / 65535, and
  `<field>_range=system|user|dynamic` one-hot the IANA range (0-1023,
  1024-49151, 49152-65535). The responder port also has a one-hot slot per
  port in `RESP_PORTS` and `id.resp_p=other` for the rest. For ICMP, Zeek
  stores the ICMP type and code in these fields, and they are encoded the
  same way. A missing or out-of-range port gives 0 in every port column.
- Categories (`proto`, `conn_state`, `service`): one slot per vocabulary entry
  and an explicit `<field>=other` slot for any value not in the vocabulary.
  A missing `proto` or `conn_state` counts as other. `service` has its own
  `service=-` slot for an unset service (Zeek saw no known protocol), and a
  comma-separated service list such as `http,ssl` sets every slot it names.
- Durations, byte and packet counts: log1p(value) / log1p(cap), clipped to
  [0, 1]; negative values count as 0 and values above the cap as the cap.
  The caps are in `LOG_CAPS`.
- Missing numbers: `duration`, `orig_bytes` and `resp_bytes` are the fields
  Zeek leaves unset when it could not measure a connection. For each of them
  a missing value encodes as 0 with its `<field>_missing` flag set to 1. The
  other counts are always set by Zeek, so a missing one encodes as 0 (the
  same as a zero count) and has no flag.
- History (`history`): Zeek writes one letter per event, upper case for the
  originator and lower case for the responder (`HISTORY_LETTERS`). Each
  letter and direction has a presence flag `history=<letter>`, `history=^`
  flags a flipped direction, `history=other` any other character, and
  `history_missing` an unset history.

Inputs may contain NaN or None for missing values. NaN never reaches the
output: every output value is a finite float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ENCODER_VERSION = "conn-1"
"""Changes whenever any feature's name, order or numbers change."""

PAPER = "paper"
EXTENDED = "extended"
FEATURE_SETS: tuple[str, ...] = (PAPER, EXTENDED)

PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "icmp")

CONN_STATES: tuple[str, ...] = (
    "S0",
    "S1",
    "SF",
    "REJ",
    "S2",
    "S3",
    "RSTO",
    "RSTR",
    "RSTOS0",
    "RSTRH",
    "SH",
    "SHR",
    "OTH",
)
"""Zeek's connection states, as documented for `conn.log`."""

SERVICES: tuple[str, ...] = (
    "dns",
    "http",
    "ssl",
    "ssh",
    "dhcp",
    "ntp",
    "irc",
    "ftp",
    "ftp-data",
    "smtp",
    "snmp",
    "sip",
    "telnet",
    "mqtt",
    "krb",
    "smb",
    "dce_rpc",
    "rdp",
    "mysql",
    "syslog",
)
"""Services that Zeek's bundled analyzers name, the ones common on IoT."""

RESP_PORTS: tuple[int, ...] = (
    21,
    22,
    23,
    53,
    67,
    68,
    80,
    123,
    137,
    443,
    445,
    1883,
    1900,
    2323,
    5353,
    5555,
    6667,
    7547,
    8080,
    8081,
    37215,
    52869,
)
"""Responder ports with their own slot: common IoT services and the ports
that IoT botnets (Mirai, Okiru, Torii) scan or use for C&C."""

HISTORY_LETTERS = "SHADFRCGTWIQ"
"""Zeek history letters, originator side; the responder side is lower case."""

LOG_CAPS: dict[str, float] = {
    "duration": 86_400.0,
    "orig_bytes": 1e10,
    "resp_bytes": 1e10,
    "missed_bytes": 1e10,
    "orig_pkts": 1e7,
    "orig_ip_bytes": 1e10,
    "resp_pkts": 1e7,
    "resp_ip_bytes": 1e10,
}
"""Value (seconds, bytes or packets) that maps to 1.0 on the log scale."""

FLAGGED_NUMBERS: tuple[str, ...] = ("duration", "orig_bytes", "resp_bytes")
"""Numeric fields with a `<field>_missing` flag."""

_PAPER_NUMBERS: tuple[str, ...] = ("duration",)
_EXTENDED_NUMBERS: tuple[str, ...] = tuple(LOG_CAPS)
_PORT_MAX = 65_535
_PORT_RANGES: tuple[tuple[str, int, int], ...] = (
    ("system", 0, 1023),
    ("user", 1024, 49_151),
    ("dynamic", 49_152, _PORT_MAX),
)


class FeatureError(ValueError):
    """A feature set is unknown or a column needed by it is missing."""


@dataclass(frozen=True)
class Categorical:
    """A dictionary-encoded string column.

    `codes[i]` is the index into `categories` of row i, or a negative number
    for a missing value. Readers that already hold such columns (Polars
    categoricals, for example) pass them as they are, which saves the encoder
    from looking at every string.
    """

    categories: Sequence[str | None]
    codes: np.ndarray


Column = Sequence[Any] | np.ndarray | Categorical
"""Numbers as float (NaN or None when missing), strings as str or None."""


def _check_feature_set(feature_set: str) -> None:
    if feature_set not in FEATURE_SETS:
        raise FeatureError(
            f"unknown feature set {feature_set!r}; choose {' or '.join(FEATURE_SETS)}"
        )


def _port_names(field: str, vocabulary: Sequence[int]) -> list[str]:
    names = [field] + [f"{field}_range={name}" for name, _, _ in _PORT_RANGES]
    if vocabulary:
        names += [f"{field}={port}" for port in vocabulary] + [f"{field}=other"]
    return names


def _category_names(field: str, vocabulary: Sequence[str]) -> list[str]:
    return [f"{field}={value}" for value in vocabulary] + [f"{field}=other"]


def _number_names(fields: Sequence[str]) -> list[str]:
    names = []
    for name in fields:
        names.append(name)
        if name in FLAGGED_NUMBERS:
            names.append(f"{name}_missing")
    return names


def _history_names() -> list[str]:
    letters = [letter for upper in HISTORY_LETTERS for letter in (upper, upper.lower())]
    return [f"history={letter}" for letter in letters] + [
        "history=^",
        "history=other",
        "history_missing",
    ]


def feature_names(feature_set: str = EXTENDED) -> list[str]:
    """Return the names of the encoder's output columns, in order.

    Raises:
        FeatureError: `feature_set` is not `paper` or `extended`.
    """
    _check_feature_set(feature_set)
    names = (
        _port_names("id.orig_p", ())
        + _port_names("id.resp_p", RESP_PORTS)
        + _category_names("proto", PROTOCOLS)
        + _category_names("conn_state", CONN_STATES)
    )
    if feature_set == PAPER:
        return names + _number_names(_PAPER_NUMBERS)
    return (
        names
        + _category_names("service", SERVICES)
        + ["service=-"]
        + _number_names(_EXTENDED_NUMBERS)
        + _history_names()
    )


def input_fields(feature_set: str = EXTENDED) -> tuple[str, ...]:
    """Return the Zeek fields that `encode` reads for `feature_set`."""
    _check_feature_set(feature_set)
    fields = ("id.orig_p", "id.resp_p", "proto", "conn_state", "duration")
    if feature_set == PAPER:
        return fields
    return fields + ("service", "history") + _EXTENDED_NUMBERS[1:]


def dictionary_encode(values: Column) -> Categorical:
    """Return `values` as a `Categorical`, None becoming a negative code.

    Strings are looked up in a dict, once each, which keeps the cost per row
    small on the gateway where columns arrive as Python lists.
    """
    if isinstance(values, Categorical):
        return values
    index: dict[Any, int] = {}
    codes = np.fromiter(
        (
            -1 if value is None else index.setdefault(value, len(index))
            for value in values
        ),
        dtype=np.intp,
        count=len(values),
    )
    return Categorical(categories=list(index), codes=codes)


def _category_table(
    column: Categorical, row_of: Any, missing_row: np.ndarray
) -> np.ndarray:
    """Return one output row per category, and `missing_row` as the last row."""
    table = np.zeros((len(column.categories) + 1, len(missing_row)), dtype=np.float32)
    for position, category in enumerate(column.categories):
        table[position] = missing_row if category is None else row_of(category)
    table[-1] = missing_row
    return table


def _table_index(column: Categorical) -> np.ndarray:
    """Return the codes as row numbers of `_category_table`, missing last."""
    codes = np.asarray(column.codes)
    if codes.dtype != np.intp:
        codes = codes.astype(np.intp)
    if codes.size and codes.min() < 0:
        codes = np.where(codes < 0, len(column.categories), codes)
    return codes


def _write_table(
    rows: np.ndarray, column: Categorical, row_of: Any, missing_row: np.ndarray
) -> None:
    """Write each flow's category row into `rows` (features x flows).

    Every category is mapped once through `row_of`. When each feature's
    values are contiguous (a column-major output), every slot is one
    `np.take` from its table column, and a slot that no category sets is
    zero-filled. Otherwise the table rows are gathered per flow, which suits
    a row-major output.
    """
    table = _category_table(column, row_of, missing_row)
    codes = _table_index(column)
    if rows.strides[1] != rows.itemsize:
        rows.T[...] = table[codes]
        return
    for slot in range(len(missing_row)):
        values = table[:, slot]
        if values.any():
            np.take(values, codes, out=rows[slot], mode="clip")
        else:
            rows[slot] = 0.0


def _one_hot_row(vocabulary: Sequence[str]) -> Any:
    slots = {value.casefold(): position for position, value in enumerate(vocabulary)}
    other = len(vocabulary)

    def row_of(value: str) -> np.ndarray:
        row = np.zeros(len(vocabulary) + 1, dtype=np.float32)
        row[slots.get(value.strip().casefold(), other)] = 1.0
        return row

    return row_of


def _write_category(
    rows: np.ndarray, values: Column, vocabulary: Sequence[str]
) -> None:
    """One-hot encode with an `other` slot; missing values count as other."""
    other_row = np.zeros(len(vocabulary) + 1, dtype=np.float32)
    other_row[-1] = 1.0
    _write_table(rows, dictionary_encode(values), _one_hot_row(vocabulary), other_row)


def _service_row(value: str) -> np.ndarray:
    """Multi-hot row over `SERVICES`, `service=other` and `service=-`."""
    row = np.zeros(len(SERVICES) + 2, dtype=np.float32)
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if not names or names == ["-"]:
        row[-1] = 1.0
        return row
    for name in names:
        row[SERVICES.index(name) if name in SERVICES else len(SERVICES)] = 1.0
    return row


def _write_service(rows: np.ndarray, values: Column) -> None:
    unset_row = np.zeros(len(SERVICES) + 2, dtype=np.float32)
    unset_row[-1] = 1.0
    _write_table(rows, dictionary_encode(values), _service_row, unset_row)


_HISTORY_SLOTS = {
    letter: position
    for position, letter in enumerate(
        letter for upper in HISTORY_LETTERS for letter in (upper, upper.lower())
    )
}


def _history_row(value: str) -> np.ndarray:
    """Letter flags, then `^`, `other` and `missing`."""
    width = len(_HISTORY_SLOTS) + 3
    row = np.zeros(width, dtype=np.float32)
    if value in ("", "-"):
        row[width - 1] = 1.0
        return row
    for letter in value:
        if letter == "^":
            row[width - 3] = 1.0
        else:
            row[_HISTORY_SLOTS.get(letter, width - 2)] = 1.0
    return row


def _write_history(rows: np.ndarray, values: Column) -> None:
    missing_row = np.zeros(len(_HISTORY_SLOTS) + 3, dtype=np.float32)
    missing_row[-1] = 1.0
    _write_table(rows, dictionary_encode(values), _history_row, missing_row)


def _as_float(values: Column, field: str) -> np.ndarray:
    if isinstance(values, Categorical):
        raise FeatureError(f"{field} is numeric, but a Categorical was given")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FeatureError(
            f"{field} must hold numbers (None or NaN when missing): {error}; "
            "parse text fields with edgedp.zeek.parse_number first"
        ) from error


_RESP_PORT_SLOT = np.full(_PORT_MAX + 1, len(RESP_PORTS), dtype=np.intp)
_RESP_PORT_SLOT[list(RESP_PORTS)] = np.arange(len(RESP_PORTS))


def _write_port(rows: np.ndarray, values: Column, field: str, vocabulary: bool) -> None:
    ports = _as_float(values, field)
    valid = np.isfinite(ports) & (ports >= 0) & (ports <= _PORT_MAX)
    port = np.where(valid, ports, 0.0)

    # The division runs in float64 and only its result is rounded to float32.
    np.divide(port, _PORT_MAX, out=rows[0])
    for position, (_, low, high) in enumerate(_PORT_RANGES, start=1):
        rows[position] = valid & (port >= low) & (port <= high)
    if vocabulary:
        slots = _RESP_PORT_SLOT[port.astype(np.intp)]
        flows = np.flatnonzero(valid)
        ports_rows = rows[1 + len(_PORT_RANGES) :]
        ports_rows[...] = 0.0
        ports_rows[slots[flows], flows] = 1.0


def _write_number(rows: np.ndarray, values: Column, field: str) -> None:
    """log1p scale with a fixed cap, plus a missing flag for flagged fields.

    The scale is computed in float64, NaN passing through every step, and
    rounded to float32 only when stored; missing values are then set to 0.
    """
    numbers = _as_float(values, field)
    missing = np.isnan(numbers)
    scaled = np.clip(numbers, 0.0, LOG_CAPS[field])
    np.log1p(scaled, out=scaled)
    np.divide(scaled, math.log1p(LOG_CAPS[field]), out=scaled)
    scaled[missing] = 0.0
    rows[0] = scaled
    if field in FLAGGED_NUMBERS:
        rows[1] = missing


def encode(columns: Mapping[str, Column], feature_set: str = EXTENDED) -> np.ndarray:
    """Encode flow records into a float32 array of shape (flows, features).

    Args:
        columns: Zeek field name (`id.resp_p`, `proto`, ...) to one column of
            equal length per field in `input_fields(feature_set)`. Numeric
            columns hold numbers, with NaN or None for a missing value.
            String columns hold str or None, or are given as `Categorical`.
            Other keys are ignored.
        feature_set: `paper` or `extended`.

    Returns:
        Array whose columns follow `feature_names(feature_set)`, every value
        finite and in [0, 1].

    Raises:
        FeatureError: unknown feature set, missing field, columns of unequal
            length, or text in a numeric column.
    """
    flows = _check_columns(columns, feature_set)
    out = np.empty((flows, len(feature_names(feature_set))), dtype=np.float32)
    return encode_into(columns, feature_set, out=out)


def encode_into(
    columns: Mapping[str, Column], feature_set: str = EXTENDED, *, out: np.ndarray
) -> np.ndarray:
    """Encode like `encode`, into a preallocated array, and return `out`.

    `out` is a float32 array of shape (flows, features) in any memory layout.
    A column-major one (`order="F"`) is the fastest to fill, because each
    feature's values are then contiguous, and its transpose gives one
    contiguous array per feature, as Arrow and Parquet columns store them.
    The values are the same in every layout.

    Raises:
        FeatureError: as `encode`, and for an `out` of the wrong dtype or
            shape.
    """
    flows = _check_columns(columns, feature_set)
    width = len(feature_names(feature_set))
    if out.dtype != np.float32 or out.shape != (flows, width):
        raise FeatureError(
            f"out must be a float32 array of shape ({flows}, {width}), "
            f"got {out.dtype} {out.shape}"
        )

    writers: list[tuple[list[str], Any]] = [
        (
            _port_names("id.orig_p", ()),
            lambda rows: _write_port(rows, columns["id.orig_p"], "id.orig_p", False),
        ),
        (
            _port_names("id.resp_p", RESP_PORTS),
            lambda rows: _write_port(rows, columns["id.resp_p"], "id.resp_p", True),
        ),
        (
            _category_names("proto", PROTOCOLS),
            lambda rows: _write_category(rows, columns["proto"], PROTOCOLS),
        ),
        (
            _category_names("conn_state", CONN_STATES),
            lambda rows: _write_category(rows, columns["conn_state"], CONN_STATES),
        ),
    ]
    if feature_set == PAPER:
        writers.append(
            (
                _number_names(("duration",)),
                lambda rows: _write_number(rows, columns["duration"], "duration"),
            )
        )
    else:
        writers.append(
            (
                _category_names("service", SERVICES) + ["service=-"],
                lambda rows: _write_service(rows, columns["service"]),
            )
        )
        writers += [
            (
                _number_names((name,)),
                lambda rows, name=name: _write_number(rows, columns[name], name),
            )
            for name in _EXTENDED_NUMBERS
        ]
        writers.append(
            (_history_names(), lambda rows: _write_history(rows, columns["history"]))
        )

    # Each writer fills a (features x flows) view of its slice of `out`; the
    # slices follow `feature_names`, which is built from the same name lists.
    by_feature = out.T
    start = 0
    for names, write in writers:
        write(by_feature[start : start + len(names)])
        start += len(names)
    return out


def _check_columns(columns: Mapping[str, Column], feature_set: str) -> int:
    """Return the number of flows, after checking that every field is there."""
    needed = input_fields(feature_set)
    absent = [name for name in needed if name not in columns]
    if absent:
        raise FeatureError(
            f"feature set {feature_set!r} needs the fields {', '.join(absent)}, "
            "which the input does not have"
        )
    lengths = {name: _length(columns[name]) for name in needed}
    if len(set(lengths.values())) > 1:
        raise FeatureError(f"columns differ in length: {lengths}")
    return lengths["id.orig_p"]


def _length(column: Column) -> int:
    if isinstance(column, Categorical):
        return len(column.codes)
    return len(column)
