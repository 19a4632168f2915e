"""Zeek conn.log lines to flow columns, ready for the feature encoder.

`LineParser` turns the `Chunk`s of a line source into `FlowColumns`: one
column per field that the encoder or an alert needs. Numeric fields become
float64 arrays (NaN when unset). String fields stay lists of the logged text,
in which Zeek's markers (`-`, `(empty)`) and None mean unset; `categorical`
turns one into the encoder's dictionary-encoded input. The parser reads Zeek
TSV, with the header directives and line splitting of `edgedp.zeek`, and
Zeek JSON lines, whose nested objects it flattens (see `edgedp.edge.jsonlines`).

Bad input never raises. A line is skipped, and reported through the
`on_bad_line` callback with its file and line number, when it is:

- `overlong`: longer than the line source's limit;
- `invalid_utf8`: not valid UTF-8;
- `field_count`: a TSV line with more or fewer fields than `#fields` names;
- `bad_number`: a numeric field that is not a finite decimal number;
- `bad_json`: a JSON line that is not an object, or a field of the wrong type;
- `bad_header`: a directive line that `edgedp.zeek` rejects;
- `missing_fields`: a data line of a header block whose `#fields` lacks a
  field the encoder needs, or a JSON line without one of the fields that
  Zeek writes on every conn.log line (`zeek.ALWAYS_LOGGED`).

A TSV file without a `#fields` directive is read with the standard conn.log
layout (`zeek.CONN_FIELDS`, or `zeek.LABELED_CONN_FIELDS` when the first
line has 23 fields), after one notice. Blank lines are skipped without a
report. Values that parse but cannot be real (a negative count, a port
above 65535, a count above the encoder's cap) are reported through
`on_absurd_value` and encoded by the encoder's documented rules, which clip
them into range.

`ts` is not a feature, so it is kept as logged and parsed only for the
flows an alert is written for (`flow_time`). A flow with an unparsable `ts`
is still classified, and its alert carries `"ts": null`. In JSON that is a
string that is neither a decimal number nor an ISO 8601 time. A `ts` that is
a list, a bool or an object is a field of the wrong type (`bad_json`, with
the reason that `edgedp inspect` gives); a list is not unwrapped.

This module uses only numpy, the standard library and edgedp's pure modules,
because the gateway runtime imports it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import features as encoder
from edgedp import zeek
from edgedp.edge.follow import Chunk
from edgedp.edge.jsonlines import (
    RecordFlattener,
    json_value,
    may_nest,
    missing_fields,
    other_json_log,
)

TSV = "tsv"
JSON = "json"
AUTO = "auto"
FORMATS: tuple[str, ...] = (AUTO, TSV, JSON)

ENDPOINT_FIELDS: tuple[str, ...] = (
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
)
"""Fields that every alert carries."""

MISSING_MARKERS = frozenset({zeek.UNSET, zeek.EMPTY, ""})
"""String values that mean unset, besides None."""

TEXT_FIELDS = frozenset({"ts"})
"""Numeric fields kept as logged; see `flow_time`."""

_PORT_FIELDS = frozenset({"id.orig_p", "id.resp_p"})
_PORT_MAX = 65_535

BadLineCallback = Callable[[str, str, int, str], None]
"""Called as `(reason, source, line_number, detail)` for each skipped line."""
AbsurdValueCallback = Callable[[str, str, int, float], None]
"""Called as `(field, source, line_number, value)` for an impossible value."""


@dataclass
class FlowColumns:
    """Parsed flows of one or more chunks, column by column.

    Attributes:
        columns: field name to a float64 array (numeric fields, NaN when
            unset) or a list of str and None (string fields, where the
            values in `MISSING_MARKERS` also mean unset). `ts` keeps the
            logged value; read it with `flow_time`.
        sources: per flow, the file it came from.
        lines: per flow, its 1-based line number in that file.
        read_at: per flow, `time.monotonic()` when its line was read.
    """

    columns: dict[str, Any]
    sources: list[str]
    lines: np.ndarray
    read_at: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)

    def split(self, count: int) -> tuple[FlowColumns, FlowColumns]:
        """Return the first `count` flows and the rest, in order."""
        head = {name: values[:count] for name, values in self.columns.items()}
        tail = {name: values[count:] for name, values in self.columns.items()}
        return (
            FlowColumns(
                head, self.sources[:count], self.lines[:count], self.read_at[:count]
            ),
            FlowColumns(
                tail, self.sources[count:], self.lines[count:], self.read_at[count:]
            ),
        )

    @classmethod
    def concat(cls, parts: Sequence[FlowColumns]) -> FlowColumns:
        """Join parts in order; a single part is returned as it is."""
        if len(parts) == 1:
            return parts[0]
        columns: dict[str, Any] = {}
        for name, first in parts[0].columns.items():
            if isinstance(first, np.ndarray):
                columns[name] = np.concatenate([part.columns[name] for part in parts])
            else:
                joined: list[Any] = []
                for part in parts:
                    joined.extend(part.columns[name])
                columns[name] = joined
        sources: list[str] = []
        for part in parts:
            sources.extend(part.sources)
        return cls(
            columns=columns,
            sources=sources,
            lines=np.concatenate([part.lines for part in parts]),
            read_at=np.concatenate([part.read_at for part in parts]),
        )


def categorical(values: Sequence[Any]) -> encoder.Categorical:
    """Dictionary-encode a string column for `features.encode`.

    Unset values (None and `MISSING_MARKERS`) get a negative code, which the
    encoder treats as missing. Each distinct value is looked up once, so the
    cost per flow is one dict lookup.
    """
    categories = list(set(values))
    table = {
        value: -1 if value is None or value in MISSING_MARKERS else position
        for position, value in enumerate(categories)
    }
    codes = np.fromiter(
        map(table.__getitem__, values), dtype=np.intp, count=len(values)
    )
    return encoder.Categorical(categories=categories, codes=codes)


def flow_time(value: Any) -> float | None:
    """Return a `ts` column value as epoch seconds, or None if it is invalid.

    A TSV value may carry the end of the previous line before a newline
    (see `_split_columns`); only the text after the last newline counts.
    """
    if isinstance(value, str):
        value = value.rpartition("\n")[2]
    try:
        number = zeek.parse_float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class InputFormatError(ValueError):
    """An input file that is not a Zeek conn log in TSV or JSON."""


_SNIFF_LINES = 20
"""Leading lines of a file that `foreign_format` looks at."""

_EXPECTED_FORMAT = (
    "serve reads Zeek conn logs as Zeek writes them: tab-separated with "
    "#separator and #fields header lines, or JSON objects, one per line"
)

_CSV_HINT = (
    "serve the original conn.log, or convert the CSV to TSV with a #fields "
    "line (docs/gateway.md, section Bad input, shows a command)"
)


_OVERLONG_FIRST_LINE = "its first line is longer than --max-line-bytes"


def foreign_input_message(source: str | Path, description: str) -> str:
    """Return the message for an input that `foreign_format` described.

    A first line over the length limit shows nothing about the file's format,
    so that message names the limit and does not call the file foreign.
    """
    if description.startswith(_OVERLONG_FIRST_LINE):
        return f"{source} cannot be checked as a Zeek conn log: {description}"
    return f"{source} is not a Zeek conn log: {description}"


_NUL_HEAD = (
    "it starts with NUL bytes, as a log does when logrotate's copytruncate "
    "empties it while its writer goes on writing at its old offset instead of "
    "appending; let the writer open the log in append mode, or remove the NUL "
    "bytes with tr -d '\\000'"
)


def foreign_format(
    lines: Sequence[bytes | None], max_line_bytes: int | None = None, head: bytes = b""
) -> str | None:
    """Describe why the first lines of a file are not a Zeek conn log.

    Returns None for a Zeek TSV header whose `#path` is absent or `conn`, a
    JSON object, or a conn.log line without a header (21 tab-separated
    fields, or 23 with IoT-23's labels), and for a file with no line yet.
    Otherwise returns what the lines look like and what serve reads, without
    the file name. `max_line_bytes` is the line source's limit, named in the
    message when the first line exceeds it. `head` is the file's first bytes
    (`Chunk.head`), which show what an overlong first line starts with.
    """
    sample = [line for line in lines[:_SNIFF_LINES] if line is None or line.strip()]
    if not sample:
        return None
    if head.startswith(b"\x00"):
        return _NUL_HEAD
    first = sample[0]
    if first is None:
        limit = "" if max_line_bytes is None else f" {max_line_bytes}"
        return (
            f"{_OVERLONG_FIRST_LINE}{limit}; raise --max-line-bytes if it is "
            "a conn log with longer lines"
        )
    if first.startswith(b"\x1f\x8b"):
        return (
            "it is gzip-compressed, but its name does not end in .gz; rename "
            "it to end in .gz or decompress it"
        )
    if any(line is not None and b"\x00" in line for line in sample):
        return f"it contains NUL bytes, so it is binary data; {_EXPECTED_FORMAT}"
    try:
        text = first.decode("utf-8").strip()
    except UnicodeDecodeError:
        return f"its first line is not UTF-8 text; {_EXPECTED_FORMAT}"
    if text.startswith("#"):
        kind = other_log_path(sample)
        if kind is not None:
            return f"it is a Zeek {kind} log; {OTHER_LOG_HINT}"
        return None
    if text.startswith("{"):
        return _json_log_problem(sample)

    shown = text if len(text) <= 60 else text[:57] + "..."
    if "\t" in text:
        found = len(zeek.split_line(text, zeek.Header(label_quirk=True)))
        if found in (len(zeek.CONN_FIELDS), len(zeek.LABELED_CONN_FIELDS)):
            return None
        return (
            f"it has no #fields header, and its first line has {found} "
            f"tab-separated fields, not the {len(zeek.CONN_FIELDS)} "
            f"({len(zeek.LABELED_CONN_FIELDS)} with IoT-23's labels) of a "
            f"standard conn.log; add the #fields line that names them"
        )
    if "," in text:
        return (
            f"it looks like a CSV export (first line {shown!r}); "
            f"{_EXPECTED_FORMAT}; {_CSV_HINT}"
        )
    return (
        f"its first line {shown!r} is neither a Zeek header line, a conn.log "
        f"line nor a JSON object; {_EXPECTED_FORMAT}"
    )


def _json_log_problem(lines: Sequence[bytes | None]) -> str | None:
    """Describe why the first JSON object of a log is not a conn.log record.

    Like `edgedp prepare`, only the first line that is a whole JSON object
    counts, so a log that starts with a cut line is still recognised.
    """
    for line in lines:
        if line is None:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        kind = other_json_log(line)
        if kind is not None:
            return f"it is a Zeek {kind} log; {OTHER_LOG_HINT}"
        absent = missing_fields(RecordFlattener()(record), zeek.ALWAYS_LOGGED)
        if not absent:
            return None
        return (
            f"its first JSON object lacks {', '.join(absent)}, which Zeek "
            "writes on every conn.log line, so it is another log, such as a "
            "Zeek dns or http log in JSON"
        )
    return None


OTHER_LOG_HINT = "edgedp reads conn logs (#path conn)"
"""The end of the message for a Zeek log of another kind, as `edgedp inspect`
words it."""


def other_log_path(lines: Sequence[bytes | None]) -> str | None:
    """Return the `#path` of a leading Zeek header that names a non-conn log.

    Only the directive lines at the top of `lines` are read, or the `_path`
    field of a first line that is a JSON object (see
    `jsonlines.other_json_log`). Returns None for a conn log, for a header
    without `#path`, and for lines that do not start with a Zeek header.
    """
    first = next((line for line in lines if line is None or line.strip()), None)
    if first is not None and first.lstrip().startswith(b"{"):
        return other_json_log(first)
    header = zeek.Header()
    for line in lines[:_SNIFF_LINES]:
        if line is None:
            break
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            break
        if not text.strip():
            continue
        if not zeek.is_directive(text):
            break
        try:
            header = zeek.apply_directive(header, text)
        except zeek.ZeekFormatError:
            break
    if header.path in (None, "conn"):
        return None
    return header.path


def needed_fields(feature_set: str) -> tuple[str, ...]:
    """Return the fields that the encoder and the alerts read."""
    return tuple(dict.fromkeys(ENDPOINT_FIELDS + encoder.input_fields(feature_set)))


def _ignore(*_: Any) -> None:
    pass


class LineParser:
    """Parse chunks of conn.log lines into `FlowColumns`.

    The parser keeps the header of the current file. A chunk from a new file
    instance (another `Chunk.generation`) resets it, and a directive line
    anywhere updates it, so the header block that Zeek writes after a
    restart or a rotation takes effect.

    Args:
        fields: the fields to parse; `needed_fields(feature_set)` gives the
            ones the encoder and alerts need.
        log_format: `tsv`, `json`, or `auto` to choose per file from its first
            line (`{` means JSON).
        on_bad_line: receives every skipped line, in line order within a
            chunk.
        on_absurd_value: receives every impossible value that is kept.
        on_notice: receives messages about the input as a whole, such as a
            header without a needed field.
        max_line_bytes: the line source's limit, named in the messages
            about overlong lines.
    """

    def __init__(
        self,
        fields: Iterable[str],
        *,
        log_format: str = AUTO,
        on_bad_line: BadLineCallback | None = None,
        on_absurd_value: AbsurdValueCallback | None = None,
        on_notice: Callable[[str], None] | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        if log_format not in FORMATS:
            raise ValueError(
                f"unknown log format {log_format!r}; choose {', '.join(FORMATS)}"
            )
        self.fields = tuple(dict.fromkeys(fields))
        self.numeric_fields = tuple(
            f for f in self.fields if f in zeek.NUMERIC_FIELDS and f not in TEXT_FIELDS
        )
        self.string_fields = tuple(
            f for f in self.fields if f not in self.numeric_fields
        )
        self.log_format = log_format
        self.max_line_bytes = max_line_bytes
        self._report_bad_line = on_bad_line or _ignore
        self._pending_bad_lines: list[tuple[str, str, int, str]] = []
        self._on_absurd_value = on_absurd_value or _ignore
        self._on_notice = on_notice or _ignore
        self._generation: int | None = None
        self._format: str | None = None
        self._header: zeek.Header | None = None
        self._layout: _Layout | None = None
        self._sniffed = False
        self._flatten = RecordFlattener()
        self._required_json_order = tuple(
            name for name in zeek.ALWAYS_LOGGED if name in self.fields
        )
        self._required_json_fields = frozenset(self._required_json_order)
        self.foreign_input: str | None = None
        """What the current file looks like when it is not a Zeek conn log
        (see `foreign_format`), else None."""

    def parse(self, chunk: Chunk) -> FlowColumns:
        """Return the flows of a chunk; bad lines are reported and skipped.

        The checks run in several passes over the chunk (JSON syntax, field
        counts, then numbers), so the bad lines are collected and reported in line
        order when the chunk is done.
        """
        try:
            return self._parse(chunk)
        finally:
            pending, self._pending_bad_lines = self._pending_bad_lines, []
            for bad_line in sorted(pending, key=itemgetter(2)):
                self._report_bad_line(*bad_line)

    def _on_bad_line(self, reason: str, source: str, line: int, detail: str) -> None:
        self._pending_bad_lines.append((reason, source, line, detail))

    def _parse(self, chunk: Chunk) -> FlowColumns:
        if chunk.generation != self._generation:
            self._generation = chunk.generation
            self._format = None if self.log_format == AUTO else self.log_format
            self._header = None
            self._layout = None
            self._sniffed = False
            self.foreign_input = None
        if not self._sniffed:
            self._sniff(chunk)

        parts: list[FlowColumns] = []
        for text, numbers in self._data_runs(chunk):
            if self._format is None:
                self._format = JSON if text.lstrip().startswith("{") else TSV
            if self._format == JSON:
                part = self._parse_json(chunk, text, numbers)
            else:
                part = self._parse_tsv(chunk, text, numbers)
            if part is not None:
                parts.append(part)
        if not parts:
            return self._empty()
        return FlowColumns.concat(parts)

    def _sniff(self, chunk: Chunk) -> None:
        """Check once per file that its first lines are a Zeek conn log."""
        if not any(line is None or line.strip() for line in chunk.lines):
            return
        self._sniffed = True
        self.foreign_input = foreign_format(
            chunk.lines, self.max_line_bytes, chunk.head
        )
        if self.foreign_input is not None:
            self._on_notice(
                f"{foreign_input_message(chunk.source, self.foreign_input)}. "
                "Its lines are still read, and the bad ones counted."
            )

    def _empty(self) -> FlowColumns:
        columns: dict[str, Any] = {
            name: np.zeros(0, dtype=np.float64) for name in self.numeric_fields
        }
        columns.update({name: [] for name in self.string_fields})
        return FlowColumns(
            columns, [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        )

    def _data_runs(self, chunk: Chunk) -> Iterator[tuple[str, np.ndarray]]:
        """Yield runs of data lines as (text, line numbers).

        Each text contains its lines joined by `\\n`. Directive lines between
        runs are applied to the header; blank, overlong and non-UTF-8 lines
        are dropped (the last two reported).
        """
        lines = chunk.lines
        numbers = np.arange(chunk.first_line, chunk.first_line + len(lines))
        if None in lines:
            keep = [index for index, line in enumerate(lines) if line is not None]
            if self.max_line_bytes is None:
                detail = "line too long"
            else:
                detail = (
                    f"longer than --max-line-bytes {self.max_line_bytes}; raise "
                    "it if the log has such lines"
                )
            for index in np.setdiff1d(np.arange(len(lines)), keep):
                self._on_bad_line("overlong", chunk.source, int(numbers[index]), detail)
            lines = [lines[index] for index in keep]
            numbers = numbers[keep]
        if not lines:
            return

        try:
            text = b"\n".join(lines).decode("utf-8")  # type: ignore[arg-type]
        except UnicodeDecodeError:
            texts, numbers = self._decode_each(chunk, lines, numbers)  # type: ignore[arg-type]
            text = "\n".join(texts)
        if not text:
            return

        # Single-character and list membership tests are fast; a `#` inside a
        # field only sends the chunk down the slow path.
        if "#" not in text and b"" not in lines and b"\r" not in lines:
            yield text, numbers
            return

        # Slow path: directives or blank lines among the data lines.
        start = 0
        texts = text.split("\n")
        for index, line in enumerate(texts):
            if line and line[0] == "#":
                if index > start:
                    yield from self._nonblank(texts[start:index], numbers[start:index])
                self._apply_directive(chunk, line, int(numbers[index]))
                start = index + 1
        if start < len(texts):
            yield from self._nonblank(texts[start:], numbers[start:])

    @staticmethod
    def _nonblank(
        texts: list[str], numbers: np.ndarray
    ) -> Iterator[tuple[str, np.ndarray]]:
        keep = [index for index, text in enumerate(texts) if text.strip("\r")]
        if keep:
            yield "\n".join(texts[index] for index in keep), numbers[keep]

    def _decode_each(
        self, chunk: Chunk, lines: list[bytes], numbers: np.ndarray
    ) -> tuple[list[str], np.ndarray]:
        texts: list[str] = []
        keep: list[int] = []
        for index, line in enumerate(lines):
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                self._on_bad_line(
                    "invalid_utf8", chunk.source, int(numbers[index]), str(error)
                )
            else:
                keep.append(index)
        return texts, numbers[keep]

    def _apply_directive(self, chunk: Chunk, text: str, number: int) -> None:
        if self._format is None:
            self._format = TSV
        if self._format == JSON:
            self._on_bad_line("bad_json", chunk.source, number, "a # line in JSON")
            return
        try:
            header = zeek.apply_directive(self._header or zeek.Header(), text)
        except zeek.ZeekFormatError as error:
            self._on_bad_line("bad_header", chunk.source, number, str(error))
            return
        self._header = header
        if text.startswith("#separator"):
            self._layout = None
        elif text.startswith("#fields"):
            parts = len(text.rstrip("\r").split(header.separator)) - 1
            self._layout = self._make_layout(chunk, number, header, parts)

    def _make_layout(
        self, chunk: Chunk, number: int, header: zeek.Header, parts: int
    ) -> _Layout | None:
        names = header.fields
        absent = [name for name in self.fields if name not in names]
        if absent:
            self._on_notice(
                f"{chunk.source}:{number}: #fields lacks {', '.join(absent)}, so "
                "the flows of this header block are skipped; configure Zeek to "
                "log the standard conn.log fields"
            )
            return None
        positions = tuple(names.index(name) for name in self.fields)
        # With the IoT-23 quirk the last separator part contains several fields.
        # Lines are split on the separator alone unless a needed field is in
        # that part, which saves a pass over the text.
        joined = header.label_quirk and max(positions) >= parts - 1
        return _Layout(
            header=header,
            parts=len(names) if joined or not header.label_quirk else parts,
            positions=positions,
            split_quirk=joined,
        )

    def _default_layout(self, chunk: Chunk, first: str, number: int) -> None:
        """Assume the standard conn.log layout for a file without `#fields`."""
        sample = zeek.split_line(first, zeek.Header(label_quirk=True))
        labeled = len(sample) == len(zeek.LABELED_CONN_FIELDS)
        fields = zeek.LABELED_CONN_FIELDS if labeled else zeek.CONN_FIELDS
        quirk = first.count(zeek.DEFAULT_SEPARATOR) < len(fields) - 1
        self._header = zeek.Header(fields=fields, label_quirk=quirk)
        parts = first.count(zeek.DEFAULT_SEPARATOR) + 1
        self._layout = self._make_layout(chunk, number, self._header, parts)
        self._on_notice(
            f"{chunk.source}:{number}: no #fields header before the first flow; "
            f"assuming the standard {len(fields)}-field conn.log layout"
        )

    def _parse_tsv(
        self, chunk: Chunk, text: str, numbers: np.ndarray
    ) -> FlowColumns | None:
        if self._header is None or not self._header.fields:
            self._default_layout(chunk, text.partition("\n")[0], int(numbers[0]))
        layout = self._layout
        if layout is None:
            for number in numbers:
                self._on_bad_line(
                    "missing_fields", chunk.source, int(number), "see #fields"
                )
            return None

        header = layout.header
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if layout.split_quirk:
            text = text.replace(zeek.IOT23_LABEL_SEPARATOR, header.separator)
        raw = _split_columns(text, len(numbers), layout, self.fields)
        if raw is None:
            raw, numbers = self._split_rows(chunk, text, numbers, layout)
            if raw is None:
                return None

        markers = {header.unset_field, header.empty_field}
        if not markers <= MISSING_MARKERS:
            for name in self.string_fields:
                raw[name] = [None if value in markers else value for value in raw[name]]
        return self._columns(
            chunk,
            raw,
            numbers,
            MISSING_MARKERS | markers,
            unusual_numbers=_may_contain_unusual_number(text),
        )

    def _split_rows(
        self, chunk: Chunk, text: str, numbers: np.ndarray, layout: _Layout
    ) -> tuple[dict[str, list[Any]] | None, np.ndarray]:
        """Split line by line, skipping lines with the wrong field count."""
        separator = layout.header.separator
        rows = []
        keep = []
        for index, line in enumerate(text.split("\n")):
            row = line.split(separator)
            if len(row) == layout.parts:
                rows.append(row)
                keep.append(index)
            else:
                self._on_bad_line(
                    "field_count",
                    chunk.source,
                    int(numbers[index]),
                    _field_count_message(line, layout.header),
                )
        if not rows:
            return None, numbers[:0]
        columns = list(zip(*rows, strict=True))
        raw = {
            name: list(columns[position])
            for name, position in zip(self.fields, layout.positions, strict=True)
        }
        return raw, numbers[keep]

    def _columns(
        self,
        chunk: Chunk,
        raw: dict[str, list[Any]],
        numbers: np.ndarray,
        missing: frozenset[str] | set[str],
        *,
        unusual_numbers: bool,
    ) -> FlowColumns | None:
        """Convert numeric fields to float, and drop rows with bad numbers.

        `unusual_numbers` is true when the chunk text may contain a number
        with an underscore or non-ASCII digits (see `_to_float`).
        """
        parsed: dict[str, Any] = {}
        bad: dict[int, list[str]] = {}
        for name in self.numeric_fields:
            rows: set[int] = set()
            parsed[name] = _to_float(raw[name], missing, rows, unusual_numbers)
            for index in rows:
                bad.setdefault(index, []).append(name)

        if bad:
            for index in sorted(bad):
                self._on_bad_line(
                    "bad_number",
                    chunk.source,
                    int(numbers[index]),
                    "; ".join(
                        _number_problem(name, raw[name][index]) for name in bad[index]
                    ),
                )
            keep = np.setdiff1d(np.arange(len(numbers)), sorted(bad))
            if not len(keep):
                return None
            parsed = {name: values[keep] for name, values in parsed.items()}
            raw = {name: [raw[name][i] for i in keep] for name in self.string_fields}
            numbers = numbers[keep]

        for name in self.string_fields:
            parsed[name] = raw[name]
        self._check_ranges(chunk, parsed, numbers)
        count = len(numbers)
        return FlowColumns(
            parsed, [chunk.source] * count, numbers, np.full(count, chunk.read_at)
        )

    def _check_ranges(
        self, chunk: Chunk, parsed: dict[str, Any], numbers: np.ndarray
    ) -> None:
        for name in self.numeric_fields:
            if name == "ts":
                continue
            values = parsed[name]
            high = _PORT_MAX if name in _PORT_FIELDS else encoder.LOG_CAPS.get(name)
            absurd = values < 0
            if high is not None:
                absurd |= values > high
            if absurd.any():
                for index in np.flatnonzero(absurd):
                    self._on_absurd_value(
                        name, chunk.source, int(numbers[index]), float(values[index])
                    )

    def _parse_json(
        self, chunk: Chunk, text: str, numbers: np.ndarray
    ) -> FlowColumns | None:
        raw: dict[str, list[Any]] = {name: [] for name in self.fields}
        keep: list[int] = []
        numeric = set(self.numeric_fields) | TEXT_FIELDS
        required = self._required_json_fields
        nested = may_nest(text)
        for index, line in enumerate(text.split("\n")):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected an object, got {type(record).__name__}")
                record = self._flatten(record, may_nest=nested)
                if not required <= record.keys():
                    absent = missing_fields(record, self._required_json_order)
                    self._on_bad_line(
                        "missing_fields",
                        chunk.source,
                        int(numbers[index]),
                        f"no {', '.join(absent)}, which every conn.log line has",
                    )
                    continue
                values = [
                    json_value(name, record.get(name), name in numeric)
                    for name in self.fields
                ]
            except ValueError as error:
                self._on_bad_line(
                    "bad_json",
                    chunk.source,
                    int(numbers[index]),
                    zeek.json_error_text(error),
                )
                continue
            keep.append(index)
            for name, value in zip(self.fields, values, strict=True):
                raw[name].append(value)
        if not keep:
            return None
        return self._columns(
            chunk,
            raw,
            numbers[keep],
            MISSING_MARKERS,
            unusual_numbers=_may_contain_unusual_number(text),
        )


@dataclass(frozen=True)
class _Layout:
    """How to cut the data lines of one header block into fields."""

    header: zeek.Header
    parts: int
    """Separator-delimited parts per line."""
    positions: tuple[int, ...]
    """Part index of each parsed field."""
    split_quirk: bool
    """Replace IoT-23's three spaces with the separator before splitting."""


def _field_count_message(line: str, header: zeek.Header) -> str:
    """Describe a wrong field count, counting fields as the header names them.

    IoT-23 joins its label columns with three spaces in place of the
    separator. Such a group counts as separate fields, both in `#fields` and
    in the line, so a labeled line is expected to have 23 fields.
    `edgedp.zeek` splits the group only when it is the last `#fields` entry,
    so a group followed by more fields is split here.
    """
    group = zeek.IOT23_LABEL_SEPARATOR
    expected = sum(len(name.split(group)) for name in header.fields)
    if header.label_quirk or expected > len(header.fields):
        line = line.replace(group, header.separator)
    found = line.count(header.separator) + 1
    return f"wrong field count: expected {expected}, found {found}"


def _split_columns(
    text: str, rows: int, layout: _Layout, fields: Sequence[str]
) -> dict[str, list[str]] | None:
    """Split `rows` lines into the requested columns with one `str.split`.

    Splitting the whole text on the separator leaves each newline inside
    one element, which contains the last field of a line and the first field
    of the next ("last\\nfirst"). With p parts per line, part j of line k
    is element k * (p - 1) + j, so a column is one slice. The first field
    keeps the previous line's end before its newline, which `flow_time`
    removes; the last field is cut at its newline here.

    Returns None when some line has another number of parts, which is the
    case unless the list has the right length and every joining element
    contains exactly one newline.
    """
    parts = layout.parts
    if parts < 2:
        return None
    step = parts - 1
    flat = text.split(layout.header.separator)
    if len(flat) != rows * step + 1:
        return None
    joining = flat[step : rows * step : step]
    if joining and set(map(str.count, joining, repeat("\n"))) != {1}:
        return None

    columns: dict[str, list[str]] = {}
    for name, position in zip(fields, layout.positions, strict=True):
        if position == 0:
            column = flat[0 : rows * step : step]
            if name not in TEXT_FIELDS:
                column = [value.rpartition("\n")[2] for value in column]
        elif position == step:
            column = [value.partition("\n")[0] for value in flat[step::step]]
        else:
            column = flat[position::step]
        columns[name] = column
    return columns


_UNDERSCORE_DIGIT = re.compile(r"_[0-9]")


def _may_contain_unusual_number(text: str) -> bool:
    """Return False when `text` has no number that `float` reads but Zeek never writes.

    Such numbers have an underscore between digits or non-ASCII digits, such
    as Arabic-Indic ones. Zeek's field names, such as `orig_bytes` in JSON,
    have no underscore before a digit, so an ASCII conn log chunk normally
    returns False after two or three fast scans.
    """
    if not text.isascii():
        return True
    return "_" in text and _UNDERSCORE_DIGIT.search(text) is not None


def _number_problem(name: str, value: Any) -> str:
    """Describe a numeric field that `_to_float` rejected, as prepare does.

    The value is cut to 40 characters, because JSON allows numbers of any
    length.
    """
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{zeek.number_problem(value)} in {name}={text}"


def _to_float(
    values: Sequence[Any],
    missing: frozenset[str] | set[str],
    bad: set[int],
    unusual_numbers: bool = False,
) -> np.ndarray:
    """Parse a numeric column to float64, NaN when unset.

    Rows whose value is not a finite number are added to `bad`. A column of
    few distinct values (ports, counts) parses each distinct value once.
    Other columns go through `float` in one pass, which reads `1_000` as
    1000, so the caller sets `unusual_numbers` when the text may contain such
    a number (`_may_contain_unusual_number`), and then every distinct value
    goes through `zeek.parse_float`.
    """
    count = len(values)
    distinct = set(values)
    if 4 * len(distinct) > count and not unusual_numbers:
        try:
            numbers = np.array(list(map(float, values)), dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if not np.isfinite(numbers).all():
                bad.update(np.flatnonzero(~np.isfinite(numbers)).tolist())
                numbers[~np.isfinite(numbers)] = np.nan
            return numbers

    table = dict.fromkeys(distinct & missing, math.nan)
    table[None] = math.nan
    invalid = set()
    for value in distinct - missing:
        try:
            number = zeek.parse_float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            table[value] = number
        elif value is not None:
            invalid.add(value)
            table[value] = math.nan
    if invalid:
        bad.update(index for index, value in enumerate(values) if value in invalid)
    return np.fromiter(map(table.__getitem__, values), np.float64, count=count)
