"""Skipped input lines: counted per reason, with the first few as examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 5


@dataclass
class SkipLog:
    """Lines of one input file that were not turned into flow records."""

    source: str
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    """`file:line: reason` for the first `MAX_EXAMPLES` skipped lines."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, line: int, reason: str) -> None:
        """Record one skipped line (numbered from 1)."""
        self.counts[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{self.source}:{line}: {reason}")

    def add_many(self, lines: list[int], reasons: list[str]) -> None:
        """Record skipped lines given as two parallel lists."""
        for line, reason in zip(lines, reasons, strict=True):
            self.add(line, reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "reasons": dict(self.counts.most_common()),
            "examples": list(self.examples),
        }
