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

Lines are written with one `write` call per batch on a file opened in append
mode, so readers never see half a batch interleaved with other writers'
output, and `reopen` (on SIGHUP) lets logrotate move the alert file away.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii as _quote  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgedp.atomic import OutputError, check_writable
from edgedp.edge.records import MISSING_MARKERS, FlowColumns, flow_time
from edgedp.edge.verdicts import Verdicts


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


def open_alert_file(path: Path) -> TextIO:
    """Open the alert file for appending, creating it and its folders.

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
    try:
        return open(path, "a", encoding="ascii", buffering=1 << 16)
    except OSError as error:
        raise OutputError(
            f"cannot append to the alert file {path}: {error.strerror or error}; "
            "make it writable or choose another --alerts path"
        ) from error


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
        self._stream: TextIO = sys.stdout
        self._owned = False
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
        stream = open_alert_file(self.path)
        if self._owned:
            self._stream.close()
        self._stream = stream
        self._owned = True

    def write(self, flows: FlowColumns, verdicts: Verdicts) -> int:
        """Write the lines for one batch; return how many were written."""
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
        self._stream.write(text)
        self._stream.flush()
        return len(picked)

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
        self._stream.flush()
        if self._owned:
            self._stream.close()
            self._owned = False
