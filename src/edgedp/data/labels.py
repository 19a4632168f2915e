"""Classes from IoT-23 labels.

Benign flows are recognised by `label` (after case normalisation), malicious
ones by `detailed-label`: IoT-23 labels every malicious flow `Malicious` and
puts the behaviour (`DDoS`, `C&C`, ...) in `detailed-label`. A class mapping
renames source labels before they are matched against the requested classes,
so `C&C-*=C&C` folds `C&C-Torii` and `C&C-FileDownload` into `C&C`. Flows
whose class is not requested are excluded and counted by source label.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import polars as pl

from edgedp import config, zeek

UNLABELED = "-"
"""Source label of a flow without label and detailed-label."""

SOURCE_CLASS = "_source_class"


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """Parse `PATTERN=CLASS` items (such as `C&C-*=C&C`) into a mapping.

    Patterns are shell-style (`*`, `?`, `[...]`) and match source labels.

    Raises:
        ValueError: an item has no `=` or an empty side.
    """
    mapping: dict[str, str] = {}
    for item in items:
        pattern, found, target = item.partition("=")
        if not found or not pattern.strip() or not target.strip():
            raise ValueError(
                f"invalid class mapping {item!r}; write PATTERN=CLASS, "
                "for example 'C&C-*=C&C'"
            )
        mapping[pattern.strip()] = target.strip()
    return mapping


def source_class_expr() -> pl.Expr:
    """Expression for a flow's source label: Benign, else its detailed-label.

    A malicious flow without a detailed-label keeps its `label`, and a flow
    with neither gets `UNLABELED`.
    """
    label = pl.col(zeek.LABEL)
    detailed = pl.col(zeek.DETAILED_LABEL)
    return (
        pl.when(label == config.BENIGN_CLASS)
        .then(pl.lit(config.BENIGN_CLASS))
        .otherwise(pl.coalesce(detailed, label, pl.lit(UNLABELED)))
        .alias(SOURCE_CLASS)
    )


def map_label(source: str, mapping: Mapping[str, str]) -> str:
    """Return the class name a source label maps to (itself if unmapped).

    An exact key wins; otherwise the first pattern that matches, in order.
    """
    if source in mapping:
        return mapping[source]
    for pattern, target in mapping.items():
        if fnmatch.fnmatchcase(source, pattern):
            return target
    return source


def class_lookup(
    sources: Sequence[str], classes: Sequence[str], mapping: Mapping[str, str]
) -> dict[str, int]:
    """Map source labels to class indices; labels of no class are left out."""
    index = {name: position for position, name in enumerate(classes)}
    lookup = {}
    for source in sources:
        target = map_label(source, mapping)
        if target in index:
            lookup[source] = index[target]
    return lookup
