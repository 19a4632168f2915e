"""`prepare_dataset`: flow logs in, an encoded and split dataset out.

The work runs in two passes, so memory stays bounded by the block size and
the per-flow keys rather than by the logs:

1. Every input file is read block by block. Each block's flows get a class
   (flows of other classes are excluded and counted), are encoded by
   `edgedp.features.encode`, and are written to a Parquet part file.
2. The keys of all flows (`uid`, `ts`, class, input file) are loaded to drop
   repeated flows and to assign splits. The part files are then read one at
   a time and their rows appended to the split files.

Everything is written inside a temporary folder that replaces `out` only
when the dataset is complete (`edgedp.atomic.directory`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import edgedp
from edgedp import atomic, config, features, zeek
from edgedp.data import labels, readers, sources, splits
from edgedp.data.sources import FlowLogError
from edgedp.dataset import (
    LABEL_COLUMN,
    LABEL_INDEX_COLUMN,
    MANIFEST_NAME,
    SPLITS,
    PreparedDataset,
    load_prepared,
)

log = logging.getLogger(__name__)

_PARTS = ".parts"
_FILE = "_file"


class PrepareError(ValueError):
    """The inputs or settings cannot make a usable dataset."""


def prepare_dataset(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    feature_set: str = features.EXTENDED,
    classes: Sequence[str] = config.STUDY_CLASSES,
    class_mapping: Mapping[str, str] | None = None,
    split: str = splits.RANDOM,
    seed: int = config.DEFAULT_SEED,
    overwrite: bool = False,
    max_rows_per_file: int | None = None,
    columns: Sequence[str] | None = None,
    chunk_bytes: int = sources.DEFAULT_CHUNK_BYTES,
) -> PreparedDataset:
    """Read flow logs and write a prepared dataset folder.

    Args:
        paths: flow log files, or folders searched recursively for them.
        out: the dataset folder to create.
        feature_set: `paper` or `extended` (see `edgedp.features`).
        classes: class names, in the order of `label_index`.
        class_mapping: `PATTERN` to class name, applied to source labels
            before matching `classes` (see `edgedp.data.labels`).
        split: `random` (stratified by class) or `capture` (whole files).
        seed: seed of the split.
        overwrite: replace an existing `out`.
        max_rows_per_file: read at most this many flows from each file, for
            a quick trial run.
        columns: column names for CSV/TSV exports without a header row.
        chunk_bytes: block size for reading; bounds memory per block.

    Returns:
        The written dataset, as `edgedp.dataset.load_prepared` opens it.

    Raises:
        PrepareError: invalid settings, an input without labels, no flow of
            any requested class, or a split method that cannot be met.
        FlowLogError: a file named in `paths` is not a flow log. Unreadable
            files found by searching a folder are skipped and recorded under
            `rejected` in `dataset.json` instead.
        FileExistsError: `out` exists and `overwrite` is not set.
    """
    classes = _check_settings(feature_set, classes, split, max_rows_per_file)
    mapping = dict(class_mapping or {})
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another folder or pass --overwrite"
        )

    reports, rejected = _open_reports(paths, columns)
    log.info("preparing %d input files into %s", len(reports), out)

    with atomic.directory(out, overwrite=overwrite) as folder:
        parts = folder / _PARTS
        parts.mkdir()
        excluded: list[pl.DataFrame] = []
        part_files = []
        for index, report in enumerate(reports):
            part_files += _encode_file(
                report,
                index,
                parts,
                feature_set=feature_set,
                classes=classes,
                mapping=mapping,
                excluded=excluded,
                max_rows=max_rows_per_file,
                chunk_bytes=chunk_bytes,
            )

        manifest = _write_splits(
            folder,
            part_files,
            reports,
            classes=classes,
            split=split,
            seed=seed,
        )
        manifest.update(
            {
                "edgedp_version": edgedp.__version__,
                "encoder_version": features.ENCODER_VERSION,
                "feature_set": feature_set,
                "feature_names": features.feature_names(feature_set),
                "class_mapping": mapping,
                "excluded": _count_excluded(excluded),
                "rejected": rejected,
                "max_rows_per_file": max_rows_per_file,
            }
        )
        for part in part_files:
            part.unlink()
        parts.rmdir()
        atomic.write_json(folder / MANIFEST_NAME, _ordered(manifest))
    log.info("wrote %s", out)
    return load_prepared(out)


def _check_settings(
    feature_set: str,
    classes: Sequence[str],
    split: str,
    max_rows_per_file: int | None,
) -> list[str]:
    if feature_set not in features.FEATURE_SETS:
        raise PrepareError(
            f"unknown feature set {feature_set!r}; "
            f"choose {' or '.join(features.FEATURE_SETS)}"
        )
    if split not in splits.METHODS:
        raise PrepareError(
            f"unknown split method {split!r}; choose {' or '.join(splits.METHODS)}"
        )
    if max_rows_per_file is not None and max_rows_per_file < 1:
        raise PrepareError(
            f"max_rows_per_file must be at least 1, got {max_rows_per_file}"
        )
    names = [zeek.normalize_label(name) or "" for name in classes]
    if not names or "" in names:
        raise PrepareError(f"classes must be non-empty names, got {list(classes)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PrepareError(f"classes are repeated: {', '.join(repeated)}")
    return names


def _open_reports(
    paths: Sequence[str | Path], columns: Sequence[str] | None
) -> tuple[list[readers.FileReport], list[dict[str, str]]]:
    """Open every input file, skipping unreadable files found in folders.

    A file named on the command line that is not a readable flow log stops
    the run. A file that a folder search found is skipped with a warning and
    listed in the returned rejections, so one odd export in a data folder
    does not block the rest.
    """
    named = {Path(p).resolve() for p in paths if Path(p).is_file()}
    reports = []
    rejected = []
    for path in sources.find_logs(paths):
        try:
            reports.append(readers.open_report(path, columns=columns))
        except FlowLogError as error:
            if path in named:
                raise
            log.warning("skipping %s: %s", path, error)
            rejected.append({"path": str(path), "reason": str(error)})

    if not reports:
        raise PrepareError(
            "none of the input files could be read as a flow log; "
            "see the warnings above for each file"
        )
    return reports, rejected


def _count_excluded(excluded: list[pl.DataFrame]) -> dict[str, int]:
    """Count excluded flows per source label, each (uid, ts) flow once.

    The same flow found in several input files counts once, as it does in
    the splits.
    """
    if not excluded:
        return {}
    flows = pl.concat(excluded).unique(subset=["uid", "ts"], keep="first")
    counts = flows.get_column(labels.SOURCE_CLASS).value_counts(sort=True)
    return {str(name): int(count) for name, count in counts.iter_rows()}


def _encode_file(
    report: readers.FileReport,
    file_index: int,
    parts: Path,
    *,
    feature_set: str,
    classes: list[str],
    mapping: dict[str, str],
    excluded: list[pl.DataFrame],
    max_rows: int | None,
    chunk_bytes: int,
) -> list[Path]:
    """Encode one input file into part files and return their paths."""
    written = []
    frames = readers.read_flows(
        report.path,
        report=report,
        max_rows=max_rows,
        chunk_bytes=chunk_bytes,
        fields=record_fields(feature_set),
    )
    buffer = EncodeBuffer(feature_set)
    for frame in frames:
        frame = frame.with_columns(labels.source_class_expr())
        sources_seen = frame.get_column(labels.SOURCE_CLASS).unique().to_list()
        lookup = labels.class_lookup(sources_seen, classes, mapping)
        frame = frame.with_columns(
            pl.col(labels.SOURCE_CLASS)
            .replace_strict(lookup, default=None, return_dtype=pl.Int64)
            .alias(LABEL_INDEX_COLUMN)
        )
        dropped = frame.filter(pl.col(LABEL_INDEX_COLUMN).is_null())
        excluded.append(dropped.select("uid", "ts", labels.SOURCE_CLASS))
        kept = frame.filter(pl.col(LABEL_INDEX_COLUMN).is_not_null())
        if not kept.height:
            continue

        encoded = encode_frame(kept, feature_set, out=buffer.rows(kept.height))
        part = parts / f"{file_index:05d}-{len(written):05d}.parquet"
        pq.write_table(
            _part_table(kept, encoded, report, file_index, classes, feature_set), part
        )
        written.append(part)

    if not report.has_labels:
        raise PrepareError(
            f"{report.path} has no labels; prepare needs labeled flow logs "
            "(IoT-23 conn.log.labeled or exports with label and detailed-label)"
        )
    log.info(
        "%s: %s, %d flows read, %d lines skipped",
        report.path.name,
        report.format,
        report.rows_read,
        report.skipped.total,
    )
    return written


def record_fields(feature_set: str) -> tuple[str, ...]:
    """Return the record fields that prepare reads: the encoder's and the keys."""
    return (*features.input_fields(feature_set), "uid", "ts")


def encode_frame(
    frame: pl.DataFrame, feature_set: str, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Encode a record frame into a float32 array (flows, features) and return it.

    Args:
        frame: flow records with the fields `record_fields(feature_set)`.
        feature_set: `paper` or `extended`.
        out: the array to fill, such as `EncodeBuffer.rows`; by default a
            new column-major one. Column-major order is the fastest for the
            encoder to fill, and each feature column is then contiguous, as
            Parquet columns take it.
    """
    if out is None:
        out = np.empty(
            (frame.height, len(features.feature_names(feature_set))),
            dtype=np.float32,
            order="F",
        )
    return features.encode_into(
        encoder_columns(frame, feature_set), feature_set, out=out
    )


class EncodeBuffer:
    """A column-major float32 output array reused from block to block.

    Filling memory that an earlier block already touched saves the page
    faults that a fresh array of that size costs on every block.
    """

    def __init__(self, feature_set: str) -> None:
        self.width = len(features.feature_names(feature_set))
        self._array: np.ndarray | None = None

    def rows(self, count: int) -> np.ndarray:
        """Return a (count, features) view, valid until the next call."""
        if self._array is None or self._array.shape[0] < count:
            self._array = np.empty((count, self.width), dtype=np.float32, order="F")
        return self._array[:count]


def encoder_columns(frame: pl.DataFrame, feature_set: str) -> dict[str, Any]:
    """Return the columns `features.encode` reads, taken from a record frame.

    String columns are dictionary-encoded in Polars, all in one query so that
    they run in parallel, and the encoder then maps each distinct value once
    instead of every row. A null gets the code of an extra `None` category,
    which the encoder treats as missing, so the codes are never negative.
    """
    names = features.input_fields(feature_set)
    strings = [name for name in names if name not in zeek.NUMERIC_FIELDS]
    distinct = frame.select(
        pl.col(name).unique().drop_nulls().implode() for name in strings
    ).row(0)
    codes = frame.select(
        pl.col(name)
        .cast(pl.Enum(values))
        .to_physical()
        .cast(pl.Int64)
        .fill_null(len(values))
        if values
        else pl.repeat(0, frame.height, dtype=pl.Int64).alias(name)
        for name, values in zip(strings, distinct, strict=True)
    )

    columns: dict[str, Any] = {}
    for name, values in zip(strings, distinct, strict=True):
        columns[name] = features.Categorical(
            categories=[*values, None], codes=codes.get_column(name).to_numpy()
        )
    for name in names:
        if name in zeek.NUMERIC_FIELDS:
            columns[name] = frame.get_column(name).to_numpy()
    return columns


def _part_table(
    frame: pl.DataFrame,
    encoded: np.ndarray,
    report: readers.FileReport,
    file_index: int,
    classes: list[str],
    feature_set: str,
) -> pa.Table:
    label_index = frame.get_column(LABEL_INDEX_COLUMN).to_numpy()
    names = features.feature_names(feature_set)
    columns = {
        "uid": frame.get_column("uid").to_arrow(),
        "ts": frame.get_column("ts").to_arrow(),
        "source": pa.array(
            np.full(frame.height, report.path.name, dtype=object), pa.string()
        ),
        LABEL_COLUMN: pa.array(
            np.asarray(classes, dtype=object)[label_index], pa.string()
        ),
        LABEL_INDEX_COLUMN: pa.array(label_index, pa.int64()),
        _FILE: pa.array(np.full(frame.height, file_index, dtype=np.int32)),
    }
    for position, name in enumerate(names):
        # Contiguous in a column-major array, so Arrow wraps it without a copy.
        columns[name] = pa.array(encoded[:, position])
    return pa.table(columns)


def _write_splits(
    folder: Path,
    part_files: list[Path],
    reports: list[readers.FileReport],
    *,
    classes: list[str],
    split: str,
    seed: int,
) -> dict[str, Any]:
    """Drop repeated flows, assign splits and write the split files."""
    if not part_files:
        read = sum(report.rows_read for report in reports)
        raise PrepareError(
            f"no flow of the classes {', '.join(classes)} in the input "
            f"({read} flows read); check --classes and --map, or the input files"
        )
    keys = pl.read_parquet(part_files, columns=["uid", "ts", LABEL_INDEX_COLUMN, _FILE])
    first = (
        keys.select(pl.struct("uid", "ts").is_first_distinct()).to_series().to_numpy()
    )
    duplicates_by_file = np.bincount(
        keys.get_column(_FILE).to_numpy()[~first], minlength=len(reports)
    )

    kept_labels = keys.get_column(LABEL_INDEX_COLUMN).to_numpy()[first]
    kept_files = keys.get_column(_FILE).to_numpy()[first]
    fractions = config.SPLIT_FRACTIONS
    split_of_file: dict[str, str] = {}
    if split == splits.RANDOM:
        assignment = splits.random_split(kept_labels, fractions, seed)
    else:
        names = [report.path.name for report in reports]
        try:
            assignment, split_of_file = splits.capture_split(
                kept_files, names, fractions, seed
            )
        except ValueError as error:
            raise PrepareError(str(error)) from error

    short = splits.empty_classes(assignment, kept_labels, classes)
    kept_classes = [name for name in classes if name not in short]
    for name, counts in short.items():
        if not any(counts.values()):
            log.warning("dropping class %s: no input flow has this class", name)
            continue
        log.warning(
            "dropping class %s: the %s split leaves a split without its flows (%s)",
            name,
            split,
            ", ".join(f"{s} {n}" for s, n in counts.items()),
        )
    if len(kept_classes) == 1:
        log.warning(
            "only class %s is left, so a classifier has nothing to tell apart; "
            "add logs with other classes",
            kept_classes[0],
        )
    if not kept_classes:
        raise PrepareError(
            f"every class is too small for the {split} split: {short}; "
            "add input files or use --split random"
        )
    new_index = np.array(
        [kept_classes.index(name) if name in kept_classes else -1 for name in classes]
    )

    split_rows = _copy_rows(folder, part_files, first, assignment, new_index)
    counts = {
        name: {
            "rows": int(split_rows[name].sum()),
            "classes": {
                cls: int(split_rows[name][i]) for i, cls in enumerate(kept_classes)
            },
        }
        for name in SPLITS
    }
    inputs = []
    for report, duplicates in zip(reports, duplicates_by_file, strict=True):
        entry = report.to_json()
        entry["duplicates_dropped"] = int(duplicates)
        if split_of_file:
            entry["split"] = split_of_file.get(report.path.name)
        inputs.append(entry)
    return {
        "classes": kept_classes,
        "dropped_classes": short,
        "split": {"method": split, "fractions": dict(fractions), "seed": seed},
        "inputs": inputs,
        "splits": counts,
        "duplicates_dropped": int((~first).sum()),
    }


def _copy_rows(
    folder: Path,
    part_files: list[Path],
    first: np.ndarray,
    assignment: np.ndarray,
    new_index: np.ndarray,
) -> dict[str, np.ndarray]:
    """Append each part's kept rows to the split files; return class counts."""
    split_of_row = np.full(len(first), -1, dtype=np.int8)
    split_of_row[first] = assignment
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {
        name: np.zeros(int(new_index.max()) + 1, dtype=np.int64) for name in SPLITS
    }
    start = 0
    try:
        for part in part_files:
            table = pq.read_table(part)
            stop = start + table.num_rows
            rows_split = split_of_row[start:stop]
            labels_new = new_index[table.column(LABEL_INDEX_COLUMN).to_numpy()]
            start = stop
            table = table.drop_columns([_FILE]).set_column(
                table.schema.get_field_index(LABEL_INDEX_COLUMN),
                LABEL_INDEX_COLUMN,
                pa.array(labels_new, pa.int64()),
            )
            for split_index, name in enumerate(SPLITS):
                mask = (rows_split == split_index) & (labels_new >= 0)
                if not mask.any():
                    continue
                chosen = table.filter(pa.array(mask))
                if name not in writers:
                    writers[name] = pq.ParquetWriter(
                        folder / f"{name}.parquet", chosen.schema
                    )
                writers[name].write_table(chosen)
                counts[name] += np.bincount(
                    labels_new[mask], minlength=len(counts[name])
                )
    finally:
        for writer in writers.values():
            writer.close()
    return counts


def _ordered(manifest: dict[str, Any]) -> dict[str, Any]:
    """Put the manifest keys a reader looks for first at the top."""
    first = [
        "edgedp_version",
        "encoder_version",
        "feature_set",
        "classes",
        "class_mapping",
        "split",
        "splits",
        "duplicates_dropped",
        "excluded",
        "dropped_classes",
    ]
    return {**{key: manifest[key] for key in first}, **manifest}
