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

    def cleaned(name: str) -> pl.Expr:
        column = pl.col(name).str.strip_chars()
        return pl.when(column.is_in(markers)).then(None).otherwise(column)

    numbers = {
        name: cleaned(name).cast(pl.Float64, strict=False)
        for name in zeek.NUMERIC_FIELDS
    }
    bad_number = [
        pl.when(
            cleaned(name).is_not_null() & ~numbers[name].is_finite().fill_null(False)
        ).then(pl.lit(f"unparsable number in {name}"))
        for name in zeek.NUMERIC_FIELDS
    ]
    typed = raw.with_columns(
        *[numbers[name].alias(name) for name in zeek.NUMERIC_FIELDS],
        *[
            pl.when(cleaned(name).is_in(_TRUE))
            .then(True)
            .when(cleaned(name).is_in(_FALSE))
            .then(False)
            .otherwise(None)
            .alias(name)
            for name in zeek.BOOL_FIELDS
        ],
        *[cleaned(name).alias(name) for name in zeek.STRING_FIELDS],
        pl.coalesce(
            *bad_number,
            pl.when(cleaned("ts").is_null()).then(pl.lit("missing ts")),
            pl.when(cleaned("uid").is_null()).then(pl.lit("missing uid")),
        ).alias(_BAD),
    )

    bad = typed.filter(pl.col(_BAD).is_not_null())
    if bad.height:
        skips.add_many(bad[LINE].to_list(), bad[_BAD].to_list())
        typed = typed.filter(pl.col(_BAD).is_null())
    return normalize_labels(typed.drop(_BAD))


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
