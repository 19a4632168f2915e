"""Shared fixtures: the IoT-23 sample logs that every data test reads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(
    os.environ.get("EDGEDP_TEST_DATA", REPOSITORY.parent / "shared" / "data" / "iot23")
)


@pytest.fixture(scope="session")
def iot23() -> Path:
    """Folder of the IoT-23 sample logs (`zeek/`, `csv/`, `variants/`, `mixed/`)."""
    if not (DATA_ROOT / "zeek").is_dir():
        pytest.fail(
            f"IoT-23 sample logs not found at {DATA_ROOT}; "
            "set EDGEDP_TEST_DATA to the folder that contains zeek/ and csv/"
        )
    return DATA_ROOT


@pytest.fixture(scope="session")
def prepared_iot23(iot23, tmp_path_factory):
    """The IoT-23 sample logs prepared with the default settings.

    `variants/` is left out, because it contains other encodings of flows
    that `zeek/` and `csv/` already contain, and one file without a header
    row.
    """
    from edgedp.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "iot23"
    return prepare_dataset([iot23 / "zeek", iot23 / "csv", iot23 / "mixed"], out)


@pytest.fixture(scope="session")
def resplit_iot23(iot23, tmp_path_factory):
    """The logs of `prepared_iot23` prepared with split seed 3.

    It has the same classes, features and row counts per split, but about
    half of its validation and test rows are training rows of a bundle
    trained on `prepared_iot23`.
    """
    from edgedp.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "seed3"
    return prepare_dataset(
        [iot23 / "zeek", iot23 / "csv", iot23 / "mixed"], out, seed=3
    )


@pytest.fixture
def read_only_folder():
    """Return a function that makes a folder unwritable until the test ends.

    Root ignores file modes, so as root the folder gets the immutable flag
    (`chattr +i`), and the test is skipped where the file system lacks it.
    """
    changed: list[tuple[Path, int]] = []

    def make(folder: Path) -> None:
        mode = folder.stat().st_mode
        if os.geteuid() != 0:
            folder.chmod(0o555)
            changed.append((folder, mode))
            return
        done = subprocess.run(
            ["chattr", "+i", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"chattr +i failed on {folder}: {done.stderr.strip()}")
        changed.append((folder, mode))

    yield make

    for folder, mode in changed:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)
