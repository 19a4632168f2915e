"""Alert output of `edgedp serve`: one JSON object per line.

Each line describes one flow:

- `ts` (Zeek's epoch seconds of the connection start) and `time` (the same
  instant in ISO 8601, UTC, or null outside the years 1 to 9999);
- `uid`, `id.orig_h`, `id.orig_p`, `id.resp_h`, `id.resp_p`, `proto`,
  named as in Zeek, so that alerts join back to conn.log on `uid`;
- `alert`: true when the model flags the flow (always true without `--all`);
- classifier: `class` (the predicted class) and `probability` (its
  probability);
- autoencoder: `score` (reconstruction error) and `threshold`;
- `bundle_id` and `model_format`, which identify the model;
- `log` and `line`: the file and line number the flow was read from. A
  followed file keeps its name after a rotation or truncation, and its line
  numbers restart at 1, so `uid` distinguishes such flows.

Each batch of lines goes to the kernel in one `write(2)` call on a file
opened with `O_APPEND`, so each batch starts at the end of the file, also
with other writers. A call that writes only part of the batch, which for a
regular file happens when the disk is full or a size limit is reached, is
repeated for the rest; the failure that follows raises `AlertWriteError`.
An alert file whose last line is unfinished is cut back to its last newline
when it is opened. `reopen` (on SIGHUP) lets logrotate move the alert file
away.
"""

from __future__ import annotations

import io
import logging
import math
import os
import stat
import sys
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii as _quote  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import numpy as np

from edgedp.atomic import OutputError, check_writable
from edgedp.edge.records import MISSING_MARKERS, FlowColumns, flow_time
from edgedp.edge.verdicts import Verdicts

log = logging.getLogger(__name__)


def _number(value: float, digits: int = 6) -> str:
    if not math.isfinite(value):
        return "null"
    return format(value, f".{digits}g")


def _port(value: float) -> str:
    return "null" if math.isnan(value) else str(int(value))


def _string(value: str | None) -> str:
    if value is None or value in MISSING_MARKERS:
        return "null"
    return _quote(value)


_EPOCH = datetime(1970, 1, 1)


class _TimeFormatter:
    """Format a flow's `ts` as the JSON values of `ts` and `time`.

    `time` is ISO 8601 UTC with microseconds, or null when the instant is
    outside the years 1 to 9999 (`datetime`'s range), where ISO 8601 needs
    a year with other than four digits. Text of the form `[-]digits.dddddd`
    is already a JSON number: Zeek writes `ts` that way, and the JSON reader
    turns ISO 8601 times into it. Such text is used as it is, and `time` is
    computed from its digits exactly. Other values go through `float`, with
    microseconds rounded half to even as `datetime.fromtimestamp` rounds
    them, except that rounding never carries a time out of year 9999. The
    date and time of day are cached per whole second, since the flows of a
    batch share few seconds.
    """

    def __init__(self) -> None:
        self._seconds: dict[int, str | None] = {}

    def __call__(self, raw: Any) -> tuple[str, str]:
        """Return the JSON values of `ts` and `time` for one `ts` column value."""
        if isinstance(raw, str):
            raw = raw.rpartition("\n")[2]
            micros = _exact_microseconds(raw)
            if micros is not None:
                whole, micro = divmod(micros, 1_000_000)
                return raw, self._time(whole, micro)

        ts = flow_time(raw)
        if ts is None:
            return "null", "null"
        whole = math.floor(ts)
        micro = round((ts - whole) * 1e6)
        if micro == 1_000_000:
            if self._prefix(whole + 1) is None:
                micro = 999_999
            else:
                whole, micro = whole + 1, 0
        return repr(ts), self._time(whole, micro)

    def _time(self, whole: int, micro: int) -> str:
        prefix = self._prefix(whole)
        if prefix is None:
            return "null"
        return f'"{prefix}.{micro:06d}Z"'

    def _prefix(self, whole: int) -> str | None:
        """Return `YYYY-MM-DDTHH:MM:SS` for epoch second `whole`, or None."""
        if whole in self._seconds:
            return self._seconds[whole]
        try:
            # isoformat() pads the year to four digits, as ISO 8601 requires.
            prefix: str | None = (_EPOCH + timedelta(seconds=whole)).isoformat()
        except OverflowError:
            prefix = None
        if len(self._seconds) >= 4096:
            self._seconds.clear()
        self._seconds[whole] = prefix
        return prefix


def _exact_microseconds(text: str) -> int | None:
    """Return `[-]digits.dddddd` text as whole microseconds, or None.

    Other text returns None, including leading zeros such as `01.000000`,
    which JSON does not allow in a number.
    """
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    head, _, tail = digits.partition(".")
    if not (
        len(tail) == 6
        and head.isascii()
        and head.isdigit()
        and tail.isascii()
        and tail.isdigit()
        and (head[0] != "0" or head == "0")
    ):
        return None
    micros = int(head) * 1_000_000 + int(tail)
    return -micros if negative else micros


class AlertWriteError(OutputError):
    """Alert lines that could not be written, such as on a full disk.

    Attributes:
        flows_done: the number of flows at the start of the batch whose
            verdicts reached the output, because their lines were written or
            they needed none. The flow at this index is the first one
            without its line.
    """

    def __init__(self, message: str, *, flows_done: int = 0) -> None:
        super().__init__(message)
        self.flows_done = flows_done


_ALERT_START = b'{"ts":'
"""The first bytes of every alert line, which set an unfinished alert line
apart from other text at the end of the alert file."""

_TAIL_SEARCH_BYTES = 1 << 20
"""Bytes at the end of the alert file searched for the last newline. An
alert line is a few hundred bytes, so an unfinished one is far shorter."""


def open_alert_file(path: Path) -> int:
    """Open the alert file for appending and return its file descriptor.

    Creates the file and its folders. A regular file whose last line is
    unfinished is brought back to a line boundary first (see
    `end_at_line_boundary`).

    Raises:
        OutputError: `path` is a folder, or the file cannot be created or
            appended to. The message names the path and the cause.
    """
    if path.is_dir():
        raise OutputError(
            f"the alert output {path} is a folder; name a file, such as "
            f"{path / 'alerts.jsonl'}"
        )
    if not path.exists():
        # Creates the missing folders and checks that a file can be made there.
        check_writable(path)
    flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            # Read access lets the unfinished last line be found and cut.
            descriptor = os.open(path, flags | os.O_RDWR, 0o666)
        except PermissionError:
            descriptor = os.open(path, flags | os.O_WRONLY, 0o666)
            log.debug("%s is not readable; its last line is not checked", path)
        else:
            end_at_line_boundary(descriptor, path)
    except OSError as error:
        raise OutputError(
            f"cannot append to the alert file {path}: {error.strerror or error}; "
            "make it writable or choose another --alerts path"
        ) from error
    return descriptor


def end_at_line_boundary(descriptor: int, path: Path) -> None:
    """Make a regular file opened for reading and appending end with a newline.

    An unfinished alert line, left when a disk filled up during a write, is
    cut off, so that every line of the file is whole JSON. Other text
    without a final newline gets a newline, so that it is kept and the next
    alert starts on a line of its own. Both are logged as warnings.

    NOTE: a second writer that appends to the same file at this moment could
    have its unfinished line cut. Two runs of serve should not share one
    alert file.
    """
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return
    start = max(0, info.st_size - _TAIL_SEARCH_BYTES)
    tail = os.pread(descriptor, info.st_size - start, start)
    if tail.endswith(b"\n"):
        return

    newline = tail.rfind(b"\n")
    unfinished = tail[newline + 1 :]
    if (newline >= 0 or start == 0) and unfinished.startswith(_ALERT_START):
        os.ftruncate(descriptor, start + newline + 1)
        log.warning(
            "%s ended in an unfinished alert line of %d bytes, which an earlier "
            "run could not finish writing; cut it off",
            path,
            len(unfinished),
        )
        return
    os.write(descriptor, b"\n")
    log.warning(
        "%s did not end with a newline; appended one so that alert lines "
        "start on a line of their own",
        path,
    )


def _write_all(descriptor: int, data: bytes) -> None:
    """Write `data` in one `os.write` call, repeated only for what it left.

    Raises:
        OSError: the write failed. `written` on the exception is the number
            of bytes that reached the file before.
    """
    written = 0
    while written < len(data):
        try:
            written += os.write(descriptor, data[written:])
        except OSError as error:
            error.written = written  # type: ignore[attr-defined]
            raise


class AlertWriter:
    """Format verdicts as JSON lines and write them to a file or stdout.

    Args:
        path: the alert file, appended to; None or `-` writes to stdout.
        bundle_id: the bundle's id, repeated on every line.
        model_format: `fp32` or `int8`.
        classes: the classifier's class names (unused for an autoencoder).
        threshold: the autoencoder's threshold (None for a classifier).
        all_flows: write every flow, not only flagged ones.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        bundle_id: str,
        model_format: str,
        classes: list[str],
        threshold: float | None,
        all_flows: bool = False,
    ) -> None:
        self.path = None if path in (None, "-") else Path(path)  # type: ignore[arg-type]
        self.all_flows = all_flows
        self.classes = [_quote(name) for name in classes]
        self._threshold = "null" if threshold is None else _number(threshold, 9)
        self._tail = (
            f',"bundle_id":{_quote(bundle_id)},"model_format":{_quote(model_format)}'
        )
        self._format_time = _TimeFormatter()
        self._descriptor: int | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open the alert file again, for example after logrotate moved it.

        The new file is opened before the old one is closed, so a failed
        reopen leaves the writer on the file it had.

        Raises:
            OutputError: the path is a folder, or the file cannot be created
                or appended to.
        """
        if self.path is None:
            return
        descriptor = open_alert_file(self.path)
        if self._descriptor is not None:
            os.close(self._descriptor)
        self._descriptor = descriptor

    def write(self, flows: FlowColumns, verdicts: Verdicts) -> int:
        """Write the lines for one batch; return how many were written.

        Raises:
            BrokenPipeError: stdout was closed by its reader.
            AlertWriteError: the write failed for another reason. Its
                `flows_done` counts the flows of the batch before the first
                one whose line was not written.
        """
        if self.all_flows:
            rows = np.arange(len(flows))
        else:
            rows = np.flatnonzero(verdicts.alert)
        if not len(rows):
            return 0

        columns = flows.columns
        picked = rows.tolist()
        times = [self._format_time(columns["ts"][row]) for row in picked]
        uids = [_string(columns["uid"][row]) for row in picked]
        origins = [_string(columns["id.orig_h"][row]) for row in picked]
        responders = [_string(columns["id.resp_h"][row]) for row in picked]
        protocols = [_string(columns["proto"][row]) for row in picked]
        origin_ports = [_port(port) for port in columns["id.orig_p"][rows].tolist()]
        responder_ports = [_port(port) for port in columns["id.resp_p"][rows].tolist()]
        alerts = ["true" if alert else "false" for alert in verdicts.alert[rows]]
        models = self._model_fields(verdicts, rows)
        logs = [_quote(flows.sources[row]) for row in picked]
        lines = flows.lines[rows].tolist()

        records = zip(
            times,
            uids,
            origins,
            origin_ports,
            responders,
            responder_ports,
            protocols,
            alerts,
            models,
            logs,
            lines,
            strict=True,
        )
        text = "".join(self._format_line(*record) for record in records)
        try:
            self._output(text.encode("ascii"), len(picked))
        except AlertWriteError as error:
            error.flows_done = int(rows[error.flows_done])
            raise
        return len(picked)

    def _output(self, data: bytes, lines: int) -> None:
        """Write the encoded lines of one batch.

        Raises:
            BrokenPipeError: stdout was closed by its reader.
            AlertWriteError: the write failed for another reason. Its
                `flows_done` is the number of complete lines written.
        """
        descriptor = self._descriptor
        if descriptor is None:
            try:
                descriptor = sys.stdout.fileno()
            except (AttributeError, io.UnsupportedOperation):
                # A stdout without a file descriptor, as under pytest's capture.
                sys.stdout.write(data.decode("ascii"))
                sys.stdout.flush()
                return
            sys.stdout.flush()
        try:
            _write_all(descriptor, data)
        except BrokenPipeError:
            raise
        except OSError as error:
            written = getattr(error, "written", 0)
            complete = data.count(b"\n", 0, written)
            name = "stdout" if self.path is None else f"the alert file {self.path}"
            message = (
                f"cannot write alerts to {name}: {error.strerror or error}; "
                f"{complete} of the batch's {lines} alert lines were written"
            )
            if written and data[written - 1 : written] != b"\n":
                message += (
                    ", and the output ends in an unfinished line, which the next "
                    "start cuts off"
                )
            raise AlertWriteError(message, flows_done=complete) from error

    def _format_line(
        self,
        stamp: tuple[str, str],
        uid: str,
        orig_h: str,
        orig_p: str,
        resp_h: str,
        resp_p: str,
        proto: str,
        alert: str,
        model: str,
        source: str,
        line: int,
    ) -> str:
        """Return one alert line from its JSON-encoded values."""
        ts, moment = stamp
        return (
            f'{{"ts":{ts},"time":{moment},"uid":{uid},"id.orig_h":{orig_h},'
            f'"id.orig_p":{orig_p},"id.resp_h":{resp_h},"id.resp_p":{resp_p},'
            f'"proto":{proto},"alert":{alert},{model}{self._tail},'
            f'"log":{source},"line":{line}}}\n'
        )

    def _model_fields(self, verdicts: Verdicts, rows: np.ndarray) -> list[str]:
        if verdicts.class_index is not None:
            assert verdicts.probability is not None
            classes = [self.classes[index] for index in verdicts.class_index[rows]]
            probabilities = verdicts.probability[rows].tolist()
            return [
                f'"class":{name},"probability":{_number(probability)}'
                for name, probability in zip(classes, probabilities, strict=True)
            ]
        assert verdicts.score is not None
        return [
            f'"score":{_number(score, 9)},"threshold":{self._threshold}'
            for score in verdicts.score[rows].tolist()
        ]

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
