"""Finding flow log files, opening them, and recognising their format."""

from __future__ import annotations

import gzip
import json
import logging
import mmap
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from edgedp import bundle, dataset, zeek

log = logging.getLogger(__name__)

ZEEK_TSV = "zeek-tsv"
ZEEK_JSON = "zeek-json"
CSV = "csv"
TSV = "tsv"

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_CHUNK_BYTES = 16 << 20
"""Block size of the readers. On the reading benchmark, 16 MiB blocks read
faster than 32 MiB ones, and fewer bytes are in flight
(docs/benchmarks.md)."""
SNIFF_BYTES = 1 << 16

# Names of files that a folder search treats as flow logs. An explicit file
# path is always read, whatever its name.
LOG_SUFFIXES: tuple[str, ...] = (
    ".log",
    ".labeled",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".ndjson",
)

COLUMN_PRESETS: dict[str, tuple[str, ...]] = {
    "conn": zeek.CONN_FIELDS,
    "conn-labeled": zeek.LABELED_CONN_FIELDS,
}
"""Names that `--columns` accepts in place of a list of field names."""

# Files that mark a folder written by edgedp, each with the top-level keys
# that edgedp always writes in it and what the folder then is. A folder search
# skips a folder whose marker file is a JSON object with all these keys, and
# everything below it. A file of the same name with other content does not
# count. The run folder's state file name, `edgedp.study.layout.STATE`, is
# written out here because importing the study package would load its runner.
OUTPUT_MARKERS: dict[str, tuple[tuple[str, ...], str]] = {
    bundle.MANIFEST_NAME: (("bundle_format", "bundle_id", "files"), "bundle"),
    dataset.MANIFEST_NAME: (
        ("encoder_version", "feature_set", "splits"),
        "prepared dataset",
    ),
    "state.json": (("format", "stages", "invocations"), "run folder"),
}

# Marker files larger than this are not parsed and do not count. edgedp's own
# are a few KiB to a few MiB, so the cap only bounds the memory that parsing
# an unrelated file of the same name can take.
MAX_MARKER_BYTES = 64 << 20

# Separators that a CSV/TSV export may use. The one that occurs most often in
# the header row is taken.
EXPORT_SEPARATORS: tuple[str, ...] = ("\t", ",", ";")

# Errors that reading a damaged file raises: gzip's EOFError for a file cut
# short, zlib.error for corrupt deflate data, OSError (BadGzipFile) for a bad
# header or trailer, and I/O errors.
READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)

# Fields without which a file is not read as a conn log.
REQUIRED_FIELDS: tuple[str, ...] = ("ts", "uid", "id.orig_p", "id.resp_p", "proto")


# A Zeek TSV log starts with #separator; hand-made ones may start later on.
_ZEEK_FIRST_DIRECTIVES = ("#separator", "#fields", "#path")


class FlowLogError(ValueError):
    """An input file that cannot be read as a flow log. The message gives the reason."""


@dataclass(frozen=True)
class Layout:
    """How to read one file: its format and, for exports, its column names."""

    format: str
    separator: str = "\t"
    names: tuple[str, ...] = ()
    """Column names of a CSV/TSV export; empty for Zeek TSV and JSON."""
    header_row: bool = True
    """True when the first line of a CSV/TSV export contains the column names."""


class SkippedFolder(NamedTuple):
    """A folder that a folder search did not enter, because edgedp wrote it."""

    path: Path
    marker: str
    """Name of the edgedp file found in the folder, such as `bundle.json`."""
    kind: str
    """Kind of edgedp output that the marker shows, such as `prepared dataset`."""


class LogSearch(NamedTuple):
    """The result of expanding input paths into flow log files."""

    files: list[Path]
    """Resolved flow log paths, each once."""
    skipped_folders: list[SkippedFolder]


def find_logs(paths: Iterable[str | Path], *, warn: bool = True) -> list[Path]:
    """Expand files and folders into the list of flow log files to read.

    This is `search_logs` without the list of skipped folders. `warn`
    False leaves the warnings to a later `search_logs` of the same paths.

    Raises:
        FileNotFoundError: a path does not exist.
        FlowLogError: no flow log was found at all.
    """
    return search_logs(paths, warn=warn).files


def search_logs(paths: Iterable[str | Path], *, warn: bool = True) -> LogSearch:
    """Expand files and folders into flow log files and the folders skipped.

    Folders are searched recursively for names ending in `LOG_SUFFIXES`,
    optionally followed by `.gz`, and return them sorted. Subfolders that
    edgedp wrote (see `OUTPUT_MARKERS`) are not searched. Each is logged as
    a warning (unless `warn` is False) and returned in `skipped_folders`.
    A folder named in `paths` is always searched. Files are kept in the
    order given. A path given twice is read once.

    Raises:
        FileNotFoundError: a path does not exist.
        FlowLogError: no flow log was found at all.
    """
    paths = list(paths)
    found: list[Path] = []
    skipped: list[SkippedFolder] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            matches = sorted(_search_folder(path, skipped))
            if not matches and warn:
                log.warning("no flow log files found in %s", path)
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")

    skipped = list(dict.fromkeys(skipped))
    for folder in skipped if warn else ():
        log.warning(
            "not searching %s for flow logs: its %s is a %s manifest that "
            "edgedp wrote; pass that folder itself to read its logs",
            folder.path,
            folder.marker,
            folder.kind,
        )

    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FlowLogError(
            "no flow log files in "
            + ", ".join(str(p) for p in paths)
            + f"; expected names ending in {', '.join(LOG_SUFFIXES)} (or .gz)"
        )
    return LogSearch(unique, skipped)


def _search_folder(root: Path, skipped: list[SkippedFolder]) -> Iterator[Path]:
    """Yield the files under `root` with flow log names, skipping edgedp outputs.

    Each skipped subfolder is appended to `skipped`.
    """
    for folder, subfolders, files in os.walk(root):
        searched = []
        for name in subfolders:
            path = Path(folder) / name
            found = _output_marker(path)
            if found is None:
                searched.append(name)
                continue
            marker, kind = found
            skipped.append(SkippedFolder(path, marker, kind))
        subfolders[:] = searched
        for name in files:
            path = Path(folder) / name
            if _looks_like_log(path) and path.is_file():
                yield path


def _output_marker(folder: Path) -> tuple[str, str] | None:
    """Return the name and kind of the edgedp output file in `folder`, if any."""
    for name, (keys, kind) in OUTPUT_MARKERS.items():
        path = folder / name
        if _has_keys(path, keys):
            return name, kind
        if path.is_file():
            log.info(
                "searching %s for flow logs although it contains %s: that file "
                "lacks the keys %s that edgedp writes in it",
                folder,
                name,
                ", ".join(keys),
            )
    return None


def _has_keys(path: Path, keys: Sequence[str]) -> bool:
    """Tell whether `path` is a JSON file whose top-level object has all `keys`."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_MARKER_BYTES:
            return False
        content = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and all(key in content for key in keys)


def _looks_like_log(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(LOG_SUFFIXES) or name.startswith("conn")


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading, decompressing it when it is gzipped."""
    handle = open(path, "rb")
    if handle.peek(2)[:2] == GZIP_MAGIC:  # type: ignore[attr-defined]
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


class Block(NamedTuple):
    """A run of whole lines from a file."""

    first_line: int
    """Number of the block's first line in the file, from 1."""
    data: bytes
    newlines: int
    """Number of line breaks in `data`; the last line of a file may lack one."""


def read_chunks(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Block]:
    """Yield the file in `Block`s of about `chunk_bytes` that end on a line break.

    Only the file's last block may end without one. A UTF-8 byte-order mark
    at the start of the file is removed. A plain file is memory mapped and
    each block copied out of the map once. A gzipped file (or one that
    cannot be mapped, such as a pipe) is read block by block, and a block
    that ends inside a line is completed with `readline`, which copies it
    once more. Memory use is about one block whatever the file size, unless
    one line is longer than a block.

    Raises:
        FlowLogError: the file cannot be read or decompressed. The message
            gives the last complete line before the damage.
    """
    line = 1
    with open_binary(path) as handle:
        try:
            for data in _blocks(handle, chunk_bytes):
                if line == 1 and data.startswith(UTF8_BOM):
                    data = data[len(UTF8_BOM) :]
                newlines = data.count(b"\n")
                yield Block(line, data, newlines)
                line += newlines
        except READ_ERRORS as error:
            raise FlowLogError(_damaged_message(path, error)) from error


def _damaged_message(path: Path, error: BaseException) -> str:
    """Describe a read error, with the last complete line before it.

    A block is read in one call, so the lines before the damage within the
    failing block are lost with the exception. The file is read again here,
    one decompressed buffer at a time (`read1`), which keeps every byte that
    decompressed before the damage. This costs a second read, but only of a
    damaged file.
    """
    complete = 0
    try:
        with open_binary(path) as handle:
            while piece := handle.read1(1 << 20):  # type: ignore[attr-defined]
                complete += piece.count(b"\n")
    except READ_ERRORS:
        pass
    place = f"after line {complete}" if complete else "before its first line"
    if isinstance(error, gzip.BadGzipFile) and "CRC check failed" in str(error):
        return (
            f"{path} is damaged: its gzip checksum does not match ({error}). "
            f"gzip checks it only at the end of each member, here after line "
            f"{complete}, so the damage may be on any earlier line; "
            f"{_download_hint(path)}"
        )
    return (
        f"{path} is damaged {place} ({type(error).__name__}: {error}); "
        f"{_download_hint(path)}"
    )


def _download_hint(path: Path) -> str:
    with open(path, "rb") as handle:
        compressed = handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    if compressed:
        return "the gzip file is damaged or truncated, so download it again"
    return "the file could not be read, so check the disk or copy it again"


def _blocks(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    if not isinstance(handle, gzip.GzipFile):
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            pass  # an empty file, a pipe or another file that mmap rejects
        else:
            with mapped:
                yield from _map_blocks(mapped, chunk_bytes)
            return

    while True:
        data = handle.read(chunk_bytes)
        if not data:
            return
        if not data.endswith(b"\n"):
            data += _rest_of_line(handle, chunk_bytes)
        yield data


def _map_blocks(mapped: mmap.mmap, chunk_bytes: int) -> Iterator[bytes]:
    """Yield copies of the map's blocks, releasing the pages already copied.

    Mapped pages that were read count in the process's resident memory until
    they are released, so without `MADV_DONTNEED` the resident size would
    grow with the file. The file and the page cache are not changed.
    """
    size = len(mapped)
    start = 0
    released = 0
    while start < size:
        end = mapped.find(b"\n", min(start + chunk_bytes, size) - 1) + 1 or size
        yield mapped[start:end]
        start = end
        page_end = end - end % mmap.PAGESIZE
        if page_end > released and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED, released, page_end - released)
            released = page_end


def _rest_of_line(handle: BinaryIO, chunk_bytes: int) -> bytes:
    """Read up to and including the next line break, or to the end of the file."""
    pieces = []
    while True:
        piece = handle.readline(chunk_bytes)
        pieces.append(piece)
        if not piece or piece.endswith(b"\n"):
            return b"".join(pieces)


def _first_lines(path: Path) -> list[str]:
    try:
        with open_binary(path) as handle:
            head = handle.read(SNIFF_BYTES)
    except READ_ERRORS as error:
        raise FlowLogError(
            f"{path} could not be read ({type(error).__name__}: {error}); "
            f"{_download_hint(path)}"
        ) from error
    if b"\x00" in head:
        raise FlowLogError(
            f"{path} is not a flow log: it contains binary data (NUL bytes); "
            "pass Zeek conn logs, their JSON form, or CSV/TSV exports"
        )
    text = head.removeprefix(UTF8_BOM).decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut off
    return [line for line in lines if line.strip()]


def detect_layout(path: Path, columns: Sequence[str] | None = None) -> Layout:
    """Recognise the format of a flow log from its first lines.

    Args:
        path: the file, gzipped or not.
        columns: column names for a CSV/TSV export without a header row.
            Files that have a header row ignore them.

    Raises:
        FlowLogError: the file is empty, is not a flow log, is a Zeek log
            other than `conn`, lacks required fields, or has no header row
            and no `columns` were given.
    """
    lines = _first_lines(path)
    if not lines:
        raise FlowLogError(f"{path} is empty; remove it from the input")
    first = lines[0]

    if first.startswith(_ZEEK_FIRST_DIRECTIVES):
        return _zeek_tsv_layout(path, lines)
    if first.lstrip().startswith("{"):
        _check_json_fields(path, lines)
        return Layout(format=ZEEK_JSON)

    # On a tie the earlier separator of EXPORT_SEPARATORS wins.
    separator = max(EXPORT_SEPARATORS, key=first.count)
    fmt = TSV if separator == "\t" else CSV
    names = split_header_row(first, separator)
    if "ts" in names and "uid" in names:
        _check_required(path, names)
        return Layout(format=fmt, separator=separator, names=tuple(names))

    if _looks_like_data(first, separator):
        if columns is None:
            raise FlowLogError(
                f"{path} has no header row (its first line is data: "
                f"{first[:50]!r}...); name its columns with --columns "
                "conn-labeled for the 23 IoT-23 conn.log.labeled fields, or "
                "--columns with a comma-separated list of Zeek field names"
            )
        names = [zeek.canonical_field(name) for name in columns]
        _check_required(path, names)
        return Layout(
            format=fmt, separator=separator, names=tuple(names), header_row=False
        )
    raise FlowLogError(
        f"{path} is not a flow log: its first line {first[:60]!r} is neither a "
        "Zeek header (#separator), a JSON object, nor a CSV/TSV header with Zeek "
        "field names such as ts and uid"
    )


def resolve_columns(value: str | None) -> tuple[str, ...] | None:
    """Turn a `--columns` value (a preset name or a list) into field names."""
    if value is None:
        return None
    if value in COLUMN_PRESETS:
        return COLUMN_PRESETS[value]
    names = tuple(zeek.canonical_field(name) for name in value.split(","))
    if len(names) < 2:
        raise ValueError(
            f"--columns {value!r} is neither a preset ({', '.join(COLUMN_PRESETS)}) "
            "nor a comma-separated list of field names"
        )
    return names


def _zeek_tsv_layout(path: Path, lines: list[str]) -> Layout:
    header = zeek.Header()
    for line in lines:
        if not zeek.is_directive(line):
            break
        try:
            header = zeek.apply_directive(header, line)
        except zeek.ZeekFormatError as error:
            raise FlowLogError(f"{path}: {error}") from error
    if header.path not in (None, "conn"):
        raise FlowLogError(
            f"{path} is a Zeek {header.path} log; edgedp reads conn logs (#path conn)"
        )
    if not header.fields:
        raise FlowLogError(
            f"{path} starts with Zeek directives but has no #fields line in "
            "its header; the header block is incomplete"
        )
    _check_required(path, header.fields)
    return Layout(format=ZEEK_TSV, separator=header.separator)


def _check_json_fields(path: Path, lines: list[str]) -> None:
    """Check that the first JSON object of a file is a conn log record.

    JSON files that are not flow logs (edgedp's own `dataset.json` or
    `bundle.json`, or any other document) are indented over several lines
    or lack the conn fields. Zeek's JSON writer puts one object on each
    line and always writes the fields of `REQUIRED_FIELDS`.
    """
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            _check_conn_json(path, zeek.flatten_json(value))
            return
    raise FlowLogError(
        f"{path} is not a flow log: it starts with '{{' but none of its first "
        "lines is a whole JSON object; a Zeek JSON log has one object per line"
    )


def _check_conn_json(path: Path, record: dict[str, object]) -> None:
    """Reject a JSON log whose first object is not a conn.log record."""
    log_name = record.get("_path")
    if log_name is not None and log_name != "conn":
        raise FlowLogError(
            f"{path} is a Zeek {log_name} log, not a conn log (its first object "
            f'has "_path": "{log_name}"); give conn logs only'
        )
    _check_required(path, list(record))
    missing = [name for name in zeek.ALWAYS_LOGGED if name not in record]
    if missing:
        raise FlowLogError(
            f"{path} is not a Zeek conn log: its first JSON object has no "
            f"{', '.join(missing)}, which Zeek writes on every conn.log line; "
            "give conn logs only"
        )


def split_header_row(line: str, separator: str) -> list[str]:
    """Split a CSV/TSV header row into canonical field names."""
    line = line.removeprefix("\ufeff").replace(zeek.IOT23_LABEL_SEPARATOR, separator)
    return [zeek.canonical_field(name) for name in line.split(separator)]


def _looks_like_data(line: str, separator: str) -> bool:
    first = line.split(separator, 1)[0].strip().strip('"')
    try:
        float(first)
    except ValueError:
        return False
    return line.count(separator) >= len(REQUIRED_FIELDS)


def _check_required(path: Path, names: Sequence[str]) -> None:
    absent = [name for name in REQUIRED_FIELDS if name not in names]
    if absent:
        raise FlowLogError(
            f"{path} lacks the conn.log fields {', '.join(absent)}; a flow log "
            f"needs at least {', '.join(REQUIRED_FIELDS)}"
        )
