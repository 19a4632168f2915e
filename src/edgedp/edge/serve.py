"""The gateway runtime behind `edgedp serve`: conn.log lines in, alerts out.

`Gateway.run` reads lines from a `LineSource` and parses them into flow
columns, which it gathers into micro-batches. It encodes each batch with the
fixed feature encoder, scores it with the bundle's LiteRT model and writes
one JSON line per flagged flow (or per flow with `all_flows`).

A batch is classified as soon as it has `batch` flows, when its oldest flow
has waited `max_delay` seconds since it was read, or when the input ends.
SIGTERM and SIGINT stop reading, classify the pending flows and return, so
no flow already read is lost. A failed write of the alert output (a closed
pipe, a full disk) stops the run too, with an `alert_output_closed` or
`alert_write_failed` event. An unfinished last line is dropped and counted
as a `truncated` bad line and a `partial_dropped` event. SIGHUP reopens the
alert file.

The verdicts are those of `edgedp evaluate` on the same flows: the same
encoder (`edgedp.features.encode`), the same runner
(`edgedp.edge.inference.Runner.predict`) and the same decision rule
(`edgedp.edge.verdicts`).

This module and everything it imports use only numpy, ai_edge_litert and the
standard library besides edgedp's pure modules; never torch or polars.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import features as encoder
from edgedp.atomic import OutputError
from edgedp.bundle import Bundle, BundleError, load_bundle
from edgedp.edge.alerts import AlertWriteError, AlertWriter
from edgedp.edge.follow import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_POLL_INTERVAL,
    FileSource,
    FolderSource,
    LineSource,
    StreamSource,
    rotated_logs,
)
from edgedp.edge.inference import MODEL_FILES, Runner, load_runner
from edgedp.edge.records import (
    FORMATS,
    MISSING_MARKERS,
    OTHER_LOG_HINT,
    FlowColumns,
    InputFormatError,
    LineParser,
    categorical,
    foreign_format,
    foreign_input_message,
    needed_fields,
    other_log_path,
)
from edgedp.edge.stats import RateLimitedWarnings, ServeStats
from edgedp.edge.verdicts import VerdictRule

log = logging.getLogger(__name__)

STDIN = "-"
_MAX_WAIT = 0.1
"""Seconds the loop waits for input before it checks signals and timers."""

_VOCABULARIES: dict[str, frozenset[str]] = {
    "proto": frozenset(value.casefold() for value in encoder.PROTOCOLS),
    "conn_state": frozenset(value.casefold() for value in encoder.CONN_STATES),
    "service": frozenset(encoder.SERVICES),
}
_MAX_REPORTED_UNKNOWN = 1000
"""Distinct unknown categories that get a warning of their own; later ones
are counted per field (see `ServeStats.add_unknown_category`)."""


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one `edgedp serve` run.

    Attributes:
        bundle: the bundle folder.
        input: a log file, a folder of rotated logs, or `-` for stdin.
        follow: keep reading a log file after its end, like `tail -F`.
        from_end: with `follow`, skip the flows already in the file.
        log_format: `auto`, `tsv` or `json`.
        model_format: `int8` or `fp32`.
        alerts: the alert file (appended to), or `-` / None for stdout.
        all_flows: write a line for every flow, not only alerts.
        batch: maximum flows per model invoke.
        max_delay: seconds a flow may wait for its batch to fill.
        threshold: autoencoder threshold: a name recorded in the bundle or a
            number; None picks the bundle's default (see `VerdictRule`).
        stats_interval: seconds between statistics log lines.
        max_line_bytes: longest accepted line.
        poll_interval: seconds between checks of a followed file at its end.
    """

    bundle: Path
    input: str
    follow: bool = False
    from_end: bool = False
    log_format: str = "auto"
    model_format: str = "int8"
    alerts: str | None = None
    all_flows: bool = False
    batch: int = 1024
    max_delay: float = 0.01
    threshold: str | float | None = None
    stats_interval: float = 60.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    poll_interval: float = DEFAULT_POLL_INTERVAL

    def __post_init__(self) -> None:
        if self.model_format not in MODEL_FILES:
            raise ValueError(
                f"unknown model format {self.model_format!r}; "
                f"choose {' or '.join(MODEL_FILES)}"
            )
        if self.log_format not in FORMATS:
            raise ValueError(
                f"unknown log format {self.log_format!r}; choose {', '.join(FORMATS)}"
            )
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1 flow, got {self.batch}")
        # NaN passes every comparison below, so it is rejected first.
        for name in ("max_delay", "stats_interval", "poll_interval"):
            value = getattr(self, name)
            if not math.isfinite(value):
                label = name.replace("_", " ")
                raise ValueError(f"{label} must be a finite number, got {value} s")
        if self.max_delay < 0:
            raise ValueError(f"max delay must be 0 or more, got {self.max_delay} s")
        if self.stats_interval <= 0:
            raise ValueError(
                f"stats interval must be positive, got {self.stats_interval} s"
            )
        if self.poll_interval <= 0:
            raise ValueError(
                f"poll interval must be positive, got {self.poll_interval} s"
            )
        if self.from_end and not self.follow:
            raise ValueError("--from-end needs --follow")
        if self.from_end and self.input == STDIN:
            raise ValueError(
                "--from-end skips the flows already in a log file, but stdin "
                "has no such flows to skip; pipe only the new lines instead, "
                "for example with tail -n 0 -F conn.log"
            )
        if self.follow and self.input.endswith(".gz"):
            raise ValueError(
                f"--follow reads a log that grows, but {self.input} is "
                "gzip-compressed, and Zeek never appends to a .gz file; drop "
                "--follow to read it once"
            )


def open_bundle(path: str | Path) -> Bundle:
    """Open a bundle for serving: hashes verified, encoder version supported.

    Raises:
        BundleError: missing or altered files, or an encoder version other
            than this edgedp's `features.ENCODER_VERSION`.
    """
    return load_bundle(path, verify=True, encoder_versions=[encoder.ENCODER_VERSION])


def bundle_feature_set(bundle: Bundle) -> str:
    """Return the feature set whose names match the bundle's `feature_names`.

    Raises:
        BundleError: the names match no feature set of this encoder version.
    """
    names = bundle.manifest.get("feature_names")
    for feature_set in encoder.FEATURE_SETS:
        if names == encoder.feature_names(feature_set):
            return feature_set
    count = "no" if names is None else str(len(names))
    raise BundleError(
        f"{bundle.root} lists {count} feature names that match no feature set "
        f"({', '.join(encoder.FEATURE_SETS)}) of encoder "
        f"{encoder.ENCODER_VERSION}; retrain the bundle with this edgedp"
    )


def open_source(settings: ServeSettings, on_event: Any) -> LineSource:
    """Open the line source that `settings.input` names.

    Raises:
        FileNotFoundError: the input does not exist (and is not followed).
        UnreadableInputError: the input file exists but cannot be opened.
        InputFormatError: the input is one file, read once, whose first
            lines are not a Zeek conn log (see `records.foreign_format`), or
            a followed file whose header names another Zeek log.
        ValueError: `follow` with a folder.
    """
    if settings.input == STDIN:
        if settings.follow:
            log.warning("stdin is read until it closes; --follow changes nothing")
        return StreamSource(
            sys.stdin.fileno(),
            max_line_bytes=settings.max_line_bytes,
            on_event=on_event,
        )
    path = Path(settings.input)
    if path.is_dir():
        if settings.follow:
            raise ValueError(
                f"--follow takes the current log file, but {path} is a folder; "
                f"serve {path}/conn.log with --follow, or drop --follow to read "
                "the rotated logs once"
            )
        return FolderSource(
            path, max_line_bytes=settings.max_line_bytes, on_event=on_event
        )
    if not settings.follow:
        check_log_format(path, settings.max_line_bytes)
    elif path.is_file():
        check_log_path(path, settings.max_line_bytes)
    return FileSource(
        path,
        follow=settings.follow,
        from_end=settings.from_end,
        max_line_bytes=settings.max_line_bytes,
        poll_interval=settings.poll_interval,
        on_event=on_event,
    )


def check_alert_path(settings: ServeSettings) -> None:
    """Reject an alert file that is the input file or one of the input's logs.

    Alerts appended to the log being read would change the log and be read
    back as bad lines. Two paths are the same file when `os.path.samefile`
    returns True (hard and symbolic links included) or, for a file that does not
    exist yet, when they resolve to the same path.

    Raises:
        ValueError: the alert file is an input file.
    """
    if settings.alerts in (None, STDIN) or settings.input == STDIN:
        return
    alerts = Path(settings.alerts)
    source = Path(settings.input)
    inputs = rotated_logs(source) if source.is_dir() else [source]
    for path in inputs:
        if _same_file(alerts, path):
            raise ValueError(
                f"--alerts {alerts} is the input file {path}; alerts appended "
                "to it would change the log and be read back as bad lines, so "
                "write them to another file"
            )


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def check_log_format(path: Path, max_line_bytes: int) -> None:
    """Read the first block of a log file and check that it is a Zeek conn log.

    Raises:
        FileNotFoundError: the file does not exist.
        InputFormatError: the first lines are not a Zeek TSV or JSON log, or
            their header names another Zeek log (`#path dns`, for example).
    """
    lines, head = _first_lines(path, max_line_bytes)
    _reject_other_log(path, lines)
    description = foreign_format(lines, max_line_bytes, head)
    if description is not None:
        raise InputFormatError(foreign_input_message(path, description))


def check_log_path(path: Path, max_line_bytes: int) -> None:
    """Check that the header of a log file, if any, does not name another log.

    This is the check for a followed file. Its other first lines are left to
    the parser, which reports a file that does not look like a conn log and
    goes on reading, because the file may still be growing or be replaced.

    Raises:
        FileNotFoundError: the file does not exist.
        InputFormatError: the header names another Zeek log.
    """
    _reject_other_log(path, _first_lines(path, max_line_bytes)[0])


def _first_lines(path: Path, max_line_bytes: int) -> tuple[list[bytes | None], bytes]:
    """Return the lines of the first read of `path`, and its first bytes."""
    source = FileSource(path, max_line_bytes=max_line_bytes)
    try:
        chunk = source.read(0)
    finally:
        source.close()
    if chunk is None:
        return [], b""
    return chunk.lines, chunk.head


def _reject_other_log(path: Path, lines: list[bytes | None]) -> None:
    kind = other_log_path(lines)
    if kind is not None:
        # The same message as `edgedp inspect` gives for such a file.
        raise InputFormatError(f"{path} is a Zeek {kind} log; {OTHER_LOG_HINT}")


class Gateway:
    """One serve run: the bundle, the model, the input and the alert output.

    Raises (from the constructor):
        BundleError: the bundle is altered, made for another encoder, or
            lacks the model format.
        FileNotFoundError: the input does not exist.
        UnreadableInputError: the input file exists but cannot be opened.
        InputFormatError: the input is one file, not followed, that is not
            a Zeek conn log, or a followed file whose header names another
            Zeek log (`#path dns`, for example).
        OutputError: the alert file cannot be created or appended to, or
            is a folder.
    """

    def __init__(
        self, settings: ServeSettings, *, bundle: Bundle | None = None
    ) -> None:
        self.settings = settings
        check_alert_path(settings)
        self.bundle = bundle or open_bundle(settings.bundle)
        self.feature_set = bundle_feature_set(self.bundle)
        self.rule = VerdictRule(self.bundle, threshold=settings.threshold)
        self.runner: Runner = load_runner(
            self.bundle, settings.model_format, max_batch=settings.batch
        )

        self.stats = ServeStats(interval=settings.stats_interval)
        self.warnings = RateLimitedWarnings(interval=settings.stats_interval)
        self.parser = LineParser(
            needed_fields(self.feature_set),
            log_format=settings.log_format,
            on_bad_line=self._bad_line,
            on_absurd_value=self._absurd_value,
            on_notice=self._notice,
            max_line_bytes=settings.max_line_bytes,
        )
        self._categorical_fields = [
            field
            for field in encoder.input_fields(self.feature_set)
            if field in self.parser.string_fields
        ]

        self.source = open_source(settings, self._source_event)
        try:
            self.writer = AlertWriter(
                settings.alerts,
                bundle_id=self.bundle.bundle_id,
                model_format=settings.model_format,
                classes=self.bundle.classes,
                threshold=self.rule.threshold,
                all_flows=settings.all_flows,
            )
        except OutputError:
            self.source.close()
            raise

        self._stop = False
        self._reopen = False
        self._unknown_seen: set[tuple[str, str]] = set()
        self._unknown_limit_logged = False

    def request_stop(self, *_: Any) -> None:
        """Stop reading; pending flows are still classified (signal-safe)."""
        self._stop = True

    def _request_reopen(self, *_: Any) -> None:
        self._reopen = True

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self.request_stop),
            signal.SIGINT: signal.signal(signal.SIGINT, self.request_stop),
        }
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._request_reopen)
        return previous

    def run(self) -> dict[str, Any]:
        """Serve until the input ends or a stop is requested; return totals."""
        settings = self.settings
        previous = self._install_signal_handlers()
        log.info(
            "serving bundle %s (%s, %s model, %s features) on %s; alerts to %s",
            self.bundle.bundle_id,
            self.bundle.model_kind,
            settings.model_format,
            self.feature_set,
            "stdin" if settings.input == STDIN else settings.input,
            settings.alerts if settings.alerts not in (None, "-") else "stdout",
        )
        pending: list[FlowColumns] = []
        pending_flows = 0
        try:
            while not self._stop:
                if self._reopen:
                    self._reopen = False
                    self._reopen_alerts()

                # A short wait keeps stop requests and statistics prompt.
                timeout = _MAX_WAIT
                if pending:
                    deadline = pending[0].read_at[0] + settings.max_delay
                    timeout = min(timeout, max(0.0, deadline - time.monotonic()))
                chunk = self.source.read(timeout)
                if chunk is not None:
                    flows = self.parser.parse(chunk)
                    if len(flows):
                        pending.append(flows)
                        pending_flows += len(flows)

                now = time.monotonic()
                due = bool(pending) and (
                    pending_flows >= settings.batch
                    or now - pending[0].read_at[0] >= settings.max_delay
                )
                if due or (pending and self.source.finished):
                    pending = self._classify_due(pending, now)
                    pending_flows = sum(map(len, pending))
                self.stats.maybe_report(now, pending_flows)
                if self.source.finished:
                    break

            if pending:
                self._classify_due(pending, math.inf)
        except BrokenPipeError:
            log.error("the alert output was closed by its reader; stopping")
            self.stats.events["alert_output_closed"] += 1
            _silence_stdout()
        except AlertWriteError as error:
            log.error("%s; stopping", error)
            self.stats.events["alert_write_failed"] += 1
        finally:
            self.source.close()
            self._close_writer()
            for number, handler in previous.items():
                signal.signal(number, handler)

        self.stats.report()
        self.warnings.flush()
        totals = self.stats.totals()
        log.info(
            "stopped after %d flows, %d alerts, %d bad lines%s%s",
            totals["flows"],
            totals["alerts"],
            sum(totals["bad_lines"].values()),
            _unknown_text(totals["unknown_categories"]),
            _events_text(totals["events"]),
        )
        return totals

    def input_problem(self, totals: dict[str, Any]) -> str | None:
        """Describe a single input, read to its end, that gave only bad lines.

        Such a run did no work, most likely because `--format` or
        `--max-line-bytes` does not fit the file, so `edgedp serve` exits 2
        on it. A followed file, a folder of logs, a run stopped by a signal
        and an input without any line return None.
        """
        settings = self.settings
        bad = sum(totals["bad_lines"].values())
        if totals["flows"] or not bad or self._stop or settings.follow:
            return None
        if settings.input != STDIN and Path(settings.input).is_dir():
            return None

        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(totals["bad_lines"].items())
        )
        name = "stdin" if settings.input == STDIN else settings.input
        message = f"{name} gave no flows: all {bad} lines were bad ({reasons})"
        if totals["bad_lines"].get("overlong"):
            return (
                f"{message}; lines longer than --max-line-bytes "
                f"{settings.max_line_bytes} are skipped, so raise it"
            )
        if settings.log_format != "auto":
            return (
                f"{message}; --format {settings.log_format} is likely wrong for "
                "this input, so try --format auto"
            )
        return f"{message}; check that it is a Zeek conn log"

    def _reopen_alerts(self) -> None:
        """Reopen the alert file on SIGHUP, or keep the open one if that fails."""
        try:
            self.writer.reopen()
        except OutputError as error:
            log.error("%s; alerts still go to the file opened before", error)
            return
        log.info("reopened the alert file %s", self.settings.alerts)

    def _close_writer(self) -> None:
        try:
            self.writer.close()
        except BrokenPipeError:
            _silence_stdout()

    def _classify_due(
        self, pending: list[FlowColumns], now: float
    ) -> list[FlowColumns]:
        """Classify the pending flows in batches of `batch`; return the rest.

        Whole batches go first. The flows left over, fewer than `batch`, wait
        for more unless the oldest of them is due at `now` (`max_delay`) or
        the input has ended. A `now` of `math.inf` classifies them all.
        Batches of at most `batch` flows bound the memory that one batch
        takes, whatever the size of the chunks that the source reads.
        """
        batch = self.settings.batch
        flows = FlowColumns.concat(pending)
        while len(flows) >= batch:
            head, flows = flows.split(batch)
            self._classify(head)
        if not len(flows):
            return []
        overdue = now - flows.read_at[0] >= self.settings.max_delay
        if overdue or self.source.finished:
            self._classify(flows)
            return []
        return [flows]

    def _classify(self, flows: FlowColumns) -> None:
        self._check_categories(flows)
        columns = dict(flows.columns)
        for field in self._categorical_fields:
            columns[field] = categorical(columns[field])
        features = encoder.encode(columns, self.feature_set)
        outputs = self.runner.predict(features)
        verdicts = self.rule.decide(outputs)
        try:
            self.writer.write(flows, verdicts)
        except AlertWriteError as error:
            # The totals count only the flows whose verdicts reached the
            # output, and the error names the first flow whose verdict did not.
            done = error.flows_done
            self._count_batch(flows.split(done)[0], verdicts.alert[:done])
            raise AlertWriteError(
                f"{error}; the flow of {flows.sources[done]} line "
                f"{int(flows.lines[done])} and every flow read after it have "
                "no verdict",
                flows_done=done,
            ) from error
        self._count_batch(flows, verdicts.alert)

    def _count_batch(self, flows: FlowColumns, alert: np.ndarray) -> None:
        latencies = time.monotonic() - flows.read_at
        self.stats.add_batch(len(flows), int(np.count_nonzero(alert)), latencies)

    def _check_categories(self, flows: FlowColumns) -> None:
        """Count categories outside the encoder's vocabularies (encoded as other).

        One pass counts each column's values, so the cost grows with the
        batch, not with the number of distinct values. The first
        `_MAX_REPORTED_UNKNOWN` distinct unknown values get one warning each
        (rate-limited), and later ones are only counted.
        """
        for field, vocabulary in _VOCABULARIES.items():
            column = flows.columns.get(field)
            if column is None:
                continue
            for value, count in Counter(column).items():
                if value is None or value in MISSING_MARKERS:
                    continue
                names = value.split(",") if field == "service" else [value]
                if all(name.strip().casefold() in vocabulary for name in names):
                    continue
                self.stats.add_unknown_category(field, value, count)
                key = (field, value)
                if key not in self._unknown_seen:
                    self._warn_unknown_category(flows, column, field, value)

    def _warn_unknown_category(
        self, flows: FlowColumns, column: list[Any], field: str, value: str
    ) -> None:
        if len(self._unknown_seen) >= _MAX_REPORTED_UNKNOWN:
            if not self._unknown_limit_logged:
                self._unknown_limit_logged = True
                log.warning(
                    "more than %d distinct unknown categories; later ones are "
                    "encoded as other and counted, without a warning each",
                    _MAX_REPORTED_UNKNOWN,
                )
            return
        self._unknown_seen.add((field, value))
        row = column.index(value)
        self.warnings.warn(
            "%s:%d: unknown %s %r, encoded as %s=other",
            flows.sources[row],
            flows.lines[row],
            field,
            value,
            field,
        )

    def _bad_line(self, reason: str, source: str, line: int, detail: str) -> None:
        self.stats.add_bad_line(reason)
        if self.parser.foreign_input is not None:
            # The parser already logged one notice that this file is not a conn log.
            return
        self.warnings.warn("%s:%d: skipped line (%s): %s", source, line, reason, detail)

    def _absurd_value(self, field: str, source: str, line: int, value: float) -> None:
        self.stats.absurd_values[field] += 1
        # Ports and counts are whole numbers, so print them without ".0".
        number = int(value) if value.is_integer() else value
        self.warnings.warn(
            "%s:%d: %s=%r is out of range; the encoder clips it",
            source,
            line,
            field,
            number,
        )

    def _notice(self, message: str) -> None:
        log.warning("%s", message)

    def _source_event(self, kind: str, message: str) -> None:
        if kind == "stopped":
            # Where reading stopped, which is no input problem to count.
            log.info("%s", message)
            return
        self.stats.events[kind] += 1
        if kind == "partial_dropped":
            self.stats.add_bad_line("truncated")
            log.warning("%s", message)
        elif kind == "skipped_by_truncation":
            log.warning("%s", message)
        elif kind in ("corrupt_file", "unreadable_file"):
            log.error("%s", message)
        else:
            log.info("%s", message)


def _events_text(events: dict[str, int]) -> str:
    """Return the input events of a run for the final log line, such as
    `, events: corrupt_file 1, rotated 2`, or "" without any."""
    if not events:
        return ""
    counts = ", ".join(f"{kind} {count}" for kind, count in sorted(events.items()))
    return f", events: {counts}"


_SHOWN_UNKNOWN_CATEGORIES = 5
"""Unknown categories named in the final log line, the most frequent first."""


def _unknown_text(unknown: dict[str, int]) -> str:
    """Return the unknown categories of a run for the final log line.

    It is "" without any, else the count of flow fields that held an unknown
    category, such as `, unknown categories 12 (proto=sctp 9, service=xyz 3)`.
    At most `_SHOWN_UNKNOWN_CATEGORIES` values are named, and a count of
    the others follows them.
    """
    if not unknown:
        return ""
    ranked = sorted(unknown.items(), key=lambda item: (-item[1], item[0]))
    most_frequent = ranked[:_SHOWN_UNKNOWN_CATEGORIES]
    named = ", ".join(f"{value} {count}" for value, count in most_frequent)
    if len(ranked) > len(most_frequent):
        named += f", {len(ranked) - len(most_frequent)} more values"
    return f", unknown categories {sum(unknown.values())} ({named})"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that interpreter exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def serve(settings: ServeSettings) -> dict[str, Any]:
    """Run the gateway with `settings` and return the run's totals."""
    return Gateway(settings).run()
