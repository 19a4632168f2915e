"""Assigning flows to the train, validation and test splits.

- `random`: stratified by class. Each class is shuffled with the seed and cut
  into the split fractions, with sizes rounded by the largest remainder so
  that they add up to the class size.
- `capture`: every input file goes whole to one split. Flows of one capture
  are often near-duplicates of each other (the same scan repeated thousands
  of times), so a flow-level random split puts near-copies of test flows in
  the training set and overstates accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgedp.dataset import SPLITS

RANDOM = "random"
CAPTURE = "capture"
METHODS: tuple[str, ...] = (RANDOM, CAPTURE)

_CAP_STREAM = 1


def check_fractions(fractions: Mapping[str, float]) -> np.ndarray:
    """Return the fractions in `SPLITS` order.

    Raises:
        ValueError: a split is missing, a fraction is not positive, or they do
            not add up to 1.
    """
    if set(fractions) != set(SPLITS):
        raise ValueError(
            f"split fractions must name {', '.join(SPLITS)}; got {dict(fractions)}"
        )
    values = np.array([float(fractions[name]) for name in SPLITS])
    if np.any(values <= 0) or not np.isclose(values.sum(), 1.0):
        raise ValueError(
            f"split fractions must be positive and add up to 1; got {dict(fractions)}"
        )
    return values


def allocate(total: int, fractions: np.ndarray) -> np.ndarray:
    """Split `total` items by `fractions` with largest-remainder rounding."""
    exact = fractions * total
    sizes = np.floor(exact).astype(np.int64)
    remainder = exact - sizes
    for position in np.argsort(-remainder, kind="stable")[: total - sizes.sum()]:
        sizes[position] += 1
    return sizes


def random_split(
    labels: np.ndarray, fractions: Mapping[str, float], seed: int
) -> np.ndarray:
    """Return the split index (into `SPLITS`) of every flow, stratified by class.

    Args:
        labels: class index of every flow.
        fractions: split name to fraction of each class.
        seed: seed of the shuffle; the same seed and labels give the same split.
    """
    shares = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int8)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        sizes = allocate(len(members), shares)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for split, (start, stop) in enumerate(
            zip(bounds[:-1], bounds[1:], strict=True)
        ):
            assignment[members[start:stop]] = split
    return assignment


def cap_classes(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Return a mask that keeps at most `cap` flows of each class.

    A class with more flows keeps a seeded random choice of `cap` of them,
    whatever their input file or position in it. Smaller classes keep all
    their flows. The choice draws from its own random stream, which leaves
    the split's shuffle unchanged for a given seed.
    """
    rng = np.random.default_rng([seed, _CAP_STREAM])
    keep = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) > cap:
            keep[rng.choice(members, len(members) - cap, replace=False)] = False
    return keep


def capture_split(
    files: np.ndarray,
    file_names: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
) -> tuple[np.ndarray, dict[str, str]]:
    """Assign whole input files to splits.

    Files are taken largest first (ties broken by a seeded shuffle) and each
    goes to the split furthest below its target share of flows, so the
    shares approach the fractions as well as whole files allow.

    Args:
        files: input file index of every flow.
        file_names: name of each input file, by index.
        fractions: split name to target fraction of all flows.
        seed: seed of the tie-breaking shuffle.

    Returns:
        The split index of every flow, and the split of every file by name.

    Raises:
        ValueError: fewer input files than splits.
    """
    shares = check_fractions(fractions)
    sizes = np.bincount(files, minlength=len(file_names))
    present = np.flatnonzero(sizes)
    if len(present) < len(SPLITS):
        raise ValueError(
            f"--split capture needs at least {len(SPLITS)} input files with flows, "
            f"one per split, but got {len(present)}; add files or use --split random"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(present)
    order = order[np.argsort(-sizes[order], kind="stable")]

    totals = np.zeros(len(SPLITS))
    split_of_file = np.zeros(len(file_names), dtype=np.int8)
    for position, file in enumerate(order):
        # The first files go one to each split, so that no split stays empty.
        if position < len(SPLITS):
            split = int(np.argmax(shares * (totals == 0)))
        else:
            split = int(np.argmax(shares * sizes.sum() - totals))
        split_of_file[file] = split
        totals[split] += sizes[file]
    by_name = {file_names[file]: SPLITS[split_of_file[file]] for file in present}
    return split_of_file[files], by_name


def empty_classes(
    assignment: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Return the classes that some split has no flow of, with their counts."""
    short = {}
    for index, name in enumerate(classes):
        counts = np.bincount(assignment[labels == index], minlength=len(SPLITS))
        if np.any(counts == 0):
            short[name] = {
                split: int(n) for split, n in zip(SPLITS, counts, strict=True)
            }
    return short


def describe_classes(short: Mapping[str, Mapping[str, int]]) -> str:
    """Format the per-split flow counts of `empty_classes` as one phrase.

    For example `Benign 2 flows (train 1, validation 0, test 1); no flows
    of Okiru, DDoS`.
    """
    parts = []
    absent = []
    for name, counts in short.items():
        total = sum(counts.values())
        if not total:
            absent.append(name)
            continue
        splits = ", ".join(f"{split} {number}" for split, number in counts.items())
        parts.append(f"{name} {total} flows ({splits})")
    if absent:
        parts.append(f"no flows of {', '.join(absent)}")
    return "; ".join(parts)
