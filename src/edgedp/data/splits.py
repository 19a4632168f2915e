"""Assigning flows to the train, validation and test splits.

Both flow-level methods rank flows by a draw in [0, 1) computed from the
flow's `uid` and `ts` and the seed alone (`flow_draws`), never by a shuffle
of the whole class, so one more flow moves few others:

- `random`: stratified. Each class is ordered by draw and cut at the
  rounded cumulative fractions, so every class is split in the fractions
  to within one flow. One more flow can push one other flow across a cut,
  so two logs that differ in one line give training splits that differ in
  at most two rows.
- `independent`: each flow goes to a split by its own draw alone. Two logs
  that differ in one line give training splits that differ in at most one
  row, the neighbouring relation of the DP guarantee. Every class is split
  in the fractions on average, not exactly: a class of n flows puts a
  binomial number of them in each split.
- `capture`: every input file goes whole to one split. Flows of one capture
  are often near-duplicates of each other (the same scan repeated thousands
  of times), so a flow-level random split puts near-copies of test flows in
  the training set and overstates accuracy.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from edgedp.dataset import SPLITS

RANDOM = "random"
INDEPENDENT = "independent"
CAPTURE = "capture"
METHODS: tuple[str, ...] = (RANDOM, INDEPENDENT, CAPTURE)

_DRAW_SCALE = 2.0**-53


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


def flow_draws(
    uids: Iterable[str], timestamps: Iterable[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return two independent draws in [0, 1) for each flow: split and cap.

    The draws are the 16 bytes of a BLAKE2b hash of the flow's `uid` and
    the IEEE bits of its `ts`, keyed with the seed. They depend on nothing
    else, so they are the same on every machine, in every file order and
    whatever other flows are read.
    """
    key = seed.to_bytes(8, "little")
    digests = b"".join(
        hashlib.blake2b(
            uid.encode() + struct.pack("<d", ts), digest_size=16, key=key
        ).digest()
        for uid, ts in zip(uids, timestamps, strict=True)
    )
    # The top 53 bits of each word give a double in [0, 1) without rounding.
    words = np.frombuffer(digests, dtype="<u8").reshape(-1, 2) >> np.uint64(11)
    return words[:, 0] * _DRAW_SCALE, words[:, 1] * _DRAW_SCALE


def independent_split(draws: np.ndarray, fractions: Mapping[str, float]) -> np.ndarray:
    """Return the split index (into `SPLITS`) of every flow from its draw.

    A flow goes to the first split whose cumulative fraction exceeds its
    draw, so each split gets its fraction of every class on average.
    """
    bounds = np.cumsum(check_fractions(fractions))[:-1]
    return np.searchsorted(bounds, draws, side="right").astype(np.int8)


def random_split(
    labels: np.ndarray, draws: np.ndarray, fractions: Mapping[str, float]
) -> np.ndarray:
    """Return the split index of every flow, stratified by class.

    Each class is ordered by draw, and its k-th flow of n goes to the first
    split whose cumulative fraction times n, rounded half up, exceeds k.
    The cuts never move down when a flow is added, and move up by at most
    one, which bounds how many flows one more flow moves (module docs).
    """
    cumulative = np.cumsum(check_fractions(fractions))[:-1]
    assignment = np.empty(len(labels), dtype=np.int8)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(draws[members], kind="stable")]
        cuts = np.floor(cumulative * len(members) + 0.5).astype(np.int64)
        ranks = np.arange(len(members))
        assignment[members] = np.searchsorted(cuts, ranks, side="right")
    return assignment


def cap_classes(labels: np.ndarray, cap: int, draws: np.ndarray) -> np.ndarray:
    """Return a mask that keeps at most `cap` flows of each class.

    A class with more flows keeps the `cap` flows with the smallest draws,
    whatever their input file or position in it. Smaller classes keep all
    their flows. Adding one flow to a capped class changes its kept flows
    by at most two: the new flow comes in and another goes out.
    """
    keep = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) > cap:
            order = np.argsort(draws[members], kind="stable")
            keep[members[order[cap:]]] = False
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
        flows = "flow" if total == 1 else "flows"
        parts.append(f"{name} {total} {flows} ({splits})")
    if absent:
        parts.append(f"no flows of {', '.join(absent)}")
    return "; ".join(parts)
