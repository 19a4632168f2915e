import numpy as np
import polars as pl

from edgedp.data.flowkeys import KeyLog, first_occurrences
from edgedp.data.labels import SOURCE_CLASS
from edgedp.dataset import LABEL_INDEX_COLUMN


def _block(rows: list[tuple[str, float, int | None, str]]) -> pl.DataFrame:
    uid, ts, label, source = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "uid": list(uid),
            "ts": list(ts),
            LABEL_INDEX_COLUMN: pl.Series(list(label), dtype=pl.Int64),
            SOURCE_CLASS: list(source),
        }
    )


def test_first_occurrences_keeps_earliest():
    primary = np.array([5, 3, 5, 3, 9, 5], dtype=np.uint64)
    secondary = np.array([1, 2, 1, 2, 4, 1], dtype=np.uint64)

    first = first_occurrences(primary, secondary)

    assert first.tolist() == [True, True, False, False, True, False]


def test_first_occurrences_tells_colliding_pairs_apart():
    primary = np.array([7, 7, 7, 2, 7, 2], dtype=np.uint64)
    secondary = np.array([1, 2, 1, 3, 2, 4], dtype=np.uint64)

    first = first_occurrences(primary, secondary)

    assert first.tolist() == [True, True, False, True, False, True]


def test_first_occurrences_empty():
    empty = np.zeros(0, dtype=np.uint64)

    assert first_occurrences(empty, empty).tolist() == []


def test_key_log_counts_across_files():
    log = KeyLog(class_count=2)
    log.add(
        _block(
            [
                ("Ca", 1.0, 0, "Benign"),
                ("Cb", 2.0, None, "FileDownload"),
                ("Ca", 1.0, 1, "Okiru"),
                ("Cc", 3.0, 1, "Okiru"),
            ]
        ),
        file_index=0,
    )
    log.add(
        _block(
            [
                ("Cb", 2.0, 1, "Okiru"),
                ("Cd", 4.0, None, "Torii"),
                ("Ce", 5.0, None, "FileDownload"),
                ("Ca", 1.5, 0, "Benign"),
            ]
        ),
        file_index=1,
    )

    keys = log.flow_keys(file_count=2)

    assert keys.part_first.tolist() == [True, False, True, False, True]
    assert keys.part_labels.tolist() == [0, 1, 1, 1, 0]
    assert keys.part_files.tolist() == [0, 0, 0, 1, 1]
    assert keys.duplicates_by_file.tolist() == [1, 1]
    assert keys.excluded_by_file.tolist() == [1, 2]
    assert keys.excluded_by_label == {"FileDownload": 2, "Torii": 1}
    assert list(keys.excluded_by_label) == ["FileDownload", "Torii"]


def test_key_log_discards_failed_file():
    log = KeyLog(class_count=1)
    log.add(_block([("Ca", 1.0, 0, "Benign")]), file_index=0)
    mark = log.blocks
    log.add(_block([("Ca", 1.0, None, "Torii"), ("Cb", 2.0, 0, "Benign")]), 1)

    log.discard_from(mark)
    keys = log.flow_keys(file_count=1)

    assert keys.part_first.tolist() == [True]
    assert keys.duplicates_by_file.tolist() == [0]
    assert keys.excluded_by_label == {}


def test_key_log_without_flows():
    keys = KeyLog(class_count=3).flow_keys(file_count=2)

    assert keys.part_first.tolist() == []
    assert keys.duplicates_by_file.tolist() == [0, 0]
    assert keys.excluded_by_label == {}
