"""Readers for Zeek TSV logs and CSV/TSV exports.

Both read the file in blocks of whole lines (`sources.read_chunks`), so a log
larger than memory is read in bounded memory. Each block is parsed by Polars
as one String column of lines and split on the separator in Polars, which
keeps exact line numbers for skipped rows. A CSV block that contains double
quotes goes through Python's `csv` module instead, because a quoted field may
contain the separator.

Three consecutive spaces are read as a field separator in every format: the
IoT-23 labeling tool joined `tunnel_parents`, `label` and `detailed-label`
that way, and no `conn.log` field contains three spaces.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from edgedp import zeek
from edgedp.data import records
from edgedp.data.skips import SkipLog
from edgedp.data.sources import (
    ZEEK_TSV,
    FlowLogError,
    Layout,
    read_chunks,
)

_TEXT = "text"
_REPLACEMENT = "\ufffd"
# Polars reads whole lines only with a column separator that never occurs.
# Text logs contain no 0x1F byte, and a stray one is turned into invalid UTF-8.
_LINE_SEPARATOR = b"\x1f"


def read_delimited(
    path: Path, layout: Layout, skips: SkipLog, *, chunk_bytes: int
) -> Iterator[pl.DataFrame]:
    """Yield flow record frames (see `records.to_records`) from one file."""
    header = zeek.Header(separator=layout.separator, fields=layout.names)
    for first_line, chunk in read_chunks(path, chunk_bytes):
        if layout.format != ZEEK_TSV:
            if layout.header_row and first_line == 1:
                cut = chunk.find(b"\n") + 1 or len(chunk)
                chunk, first_line = chunk[cut:], 2
            if layout.separator == "," and b'"' in chunk:
                yield _quoted_csv(_lines_frame(chunk, first_line), header, skips)
            else:
                yield _parse_block(chunk, first_line, header, skips)
            continue

        for line, data, is_directive in _zeek_segments(chunk, first_line):
            if not is_directive:
                _check_zeek_header(path, line, header)
                yield _parse_block(data, line, header, skips)
                continue
            text = data.decode("utf-8", errors="replace")
            try:
                header = zeek.apply_directive(header, text)
            except zeek.ZeekFormatError as error:
                skips.add(line, f"invalid header directive: {error}")


def _zeek_segments(chunk: bytes, first_line: int) -> Iterator[tuple[int, bytes, bool]]:
    """Yield `(first line, bytes, is_directive)`: directive lines one by one,
    and the runs of data lines between them."""
    position = 0
    line = first_line
    while position < len(chunk):
        if chunk.startswith(b"#", position):
            end = chunk.find(b"\n", position) + 1 or len(chunk)
            yield line, chunk[position:end], True
        else:
            end = chunk.find(b"\n#", position) + 1 or len(chunk)
            yield line, chunk[position:end], False
        line += chunk.count(b"\n", position, end)
        position = end


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
    data: bytes, first_line: int, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    """Parse data lines, by the fast path when the whole block is clean."""
    parsed = _parse_clean(data, first_line, header)
    if parsed is not None:
        return parsed
    scan = _Scan(
        non_ascii=not data.isascii(),
        three_spaces=zeek.IOT23_LABEL_SEPARATOR.encode() in data,
    )
    return _split_lines(_lines_frame(data, first_line), header, skips, scan)


def _parse_clean(
    data: bytes, first_line: int, header: zeek.Header
) -> pl.DataFrame | None:
    """Parse a block with Polars' typed CSV reader, or return None.

    The reader itself rejects a line with too many fields, an unparsable
    number or invalid UTF-8. Lines with too few fields are ruled out by
    counting separators over the whole block: with no line too long, the
    total is right only if every line has all its fields. Any doubt returns
    None, and the caller parses the block line by line instead.
    """
    names = list(header.fields)
    if not data or len(set(names)) != len(names) or len(header.separator) != 1:
        return None
    octets = np.frombuffer(data, dtype=np.uint8)
    lines = int(np.count_nonzero(octets == ord("\n"))) + (not data.endswith(b"\n"))
    separators = int(np.count_nonzero(octets == ord(header.separator)))
    merged = len(names) >= 3 and zeek.IOT23_LABEL_SEPARATOR.encode() in data
    physical = names[:-3] + ["_tail"] if merged else names
    if separators != (len(physical) - 1) * lines:
        return None

    schema = {
        name: pl.Float64 if name in zeek.NUMERIC_FIELDS else pl.String
        for name in physical
    }
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            separator=header.separator,
            quote_char=None,
            schema=schema,
            null_values=[header.unset_field, header.empty_field],
            truncate_ragged_lines=False,
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError):
        return None
    if frame.height != lines:
        return None
    if merged:
        tail = names[-3:]
        spaced = pl.col("_tail").str.count_matches(
            zeek.IOT23_LABEL_SEPARATOR, literal=True
        )
        if frame.select((spaced == 2).all()).item() is not True:
            return None
        frame = frame.with_columns(
            pl.col("_tail")
            .str.split_exact(zeek.IOT23_LABEL_SEPARATOR, 2)
            .struct.rename_fields(tail)
            .alias("_tail")
        ).unnest("_tail")

    numbers = [name for name in zeek.NUMERIC_FIELDS if name in frame.columns]
    checks = frame.select(
        pl.all_horizontal(pl.col(numbers).is_finite().fill_null(True))
        .all()
        .alias("finite"),
        (pl.sum_horizontal(pl.col("ts", "uid").null_count()) == 0).alias("ids"),
    ).row(0)
    if not all(checks):
        return None
    lines_column = pl.int_range(first_line, first_line + lines, eager=True)
    return records.clean_records(frame, lines_column, header)


@dataclass(frozen=True)
class _Scan:
    non_ascii: bool
    three_spaces: bool


def _lines_frame(chunk: bytes, first_line: int) -> pl.DataFrame:
    """Return one row per line: its number and its text, CR removed."""
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


def _split_lines(
    lines: pl.DataFrame, header: zeek.Header, skips: SkipLog, scan: _Scan
) -> pl.DataFrame:
    """Split lines on the separator in Polars and check the field count."""
    names = header.fields
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
    names = header.fields
    numbers: list[int] = []
    rows: list[list[str]] = []
    for line, text in lines.iter_rows():
        if not text.strip():
            continue
        if _REPLACEMENT in text:
            skips.add(line, "invalid UTF-8")
            continue
        row = next(csv.reader([text]))
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
