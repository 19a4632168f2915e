"""The `edgedp` command.

Each stage registers its commands from its own module in this package. Command
modules import heavy libraries (torch, polars) inside the command function, so
`edgedp serve` on a gateway never loads them and `edgedp --help` stays fast.
"""

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="edgedp",
    help="Train private IoT intrusion detectors, shrink them, run them on a gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

console = Console(stderr=True)

# Top-level modules that only the `train` extra installs.
TRAINING_MODULES = frozenset(
    {"torch", "opacus", "polars", "pyarrow", "litert_torch", "ai_edge_quantizer"}
    | {"sklearn", "matplotlib"}
)


def reports_interrupt(command: Callable[..., Any]) -> Callable[..., Any]:
    """Make Ctrl-C in `command` print what it left behind and exit 130."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted.[/] Outputs are written atomically, so "
                "nothing partial was left under the output name; run the "
                "command again to redo it."
            )
            raise typer.Exit(130) from None

    return run


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def main() -> None:
    """Run the `edgedp` command line."""
    if sys.argv[1:2] == ["serve"]:
        # The gateway command skips Typer, whose pydantic option validators
        # cost about 15 MB of memory (see edgedp.cli.gateway).
        from edgedp.cli.gateway import run_serve

        sys.exit(run_serve(sys.argv[2:]))

    from edgedp.cli import (  # noqa: F401
        data,
        gateway,
        membership,
        shrinking,
        study,
        training,
    )

    try:
        app()
    except ModuleNotFoundError as error:
        top_level = (error.name or "").split(".")[0]
        if top_level not in TRAINING_MODULES:
            raise
        # `\\[` keeps Rich from reading `[train]` as markup and dropping it.
        console.print(
            f"[red]error:[/] this command needs {top_level!r}, which comes with the "
            "training tools. Install them with: pip install 'edgedp\\[train]'",
            soft_wrap=True,
        )
        sys.exit(2)
