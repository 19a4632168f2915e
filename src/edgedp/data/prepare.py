"""`prepare_dataset`: flow logs in, an encoded and split dataset out.

The work runs in two passes, so memory stays bounded by the block size and
the per-flow keys rather than by the logs:

1. Every input file is read block by block. Each block's flows get a class
   (or none, for flows of other labels), and those with a class are encoded
   by `edgedp.features.encode` and written to a Parquet part file. The keys
   of all flows are kept in memory in a compact form
   (`edgedp.data.flowkeys`, about 20 bytes per flow).
2. The keys find the repeated flows, and the first occurrences get their
   splits. The part files are then read one at a time and their rows
   appended to the split files.

Every flow read is counted once, by the first of these rules that applies:

- duplicate: the same flow (`uid` and `ts`) was read before, whatever the
  label of either row;
- excluded: its label matches no class;
- over the class cap: its class has more flows than `max_rows_per_class`,
  and the seeded choice of the flows to keep passed it over;
- in a dropped class: the split leaves its class empty in some split;
- kept: the rest, which the split files contain.

`dataset.json` records the five counts in total (`rows`) and per input file,
and they add up to the rows read.

Everything is written inside a temporary folder that replaces `out` only
when the dataset is complete (`edgedp.atomic.directory`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import hexdigits
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import edgedp
from edgedp import atomic, config, features, zeek
from edgedp.data import labels, readers, sources, splits
from edgedp.data.flowkeys import FlowKeys, KeyLog
from edgedp.data.sources import FlowLogError
from edgedp.dataset import (
    FINGERPRINT_KEY_BYTES,
    FINGERPRINT_KEY_NAME,
    LABEL_COLUMN,
    LABEL_INDEX_COLUMN,
    MANIFEST_NAME,
    SPLITS,
    PreparedDataset,
    load_prepared,
)
from edgedp.experiment import MAX_SEED

log = logging.getLogger(__name__)

_PARTS = ".parts"


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
    max_rows_per_class: int | None = None,
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
        split: `random` (stratified by class), `independent` (each flow by
            its own draw) or `capture` (whole files); see `splits`.
        seed: seed of the split.
        overwrite: replace an existing `out`.
        max_rows_per_file: read at most this many flows from each file.
            The first rows of a file often contain one class only.
        max_rows_per_class: keep at most this many flows of each class, a
            seeded random choice among all the files' flows (after dropping
            duplicates), for a quick trial run that still has every class.
        columns: column names for CSV/TSV exports without a header row.
        chunk_bytes: block size for reading; bounds memory per block.

    Returns:
        The written dataset, as `edgedp.dataset.load_prepared` opens it.

    Raises:
        PrepareError: invalid settings, an input without labels, no flow of
            any requested class, or a split method that cannot be met.
        FlowLogError: a file named in `paths` is not a flow log, is damaged,
            or has every data line skipped. Such files found by searching a
            folder are set aside with a warning, none of their rows are kept,
            and `dataset.json` lists them under `rejected` instead.
            Subfolders that edgedp wrote are not searched, and
            `dataset.json` lists them under `skipped_folders`.
        FileExistsError: `out` exists and `overwrite` is not set.
        OutputError: `out` cannot be created (`edgedp.atomic.check_writable`).
    """
    classes = _check_settings(
        feature_set, classes, split, seed, max_rows_per_file, max_rows_per_class
    )
    mapping = dict(class_mapping or {})
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another folder or pass --overwrite"
        )
    atomic.check_replaceable(out, overwrite=overwrite, marker=MANIFEST_NAME)
    atomic.check_writable(out)

    named = {Path(p).resolve() for p in paths if Path(p).is_file()}
    opened, rejected, skipped_folders = _open_reports(paths, columns, named)
    log.info("preparing %d input files into %s", len(opened), out)

    with atomic.directory(out, overwrite=overwrite, marker=MANIFEST_NAME) as folder:
        parts = folder / _PARTS
        parts.mkdir()
        reports: list[readers.FileReport] = []
        key_log = KeyLog(len(classes))
        part_files: list[Path] = []
        for report in opened:
            try:
                written = _encode_file(
                    report,
                    len(reports),
                    parts,
                    key_log,
                    feature_set=feature_set,
                    classes=classes,
                    mapping=mapping,
                    max_rows=max_rows_per_file,
                    chunk_bytes=chunk_bytes,
                )
            except FlowLogError as error:
                if report.path in named:
                    raise
                log.warning(
                    "skipping %s, none of its rows are kept: %s", report.path, error
                )
                rejected.append({"path": str(report.path), "reason": str(error)})
                continue
            reports.append(report)
            part_files += written
        if not reports:
            raise PrepareError(
                "none of the input files could be read as a flow log; "
                "see the warnings above for each file"
            )

        manifest = _write_splits(
            folder,
            part_files,
            key_log.flow_keys(len(reports)),
            reports,
            classes=classes,
            split=split,
            seed=seed,
            max_rows_per_class=max_rows_per_class,
        )
        manifest.update(
            {
                "edgedp_version": edgedp.__version__,
                "encoder_version": features.ENCODER_VERSION,
                "feature_set": feature_set,
                "feature_names": features.feature_names(feature_set),
                "class_mapping": mapping,
                "rejected": rejected,
                "skipped_folders": skipped_folders,
                "max_rows_per_file": max_rows_per_file,
                "max_rows_per_class": max_rows_per_class,
            }
        )
        for part in part_files:
            part.unlink()
        parts.rmdir()
        (folder / FINGERPRINT_KEY_NAME).write_text(_fingerprint_key(out) + "\n")
        atomic.write_json(folder / MANIFEST_NAME, _ordered(manifest))
    log.info("wrote %s", out)
    return load_prepared(out)


def _fingerprint_key(out: Path) -> str:
    """Return the key of the dataset folder `out` replaces, or a new one.

    Keeping the key keeps the fingerprint of the same data, so the bundles
    trained on a dataset still match it after a rerun writes it again.
    """
    try:
        old = (out / FINGERPRINT_KEY_NAME).read_text().strip()
    except OSError:
        old = ""
    if len(old) == 2 * FINGERPRINT_KEY_BYTES and all(c in hexdigits for c in old):
        return old
    return secrets.token_hex(FINGERPRINT_KEY_BYTES)


def _check_settings(
    feature_set: str,
    classes: Sequence[str],
    split: str,
    seed: int,
    max_rows_per_file: int | None,
    max_rows_per_class: int | None,
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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise PrepareError(
            f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}"
        )
    for name, limit in (
        ("max_rows_per_file", max_rows_per_file),
        ("max_rows_per_class", max_rows_per_class),
    ):
        if limit is not None and limit < 1:
            raise PrepareError(f"{name} must be at least 1, got {limit}")
    names = [zeek.normalize_label(name) or "" for name in classes]
    if not names or "" in names:
        raise PrepareError(f"classes must be non-empty names, got {list(classes)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PrepareError(f"classes are repeated: {', '.join(repeated)}")
    return names


def _open_reports(
    paths: Sequence[str | Path], columns: Sequence[str] | None, named: set[Path]
) -> tuple[list[readers.FileReport], list[dict[str, str]], list[dict[str, str]]]:
    """Open every input file, setting aside unreadable files found in folders.

    A file in `named` (given on the command line) that is not a readable
    flow log stops the run. A file that a folder search found is skipped
    with a warning and listed in the returned rejections, so one odd export
    in a data folder does not block the rest. The third list contains the
    folders that the search did not enter because edgedp wrote them.
    """
    search = sources.search_logs(paths)
    skipped_folders = [
        {"path": str(folder.path), "marker": folder.marker, "kind": folder.kind}
        for folder in search.skipped_folders
    ]
    reports = []
    rejected = []
    for path in search.files:
        try:
            reports.append(readers.open_report(path, columns=columns))
        except FlowLogError as error:
            if path in named:
                raise
            log.warning("skipping %s: %s", path, error)
            rejected.append({"path": str(path), "reason": str(error)})
    return reports, rejected, skipped_folders


def _encode_file(
    report: readers.FileReport,
    file_index: int,
    parts: Path,
    key_log: KeyLog,
    *,
    feature_set: str,
    classes: list[str],
    mapping: dict[str, str],
    max_rows: int | None,
    chunk_bytes: int,
) -> list[Path]:
    """Encode one input file into part files and add its keys to `key_log`.

    Returns the part files. A file that fails while it is read leaves no
    part file and no key behind.

    Raises:
        FlowLogError: the file is damaged, or every data line was skipped.
        PrepareError: the file has data rows but no labels.
    """
    written: list[Path] = []
    mark = key_log.blocks
    frames = readers.read_flows(
        report.path,
        report=report,
        max_rows=max_rows,
        chunk_bytes=chunk_bytes,
        fields=record_fields(feature_set),
    )
    buffer = EncodeBuffer(feature_set)
    try:
        for frame in frames:
            frame = frame.with_columns(labels.source_class_expr())
            sources_seen = frame.get_column(labels.SOURCE_CLASS).unique().to_list()
            lookup = labels.class_lookup(sources_seen, classes, mapping)
            frame = frame.with_columns(
                pl.col(labels.SOURCE_CLASS)
                .replace_strict(lookup, default=None, return_dtype=pl.Int64)
                .alias(LABEL_INDEX_COLUMN),
            )
            key_log.add(frame, file_index)
            kept = frame.filter(pl.col(LABEL_INDEX_COLUMN).is_not_null())
            if not kept.height:
                continue

            encoded = encode_frame(kept, feature_set, out=buffer.rows(kept.height))
            part = parts / f"{file_index:05d}-{len(written):05d}.parquet"
            pq.write_table(
                _part_table(kept, encoded, report, classes, feature_set), part
            )
            written.append(part)
        message = report.no_rows_message()
        if message is not None:
            raise FlowLogError(message)
    except FlowLogError:
        key_log.discard_from(mark)
        for part in written:
            part.unlink()
        raise

    # Zeek writes a header-only log for a rotation interval with no
    # connections, so a file without data rows adds nothing and is no error.
    if report.rows_read and not report.has_labels:
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
    }
    for position, name in enumerate(names):
        # Contiguous in a column-major array, so Arrow wraps it without a copy.
        columns[name] = pa.array(encoded[:, position])
    return pa.table(columns)


def _write_splits(
    folder: Path,
    part_files: list[Path],
    keys: FlowKeys,
    reports: list[readers.FileReport],
    *,
    classes: list[str],
    split: str,
    seed: int,
    max_rows_per_class: int | None,
) -> dict[str, Any]:
    """Drop repeated flows, cap the classes, assign splits and write the files."""
    if not keys.part_first.any():
        read = sum(report.rows_read for report in reports)
        if not read:
            raise PrepareError(
                "the input files have no data rows, only headers or skipped "
                "lines; give flow logs that contain flows"
            )
        raise PrepareError(
            f"no flow of the classes {', '.join(classes)} in the input "
            f"({read} flows read); check --classes and --map, or the input files"
        )
    chosen = keys.part_first.copy()
    first = np.flatnonzero(keys.part_first)
    split_draws, cap_draws = _flow_draws(part_files, keys.part_first, seed)
    if max_rows_per_class is not None:
        within_cap = splits.cap_classes(
            keys.part_labels[first], max_rows_per_class, cap_draws
        )
        chosen[first[~within_cap]] = False
        split_draws = split_draws[within_cap]
    kept_labels = keys.part_labels[chosen]
    kept_files = keys.part_files[chosen]
    fractions = config.SPLIT_FRACTIONS
    split_of_file: dict[str, str] = {}
    if split == splits.RANDOM:
        assignment = splits.random_split(kept_labels, split_draws, fractions)
    elif split == splits.INDEPENDENT:
        assignment = splits.independent_split(split_draws, fractions)
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
        if split != splits.CAPTURE:
            fix = (
                "add flows of these classes, or merge them into fewer classes "
                "with --classes and --map"
            )
        else:
            fix = "add input files with these classes or use --split random"
        if max_rows_per_class is not None and keys.part_first.sum() > len(kept_labels):
            fix = (
                f"raise --max-rows-per-class (now {max_rows_per_class}), which "
                f"left out flows of these classes, or {fix}"
            )
        raise PrepareError(
            f"every class is too small for the {split} split, which needs "
            f"flows of each class in train, validation and test: "
            f"{splits.describe_classes(short)}. To fix this, {fix}"
        )
    new_index = np.array(
        [kept_classes.index(name) if name in kept_classes else -1 for name in classes]
    )

    split_rows = _copy_rows(folder, part_files, chosen, assignment, new_index)
    counts = {
        name: {
            "rows": int(split_rows[name].sum()),
            "classes": {
                cls: int(split_rows[name][i]) for i, cls in enumerate(kept_classes)
            },
        }
        for name in SPLITS
    }
    inputs = _input_entries(reports, keys, chosen, new_index, split_of_file)
    return {
        "classes": kept_classes,
        "dropped_classes": short,
        "split": {"method": split, "fractions": dict(fractions), "seed": seed},
        "inputs": inputs,
        "splits": counts,
        "rows": {
            name: sum(entry[key] for entry in inputs)
            for name, key in _ROW_COUNTS.items()
        },
        "duplicates_dropped": int(keys.duplicates_by_file.sum()),
        "excluded": keys.excluded_by_label,
    }


# Keys of `dataset.json["rows"]` and the per-input keys they add up. The last
# five add up to the first.
_ROW_COUNTS = {
    "read": "rows_read",
    "duplicates_dropped": "duplicates_dropped",
    "excluded": "rows_excluded",
    "over_class_cap": "rows_over_class_cap",
    "in_dropped_classes": "rows_in_dropped_classes",
    "kept": "rows_kept",
}


def _input_entries(
    reports: list[readers.FileReport],
    keys: FlowKeys,
    chosen: np.ndarray,
    new_index: np.ndarray,
    split_of_file: dict[str, str],
) -> list[dict[str, Any]]:
    """Return the `dataset.json` entry of every input file, with its row counts.

    `chosen` marks the part rows that are first occurrences within the class
    cap.
    """
    file_count = len(reports)
    kept = chosen & (new_index[keys.part_labels] >= 0)
    kept_by_file = np.bincount(keys.part_files[kept], minlength=file_count)
    dropped_by_file = np.bincount(keys.part_files[chosen & ~kept], minlength=file_count)
    capped_by_file = np.bincount(
        keys.part_files[keys.part_first & ~chosen], minlength=file_count
    )
    entries = []
    for index, report in enumerate(reports):
        entry = report.to_json()
        entry["duplicates_dropped"] = int(keys.duplicates_by_file[index])
        entry["rows_excluded"] = int(keys.excluded_by_file[index])
        entry["rows_over_class_cap"] = int(capped_by_file[index])
        entry["rows_in_dropped_classes"] = int(dropped_by_file[index])
        entry["rows_kept"] = int(kept_by_file[index])
        if split_of_file:
            entry["split"] = split_of_file.get(report.path.name)
        entries.append(entry)
    return entries


def _flow_draws(
    part_files: list[Path], part_first: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the split and cap draws of the part rows marked in `part_first`.

    The part files are read one at a time, `uid` and `ts` only.
    """
    draws: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0
    for part in part_files:
        table = pq.read_table(part, columns=["uid", "ts"])
        stop = start + table.num_rows
        mask = pa.array(part_first[start:stop])
        start = stop
        table = table.filter(mask)
        draws.append(
            splits.flow_draws(
                table.column("uid").to_pylist(), table.column("ts").to_pylist(), seed
            )
        )
    if not draws:
        return np.zeros(0), np.zeros(0)
    return (
        np.concatenate([split for split, _ in draws]),
        np.concatenate([cap for _, cap in draws]),
    )


def _copy_rows(
    folder: Path,
    part_files: list[Path],
    chosen: np.ndarray,
    assignment: np.ndarray,
    new_index: np.ndarray,
) -> dict[str, np.ndarray]:
    """Append each part's chosen rows to the split files; return class counts."""
    split_of_row = np.full(len(chosen), -1, dtype=np.int8)
    split_of_row[chosen] = assignment
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
            table = table.set_column(
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
        "rows",
        "duplicates_dropped",
        "excluded",
        "dropped_classes",
    ]
    return {**{key: manifest[key] for key in first}, **manifest}
