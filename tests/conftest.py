"""Shared fixtures: the IoT-23 sample logs that every data test reads."""

from __future__ import annotations

import os
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
