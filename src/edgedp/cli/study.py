"""Commands that run the whole study: `download`, `config`, `run` and `report`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedp.cli import app, console


@app.command()
def download(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            "-s",
            help="IoT-23 scenario folder to fetch, such as "
            "CTU-IoT-Malware-Capture-34-1. Repeat for several. Default: the "
            "study's default set (`edgedp config --show` lists it).",
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="Folder for the logs. Default: $EDGEDP_CACHE/iot23, or "
            "~/.cache/edgedp/iot23.",
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="URL of a folder with one subfolder per scenario, laid out like "
            "the official IoT-23 site. Default: the official site.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds that connecting or one read may wait."),
    ] = 30.0,
) -> None:
    """Download IoT-23 Zeek conn logs. Rerun to resume an interrupted download."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )
    from rich.table import Table

    from edgedp.data import download as downloads

    tasks: dict[str, int] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:

        def report(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        try:
            paths = downloads.download_scenarios(
                scenario or None,
                cache=cache,
                base_url=base_url,
                progress=report,
                timeout=timeout,
            )
        except (downloads.DownloadError, ValueError) as error:
            console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None

    table = Table("scenario", "bytes", "file")
    for path in paths:
        name = path.name.removesuffix(downloads.LOG_SUFFIX)
        table.add_row(name, f"{path.stat().st_size:,}", str(path))
    console.print(table)


@app.command("config")
def config_command(
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Print the default experiment file, with a comment on every key.",
        ),
    ] = False,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="Validate this experiment file and print all its settings as JSON.",
        ),
    ] = None,
) -> None:
    """Print the default experiment file, or check an edited one."""
    from edgedp import experiment

    if show == (check is not None):
        console.print(
            "[red]error:[/] pass --show to print the default experiment file or "
            "--check FILE to validate one"
        )
        raise typer.Exit(2)

    if show:
        sys.stdout.write(experiment.default_experiment_text())
        return

    try:
        settings = experiment.load_experiment(check)
    except experiment.ExperimentError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    sys.stdout.write(json.dumps(settings.to_dict(), indent=2) + "\n")
    train = settings.train
    console.print(
        f"{escape(str(check))} is valid: {len(settings.runs())} training runs "
        f"({len(train.models)} models x {len(train.epsilons)} privacy levels x "
        f"{len(train.seeds)} seeds); --quick trains "
        f"{len(settings.quick_profile().runs())}",
        highlight=False,
    )
