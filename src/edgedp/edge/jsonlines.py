"""Zeek JSON conn.log lines for the gateway: field names, values and checks.

Zeek's JSON writer puts one object on each line, with dotted field names
(`id.orig_h`), and leaves out the fields that are unset. Other tools nest
the connection id (`{"id": {"orig_h": ...}}`) or spell a name as an export
does (`id_orig_h`). `RecordFlattener` turns both into Zeek's dotted names
by the rules that `edgedp prepare`'s JSON reader also uses
(`zeek.flatten_json`).

This module uses only the standard library and edgedp's pure modules,
because the gateway runtime imports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from edgedp import zeek

_MAX_PLAIN_KEYS = 1024
"""Distinct field names remembered as already canonical; later ones are
checked on every line, so hostile input cannot grow the set."""


class RecordFlattener:
    """Return JSON log records with Zeek's dotted, canonical field names.

    Records whose names are already canonical and that have no nested
    object, as Zeek writes them, are returned as they are, so the usual line
    costs one set comparison.
    """

    def __init__(self) -> None:
        self._plain_keys: set[str] = set()

    def __call__(
        self, record: dict[str, Any], *, may_nest: bool = True
    ) -> dict[str, Any]:
        """Return `record` flattened, or itself when it is flat already.

        `may_nest` False skips the scan for nested objects, for lines that
        `may_nest` (the function) showed to have none.
        """
        if self._has_plain_keys(record) and not (
            may_nest and dict in map(type, record.values())
        ):
            return record
        return zeek.flatten_json(record)

    def _has_plain_keys(self, record: dict[str, Any]) -> bool:
        keys = record.keys()
        if keys <= self._plain_keys:
            return True
        for key in keys - self._plain_keys:
            if zeek.canonical_field(key) != key:
                return False
            if len(self._plain_keys) < _MAX_PLAIN_KEYS:
                self._plain_keys.add(key)
        return True


def may_nest(text: str) -> bool:
    """Return False when no line of `text` can contain a nested JSON object.

    A nested object needs a `{` that does not start a line. When every `{`
    starts a line, no line has one, which two fast counts show.
    """
    at_line_start = text.count("\n{") + text.startswith("{")
    return text.count("{") != at_line_start


def missing_fields(record: dict[str, Any], required: Sequence[str]) -> list[str]:
    """Return the `required` fields that a flattened record lacks."""
    return [name for name in required if name not in record]


def other_json_log(line: bytes) -> str | None:
    """Return the `_path` of a JSON log line that names a log other than conn.

    Some setups that send every Zeek log to one JSON stream add a `_path`
    field with the log's name. Returns None for a line without `_path`, for
    `conn`, and for a line that is not a JSON object.
    """
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    path = record.get("_path")
    if not isinstance(path, str) or path == "conn":
        return None
    return path


def json_value(name: str, value: Any, numeric: bool) -> Any:
    """Return a JSON field as a number (numeric fields) or a string."""
    if value is None:
        return None
    if numeric:
        problem = zeek.json_type_problem(name, value)
        if problem is not None:
            raise ValueError(problem)
    if isinstance(value, bool):
        raise ValueError(f"{name} is a boolean")
    if numeric:
        if name == "ts" and isinstance(value, str) and not _is_decimal(value):
            return iso_time(value)
        if isinstance(value, (int, float, str)):
            return value
        raise ValueError(f"{name} has type {type(value).__name__}, expected a number")
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"{name} has type {type(value).__name__}, expected a string")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def iso_time(value: str) -> str | None:
    """Return an ISO 8601 `ts` as epoch seconds text, or None if it is invalid.

    The text has six decimals, as Zeek writes `ts`, and is computed in whole
    microseconds, because a float would round `9999-12-31T23:59:59.999999`
    up into year 10000. Digits after the microseconds are truncated (by
    `datetime.fromisoformat`). A naive time is taken as UTC. An invalid `ts`
    does not skip the flow, because `ts` is not a feature. Its alert gets
    `"ts": null`, as in TSV.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    micros = (moment - _EPOCH) // _MICROSECOND
    sign = "-" if micros < 0 else ""
    whole, micro = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{micro:06d}"


def _is_decimal(value: str) -> bool:
    try:
        zeek.parse_float(value)
    except ValueError:
        return False
    return True
