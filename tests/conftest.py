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
