"""Atomic writes: modes follow the umask, failures leave nothing behind."""

import os
import stat

import pytest

from edgedp import atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_mode_follows_umask(tmp_path, umask_022):
    atomic.write_text(tmp_path / "a.json", "{}")

    assert _mode(tmp_path / "a.json") == 0o644


def test_directory_mode_follows_umask(tmp_path, umask_022):
    with atomic.directory(tmp_path / "out") as folder:
        (folder / "inside.txt").write_text("x")

    assert _mode(tmp_path / "out") == 0o755
    assert (tmp_path / "out" / "inside.txt").read_text() == "x"


def test_failed_file_write_keeps_old(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    with pytest.raises(RuntimeError), atomic.file(target) as temporary:
        temporary.write_text("new")
        raise RuntimeError("interrupted")

    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_directory_overwrite_replaces_whole(tmp_path):
    with atomic.directory(tmp_path / "out") as folder:
        (folder / "old.txt").write_text("old")

    with atomic.directory(tmp_path / "out", overwrite=True) as folder:
        (folder / "new.txt").write_text("new")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_writable_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"

    atomic.check_writable(target)

    assert target.parent.is_dir()
    assert list(target.parent.iterdir()) == []


def test_check_writable_rejects_file_parent(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")

    with pytest.raises(atomic.OutputError, match="not-a-folder"):
        atomic.check_writable(blocker / "out.json")


def test_check_writable_rejects_file_as_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")

    with pytest.raises(atomic.OutputError, match="is a file, not a folder"):
        atomic.check_writable(blocker / "out")


def test_overwrite_keeps_folder_without_marker(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "conn.log").write_text("data")

    with pytest.raises(FileExistsError, match="has no dataset.json"):
        with atomic.directory(logs, overwrite=True, marker="dataset.json"):
            pass

    assert (logs / "conn.log").read_text() == "data"


def test_overwrite_replaces_marked_or_empty_folder(tmp_path):
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "dataset.json").write_text("{}")
    (marked / "old.parquet").write_text("old")
    empty = tmp_path / "empty"
    empty.mkdir()

    for folder in (marked, empty):
        with atomic.directory(folder, overwrite=True, marker="dataset.json") as new:
            (new / "dataset.json").write_text("new")

    assert not (marked / "old.parquet").exists()
    assert (marked / "dataset.json").read_text() == "new"
    assert (empty / "dataset.json").read_text() == "new"


def test_overwrite_rejects_file_at_path(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")

    with pytest.raises(FileExistsError, match="not a folder"):
        atomic.check_replaceable(target, overwrite=True, marker="bundle.json")

    assert target.read_text() == "x"
