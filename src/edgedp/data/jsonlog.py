"""Reader for Zeek JSON logs: one JSON object per line.

Zeek's JSON writer uses dotted keys (`id.orig_h`), omits unset fields, writes
sets as arrays, and writes `ts` as epoch seconds or, with
`LogAscii::json_timestamps = JSON::TS_ISO8601`, as an ISO 8601 string. Nested
objects (`{"id": {"orig_h": ...}}`) are flattened to the dotted names.
Lines are decoded one by one in Python, so a bad line costs only itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from edgedp import zeek
from edgedp.data import records
from edgedp.data.skips import SkipLog
from edgedp.data.sources import read_chunks


def read_json(
    path: Path, skips: SkipLog, *, chunk_bytes: int
) -> Iterator[pl.DataFrame]:
    """Yield flow record frames (see `records.to_records`) from a JSON log."""
    for first_line, chunk, _ in read_chunks(path, chunk_bytes):
        numbers: list[int] = []
        columns: dict[str, list[str | None]] = {
            name: [] for name in zeek.LABELED_CONN_FIELDS
        }
        for offset, raw in enumerate(chunk.split(b"\n")):
            line = first_line + offset
            if not raw.strip():
                continue
            row = _parse_line(raw, line, skips)
            if row is None:
                continue
            numbers.append(line)
            for name, values in columns.items():
                values.append(row.get(name))

        raw_columns = {
            name: pl.Series(name, values, dtype=pl.String)
            for name, values in columns.items()
        }
        lines = pl.Series(records.LINE, numbers, dtype=pl.Int64)
        yield records.to_records(records.raw_frame(raw_columns, lines), skips)


def _parse_line(raw: bytes, line: int, skips: SkipLog) -> dict[str, str | None] | None:
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        skips.add(line, "invalid UTF-8")
        return None
    except ValueError as error:
        skips.add(line, f"invalid JSON: {zeek.json_error_text(error)}")
        return None
    if not isinstance(value, dict):
        skips.add(line, "not a JSON object")
        return None
    row: dict[str, str | None] = {}
    for name, item in zeek.flatten_json(value).items():
        if name in zeek.NUMERIC_FIELDS:
            problem = zeek.json_type_problem(name, item)
            if problem is not None:
                skips.add(line, problem)
                return None
        row[name] = _text(item)

    # Not a conn.log record: `serve` skips such a line as `missing_fields` too.
    missing = [name for name in zeek.ALWAYS_LOGGED if name not in row]
    if missing:
        skips.add(line, f"no {', '.join(missing)}, which every conn.log line has")
        return None

    ts = row.get("ts")
    if ts is not None and not _is_number(ts):
        try:
            row["ts"] = repr(_iso_to_epoch(ts))
        except ValueError:
            skips.add(line, "unparsable timestamp in ts")
            return None
    return row


def _text(value: Any) -> str | None:
    """Return a JSON value as the text Zeek's TSV writer would have written."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) if value else None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        zeek.parse_float(text)
    except ValueError:
        return False
    return True


def _iso_to_epoch(text: str) -> float:
    """Return epoch seconds for an ISO 8601 time; naive times count as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
