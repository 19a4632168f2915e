"""Counters, latency percentiles and rate-limited warnings of `edgedp serve`.

Statistics go to the `logging` module at a fixed interval, so a gateway's
journal shows throughput, alerts, bad lines and latency without a metrics
server. Memory stays constant however many flows pass: latencies land in a
fixed log-scale histogram instead of a list.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

import numpy as np

log = logging.getLogger("edgedp.edge.serve")

_BUCKETS_PER_DECADE = 20
_MIN_SECONDS = 1e-5
_DECADES = 8


class LatencyHistogram:
    """Latencies in log-spaced buckets from 10 µs to 1000 s.

    With 20 buckets per decade, a percentile is reported as the upper edge of
    its bucket, which overstates it by at most 12%.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS_PER_DECADE * _DECADES + 1, dtype=np.int64)

    def add(self, seconds: np.ndarray | float, count: int = 1) -> None:
        """Add latencies in seconds; a scalar is added `count` times."""
        values = np.maximum(np.asarray(seconds, dtype=np.float64), _MIN_SECONDS)
        index = np.floor(np.log10(values / _MIN_SECONDS) * _BUCKETS_PER_DECADE)
        index = np.clip(index.astype(np.int64), 0, len(self.counts) - 1)
        if index.ndim == 0:
            self.counts[int(index)] += count
        else:
            self.counts += np.bincount(index, minlength=len(self.counts))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """Return the `q`-th percentile (0-100) in seconds, or NaN if empty."""
        total = self.total
        if total == 0:
            return math.nan
        rank = max(1, math.ceil(total * q / 100.0))
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank))
        return _MIN_SECONDS * 10 ** ((bucket + 1) / _BUCKETS_PER_DECADE)

    def clear(self) -> None:
        self.counts[:] = 0


class RateLimitedWarnings:
    """Log at most `burst` warnings per `interval` seconds; count the rest.

    Bad input can arrive at line rate, and a journal flooded with one warning
    per line hides everything else. Suppressed warnings are summarised once
    the interval ends.
    """

    def __init__(self, *, burst: int = 10, interval: float = 60.0) -> None:
        self.burst = burst
        self.interval = interval
        self._window_start = time.monotonic()
        self._logged = 0
        self.suppressed = 0

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._close_window(now)
        if self._logged < self.burst:
            self._logged += 1
            log.warning(message, *args)
        else:
            self.suppressed += 1

    def _close_window(self, now: float) -> None:
        if self.suppressed:
            log.warning(
                "suppressed %d more input warnings in the last %.0f s",
                self.suppressed,
                now - self._window_start,
            )
        self._window_start = now
        self._logged = 0
        self.suppressed = 0

    def flush(self) -> None:
        """Log the count of suppressed warnings now."""
        self._close_window(time.monotonic())


MAX_UNKNOWN_CATEGORIES = 1000
"""Distinct unknown categories counted one by one in `ServeStats`."""

OTHER_VALUES = "(other values)"
"""The value under which unknown categories past `MAX_UNKNOWN_CATEGORIES`
are counted, per field."""


class ServeStats:
    """Running totals of one `serve` run, reported every `interval` seconds."""

    def __init__(self, *, interval: float = 60.0) -> None:
        self.interval = interval
        self.started = time.monotonic()
        self.flows = 0
        self.alerts = 0
        self.batches = 0
        self.bad_lines: Counter[str] = Counter()
        self.absurd_values: Counter[str] = Counter()
        self.unknown_categories: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.latency = LatencyHistogram()
        self._window_latency = LatencyHistogram()
        self._window_start = self.started
        self._window_flows = 0
        self._window_alerts = 0
        self._window_bad = 0

    def add_batch(self, flows: int, alerts: int, latencies: np.ndarray) -> None:
        """Count a classified batch; `latencies` has one value (s) per flow."""
        self.flows += flows
        self.alerts += alerts
        self.batches += 1
        self._window_flows += flows
        self._window_alerts += alerts
        self.latency.add(latencies)
        self._window_latency.add(latencies)

    def add_unknown_category(self, field: str, value: str, count: int) -> None:
        """Count `count` flows whose `field` has a value outside the vocabulary.

        The first `MAX_UNKNOWN_CATEGORIES` distinct values are counted one by
        one, and later ones under `field=(other values)`, so input with ever
        new values cannot grow memory without bound.
        """
        key = f"{field}={value}"
        if key not in self.unknown_categories and (
            len(self.unknown_categories) >= MAX_UNKNOWN_CATEGORIES
        ):
            key = f"{field}={OTHER_VALUES}"
        self.unknown_categories[key] += count

    def add_bad_line(self, reason: str) -> None:
        self.bad_lines[reason] += 1
        self._window_bad += 1

    def maybe_report(self, now: float | None = None, pending: int = 0) -> None:
        """Log the statistics of the interval that just ended, if it has."""
        now = time.monotonic() if now is None else now
        if now - self._window_start >= self.interval:
            self.report(now, pending)

    def report(self, now: float | None = None, pending: int = 0) -> None:
        """Log the statistics since the last report.

        Args:
            now: `time.monotonic()` of the report.
            pending: flows read but not yet classified.
        """
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._window_start, 1e-9)
        if self._window_latency.total:
            p50 = self._window_latency.percentile(50) * 1000
            p99 = self._window_latency.percentile(99) * 1000
            latency = f"p50 {p50:.1f} ms p99 {p99:.1f} ms"
        else:
            latency = "-"
        log.info(
            "%d flows in %.1f s (%.0f flows/s), %d alerts, %d bad lines, "
            "latency %s, %d flows pending",
            self._window_flows,
            elapsed,
            self._window_flows / elapsed,
            self._window_alerts,
            self._window_bad,
            latency,
            pending,
        )
        self._window_start = now
        self._window_flows = 0
        self._window_alerts = 0
        self._window_bad = 0
        self._window_latency.clear()

    def totals(self) -> dict[str, Any]:
        """Return the whole run's statistics as a JSON-able dict."""
        elapsed = time.monotonic() - self.started
        return {
            "flows": self.flows,
            "alerts": self.alerts,
            "batches": self.batches,
            "bad_lines": dict(self.bad_lines),
            "absurd_values": dict(self.absurd_values),
            "unknown_categories": dict(self.unknown_categories),
            "events": dict(self.events),
            "seconds": elapsed,
            "latency_p50_ms": self.latency.percentile(50) * 1000,
            "latency_p99_ms": self.latency.percentile(99) * 1000,
        }
