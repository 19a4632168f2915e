"""Commands that train and score models: `train` and `evaluate`."""

from edgedp.cli import app  # noqa: F401
