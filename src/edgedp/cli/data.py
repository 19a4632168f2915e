"""Commands that read flow logs: `inspect` and `prepare`."""

from edgedp.cli import app  # noqa: F401
