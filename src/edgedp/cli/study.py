"""Commands that run the whole study: `download`, `run` and `report`."""

from edgedp.cli import app  # noqa: F401
