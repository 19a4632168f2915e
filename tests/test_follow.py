"""Line sources: splitting, `tail -F` on a live file, rotated folders, pipes."""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from edgedp.edge.follow import (
    FileSource,
    FolderSource,
    LineSplitter,
    StreamSource,
    UnreadableInputError,
    rotated_logs,
)

ZEEK_34_1 = "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz"
HEADER_LINES_34_1 = 8
ROWS_34_1 = 23145


def _drain(source, *, timeout: float = 0.05, until=None, limit: float = 20.0):
    """Read chunks until the source finishes or `until(lines)` holds."""
    lines: list[tuple[str, int, bytes | None]] = []
    deadline = time.monotonic() + limit
    while not source.finished and time.monotonic() < deadline:
        chunk = source.read(timeout)
        if chunk is not None:
            for offset, line in enumerate(chunk.lines):
                lines.append((chunk.source, chunk.first_line + offset, line))
        if until is not None and until(lines):
            break
    return lines


def test_splitter_holds_partial_line():
    splitter = LineSplitter(max_line_bytes=100)

    assert splitter.feed(b"one\ntw") == [b"one"]
    assert splitter.pending_bytes == 2
    assert splitter.feed(b"o\nthree") == [b"two"]
    assert splitter.finish() == [b"three"]
    assert splitter.lines_seen == 3


def test_splitter_reports_overlong_once():
    splitter = LineSplitter(max_line_bytes=8)

    first = splitter.feed(b"ok\n" + b"x" * 20)
    second = splitter.feed(b"x" * 20)
    third = splitter.feed(b"xx\nafter\n")

    assert first == [b"ok", None]
    assert second == []
    assert third == [b"after"]
    assert splitter.lines_seen == 3


def test_splitter_overlong_within_block():
    splitter = LineSplitter(max_line_bytes=4)

    assert splitter.feed(b"abc\nabcdefgh\nxy\n") == [b"abc", None, b"xy"]


def test_file_source_reads_gzip_log(iot23):
    source = FileSource(iot23 / ZEEK_34_1)

    lines = _drain(source)

    assert len(lines) == HEADER_LINES_34_1 + ROWS_34_1
    # The file has no final newline; its last line is still returned.
    assert lines[-1][2].startswith(b"1545490198.459568\tCt2Yhy4d33oL3yyZY9")
    assert [number for _, number, _ in lines] == list(range(1, len(lines) + 1))


def test_missing_input_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FileSource(tmp_path / "conn.log")


def _writer(path: Path, script: list, done: threading.Event) -> None:
    """Apply (action, argument) steps to `path`, as Zeek and logrotate do."""
    for action, argument in script:
        if action == "write":
            with open(path, "ab") as handle:
                handle.write(argument)
        elif action == "rotate":
            os.rename(path, path.with_name(argument))
        elif action == "truncate":
            with open(path, "r+b") as handle:
                handle.truncate(0)
        elif action == "sleep":
            time.sleep(argument)
    done.set()


def test_follow_rotation_truncation_partial(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"#fields\ta\n1\n")
    events: list[str] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        rotation_wait=0.05,
        on_event=lambda kind, message: events.append(kind),
    )
    script = [
        ("write", b"2\n3"),
        ("sleep", 0.1),
        ("write", b"\n4\n"),
        ("sleep", 0.1),
        # Rotation: Zeek renames the log, then creates a new one.
        ("write", b"5\n"),
        ("rotate", "conn.2024-01-01-00-00-00.log"),
        ("sleep", 0.1),
        ("write", b"#fields\tb\n6\n7\n"),
        ("sleep", 0.2),
        ("truncate", None),
        ("sleep", 0.1),
        ("write", b"#fields\tc\n8\n9 unfinished"),
    ]
    done = threading.Event()
    writer = threading.Thread(target=_writer, args=(log, script, done))
    writer.start()

    lines = _drain(source, until=lambda lines: done.is_set() and len(lines) >= 11)
    # Anything more, such as the unfinished last line, would arrive now.
    lines += _drain(source, limit=0.3)
    writer.join()
    source.close()

    texts = [line for *_, line in lines]
    assert texts == [
        b"#fields\ta",
        b"1",
        b"2",
        b"3",
        b"4",
        b"5",
        b"#fields\tb",
        b"6",
        b"7",
        b"#fields\tc",
        b"8",
    ]
    assert events.count("rotated") == 1
    assert events.count("truncated") == 1


def test_follow_waits_for_missing_file(tmp_path):
    log = tmp_path / "conn.log"
    events: list[str] = []
    source = FileSource(
        log, follow=True, poll_interval=0.005, on_event=lambda k, m: events.append(k)
    )

    assert source.read(0.05) is None
    log.write_bytes(b"a\nb\n")
    lines = _drain(source, until=lambda lines: len(lines) == 2, limit=2)

    assert [line for *_, line in lines] == [b"a", b"b"]
    assert events == ["waiting"]


def test_follow_retries_unopenable_path(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"a\n")
    events: list[tuple[str, str]] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        rotation_wait=0.05,
        on_event=lambda kind, message: events.append((kind, message)),
    )
    first = _drain(source, until=lambda lines: len(lines) == 1, limit=2)

    log.rename(tmp_path / "conn.log.1")
    log.mkdir()
    _drain(source, until=lambda lines: len(events) >= 2, limit=2)
    # Many more polls while the folder is there, and one report.
    _drain(source, limit=0.2)
    log.rmdir()
    log.write_bytes(b"b\n")
    rest = _drain(source, until=lambda lines: len(lines) == 1, limit=2)
    source.close()

    assert [line for *_, line in first + rest] == [b"a", b"b"]
    assert [kind for kind, _ in events] == ["rotated", "unreadable_file"]
    assert events[1][1].startswith(f"{log} is a folder, not a log file")


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_unopenable_input_rejected(tmp_path, follow):
    log = tmp_path / "conn.log"
    log.symlink_to(log)

    with pytest.raises(UnreadableInputError, match="Too many levels of symbolic"):
        FileSource(log, follow=follow)


def test_follow_from_end_keeps_header(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"#separator \\x09\n#fields\tx\nold1\nold2\npart")
    source = FileSource(log, follow=True, from_end=True, poll_interval=0.005)

    with open(log, "ab") as handle:
        handle.write(b"ial\nnew\n")
    lines = _drain(source, until=lambda lines: len(lines) == 4, limit=2)

    assert [(number, line) for _, number, line in lines] == [
        (1, b"#separator \\x09"),
        (2, b"#fields\tx"),
        (5, b"partial"),
        (6, b"new"),
    ]


def test_close_reports_unfinished_line(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"#fields\tx\n1\n2\nhalf")
    events: list[tuple[str, str]] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        on_event=lambda kind, message: events.append((kind, message)),
    )

    lines = _drain(source, until=lambda lines: len(lines) == 3, limit=2)
    source.close()

    assert [line for *_, line in lines] == [b"#fields\tx", b"1", b"2"]
    assert len(events) == 1
    kind, message = events[0]
    assert kind == "partial_dropped"
    assert message.startswith(f"{log}:4: ")
    assert "4 bytes" in message


def _numbered_lines(count: int) -> bytes:
    return b"".join(b"line %06d of a log\n" % number for number in range(count))


@pytest.mark.parametrize("follow", [False, True], ids=["once", "follow"])
def test_close_before_end_reports_stop(tmp_path, follow):
    log = tmp_path / "conn.log"
    log.write_bytes(_numbered_lines(20_000))
    events: list[tuple[str, str]] = []
    source = FileSource(
        log,
        follow=follow,
        on_event=lambda kind, message: events.append((kind, message)),
    )

    chunk = source.read(0)
    source.close()

    # The first read ends inside a line, which goes on in the file.
    assert chunk is not None
    number = chunk.first_line + len(chunk.lines)
    assert events == [
        (
            "stopped",
            f"reading {log} stopped at line {number}, before the end of its "
            f"data; line {number} and the lines after it were not read",
        )
    ]


def test_truncation_while_behind_not_unfinished(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(_numbered_lines(20_000))
    events: list[tuple[str, str]] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        on_event=lambda kind, message: events.append((kind, message)),
    )
    chunk = source.read(0)

    with open(log, "r+b") as handle:
        handle.truncate(0)
    log.write_bytes(b"new 1\nnew 2\n")
    rest = _drain(source, until=lambda lines: len(lines) == 2, limit=2)
    source.close()

    assert chunk is not None
    number = chunk.first_line + len(chunk.lines)
    assert [line for *_, line in rest] == [b"new 1", b"new 2"]
    assert [kind for kind, _ in events] == ["skipped_by_truncation", "truncated"]
    assert events[0][1] == (
        f"{log} was truncated before reading reached its end, at line {number}; "
        "the lines from there on were not read"
    )


def test_close_without_partial_line_silent(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"1\n2\n")
    events: list[str] = []
    source = FileSource(
        log, follow=True, on_event=lambda kind, message: events.append(kind)
    )

    lines = _drain(source, until=lambda lines: len(lines) == 2, limit=2)
    source.close()

    assert len(lines) == 2
    assert events == []


def test_folder_reads_rotated_logs_in_order(tmp_path):
    (tmp_path / "2024-01-02").mkdir()
    (tmp_path / "2024-01-01").mkdir()
    with gzip.open(
        tmp_path / "2024-01-01" / "conn.00:00:00-01:00:00.log.gz", "wb"
    ) as f:
        f.write(b"a1\na2\n")
    (tmp_path / "2024-01-02" / "conn.00:00:00-01:00:00.log").write_bytes(b"b1\n")
    (tmp_path / "conn.log").write_bytes(b"c1\nc2")
    (tmp_path / "dns.log").write_bytes(b"not a conn log\n")
    (tmp_path / ".conn.log.swp").write_bytes(b"hidden\n")

    files = rotated_logs(tmp_path)
    lines = _drain(FolderSource(tmp_path))

    assert [path.relative_to(tmp_path).as_posix() for path in files] == [
        "2024-01-01/conn.00:00:00-01:00:00.log.gz",
        "2024-01-02/conn.00:00:00-01:00:00.log",
        "conn.log",
    ]
    assert [line for *_, line in lines] == [b"a1", b"a2", b"b1", b"c1", b"c2"]
    assert lines[2][:2] == ("2024-01-02/conn.00:00:00-01:00:00.log", 1)


def test_folder_orders_mixed_rotation_names(tmp_path):
    (tmp_path / "2024-05-01").mkdir()
    with gzip.open(
        tmp_path / "2024-05-01" / "conn.11:00:00-12:00:00.log.gz", "wb"
    ) as f:
        f.write(b"eleven\n")
    (tmp_path / "conn.2024-05-01-10-00-00.log").write_bytes(b"ten\n")
    (tmp_path / "conn.2024-05-01-12-00-00.log").write_bytes(b"twelve\n")
    (tmp_path / "conn.log").write_bytes(b"now\n")

    files = rotated_logs(tmp_path)
    lines = _drain(FolderSource(tmp_path))

    assert [path.relative_to(tmp_path).as_posix() for path in files] == [
        "conn.2024-05-01-10-00-00.log",
        "2024-05-01/conn.11:00:00-12:00:00.log.gz",
        "conn.2024-05-01-12-00-00.log",
        "conn.log",
    ]
    assert [line for *_, line in lines] == [b"ten", b"eleven", b"twelve", b"now"]


def test_folder_reports_entries_not_files(tmp_path):
    (tmp_path / "conn.2024-05-01-10-00-00.log").symlink_to(tmp_path / "gone.log")
    (tmp_path / "conn.dir").mkdir()
    (tmp_path / "conn.log").write_bytes(b"a\n")
    events: list[tuple[str, str]] = []

    lines = _drain(
        FolderSource(
            tmp_path, on_event=lambda kind, message: events.append((kind, message))
        )
    )

    link = tmp_path / "conn.2024-05-01-10-00-00.log"
    assert [line for *_, line in lines] == [b"a"]
    assert events == [
        (
            "unreadable_file",
            f"input log {link} is a broken symbolic link to {tmp_path / 'gone.log'}"
            "; skipped",
        ),
        (
            "unreadable_file",
            f"{tmp_path / 'conn.dir'} is a folder, not a log file; skipped",
        ),
    ]


def test_folder_without_conn_logs_rejected(tmp_path):
    (tmp_path / "dns.log").write_bytes(b"x\n")

    with pytest.raises(FileNotFoundError, match="no conn logs"):
        FolderSource(tmp_path)


def test_stream_source_reads_pipe():
    read_end, write_end = os.pipe()
    source = StreamSource(read_end)

    os.write(write_end, b"one\ntw")
    first = source.read(1.0)
    os.write(write_end, b"o\n")
    second = source.read(1.0)
    os.write(write_end, b"last")
    os.close(write_end)
    rest = _drain(source)
    os.close(read_end)

    assert first is not None and first.lines == [b"one"]
    assert second is not None and second.lines == [b"two"]
    assert [line for *_, line in rest] == [b"last"]
    assert source.finished


@pytest.mark.parametrize(
    ("more", "kind", "message"),
    [
        (b"", "partial_dropped", "<stdin>:2: dropped an unfinished line"),
        (b"o\nthree\n", "stopped", "reading <stdin> stopped at line 2,"),
    ],
    ids=["unfinished", "data-waiting"],
)
def test_stream_close_reports_partial_line(more, kind, message):
    read_end, write_end = os.pipe()
    events: list[tuple[str, str]] = []
    source = StreamSource(
        read_end, on_event=lambda kind, message: events.append((kind, message))
    )

    os.write(write_end, b"one\ntw")
    first = source.read(1.0)
    os.write(write_end, more)
    source.close()
    os.close(write_end)
    os.close(read_end)

    assert first is not None and first.lines == [b"one"]
    assert len(events) == 1
    assert events[0][0] == kind
    assert events[0][1].startswith(message)


def _truncated_gzip(iot23, path: Path) -> bytes:
    """Write the first two thirds of a shared `.gz` log to `path`.

    Returns the text that the cut data still decompresses to.
    """
    data = (iot23 / ZEEK_34_1).read_bytes()
    cut = data[: len(data) * 2 // 3]
    path.write_bytes(cut)
    return zlib.decompressobj(wbits=31).decompress(cut)


def test_truncated_gzip_ends_at_damage(iot23, tmp_path):
    path = tmp_path / "conn.log.gz"
    readable = _truncated_gzip(iot23, path)
    complete = readable.split(b"\n")[:-1]
    events: list[tuple[str, str]] = []
    source = FileSource(path, on_event=lambda *event: events.append(event))

    lines = _drain(source)

    assert source.finished
    assert [line for _, _, line in lines] == complete
    kinds = [kind for kind, _ in events]
    assert kinds == ["corrupt_file", "partial_dropped"]
    assert str(path) in events[0][1]
    assert f"after line {len(complete)}" in events[0][1]
    assert "EOFError" in events[0][1]


def _gzip_with_wrong_checksum(source: bytes, path: Path) -> None:
    """Write `source` with one byte flipped in the middle, gzipped with the
    checksum of the unchanged data, so only the trailer check fails."""
    changed = bytearray(source)
    changed[len(changed) // 2] ^= 0x01
    compressed = gzip.compress(bytes(changed), mtime=0)
    trailer = struct.pack("<II", zlib.crc32(source), len(source) & 0xFFFFFFFF)
    path.write_bytes(compressed[:-8] + trailer)


def test_gzip_checksum_error_explained(iot23, tmp_path):
    path = tmp_path / "conn.log.gz"
    source = (iot23 / "zeek/CTU-Honeypot-Capture-4-1.conn.log.labeled").read_bytes()
    _gzip_with_wrong_checksum(source, path)
    events: list[tuple[str, str]] = []
    file_source = FileSource(path, on_event=lambda *event: events.append(event))

    lines = _drain(file_source)

    assert len(lines) == source.count(b"\n")
    assert [kind for kind, _ in events] == ["corrupt_file"]
    assert "the gzip checksum does not match" in events[0][1]
    assert f"here after line {len(lines)}" in events[0][1]
    assert "may be on any earlier line" in events[0][1]


def test_gzip_with_bad_header_reported(tmp_path):
    path = tmp_path / "conn.log.gz"
    path.write_bytes(b"#separator \\x09\nnot gzip data\n")
    events: list[tuple[str, str]] = []
    source = FileSource(path, on_event=lambda *event: events.append(event))

    lines = _drain(source)

    assert lines == []
    assert source.finished
    assert len(events) == 1
    assert "before its first line" in events[0][1]
    assert "BadGzipFile" in events[0][1]


def test_folder_continues_after_corrupt_gzip(iot23, tmp_path):
    _truncated_gzip(iot23, tmp_path / "conn.1.log.gz")
    (tmp_path / "conn.2.log").write_bytes(b"#fields\tts\n1.0\n2.0\n")
    events: list[tuple[str, str]] = []
    source = FolderSource(tmp_path, on_event=lambda *event: events.append(event))

    lines = _drain(source)

    assert lines[-3:] == [
        ("conn.2.log", 1, b"#fields\tts"),
        ("conn.2.log", 2, b"1.0"),
        ("conn.2.log", 3, b"2.0"),
    ]
    assert [kind for kind, _ in events] == ["corrupt_file", "partial_dropped"]


def _rotate_in_create_mode(log: Path, handle) -> None:
    """Rotate as logrotate's create mode does, with a writer that reopens late.

    The log is renamed and an empty one is created. The writer then appends
    to the renamed file through its open handle before it moves to the new
    log.
    """
    os.rename(log, log.with_name("conn.log.1"))
    log.write_bytes(b"")
    time.sleep(0.1)
    handle.write(b"2\n3")
    time.sleep(0.1)
    handle.write(b"\n")
    handle.close()
    with open(log, "ab") as new_log:
        new_log.write(b"#fields\ta\n4\n")


def test_rotation_keeps_lines_written_after_rename(tmp_path):
    log = tmp_path / "conn.log"
    log.write_bytes(b"#fields\ta\n1\n")
    events: list[str] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        rotation_wait=0.5,
        on_event=lambda kind, message: events.append(kind),
    )
    handle = open(log, "ab", buffering=0)
    first = _drain(source, until=lambda lines: len(lines) >= 2)
    writer = threading.Thread(target=_rotate_in_create_mode, args=(log, handle))

    writer.start()
    rest = _drain(source, until=lambda lines: len(lines) >= 4, limit=5.0)
    writer.join()
    source.close()

    assert [line for *_, line in first + rest] == [
        b"#fields\ta",
        b"1",
        b"2",
        b"3",
        b"#fields\ta",
        b"4",
    ]
    assert events == ["rotated"]


def test_rotation_drops_unfinished_line(iot23, tmp_path):
    source_log = iot23 / "zeek" / "CTU-Honeypot-Capture-4-1.conn.log.labeled"
    lines = source_log.read_bytes().splitlines()
    header = [line for line in lines[:20] if line.startswith(b"#")]
    rows = [line for line in lines if not line.startswith(b"#")]
    log = tmp_path / "conn.log"
    log.write_bytes(b"")
    events: list[tuple[str, str]] = []
    source = FileSource(
        log,
        follow=True,
        poll_interval=0.005,
        on_event=lambda kind, message: events.append((kind, message)),
    )
    script = [
        ("write", b"\n".join([*header, *rows[:5]]) + b"\n" + rows[5][:40]),
        ("sleep", 0.1),
        ("rotate", "conn.2024-01-01-00-00-00.log"),
        ("sleep", 0.1),
        ("write", b"\n".join([*header, *rows[6:8]]) + b"\n"),
    ]
    done = threading.Event()
    writer = threading.Thread(target=_writer, args=(log, script, done))
    writer.start()

    expected = 2 * len(header) + 7
    read = _drain(source, until=lambda read: done.is_set() and len(read) >= expected)
    # Anything more, such as the unfinished line, would arrive now.
    read += _drain(source, limit=0.3)
    writer.join()
    source.close()

    assert [line for *_, line in read] == [*header, *rows[:5], *header, *rows[6:8]]
    assert [kind for kind, _ in events] == ["partial_dropped", "rotated"]
    unfinished = len(header) + 6
    assert events[0][1].startswith(f"{log}:{unfinished}: ")
    assert "40 bytes" in events[0][1]
    assert "the rotation left unfinished" in events[0][1]
