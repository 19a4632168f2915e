"""Line sources for the gateway: a log file (optionally followed like
`tail -F`), a folder of rotated logs, or a stream such as stdin.

Every source returns `Chunk`s: the complete lines that one read produced, the
file they came from and the line number of the first one. A line is complete
when its newline has been read. The unterminated tail of a file is a line only
at the end of a file that is not followed. A followed file's tail is dropped
and reported as `partial_dropped` when the file is rotated away or truncated,
and when `close` stops reading at the end of the data. A `close` before the
end of the data reports the line where reading stopped instead.

Follow mode polls, because the standard library has no portable file change
notification. At the end of the data the source sleeps `poll_interval`
seconds between checks, so a line written to the log reaches the runtime
after at most about that long.

This module uses only the standard library, because the gateway runtime
imports it.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import select
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
"""Bytes requested per read call: 64 KiB, which keeps the parsed lists of
one chunk to a few MB on the gateway."""

DEFAULT_MAX_LINE_BYTES = 1 << 16
"""Longest accepted line, newline excluded. Zeek conn.log lines are a few
hundred bytes, so 64 KiB leaves room for long `tunnel_parents` sets."""

DEFAULT_POLL_INTERVAL = 0.01
"""Seconds between checks of a followed file that has no new data."""

HEAD_BYTES = 64
"""Bytes at the start of a file that `LineSplitter.head` keeps."""

DEFAULT_ROTATION_WAIT = 1.0
"""Seconds a renamed log must stay unchanged before the new one is opened."""


@dataclass
class Chunk:
    """Complete lines from one read of one file.

    `lines` contains each line without its `\\n`. A `\\r` before it is kept, so
    the parser sees CRLF logs as they are. An overlong line is `None` in
    place of its bytes, so line numbers stay right and the parser can count
    it.
    """

    lines: list[bytes | None]
    source: str
    """File name (or `<stdin>`) the lines come from."""
    first_line: int
    """1-based line number of `lines[0]` in its file."""
    generation: int
    """Number of the file instance: it changes on rotation, truncation and
    every new file of a folder, and a parser resets its header state then."""
    read_at: float = field(default_factory=time.monotonic)
    """`time.monotonic()` when the bytes were read."""
    head: bytes = b""
    """The first bytes of the file instance (up to `HEAD_BYTES`), which show
    what an overlong first line, whose bytes are dropped, started with."""


class LineSource(Protocol):
    """Anything that produces chunks of lines."""

    @property
    def finished(self) -> bool:
        """True once the source will produce no more lines."""
        ...

    def read(self, timeout: float) -> Chunk | None:
        """Return the next chunk, or None if none arrived within `timeout` s."""
        ...

    def close(self) -> None: ...


class LineSplitter:
    """Split a byte stream into lines, holding a partial last line back.

    A line longer than `max_line_bytes` is reported once as `None` and its
    bytes are dropped up to the next newline, so a runaway line never keeps
    more than `max_line_bytes` in memory.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self.lines_seen = 0
        """Lines returned so far (overlong ones included)."""
        self.head = b""
        """The first `HEAD_BYTES` bytes fed since the splitter was made."""
        self._partial = b""
        self._skipping_overlong = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of the partial line held back."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | None]:
        """Return the lines that `data` completes."""
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        if self._partial:
            data = self._partial + data
        lines: list[bytes | None] = data.split(b"\n")  # type: ignore[assignment]
        partial = lines.pop()
        assert partial is not None

        if self._skipping_overlong and lines:
            # The first piece ends the overlong line already reported.
            del lines[0]
            self._skipping_overlong = False
        if lines and max(map(len, lines)) > self.max_line_bytes:  # type: ignore[arg-type]
            limit = self.max_line_bytes
            lines = [line if len(line) <= limit else None for line in lines]  # type: ignore[arg-type]

        if self._skipping_overlong:
            partial = b""
        elif len(partial) > self.max_line_bytes:
            lines.append(None)
            partial = b""
            self._skipping_overlong = True
        self._partial = partial
        self.lines_seen += len(lines)
        return lines

    def finish(self) -> list[bytes | None]:
        """Return the unterminated last line, if any, and reset the splitter."""
        partial = self._partial
        skipping = self._skipping_overlong
        self.reset()
        if partial and not skipping:
            self.lines_seen += 1
            return [partial]
        return []

    def reset(self) -> int:
        """Drop the partial line and return how many bytes were dropped."""
        dropped = len(self._partial)
        self._partial = b""
        self._skipping_overlong = False
        return dropped


class _SplitterSource:
    """Shared chunk bookkeeping for the concrete sources."""

    def __init__(
        self, max_line_bytes: int, on_event: Callable[[str, str], None] | None
    ) -> None:
        self._splitter = LineSplitter(max_line_bytes)
        self._source = ""
        self._generation = 0
        self._on_event = on_event or (lambda kind, message: None)
        self.finished = False

    def _start_file(self, name: str) -> None:
        self._splitter = LineSplitter(self._splitter.max_line_bytes)
        self._source = name
        self._generation += 1

    def _chunk(self, lines: list[bytes | None]) -> Chunk | None:
        if not lines:
            return None
        first = self._splitter.lines_seen - len(lines) + 1
        return Chunk(
            lines, self._source, first, self._generation, head=self._splitter.head
        )

    def _report_stop(self, name: str | Path) -> None:
        """Report a stop before the end of the data as a `stopped` notice.

        The partial line held back is only the end of the last read, and the
        line goes on in the data, so it is not counted as unfinished.
        """
        number = self._splitter.lines_seen + 1
        self._splitter.reset()
        self._on_event(
            "stopped",
            f"reading {name} stopped at line {number}, before the end of its "
            f"data; line {number} and the lines after it were not read",
        )

    def _drop_unfinished_line(self, name: str | Path, cause: str) -> None:
        """Drop the partial line held back and report it as `partial_dropped`.

        Called when no more of the line will be read. `cause` ends the
        message, such as "when reading stopped".
        """
        number = self._splitter.lines_seen + 1
        dropped = self._splitter.reset()
        if dropped:
            self._on_event(
                "partial_dropped",
                f"{name}:{number}: dropped an unfinished line of {dropped} bytes "
                f"{cause}",
            )


DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error, OSError)
"""Exceptions that reading a truncated or corrupt gzip file raises.

`EOFError` means the data ends early and `zlib.error` means corrupt deflate
data. `OSError` includes `gzip.BadGzipFile` for a bad header or checksum."""


def _is_checksum_error(error: BaseException) -> bool:
    # CPython's gzip module raises BadGzipFile("CRC check failed ...") when the
    # CRC-32 in a member's trailer does not match the decompressed data.
    return isinstance(error, gzip.BadGzipFile) and "CRC check failed" in str(error)


class UnreadableInputError(OSError):
    """An input log that exists but cannot be opened, such as one without
    read permission or a folder at the log's path."""


def _open_log(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=0)


def _check_log_file(path: Path) -> None:
    """Check that `path` is a file that can be read to its end.

    A FIFO or device would block or never end, so only regular files and
    folders (which `_open_log` reports as such) pass.

    Raises:
        FileNotFoundError: nothing exists at `path`, or it is a broken
            symbolic link.
        UnreadableInputError: `path` is neither a regular file nor a folder.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(
                f"input log {path} is a broken symbolic link to {os.readlink(path)}"
            ) from None
        raise FileNotFoundError(f"input log {path} not found") from None
    except OSError as error:
        raise UnreadableInputError(_open_error_text(path, error)) from error
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnreadableInputError(f"{path} is not a regular file; name the log file")


def _open_error_text(path: Path, error: OSError) -> str:
    """Describe why `path` could not be opened, such as `Permission denied`."""
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder, not a log file"
    message = f"{path} cannot be opened: {error.strerror or error}"
    if isinstance(error, PermissionError):
        message += "; give the user that runs serve read access to it"
    return message


class FileSource(_SplitterSource):
    """One log file, read to its end or followed like `tail -F`.

    Following keeps reading after the end of the data and handles what Zeek
    and log rotation tools do to a log:

    - rotation: the file is renamed and a new one is created at `path`. The
      renamed file is read until it has not grown for `rotation_wait`
      seconds, then `path` is reopened. The wait keeps the lines that a
      writer appends to the renamed file before it reopens the log, as
      after a logrotate rotation in `create` mode. An unfinished last line
      of the renamed file is dropped and reported through `on_event`.
    - truncation: the file shrinks below the read position. Reading restarts
      at offset 0, and a held partial line is dropped and reported through
      `on_event`.
    - a missing file: the source waits for `path` to appear.
    - a file that cannot be opened, such as one without read permission or
      a folder at `path`: the source reports `unreadable_file` once and
      tries again at every poll, as for a missing file.

    NOTE: a file truncated and then refilled beyond the old read position
    between two polls cannot be distinguished from a file that only grew, so
    the lines before the old position are missed. `tail -F` shares this
    limit. Zeek itself never truncates its logs. A truncation also loses
    every line that was not read yet, and a rotation is noticed only at the
    end of the data, so a log renamed again before the source opens it is
    never read.

    Args:
        path: the log file. A `.gz` file is read to its end and never
            followed.
        follow: keep reading after the end of the data.
        from_end: start at the end of the existing data, after reading the
            leading header lines (`#...`) so that the field layout is known.
        rotation_wait: seconds without growth of a renamed file before
            reading moves to the new file at `path`.
        on_event: called with `(kind, message)` for `rotated`, `truncated`,
            `skipped_by_truncation`, `partial_dropped`, `waiting`,
            `unreadable_file` and `corrupt_file` events, which the caller
            counts and logs, and for `stopped` notices. `close` reports a
            partial line still held back at the end of the data as
            `partial_dropped`. Closed before the end of the data, the source
            reports the line at which reading stopped as `stopped`.

    Raises (from the constructor):
        FileNotFoundError: the file does not exist and is not followed.
        UnreadableInputError: the file exists but cannot be opened.

    A `.gz` file whose data is truncated or corrupt ends at the last line
    that decompressed completely. The source reports `corrupt_file` (and
    `partial_dropped` for an unfinished line) and finishes as if the file
    ended there, instead of raising.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        follow: bool = False,
        from_end: bool = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        rotation_wait: float = DEFAULT_ROTATION_WAIT,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_event)
        self.path = Path(path)
        self.compressed = self.path.suffix == ".gz"
        self.follow = follow and not self.compressed
        self.poll_interval = poll_interval
        self.rotation_wait = rotation_wait
        self._unchanged_since: float | None = None
        self._handle: BinaryIO | None = None
        self._position = 0
        self._at_end = False
        self._pending: Chunk | None = None
        self._waiting_reported = False
        self._open_error: str | None = None
        if not self.follow:
            _check_log_file(self.path)
        try:
            self._open(from_end=from_end)
        except OSError as error:
            raise UnreadableInputError(_open_error_text(self.path, error)) from error

    def _open(self, *, from_end: bool = False) -> bool:
        """Open `path`; return False if it does not exist.

        Raises:
            OSError: `path` exists but cannot be opened.
        """
        try:
            handle = _open_log(self.path)
        except FileNotFoundError:
            return False
        self._handle = handle
        self._position = 0
        self._waiting_reported = False
        if self._open_error is not None:
            log.info("%s can be opened again; reading it", self.path)
            self._open_error = None
        self._start_file(self.path.name)
        if from_end and self.follow:
            self._pending = self._skip_existing_lines()
        return True

    def _skip_existing_lines(self) -> Chunk | None:
        """Read up to the current end of the file and keep only `#` lines.

        The header lines tell the parser the field layout, and the line
        numbers stay right because every skipped line is counted. A line
        that is unfinished at the end is kept and completes as usual.
        """
        assert self._handle is not None
        size = os.fstat(self._handle.fileno()).st_size
        headers: list[bytes | None] = []
        while self._position < size:
            data = self._handle.read(min(READ_SIZE, size - self._position))
            if not data:
                break
            self._position += len(data)
            lines = self._splitter.feed(data)
            headers.extend(line for line in lines if line and line.startswith(b"#"))
        if not headers:
            return None
        return Chunk(headers, self._source, 1, self._generation)

    def read(self, timeout: float) -> Chunk | None:
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        deadline = time.monotonic() + timeout
        while not self.finished:
            if self._handle is not None or self._reopen():
                if (chunk := self._read_available()) is not None:
                    return chunk
                if not self.follow:
                    return self._finish()
                if (chunk := self._check_rotation()) is not None:
                    return chunk

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(self.poll_interval, remaining))
        return None

    def _reopen(self) -> bool:
        """Open the followed `path` again; report once while it cannot be.

        A missing file is a `waiting` event. A file that exists but cannot
        be opened is an `unreadable_file` event, reported again only when
        the cause changes, and the next poll tries again.
        """
        try:
            if self._open():
                return True
        except OSError as error:
            message = _open_error_text(self.path, error)
            if message != self._open_error:
                self._open_error = message
                self._on_event(
                    "unreadable_file", f"{message}. Trying again at every poll"
                )
            return False
        if not self._waiting_reported:
            self._waiting_reported = True
            self._on_event("waiting", f"waiting for {self.path} to appear")
        return False

    def _read_available(self) -> Chunk | None:
        """Return the lines of the next block, or None at the end of the data."""
        assert self._handle is not None
        while True:
            data = self._read_block()
            if not data:
                return None
            self._unchanged_since = None
            self._position += len(data)
            # A short read of a regular file ends at the end of its data.
            self._at_end = len(data) < READ_SIZE
            chunk = self._chunk(self._splitter.feed(data))
            if chunk is not None:
                return chunk

    def _read_block(self) -> bytes:
        """Read the next block; a damaged `.gz` file ends at its damage."""
        assert self._handle is not None
        if not self.compressed:
            return self._handle.read(READ_SIZE)
        try:
            # `read1` decompresses at most one buffer, so no data that
            # decompressed before the damage is lost with the exception.
            return self._handle.read1(READ_SIZE)  # type: ignore[attr-defined]
        except DECOMPRESSION_ERRORS as error:
            self._report_corrupt(error)
            return b""

    def _report_corrupt(self, error: Exception) -> None:
        lines = self._splitter.lines_seen
        place = f"after line {lines}" if lines else "before its first line"
        if _is_checksum_error(error):
            message = (
                f"{self.path}: the gzip checksum does not match ({error}). gzip "
                f"checks it only at the end of each member, here after line "
                f"{lines}, so the damage may be on any earlier line and the "
                "lines already read may contain it"
            )
        else:
            message = (
                f"{self.path}: the gzip data is truncated or corrupt {place} "
                f"({type(error).__name__}: {error}); the rest of the file is "
                "skipped"
            )
        self._on_event("corrupt_file", message)
        self._drop_unfinished_line(self.path, "that the damaged gzip data cut off")

    def _check_rotation(self) -> Chunk | None:
        """Detect rotation or truncation at the end of the data."""
        assert self._handle is not None
        current = os.fstat(self._handle.fileno())
        try:
            at_path = os.stat(self.path)
        except OSError:
            # Renamed, and the new file is not created yet (or its folder
            # cannot be searched): keep reading the old one.
            return None

        if (at_path.st_ino, at_path.st_dev) != (current.st_ino, current.st_dev):
            # A writer may have written more since the last read.
            chunk = self._read_available()
            if chunk is not None:
                return chunk
            now = time.monotonic()
            if self._unchanged_since is None:
                self._unchanged_since = now
            if now - self._unchanged_since < self.rotation_wait:
                return None
            self._unchanged_since = None
            self._drop_unfinished_line(self.path, "that the rotation left unfinished")
            self._handle.close()
            self._handle = None
            self._on_event("rotated", f"{self.path} was rotated; reopening it")
            self._reopen()
            return None

        if current.st_size < self._position:
            self._report_truncation()
        else:
            self._at_end = True
        return None

    def _report_truncation(self) -> None:
        """Restart at the top of a truncated file and report what was lost.

        When the last read had reached the end of the data, a partial line
        held back was unfinished there and is dropped as such. Otherwise
        reading was behind, and every line from the read position on was
        lost with the truncation.
        """
        assert self._handle is not None
        if self._at_end:
            self._drop_unfinished_line(self.path, "that the truncation cut off")
        else:
            number = self._splitter.lines_seen + 1
            self._splitter.reset()
            self._on_event(
                "skipped_by_truncation",
                f"{self.path} was truncated before reading reached its end, at "
                f"line {number}; the lines from there on were not read",
            )
        self._handle.seek(0)
        self._position = 0
        self._at_end = False
        self._start_file(self.path.name)
        self._on_event(
            "truncated", f"{self.path} was truncated; reading it from the start"
        )

    def _finish(self) -> Chunk | None:
        self.finished = True
        return self._chunk(self._splitter.finish())

    def close(self) -> None:
        if not self.finished and self._handle is not None:
            if self._data_left():
                self._report_stop(self.path)
            else:
                self._drop_unfinished_line(self.path, "when reading stopped")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.finished = True

    def _data_left(self) -> bool:
        """Return True when the file has data after the read position.

        A file that is not followed counts as having data left until it
        finished, because its unterminated last line is a line too.
        """
        assert self._handle is not None
        if not self.follow:
            return True
        return os.fstat(self._handle.fileno()).st_size > self._position


def rotated_logs(folder: str | Path) -> list[Path]:
    """Return the conn logs under `folder`, oldest first.

    A conn log is a non-hidden entry whose name contains `conn.` (`conn.log`,
    `conn.2024-05-01-10-00-00.log`, `conn.10:00:00-11:00:00.log.gz`,
    `capture.conn.log.labeled`). Entries that are not regular files, such as
    a broken symbolic link or a folder named `conn.old`, are returned too,
    so that the reader reports them. Logs whose path carries a rotation time
    (see `rotation_time`) come first, in the order of that time, and the
    others follow in path order, which puts the current `conn.log` after
    its rotated siblings.
    """
    root = Path(folder)
    found = [
        path
        for path in root.rglob("*conn.*")
        if "conn." in path.name
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda path: _log_order(path.relative_to(root)))


_ROTATED_NAME = re.compile(
    r"conn\.(\d{4}-\d{2}-\d{2})[-_T](\d{2})[-:.](\d{2})[-:.](\d{2})"
)
"""Zeek's own rotation name, `conn.2024-05-01-10-00-00.log`, with the
default `Log::default_rotation_date_format` of `%Y-%m-%d-%H-%M-%S`."""

_ARCHIVED_NAME = re.compile(r"conn\.(\d{2}):(\d{2}):(\d{2})-")
"""zeekctl's archive name, `conn.10:00:00-11:00:00.log.gz`, in a folder named
for the day, such as `2024-05-01`."""

_DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")


def rotation_time(relative: Path) -> str | None:
    """Return the rotation time in a log's path as `YYYY-MM-DD HH:MM:SS`.

    The time is read from Zeek's rotation name, or from zeekctl's archive
    name and the day folder above it. Returns None for a path without one,
    such as the current `conn.log`. The text sorts in time order.
    """
    name = relative.name
    match = _ROTATED_NAME.search(name)
    if match is not None:
        day, hour, minute, second = match.groups()
        return f"{day} {hour}:{minute}:{second}"
    match = _ARCHIVED_NAME.search(name)
    if match is None:
        return None
    days = [part for part in relative.parts[:-1] if _DAY_FOLDER.fullmatch(part)]
    if not days:
        return None
    return f"{days[-1]} {':'.join(match.groups())}"


def _log_order(relative: Path) -> tuple[int, str, str]:
    stamp = rotation_time(relative)
    if stamp is None:
        return (1, "", str(relative))
    return (0, stamp, str(relative))


class FolderSource:
    """The conn logs of a folder, one after another (see `rotated_logs`).

    `on_event` receives the events of each file's `FileSource`, and an
    `unreadable_file` event for a file that cannot be opened, which is
    skipped.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.files = rotated_logs(self.folder)
        if not self.files:
            raise FileNotFoundError(
                f"no conn logs (files named *conn.*) found under {self.folder}"
            )
        self._max_line_bytes = max_line_bytes
        self._on_event = on_event
        self._index = -1
        self._current: FileSource | None = None
        self._generation_offset = 0

    @property
    def finished(self) -> bool:
        return self._index >= len(self.files)

    def read(self, timeout: float) -> Chunk | None:
        while not self.finished:
            if self._current is None or self._current.finished:
                self._next_file()
                continue
            chunk = self._current.read(timeout)
            if chunk is not None:
                chunk.source = str(self.files[self._index].relative_to(self.folder))
                chunk.generation += self._generation_offset
                return chunk
        return None

    def _next_file(self) -> None:
        if self._current is not None:
            self._generation_offset += self._current._generation
            self._current.close()
            self._current = None
        self._index += 1
        if self._index < len(self.files):
            path = self.files[self._index]
            log.info("reading %s", path)
            try:
                self._current = FileSource(
                    path, max_line_bytes=self._max_line_bytes, on_event=self._on_event
                )
            except OSError as error:
                message = f"{error}; skipped"
                if self._on_event is None:
                    log.error("%s", message)
                else:
                    self._on_event("unreadable_file", message)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        unread = len(self.files) - self._index - 1
        if 0 < unread < len(self.files) and self._on_event is not None:
            self._on_event("stopped", f"{unread} more files were not read")
        self._index = len(self.files)


class StreamSource(_SplitterSource):
    """A pipe or terminal such as stdin, read until end of file.

    `select` waits for data, so a quiet pipe costs no CPU, and a signal
    handler that sets a flag is noticed within `timeout`. `on_event`
    receives a `partial_dropped` event when `close` drops a partial line,
    and a `stopped` notice instead when more data is waiting in the pipe.
    """

    def __init__(
        self,
        fileno: int,
        *,
        name: str = "<stdin>",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_event)
        self._fileno = fileno
        self._start_file(name)

    def read(self, timeout: float) -> Chunk | None:
        if self.finished:
            return None
        readable, _, _ = select.select([self._fileno], [], [], max(timeout, 0.0))
        if not readable:
            return None
        data = os.read(self._fileno, READ_SIZE)
        if not data:
            self.finished = True
            return self._chunk(self._splitter.finish())
        return self._chunk(self._splitter.feed(data))

    def close(self) -> None:
        if not self.finished:
            readable, _, _ = select.select([self._fileno], [], [], 0)
            if readable:
                self._report_stop(self._source)
            else:
                self._drop_unfinished_line(self._source, "when reading stopped")
        self.finished = True
