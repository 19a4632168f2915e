"""Compact keys of every flow read, to find repeated flows across many logs.

`prepare` counts a flow (`uid` and `ts`) once however many files contain it,
which needs the keys of all flows read at once. Kept as Polars strings they
raised the peak memory by about 200 bytes per flow in the memory benchmark,
more than a log line takes, so a log larger than memory could not be
prepared. Here each key is two 64-bit Polars hashes of `uid` and `ts` with
different seeds, kept with the flow's class code: 20 bytes per flow, and by
estimate about 45 while the repeated keys are found.

Two flows count as the same when both hashes match. Taking the hashes as
independent and uniform, the chance that any two of a billion distinct
flows match by accident is about 1.5e-21 (n^2 / 2^129). Polars hashes may
change between Polars versions, which does not matter here because they
never leave the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from edgedp.data.labels import SOURCE_CLASS
from edgedp.dataset import LABEL_INDEX_COLUMN

_SEEDS = (0x0ED6ED90, 0x7A1B3C5D)


@dataclass(frozen=True)
class FlowKeys:
    """First occurrences among the flows read, and counts of the others.

    The `part_*` arrays have one entry per flow with a class, in reading
    order, which is the order of the rows of the part files. The `*_by_file`
    arrays are indexed by input file.
    """

    part_first: np.ndarray
    """True for a flow with a class that was not read before (in any file)."""
    part_labels: np.ndarray
    part_files: np.ndarray
    duplicates_by_file: np.ndarray
    excluded_by_file: np.ndarray
    excluded_by_label: dict[str, int]
    """First occurrences of each source label without a class, most first."""


class KeyLog:
    """The keys of the flows read, in reading order (see the module docs).

    A flow's code is its class index, or for a flow without a class the
    class count plus the index of its source label among those seen.
    """

    def __init__(self, class_count: int) -> None:
        self.class_count = class_count
        self._first_hashes: list[np.ndarray] = []
        self._second_hashes: list[np.ndarray] = []
        self._codes: list[np.ndarray] = []
        self._files: list[tuple[int, int]] = []
        self._excluded_labels: dict[str, int] = {}

    @property
    def blocks(self) -> int:
        """Number of blocks added, a mark for `discard_from`."""
        return len(self._codes)

    def add(self, frame: pl.DataFrame, file_index: int) -> None:
        """Append the keys of a block of flows read from one input file.

        `frame` has the columns `uid`, `ts`, `label_index` (null for a flow
        without a class) and the source label (`labels.SOURCE_CLASS`).
        """
        unclassed = frame.filter(pl.col(LABEL_INDEX_COLUMN).is_null())
        for name in unclassed.get_column(SOURCE_CLASS).unique().sort():
            self._excluded_labels.setdefault(name, len(self._excluded_labels))

        key = pl.struct("uid", "ts")
        other_code = pl.col(SOURCE_CLASS).replace_strict(
            self._excluded_labels, default=None, return_dtype=pl.Int32
        )
        keys = frame.select(
            key.hash(_SEEDS[0]).alias("first"),
            key.hash(_SEEDS[1]).alias("second"),
            pl.col(LABEL_INDEX_COLUMN)
            .cast(pl.Int32)
            .fill_null(other_code + self.class_count)
            .alias("code"),
        )
        self._first_hashes.append(keys.get_column("first").to_numpy())
        self._second_hashes.append(keys.get_column("second").to_numpy())
        self._codes.append(keys.get_column("code").to_numpy())
        self._files.append((file_index, frame.height))

    def discard_from(self, mark: int) -> None:
        """Forget the blocks added since `blocks` was `mark`."""
        for arrays in (self._first_hashes, self._second_hashes, self._codes):
            del arrays[mark:]
        del self._files[mark:]

    def flow_keys(self, file_count: int) -> FlowKeys:
        """Find the first occurrence of every flow and count the others."""
        first = first_occurrences(
            _join(self._first_hashes, np.uint64), _join(self._second_hashes, np.uint64)
        )
        codes = _join(self._codes, np.int32)
        files = np.repeat(
            np.array([index for index, _ in self._files], dtype=np.int32),
            [rows for _, rows in self._files],
        )

        has_class = codes < self.class_count
        first_excluded = first & ~has_class
        label_counts = np.bincount(
            codes[first_excluded] - self.class_count,
            minlength=len(self._excluded_labels),
        )
        by_label = sorted(
            (
                (name, int(label_counts[index]))
                for name, index in self._excluded_labels.items()
                if label_counts[index]
            ),
            key=lambda item: (-item[1], item[0]),
        )
        return FlowKeys(
            part_first=first[has_class],
            part_labels=codes[has_class].astype(np.int64),
            part_files=files[has_class],
            duplicates_by_file=np.bincount(files[~first], minlength=file_count),
            excluded_by_file=np.bincount(files[first_excluded], minlength=file_count),
            excluded_by_label=dict(by_label),
        )


def _join(blocks: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate the blocks and empty the list, so only one copy stays alive."""
    joined = np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)
    blocks.clear()
    return joined


def first_occurrences(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Return a mask of the first occurrence of each (primary, secondary) pair.

    A stable sort by `primary` alone puts the occurrences of a pair next to
    each other, earliest first. Only when two different `secondary` values
    share a `primary` value does a slower sort by both run.
    """
    count = len(primary)
    order = np.argsort(primary, kind="stable")
    sorted_primary = primary[order]
    repeat = np.zeros(count, dtype=bool)
    np.equal(sorted_primary[1:], sorted_primary[:-1], out=repeat[1:])
    del sorted_primary

    sorted_secondary = secondary[order]
    differs = sorted_secondary[1:] != sorted_secondary[:-1]
    del sorted_secondary
    if (repeat[1:] & differs).any():
        order = np.lexsort((secondary, primary))
        np.equal(primary[order][1:], primary[order][:-1], out=repeat[1:])
        repeat[1:] &= secondary[order][1:] == secondary[order][:-1]

    first = np.ones(count, dtype=bool)
    first[order[repeat]] = False
    return first
