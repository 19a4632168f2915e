"""One entry point for every flow log format: `read_flows`.

A `FlowReader` recognises the format of a file, yields frames of flow records
(columns and types in `records.RECORD_SCHEMA`) block by block, and counts
what it read and skipped in a `FileReport`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from edgedp import zeek
from edgedp.data import records, sources
from edgedp.data.delimited import REPEATED_HEADER_ROW, read_delimited
from edgedp.data.jsonlog import read_json
from edgedp.data.prefetch import prefetch
from edgedp.data.skips import SkipLog

log = logging.getLogger(__name__)

MISSING_LABEL = "-"
"""Placeholder that reports show for a missing label or detailed-label."""


@dataclass
class FileReport:
    """Result of reading one input file: format, counts and skipped lines."""

    path: Path
    layout: sources.Layout
    rows_read: int = 0
    """Data rows turned into flow records."""
    skipped: SkipLog = field(default_factory=lambda: SkipLog(""))
    labels: Counter[str] = field(default_factory=Counter)
    detailed_labels: Counter[str] = field(default_factory=Counter)

    @property
    def format(self) -> str:
        return self.layout.format

    @property
    def has_labels(self) -> bool:
        """Whether any row read so far has a label."""
        return any(value != MISSING_LABEL for value in self.labels)

    def no_rows_message(self) -> str | None:
        """Describe a file whose every data line was skipped, or return None.

        The message names the file, the most common reason and the likely
        fix. A file without data lines, or with at least one row read,
        gives None. Repeated header rows of a joined export are not data
        lines, so they are left out of the counts.
        """
        damaged = self.skipped.counts.copy()
        del damaged[REPEATED_HEADER_ROW]
        if self.rows_read or not damaged.total():
            return None
        reason, count = damaged.most_common(1)[0]
        if not self.layout.header_row:
            fix = (
                "check that --columns names the file's columns in order "
                "(conn-labeled for the 23 IoT-23 conn.log.labeled fields)"
            )
        else:
            fix = "check that the file is a complete conn log or export"
        return (
            f"{self.path}: no rows read, all {damaged.total()} data lines "
            f"were skipped, most for {reason!r} ({count} lines); {fix}"
        )

    def count(self, frame: pl.DataFrame) -> None:
        """Add one frame of flow records to the counts."""
        self.rows_read += frame.height
        for name, counter in (
            (zeek.LABEL, self.labels),
            (zeek.DETAILED_LABEL, self.detailed_labels),
        ):
            counts = frame.get_column(name).fill_null(MISSING_LABEL).value_counts()
            for value, number in counts.iter_rows():
                counter[value] += number

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_skipped": self.skipped.to_json(),
            "labels": dict(self.labels.most_common()),
            "detailed_labels": dict(self.detailed_labels.most_common()),
        }


def read_flows(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    max_rows: int | None = None,
    chunk_bytes: int = sources.DEFAULT_CHUNK_BYTES,
    report: FileReport | None = None,
    fields: Sequence[str] | None = None,
) -> Iterator[pl.DataFrame]:
    """Yield frames of flow records from one file, in file order.

    Args:
        path: a Zeek TSV or JSON log, or a CSV/TSV export, optionally gzipped.
        columns: column names for an export without a header row.
        max_rows: stop after this many flow records.
        chunk_bytes: size of the blocks the file is read in; memory use
            grows with it, not with the file.
        report: when given, it receives the counts; create it with
            `open_report` so that the format is known before reading.
        fields: the record fields to yield, besides `line`; None yields all
            of them. `label` and `detailed-label` are always yielded. Every
            line is still checked in full (field count, UTF-8, every numeric
            field, `ts` and `uid`). So the rows and the skipped lines do not
            depend on `fields`, and fewer fields only make reading faster.

    Raises:
        FlowLogError: the file is not a flow log or is damaged beyond
            single bad lines.
        ValueError: `fields` names a field that flow records do not have.
    """
    path = Path(path)
    selected = [records.LINE, *records.output_fields(fields)]
    if report is None:
        report = open_report(path, columns=columns)
    layout = report.layout
    if layout.format == sources.ZEEK_JSON:
        frames = read_json(path, report.skipped, chunk_bytes=chunk_bytes)
    else:
        frames = read_delimited(
            path, layout, report.skipped, chunk_bytes=chunk_bytes, fields=fields
        )
        if max_rows is None:
            # Polars parses the next block while the caller works on this one.
            # With a row limit the reader must not run ahead, because it would
            # record skipped lines beyond the limit.
            frames = prefetch(frames)

    for frame in frames:
        if fields is not None:
            frame = frame.select(selected)
        if max_rows is not None and report.rows_read + frame.height >= max_rows:
            frame = frame.head(max_rows - report.rows_read)
            report.count(frame)
            yield frame
            log.info("%s: stopped after %d rows (row limit)", path, max_rows)
            return
        report.count(frame)
        if frame.height:
            yield frame


def open_report(
    path: str | Path, *, columns: Sequence[str] | None = None
) -> FileReport:
    """Detect the format of `path` and return an empty report for it.

    Raises:
        FlowLogError: as `sources.detect_layout`.
    """
    path = Path(path)
    layout = sources.detect_layout(path, columns)
    return FileReport(path=path, layout=layout, skipped=SkipLog(path.name))
