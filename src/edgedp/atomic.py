"""Atomic output: a file or folder is either complete or absent.

Everything is written under a temporary name in the destination's own folder
and moved into place with `os.replace`, which is atomic on POSIX file systems.
A crash or Ctrl-C leaves at most a hidden `.*.tmp*` entry, never a truncated
result, and the next run overwrites or removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output location that cannot be created or written."""


def check_writable(path: str | Path) -> None:
    """Check that `path` could be written atomically, before any work starts.

    Creates the missing parent folders and a temporary file in the parent,
    then removes the file. Commands call this first, so that an unwritable
    output fails in a second rather than after training or measuring. It
    cannot rule out a disk that fills up later.

    Raises:
        OutputError: the parent folder cannot be created or written.
    """
    path = Path(path)
    blocker = next(
        (folder for folder in (path.parent, *path.parent.parents) if folder.exists()),
        None,
    )
    if blocker is not None and not blocker.is_dir():
        raise OutputError(
            f"cannot write {path}: {blocker} is a file, not a folder; choose "
            "another output location"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise OutputError(
            f"cannot write {path}: {error.strerror or error}; choose another "
            "output location or make its folder writable"
        ) from error
    os.close(handle)
    os.unlink(name)


def _current_umask() -> int:
    # os.umask can only be read by setting it. Setting it back at once leaves
    # a short window in which another thread would create files with 022.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_default_mode(path: Path, *, directory: bool) -> None:
    """Give a temporary file or folder the mode a plain open or mkdir would.

    mkstemp and mkdtemp create private entries (0600 and 0700), which would
    keep a service user from reading a bundle copied with `rsync -a`.
    """
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~_current_umask())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, replacing any existing file."""
    path = Path(path)
    with file(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> None:
    """Write `value` as indented JSON to `path` atomically."""
    write_text(
        path, json.dumps(value, indent=2, sort_keys=False, allow_nan=True) + "\n"
    )


@contextlib.contextmanager
def file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that becomes `path` when the block succeeds.

    The caller writes the temporary file in any way it likes (a library's own
    `save` function, for example). If the block raises, the temporary file is
    removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(handle)
    temporary = Path(name)
    _apply_default_mode(temporary, directory=False)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_replaceable(
    path: str | Path, *, overwrite: bool, marker: str | None = None
) -> None:
    """Check that an output folder may be created at `path`, or replaced.

    A missing `path` is always fine. An existing one may be replaced only
    with `overwrite`, and only when it is a folder that is empty or that
    contains the file `marker`, which marks it as an earlier output of the
    same kind (`dataset.json`, `bundle.json`). So `--overwrite` cannot
    delete a folder of logs or anything else that a typo points it at.

    Raises:
        FileExistsError: `path` exists and may not be replaced.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists; remove it or choose another folder"
        )
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(
            f"{path} exists and is not a folder, so it is not replaced; "
            "choose another output folder"
        )
    if marker is not None and not (path / marker).is_file() and any(path.iterdir()):
        raise FileExistsError(
            f"{path} is not empty and has no {marker}, so it is not an earlier "
            "output of this command and --overwrite does not delete it; "
            "choose another output folder"
        )


@contextlib.contextmanager
def directory(
    path: str | Path, *, overwrite: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` when the block succeeds.

    Args:
        path: the final folder.
        overwrite: replace an existing `path`. Without it an existing folder
            raises FileExistsError before anything is written.
        marker: a file that an existing `path` must contain (unless it is
            empty) to be replaced; see `check_replaceable`.
    """
    path = Path(path)
    check_replaceable(path, overwrite=overwrite, marker=marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    )
    _apply_default_mode(temporary, directory=True)
    try:
        yield temporary
        if path.exists():
            # POSIX cannot swap two folders atomically. The old one is moved
            # aside first, so `path` is briefly absent but never a mixture.
            old = temporary.with_name(temporary.name + ".old")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
