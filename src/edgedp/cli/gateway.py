"""The gateway command: `serve`."""

from edgedp.cli import app  # noqa: F401
