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
from pathlib import Path

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
# Polars needs a column separator to read whole lines; this control byte does
# not occur in text logs, and any stray copy is turned into an invalid byte.
_LINE_SEPARATOR = b"\x1f"


def read_delimited(
    path: Path, layout: Layout, skips: SkipLog, *, chunk_bytes: int
) -> Iterator[pl.DataFrame]:
    """Yield flow record frames (see `records.to_records`) from one file."""
    # The current Zeek header, carried from one block to the next.
    header_box = [zeek.Header(separator=layout.separator)]
    for first_line, chunk in read_chunks(path, chunk_bytes):
        lines = _lines_frame(chunk, first_line)
        if layout.format == ZEEK_TSV:
            yield from _zeek_segments(path, lines, header_box, skips)
            continue

        if layout.header_row and first_line == 1:
            lines = lines.slice(1)
        exported = zeek.Header(separator=layout.separator, fields=layout.names)
        if layout.separator == "," and b'"' in chunk:
            yield _quoted_csv(lines, exported, skips)
        else:
            yield _split_lines(lines, exported, skips)


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


def _zeek_segments(
    path: Path, lines: pl.DataFrame, header_box: list[zeek.Header], skips: SkipLog
) -> Iterator[pl.DataFrame]:
    """Split a block at directive lines and parse the data between them.

    `header_box[0]` carries the current header in and out, because a header
    block may start in one block of lines and apply to the next.
    """
    directives = lines.filter(pl.col(_TEXT).str.starts_with("#"))
    start = 0
    first = int(lines[records.LINE][0]) if lines.height else 0
    for line, text in directives.iter_rows():
        position = line - first
        if position > start:
            yield _zeek_data(
                path, lines.slice(start, position - start), header_box[0], skips
            )
        try:
            header_box[0] = zeek.apply_directive(header_box[0], text)
        except zeek.ZeekFormatError as error:
            skips.add(line, f"invalid header directive: {error}")
        start = position + 1
    if start < lines.height:
        yield _zeek_data(path, lines.slice(start), header_box[0], skips)


def _zeek_data(
    path: Path, lines: pl.DataFrame, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    if not header.fields:
        raise FlowLogError(
            f"{path}:{lines[records.LINE][0]} has data before any #fields line; "
            "the Zeek header block is missing or damaged"
        )
    if header.path not in (None, "conn"):
        raise FlowLogError(
            f"{path}:{lines[records.LINE][0]} starts a Zeek {header.path} log; "
            "edgedp reads conn logs only, so split the file"
        )
    return _split_lines(lines, header, skips)


def _split_lines(
    lines: pl.DataFrame, header: zeek.Header, skips: SkipLog
) -> pl.DataFrame:
    """Split lines on the separator in Polars and check the field count."""
    names = header.fields
    separator = header.separator
    text = pl.col(_TEXT).str.replace_all(
        zeek.IOT23_LABEL_SEPARATOR, separator, literal=True
    )
    lines = lines.filter(pl.col(_TEXT).str.strip_chars() != "").with_columns(
        text.alias(_TEXT)
    )
    counted = lines.with_columns(
        (pl.col(_TEXT).str.count_matches(separator, literal=True) + 1).alias("_n"),
        pl.col(_TEXT).str.contains(_REPLACEMENT, literal=True).alias("_utf8"),
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
