"""Flow records: raw text fields turned into typed columns, bad rows removed.

Every reader builds a Polars frame with a `line` column (line number in the
file, from 1) and one String column per field in `zeek.LABELED_CONN_FIELDS`
(null where the file lacks the field), then calls `to_records`. The result
has the same columns with the types in `RECORD_SCHEMA`. Unset (`-`), empty
set (`(empty)`) and empty values become null, labels get their canonical
spelling, and rows with an unparsable number or without `ts` or `uid` (the
flow's identity) are removed and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from edgedp import zeek
from edgedp.data.skips import SkipLog

LINE = "line"

RECORD_SCHEMA: dict[str, pl.DataType] = {
    LINE: pl.Int64(),
    **{
        name: (
            pl.Float64()
            if name in zeek.NUMERIC_FIELDS
            else pl.Boolean()
            if name in zeek.BOOL_FIELDS
            else pl.String()
        )
        for name in zeek.LABELED_CONN_FIELDS
    },
}
"""Columns and types of a flow record frame."""

_TRUE = ("T", "t", "True", "true", "1")
_FALSE = ("F", "f", "False", "false", "0")
_BAD = "_bad"


def raw_frame(columns: dict[str, pl.Series | None], lines: pl.Series) -> pl.DataFrame:
    """Build the raw String frame that `to_records` takes.

    Args:
        columns: field name to a String series; fields the file lacks may be
            absent or None.
        lines: line number of each row.
    """
    height = len(lines)
    series = [lines.cast(pl.Int64).alias(LINE)]
    for name in zeek.LABELED_CONN_FIELDS:
        column = columns.get(name)
        if column is None:
            column = pl.Series(name, [None] * height, dtype=pl.String)
        series.append(column.alias(name))
    return pl.DataFrame(series)


def to_records(
    raw: pl.DataFrame,
    skips: SkipLog,
    *,
    unset: str = zeek.UNSET,
    empty: str = zeek.EMPTY,
) -> pl.DataFrame:
    """Type and clean a raw String frame; rows that fail are counted in `skips`.

    Args:
        raw: frame from `raw_frame`.
        skips: receives one entry per removed row.
        unset: the file's unset marker (`#unset_field`).
        empty: the file's empty-set marker (`#empty_field`).
    """
    markers = [unset, empty, ""]

    def is_marker(name: str) -> pl.Expr:
        column = pl.col(name)
        return (column == unset) | (column == empty) | (column == "")

    def number(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64, strict=False)

    # A number that failed to parse, or parsed as inf or NaN, while the field
    # held something other than a missing marker. Such rows are rare, so they
    # are re-checked one by one below.
    suspect = pl.any_horizontal(
        pl.col(name).is_not_null()
        & ~number(name).is_finite().fill_null(False)
        & ~is_marker(name)
        for name in zeek.NUMERIC_FIELDS
    )
    typed = raw.with_columns(
        *[number(name) for name in zeek.NUMERIC_FIELDS],
        *[
            pl.when(pl.col(name).is_in(_TRUE))
            .then(True)
            .when(pl.col(name).is_in(_FALSE))
            .then(False)
            .otherwise(None)
            .alias(name)
            for name in zeek.BOOL_FIELDS
        ],
        *[
            pl.when(is_marker(name)).then(None).otherwise(pl.col(name)).alias(name)
            for name in zeek.STRING_FIELDS
        ],
        (
            suspect
            | number("ts").is_null()
            | pl.col("uid").is_null()
            | is_marker("uid")
        ).alias(_BAD),
    )

    flagged = typed.filter(pl.col(_BAD))
    if flagged.height:
        repaired = _recheck(raw.filter(typed.get_column(_BAD)), markers, skips)
        typed = pl.concat(
            [typed.filter(~pl.col(_BAD)), repaired.select(typed.columns)]
        ).sort(LINE)
    return normalize_labels(typed.drop(_BAD))


def _recheck(raw: pl.DataFrame, markers: list[str], skips: SkipLog) -> pl.DataFrame:
    """Parse suspect rows again with surrounding spaces removed.

    Returns the rows that now parse (as `to_records` types them, with a
    false `_BAD` flag) and records every other row in `skips`.
    """
    good = []
    for row in raw.iter_rows(named=True):
        reason = None
        for name in zeek.NUMERIC_FIELDS:
            value = row[name]
            value = None if value is None or value.strip() in markers else value.strip()
            try:
                row[name] = zeek.parse_number(value)
            except ValueError:
                reason = f"{zeek.number_problem(value)} in {name}"
                break
        uid = (row["uid"] or "").strip()
        if reason is None and (row["ts"] is None or uid in markers):
            reason = "missing ts" if row["ts"] is None else "missing uid"
        if reason is not None:
            skips.add(row[LINE], reason)
            continue
        good.append(row)

    strings = {name: raw.schema[name] for name in raw.columns}
    frame = pl.DataFrame(good, schema=strings) if good else raw.clear()
    numeric = [pl.col(n).cast(pl.Float64) for n in zeek.NUMERIC_FIELDS]
    return to_records_strict(frame.with_columns(numeric), markers)


def to_records_strict(frame: pl.DataFrame, markers: list[str]) -> pl.DataFrame:
    """Apply the string and bool typing of `to_records` to already-checked rows."""
    return frame.with_columns(
        *[
            pl.when(pl.col(name).str.strip_chars().is_in(_TRUE))
            .then(True)
            .when(pl.col(name).str.strip_chars().is_in(_FALSE))
            .then(False)
            .otherwise(None)
            .alias(name)
            for name in zeek.BOOL_FIELDS
        ],
        *[
            pl.when(pl.col(name).str.strip_chars().is_in(markers))
            .then(None)
            .otherwise(pl.col(name).str.strip_chars())
            .alias(name)
            for name in zeek.STRING_FIELDS
        ],
        pl.lit(False).alias(_BAD),
    )


def output_fields(fields: Sequence[str] | None) -> list[str]:
    """Return the record fields a reader yields for a `fields` request, in order.

    None means every field of `zeek.LABELED_CONN_FIELDS`. The label fields
    are always included, because every reader counts them.

    Raises:
        ValueError: a name is not a field of `zeek.LABELED_CONN_FIELDS`.
    """
    if fields is None:
        return list(zeek.LABELED_CONN_FIELDS)
    unknown = [name for name in fields if name not in zeek.LABELED_CONN_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown flow record fields {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(zeek.LABELED_CONN_FIELDS)}"
        )
    chosen = set(fields) | set(zeek.LABEL_FIELDS)
    return [name for name in zeek.LABELED_CONN_FIELDS if name in chosen]


def clean_records(
    frame: pl.DataFrame,
    lines: pl.Series,
    header: zeek.Header,
    *,
    fields: Sequence[str] | None = None,
    labels_normalized: bool = False,
) -> pl.DataFrame:
    """Finish a frame that Polars parsed with numbers typed and markers as null.

    The caller has already checked every number, `ts` and `uid`. This adds
    the line numbers, absent fields, the bool fields and label spelling.
    The caller sets `labels_normalized` when it has already normalised the
    labels. The result keeps the columns that `output_fields(fields)` lists.
    """
    columns = [lines.cast(pl.Int64).alias(LINE)]
    for name in output_fields(fields):
        if name not in frame.columns:
            columns.append(pl.lit(None, dtype=RECORD_SCHEMA[name]).alias(name))
        elif name in zeek.BOOL_FIELDS:
            value = pl.col(name)
            columns.append(
                pl.when(value.is_in(_TRUE))
                .then(True)
                .when(value.is_in(_FALSE))
                .then(False)
                .otherwise(None)
                .alias(name)
            )
        else:
            columns.append(pl.col(name))
    records = frame.select(columns)
    return records if labels_normalized else normalize_labels(records)


def normalize_labels(records: pl.DataFrame) -> pl.DataFrame:
    """Map `label` and `detailed-label` through `zeek.normalize_label`.

    Each distinct value is normalised once, so the cost does not grow with
    the number of rows.
    """
    updates = []
    for name in zeek.LABEL_FIELDS:
        distinct = records[name].drop_nulls().unique().to_list()
        mapping = {value: zeek.normalize_label(value) for value in distinct}
        changed = {old: new for old, new in mapping.items() if old != new}
        if changed:
            updates.append(
                pl.col(name).replace_strict(
                    changed, default=pl.col(name), return_dtype=pl.String
                )
            )
    return records.with_columns(updates) if updates else records
