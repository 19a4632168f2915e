"""Skipped input lines: counted per reason, with the first few as examples."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 5


@dataclass
class SkipLog:
    """Lines of one input file that were not turned into flow records."""

    source: str
    counts: Counter[str] = field(default_factory=Counter)
    first: list[tuple[int, str]] = field(default_factory=list)
    """(line, reason) of the `MAX_EXAMPLES` skipped lines with the lowest
    numbers, sorted by line."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def examples(self) -> list[str]:
        """`file:line: reason` of the first skipped lines."""
        return [f"{self.source}:{line}: {reason}" for line, reason in self.first]

    def add(self, line: int, reason: str) -> None:
        """Record one skipped line (numbered from 1)."""
        self.counts[reason] += 1
        if len(self.first) < MAX_EXAMPLES or line < self.first[-1][0]:
            bisect.insort(self.first, (line, reason))
            del self.first[MAX_EXAMPLES:]

    def add_many(self, lines: list[int], reasons: list[str]) -> None:
        """Record skipped lines given as two parallel lists."""
        for line, reason in zip(lines, reasons, strict=True):
            self.add(line, reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "reasons": dict(self.counts.most_common()),
            "examples": self.examples,
        }
