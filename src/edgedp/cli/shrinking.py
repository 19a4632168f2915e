"""Commands that convert and measure bundles: `optimize` and `bench`."""

from edgedp.cli import app  # noqa: F401
