"""Readers for Zeek TSV logs and CSV/TSV exports.

Both read the file in blocks of whole lines (`sources.read_chunks`), so a log
larger than memory is read in bounded memory. A clean block is parsed by one
call to Polars' typed CSV reader, with checks over the whole block
(`_parse_clean`). A block that fails any check is parsed again as one String
column of lines, split on the separator in Polars, which keeps exact line
numbers for skipped rows. A comma- or semicolon-separated block that
contains double quotes goes through Python's `csv` module instead, because a
quoted field may contain the separator.

Three consecutive spaces are read as a field separator in every format: the
IoT-23 labeling tool joined `tunnel_parents`, `label` and `detailed-label`
that way, and no `conn.log` field contains three spaces.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from edgedp import zeek
from edgedp.data import records, sources
from edgedp.data.skips import SkipLog
from edgedp.data.sources import (
    ZEEK_TSV,
    FlowLogError,
    Layout,
    read_chunks,
)

_TEXT = "text"
_TAIL = "_tail"
_REPLACEMENT = "\ufffd"
# Polars reads whole lines only with a column separator that never occurs.
# Text logs contain no 0x1F byte, and a stray one is turned into invalid UTF-8.
_LINE_SEPARATOR = b"\x1f"

REPEATED_HEADER_ROW = "repeated header row"
"""Skip reason of a header row that a joined export repeats. It is not a data
line, so a file with no other lines reads as 0 rows, not as damaged."""


def read_delimited(
    path: Path,
    layout: Layout,
    skips: SkipLog,
    *,
    chunk_bytes: int,
    fields: Sequence[str] | None = None,
) -> Iterator[pl.DataFrame]:
    """Yield flow record frames (see `records.to_records`) from one file.

    `fields` limits the columns of the fast path's frames (see
    `readers.read_flows`); other frames keep every column.
    """
    header = zeek.Header(separator=layout.separator, fields=layout.names)
    for first_line, chunk, newlines in read_chunks(path, chunk_bytes):
        if layout.format != ZEEK_TSV:
            if layout.header_row and first_line == 1:
                cut = chunk.find(b"\n") + 1
                chunk, first_line = chunk[cut or len(chunk) :], 2
                newlines -= cut > 0
            yield _parse_block(
                path, chunk, first_line, newlines, header, skips, fields, export=True
            )
            continue

        for line, data, count, is_directive in _zeek_segments(
            chunk, first_line, newlines
        ):
            if not is_directive:
                _check_zeek_header(path, line, header)
                yield _parse_block(
                    path, data, line, count, header, skips, fields, export=False
                )
                continue
            text = data.decode("utf-8", errors="replace")
            try:
                header = zeek.apply_directive(header, text)
            except zeek.ZeekFormatError as error:
                skips.add(line, f"invalid header directive: {error}")


def _zeek_segments(
    chunk: bytes, first_line: int, newlines: int
) -> Iterator[tuple[int, bytes, int, bool]]:
    """Yield `(first line, bytes, line breaks, is_directive)`: directive lines
    one by one, and the runs of data lines between them."""
    if b"#" not in chunk:
        # One memchr pass rules out directives in most blocks.
        yield first_line, chunk, newlines, False
        return
    position = 0
    line = first_line
    while position < len(chunk):
        if chunk.startswith(b"#", position):
            end = chunk.find(b"\n", position) + 1 or len(chunk)
            is_directive = True
        else:
            end = _next_directive(chunk, position)
            is_directive = False
        count = chunk.count(b"\n", position, end)
        yield line, chunk[position:end], count, is_directive
        line += count
        position = end


def _next_directive(chunk: bytes, position: int) -> int:
    """Return the offset of the next line after `position` that starts with `#`.

    Returns the chunk's length when there is none. Searching for the byte
    `#` (memchr) and checking the byte before it is faster than searching
    for the two-byte string.
    """
    while True:
        found = chunk.find(b"#", position + 1)
        if found < 0:
            return len(chunk)
        if chunk[found - 1] == ord("\n"):
            return found
        position = found


def _check_zeek_header(path: Path, line: int, header: zeek.Header) -> None:
    if not header.fields:
        raise FlowLogError(
            f"{path}:{line} has data before any #fields line; "
            "the Zeek header block is missing or damaged"
        )
    if header.path not in (None, "conn"):
        raise FlowLogError(
            f"{path}:{line} starts a Zeek {header.path} log; "
            "edgedp reads conn logs only, so split the file"
        )


def _parse_block(
    path: Path,
    data: bytes,
    first_line: int,
    newlines: int,
    header: zeek.Header,
    skips: SkipLog,
    fields: Sequence[str] | None,
    *,
    export: bool,
) -> pl.DataFrame:
    """Parse data lines, by the fast path when the whole block is clean.

    A CSV block that contains double quotes goes to `_quoted_csv`. In an
    export (`export` True), repeated header rows are skipped. A block with
    a header row never passes the fast path, because the row's `ts` name
    does not parse as a number, so header rows are looked for only in
    blocks that are parsed line by line.

    Raises:
        FlowLogError: a header row of an export names other columns, or the
            same columns in another order, than the file's first header row.
    """
    quoted = export and header.separator != "\t" and b'"' in data
    if not quoted:
        parsed = _parse_clean(data, first_line, newlines, header, fields)
        if parsed is not None:
            return parsed

    lines = _lines_frame(data, first_line)
    if export:
        lines = _drop_header_rows(path, lines, header, skips)
    if quoted:
        return _quoted_csv(lines, header, skips)
    return _split_lines(lines, header, skips, _Scan.of(data))


def _drop_header_rows(
    path: Path, lines: pl.DataFrame, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    """Remove the header rows that joined exports repeat, counting each.

    A line is a header row when its fields name both `ts` and `uid` in any
    letter case, as `sources.detect_layout` decides for the first line.
    Only lines that contain `uid` are split in Python, which few data lines
    do.
    """
    candidates = lines.filter(
        pl.col(_TEXT).str.to_lowercase().str.contains("uid", literal=True)
    )
    expected = [name.lower() for name in header.fields]
    repeated = []
    for line, text in candidates.iter_rows():
        names = [
            name.lower() for name in sources.split_header_row(text, header.separator)
        ]
        if "ts" not in names or "uid" not in names:
            _check_other_separator(path, line, text, header.separator)
            continue
        if names != expected:
            raise FlowLogError(_changed_header_message(path, line, names, expected))
        skips.add(line, REPEATED_HEADER_ROW)
        repeated.append(line)
    if not repeated:
        return lines
    return lines.filter(~pl.col(records.LINE).is_in(repeated))


_EXPORT_SEPARATORS = (",", ";", "\t")


def _check_other_separator(path: Path, line: int, text: str, separator: str) -> None:
    """Reject a header row that another separator than the file's splits.

    Such a row starts a joined export written with another separator, whose
    lines would all be skipped for their field count.

    Raises:
        FlowLogError: `text` is a header row when split on another separator.
    """
    for other in _EXPORT_SEPARATORS:
        if other == separator or other not in text:
            continue
        names = [name.lower() for name in sources.split_header_row(text, other)]
        if "ts" in names and "uid" in names:
            raise FlowLogError(
                _joined_export_message(
                    f"{path}:{line} is a header row separated by {other!r}, while "
                    f"the file's first header row uses {separator!r}",
                    line,
                    "separator",
                )
            )


def _changed_header_message(
    path: Path, line: int, names: list[str], expected: list[str]
) -> str:
    if len(names) != len(expected):
        lacking = [name for name in expected if name not in names]
        adding = [name for name in names if name not in expected]
        parts = [f"it lacks {', '.join(lacking)}"] if lacking else []
        parts += [f"it adds {', '.join(adding)}"] if adding else []
        detail = f" ({' and '.join(parts)})" if parts else ""
        difference = (
            f"{path}:{line} is a header row with {len(names)} columns where the "
            f"first header row has {len(expected)}{detail}"
        )
    else:
        position = 0
        while names[position] == expected[position]:
            position += 1
        difference = (
            f"{path}:{line} is a header row whose columns differ from the first "
            f"header row's (column {position + 1} is {names[position]} instead "
            f"of {expected[position]})"
        )
    return _joined_export_message(difference, line, "column order")


def _joined_export_message(difference: str, line: int, kind: str) -> str:
    """Return the error for a header row at `line` that starts another export."""
    return (
        f"{difference}, as when two exports are joined into one file. edgedp "
        f"reads one {kind} per file, so split the file before line {line} and "
        "pass both parts"
    )


def _parse_clean(
    data: bytes,
    first_line: int,
    newlines: int,
    header: zeek.Header,
    fields: Sequence[str] | None,
) -> pl.DataFrame | None:
    """Parse a block with Polars' typed CSV reader, or return None.

    Any doubt returns None, and the caller parses the block line by line
    instead. The checks, all vectorised:

    - Field counts: the separators of the whole block are counted once.
      The reader rejects a line with too many fields when it reads every
      column, and with that the total is right only if every line has all
      its fields. When it reads a subset (`_ReadPlan`), it ignores extra
      fields, so the last column is read without null markers instead.
      It is then null only on a line with too few fields or with an empty
      last field, and in that case the block is read again in full.
    - Invalid UTF-8: the reader validates the whole block.
    - Numbers: every numeric field is read as Float64, whether or not it
      was asked for, and must parse and be finite.
    - Identity: `ts` and `uid` must be present.
    """
    names = list(header.fields)
    if not data or len(set(names)) != len(names) or len(header.separator) != 1:
        return None
    if any(zeek.IOT23_LABEL_SEPARATOR in name for name in names):
        # #fields has a three-space group before its last field, which only
        # the line-by-line path splits (see `_field_names`).
        return None
    lines = newlines + (not data.endswith(b"\n"))
    octets = np.frombuffer(data, dtype=np.uint8)
    separators = int(np.count_nonzero(octets == ord(header.separator)))
    merged = len(names) >= 3 and zeek.IOT23_LABEL_SEPARATOR.encode() in data
    physical = names[:-3] + [_TAIL] if merged else names
    if separators != (len(physical) - 1) * lines:
        return None

    plan = _ReadPlan.make(physical, names, header, fields)
    frame = _read_typed(data, header, plan)
    if (
        frame is not None
        and plan.subset
        and frame.get_column(physical[-1]).null_count()
    ):
        # A short line reads as null in the last column, and so does an empty
        # last field. Only a read of every column distinguishes the two.
        plan = _ReadPlan.make(physical, names, header, None)
        frame = _read_typed(data, header, plan)
    if frame is None or frame.height != lines:
        return None
    if plan.markers:
        frame = frame.with_columns(
            pl.when(pl.col(name).is_in(markers))
            .then(None)
            .otherwise(pl.col(name))
            .alias(name)
            for name, markers in plan.markers.items()
        )

    numbers = [name for name in zeek.NUMERIC_FIELDS if name in frame.columns]
    checks = frame.select(
        pl.all_horizontal(pl.col(numbers).is_finite().fill_null(True))
        .all()
        .alias("finite"),
        (pl.sum_horizontal(pl.col("ts", "uid").null_count()) == 0).alias("ids"),
    ).row(0)
    if not all(checks):
        return None
    if merged:
        frame = _split_tail(frame, names[-3:], header)
        if frame is None:
            return None
    lines_column = pl.int_range(first_line, first_line + lines, eager=True)
    return records.clean_records(
        frame,
        lines_column,
        header,
        fields=fields,
        labels_normalized=merged and set(zeek.LABEL_FIELDS) <= set(names[-3:]),
    )


def _read_typed(
    data: bytes, header: zeek.Header, plan: _ReadPlan
) -> pl.DataFrame | None:
    """Read a block with Polars following `plan`, or return None if Polars fails."""
    try:
        return (
            pl.scan_csv(
                data,
                has_header=False,
                separator=header.separator,
                quote_char=None,
                schema=plan.schema,
                null_values=plan.null_values,
                truncate_ragged_lines=False,
            )
            .select(plan.columns)
            .collect()
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class _ReadPlan:
    """Columns, types and null markers for one Polars read of a block."""

    schema: dict[str, pl.DataType]
    columns: list[str]
    null_values: list[str] | dict[str, str]
    subset: bool
    """True when only some columns are read (see `_parse_clean`)."""
    markers: dict[str, list[str]]
    """String columns whose missing markers are turned into nulls after
    reading, because a subset read gives each column one null marker."""

    @classmethod
    def make(
        cls,
        physical: list[str],
        names: list[str],
        header: zeek.Header,
        fields: Sequence[str] | None,
    ) -> _ReadPlan:
        schema: dict[str, pl.DataType] = {
            name: pl.Float64() if name in zeek.NUMERIC_FIELDS else pl.String()
            for name in physical
        }
        markers = [header.unset_field, header.empty_field]
        last = physical[-1]
        requested = set(records.output_fields(fields))
        requested |= {"ts", "uid", *zeek.NUMERIC_FIELDS}
        if last == _TAIL and requested & set(names[-3:]):
            requested.add(_TAIL)
        columns = [name for name in physical if name in requested]
        if last not in columns:
            columns.append(last)
        if len(columns) == len(physical) or last in zeek.NUMERIC_FIELDS:
            return cls(schema, physical, markers, subset=False, markers={})

        null_values = {name: header.unset_field for name in physical[:-1]}
        strings = {
            name: [header.empty_field, *([header.unset_field] if name == last else [])]
            for name in columns
            if name not in zeek.NUMERIC_FIELDS and name != _TAIL
        }
        return cls(schema, columns, null_values, subset=True, markers=strings)


def _split_tail(
    frame: pl.DataFrame, tail: list[str], header: zeek.Header
) -> pl.DataFrame | None:
    """Split the three-space joined last column into its fields, or return None.

    The column contains few distinct values (labels), so each is split once
    and the rows pick their parts by dictionary code. A part that is a
    missing marker becomes null, and label fields are normalised here
    (`zeek.normalize_label`), once per distinct value.
    """
    column = frame.get_column(_TAIL)
    if column.null_count():
        return None
    distinct = column.unique().to_list()
    parts = [value.split(zeek.IOT23_LABEL_SEPARATOR) for value in distinct]
    if any(len(split) != len(tail) for split in parts):
        return None
    markers = (header.unset_field, header.empty_field, "")
    codes = column.cast(pl.Enum(distinct)).to_physical()
    columns = []
    for position, name in enumerate(tail):
        values = [
            None if split[position] in markers else split[position] for split in parts
        ]
        if name in zeek.LABEL_FIELDS:
            values = [zeek.normalize_label(value) for value in values]
        columns.append(pl.Series(name, values, dtype=pl.String).gather(codes))
    return frame.drop(_TAIL).with_columns(columns)


@dataclass(frozen=True)
class _Scan:
    non_ascii: bool
    three_spaces: bool

    @classmethod
    def of(cls, data: bytes) -> _Scan:
        return cls(
            non_ascii=not data.isascii(),
            three_spaces=zeek.IOT23_LABEL_SEPARATOR.encode() in data,
        )


def _lines_frame(chunk: bytes, first_line: int) -> pl.DataFrame:
    """Return one row per line: its number and its text, CR removed."""
    if not chunk:
        # Polars raises NoDataError on empty input, which a header-only
        # export leaves once its header row is cut off.
        return pl.DataFrame(schema={records.LINE: pl.Int64, _TEXT: pl.String})
    if _LINE_SEPARATOR in chunk:
        chunk = chunk.replace(_LINE_SEPARATOR, b"\xff")
    frame = pl.read_csv(
        io.BytesIO(chunk),
        has_header=False,
        separator=_LINE_SEPARATOR.decode(),
        quote_char=None,
        new_columns=[_TEXT],
        infer_schema=False,
        truncate_ragged_lines=True,
        encoding="utf8-lossy",
        empty_string_is_null=False,
    )
    return frame.with_row_index(records.LINE, offset=first_line).with_columns(
        pl.col(records.LINE).cast(pl.Int64), pl.col(_TEXT).fill_null("")
    )


def _field_names(header: zeek.Header) -> tuple[str, ...]:
    """Return the header's field names with every three-space group split.

    `zeek.apply_directive` splits such a group only at the end of
    `#fields`. Data lines have every group split, so the field count of a
    line is compared with these names.
    """
    separator = zeek.IOT23_LABEL_SEPARATOR
    if not any(separator in name for name in header.fields):
        return header.fields
    return tuple(
        zeek.canonical_field(part)
        for name in header.fields
        for part in name.split(separator)
        if part.strip()
    )


def _split_lines(
    lines: pl.DataFrame, header: zeek.Header, skips: SkipLog, scan: _Scan
) -> pl.DataFrame:
    """Split lines on the separator in Polars and check the field count."""
    names = _field_names(header)
    separator = header.separator
    text = pl.col(_TEXT)
    if scan.three_spaces:
        text = text.str.replace_all(zeek.IOT23_LABEL_SEPARATOR, separator, literal=True)
    lines = lines.filter(pl.col(_TEXT).str.len_bytes() > 0).with_columns(
        text.alias(_TEXT)
    )
    invalid = (
        pl.col(_TEXT).str.contains(_REPLACEMENT, literal=True)
        if scan.non_ascii
        else pl.lit(False)
    )
    counted = lines.with_columns(
        (pl.col(_TEXT).str.count_matches(separator, literal=True) + 1).alias("_n"),
        invalid.alias("_utf8"),
    )
    wrong = counted.filter(pl.col("_utf8") | (pl.col("_n") != len(names)))
    if wrong.height:
        for line, count, invalid in wrong.select(
            records.LINE, "_n", "_utf8"
        ).iter_rows():
            reason = (
                "invalid UTF-8"
                if invalid
                else f"wrong field count: expected {len(names)}, found {count}"
            )
            skips.add(line, reason)
        counted = counted.filter(~pl.col("_utf8") & (pl.col("_n") == len(names)))

    fields = (
        counted.get_column(_TEXT)
        .str.split_exact(separator, len(names) - 1)
        .struct.rename_fields(list(names))
        .struct.unnest()
    )
    return _records(fields, counted.get_column(records.LINE), header, skips)


def _quoted_csv(
    lines: pl.DataFrame, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    """Parse CSV lines that may quote fields, with Python's csv module."""
    names = _field_names(header)
    numbers: list[int] = []
    rows: list[list[str]] = []
    for line, text in lines.iter_rows():
        if not text.strip():
            continue
        if _REPLACEMENT in text:
            skips.add(line, "invalid UTF-8")
            continue
        row = next(csv.reader([text], delimiter=header.separator))
        if any(zeek.IOT23_LABEL_SEPARATOR in value for value in row):
            row = [
                part
                for value in row
                for part in value.split(zeek.IOT23_LABEL_SEPARATOR)
            ]
        if len(row) != len(names):
            skips.add(
                line, f"wrong field count: expected {len(names)}, found {len(row)}"
            )
            continue
        numbers.append(line)
        rows.append(row)

    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    fields = pl.DataFrame(
        {
            name: pl.Series(name, values, dtype=pl.String)
            for name, values in zip(names, columns, strict=True)
        }
    )
    return _records(
        fields, pl.Series(records.LINE, numbers, dtype=pl.Int64), header, skips
    )


def _records(
    fields: pl.DataFrame, lines: pl.Series, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    columns = {
        name: fields.get_column(name)
        for name in fields.columns
        if name in zeek.LABELED_CONN_FIELDS
    }
    raw = records.raw_frame(columns, lines)
    return records.to_records(
        raw, skips, unset=header.unset_field, empty=header.empty_field
    )
