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

    from edgedp.atomic import OutputError
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
        except OutputError as error:
            console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(2) from None

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


class _RichProgress:
    """Shows `run_study`'s progress as Rich progress bars, one per stage."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def start(self, task: str, total: int | None, description: str) -> None:
        self.tasks[task] = self.progress.add_task(escape(description), total=total)

    def advance(self, task: str, description: str) -> None:
        if task in self.tasks:
            self.progress.update(
                self.tasks[task],
                advance=0 if self.progress.tasks[self.tasks[task]].total is None else 1,
                description=escape(description),
            )

    def finish(self, task: str, description: str) -> None:
        if task in self.tasks:
            identifier = self.tasks[task]
            total = self.progress.tasks[identifier].total
            self.progress.update(
                identifier,
                total=total or 1,
                completed=total or 1,
                description=escape(description),
            )


@app.command()
def run(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            "-d",
            help="Flow log file or folder (searched recursively). Repeat for "
            "several. Default: the experiment file's paths, or the IoT-23 "
            "scenarios downloaded into the cache.",
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Experiment file (`edgedp config --show` prints the default).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder. Default: runs/NAME, NAME being the experiment "
            "file's name (study without one), with -quick for --quick.",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Apply the experiment's quick profile: a small grid, few "
            "epochs, and only the first rows of each file (2000 by default). "
            "A class whose flows all come later in their files is then "
            "missing from the report.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Redo every stage, even finished ones."),
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Grid cells trained in parallel, one process each. Default: "
            "one per usable CPU.",
        ),
    ] = None,
) -> None:
    """Run the whole study: prepare, train, optimize, evaluate, audit, bench, report.

    Rerunning the same command resumes: finished stages are skipped.
    """
    import logging
    import shlex
    from dataclasses import replace

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from edgedp import atomic
    from edgedp import experiment as experiments
    from edgedp.report import ReportError
    from edgedp.study import StudyError, check_training_modules, layout, run_study

    # Checked before anything is written or downloaded. A missing module
    # raises ModuleNotFoundError, and edgedp.cli.main prints the install command.
    check_training_modules()
    try:
        settings = experiments.load_experiment(config_file)
    except experiments.ExperimentError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    if data:
        paths = tuple(str(path.expanduser().resolve()) for path in data)
        settings = replace(settings, data=replace(settings.data, paths=paths))
    if quick:
        settings = settings.quick_profile()
    if out is None:
        name = config_file.stem if config_file is not None else "study"
        out = Path("runs") / (f"{name}-quick" if quick else name)
    try:
        # run_study checks this too, but here the error comes before any output.
        atomic.check_writable(out / layout.STATE)
    except atomic.OutputError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None

    # The terminal shows the progress bars and warnings; run.log gets INFO.
    for handler in logging.getLogger().handlers:
        if handler.level < logging.WARNING and not _verbose():
            handler.setLevel(logging.WARNING)

    command = "edgedp " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    console.print(
        f"run folder {escape(str(out))}: {len(settings.runs())} grid cells, "
        f"log in {escape(str(out / 'run.log'))}",
        highlight=False,
    )
    try:
        with Progress(*columns, console=console) as progress:
            result = run_study(
                settings,
                out,
                force=force,
                jobs=jobs,
                progress=_RichProgress(progress),
                invocation={"command": command, "quick": quick},
            )
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted.[/] Finished stages are kept; rerun the same "
            "command to resume."
        )
        raise typer.Exit(130) from None
    except (StudyError, ReportError, ValueError, OSError) as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None

    console.print(
        f"done in {result.wall_seconds:.0f} s: {len(result.ran)} stages ran, "
        f"{len(result.skipped)} were already done. Report: "
        f"{escape(str(result.report['markdown']))}",
        highlight=False,
    )


def _verbose() -> bool:
    import logging

    return logging.getLogger().level <= logging.DEBUG


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="Run folder written by `edgedp run`.")
    ],
    while_running: Annotated[
        bool,
        typer.Option(
            "--while-running",
            help="Write the report even while an `edgedp run` uses the folder. "
            "It then shows the stages finished so far.",
        ),
    ] = False,
) -> None:
    """Write report.md, report.json and figures/ again from a run folder's files."""
    from edgedp.atomic import OutputError, check_writable
    from edgedp.report import ReportError, write_report
    from edgedp.study import layout, run_folder_holder

    holder = run_folder_holder(run_dir)
    if holder is not None and not while_running:
        console.print(
            f"[red]error:[/] {escape(str(run_dir))} is in use by a running "
            f"`edgedp run` (PID {escape(holder)}), which writes the report when "
            "it ends. Wait for it, or pass --while-running to write a report "
            "of the stages finished so far.",
            highlight=False,
        )
        raise typer.Exit(1)
    if holder is not None:
        console.print(
            f"[yellow]warning:[/] {escape(str(run_dir))} is in use by a running "
            f"`edgedp run` (PID {escape(holder)}). The report shows that run as "
            "running and leaves out the cells it has not finished.",
            highlight=False,
        )

    # Check before drawing, and only inside an existing folder, so that a
    # mistyped path gets the report's own error rather than a new folder.
    outputs = [run_dir / layout.REPORT_JSON]
    if (run_dir / layout.FIGURES).exists():
        outputs.append(run_dir / layout.FIGURES / "figure.png")
    try:
        if run_dir.is_dir():
            for output in outputs:
                check_writable(output)
    except OutputError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None

    try:
        paths = write_report(run_dir)
    except ReportError as error:
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"wrote {escape(str(paths['markdown']))}, {escape(str(paths['json']))} "
        f"and {escape(str(paths['figures']))}/",
        highlight=False,
    )
