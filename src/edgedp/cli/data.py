"""Commands that read flow logs: `inspect` and `prepare`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgedp import config
from edgedp.cli import app, console, reports_interrupt
from edgedp.experiment import MAX_SEED

if TYPE_CHECKING:
    from edgedp.data.inspect import RejectedFile
    from edgedp.data.readers import FileReport

_COLUMNS_HELP = (
    "Column names for CSV/TSV exports without a header row: `conn-labeled` "
    "(the 23 IoT-23 conn.log.labeled fields), `conn` (the 21 conn.log fields), "
    "or a comma-separated list of Zeek field names."
)


_Columns = Annotated[str | None, typer.Option("--columns", help=_COLUMNS_HELP)]
_MaxRows = Annotated[
    int | None,
    typer.Option("--max-rows", min=1, help="Read at most this many flows per file."),
]


def _columns(value: str | None) -> tuple[str, ...] | None:
    from edgedp.data.sources import resolve_columns

    try:
        return resolve_columns(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--columns") from error


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {number}" for name, number in counts.items()) or "-"


def _excluded(total: int, by_label: dict[str, int]) -> str:
    if not by_label:
        return str(total)
    return f"{total} ({_counts(by_label)})"


@app.command()
def inspect(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Flow log files, or folders searched recursively."),
    ],
    columns: _Columns = None,
    max_rows: _MaxRows = None,
) -> None:
    """Show each file's format, rows read and skipped, and label counts.

    Exits with 1 when a file is rejected or has every data line skipped.
    """
    from edgedp.data.inspect import RejectedFile, inspect_logs
    from edgedp.data.sources import FlowLogError

    try:
        results = inspect_logs(
            paths, columns=_columns(columns), max_rows_per_file=max_rows
        )
    except (FileNotFoundError, FlowLogError) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    failed = 0
    for result in results:
        if isinstance(result, RejectedFile):
            failed += 1
            console.print(
                f"[red]rejected[/] {result.path}\n  {result.reason}", soft_wrap=True
            )
            continue
        console.print(f"[bold]{result.path}[/]", soft_wrap=True)
        table = Table(show_header=False)
        table.add_row("format", result.format)
        table.add_row("rows read", str(result.rows_read))
        skipped = result.skipped
        table.add_row(
            "rows skipped", f"{skipped.total}  {_counts(dict(skipped.counts))}"
        )
        for example in skipped.examples:
            table.add_row("", example)
        table.add_row("label", _counts(dict(result.labels.most_common())))
        table.add_row(
            "detailed-label", _counts(dict(result.detailed_labels.most_common()))
        )
        console.print(table)
        failed += result.no_rows_message() is not None
    if len(results) > 1:
        console.print(_inspect_total(results), soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _inspect_total(results: Sequence[FileReport | RejectedFile]) -> str:
    """Sum the rows read and lines skipped of `inspect_logs` results."""
    from edgedp.data.readers import FileReport

    reports = [result for result in results if isinstance(result, FileReport)]
    rejected = len(results) - len(reports)
    return (
        f"total: {len(results)} files"
        + (f", {rejected} rejected" if rejected else "")
        + f"; rows read: {sum(report.rows_read for report in reports)}"
        + f"; lines skipped: {sum(report.skipped.total for report in reports)}"
    )


@app.command()
@reports_interrupt
def prepare(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Labeled flow log files, or folders searched recursively."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    feature_set: Annotated[
        str, typer.Option("--features", help="Feature set: paper or extended.")
    ] = "extended",
    classes: Annotated[
        str,
        typer.Option(help="Comma-separated class names, in label_index order."),
    ] = ",".join(config.STUDY_CLASSES),
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="PATTERN=CLASS: fold source labels into a class, for example "
            "'C&C-*=C&C'. Repeat the option for several rules.",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="random: 50/30/20 per class; independent: 50/30/20 on average, "
            "each flow on its own; capture: whole files per split."
        ),
    ] = "random",
    seed: Annotated[
        int,
        typer.Option(min=0, max=MAX_SEED, help="Seed of the split, from 0 to 2^32-1."),
    ] = config.DEFAULT_SEED,
    columns: _Columns = None,
    max_rows: _MaxRows = None,
    max_rows_per_class: Annotated[
        int | None,
        typer.Option(
            "--max-rows-per-class",
            min=1,
            help="Keep at most this many flows of each class, a seeded random "
            "choice across all files, counted after duplicates are dropped.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing --out folder if it is empty or an earlier "
            "prepared dataset (with dataset.json).",
        ),
    ] = False,
) -> None:
    """Encode and split labeled flow logs into a prepared dataset."""
    from edgedp.atomic import OutputError
    from edgedp.data.labels import parse_mapping
    from edgedp.data.prepare import PrepareError, prepare_dataset
    from edgedp.data.sources import FlowLogError

    try:
        class_mapping = parse_mapping(mapping or [])
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--map") from error
    try:
        dataset = prepare_dataset(
            paths,
            out,
            feature_set=feature_set,
            classes=[name for name in classes.split(",") if name.strip()],
            class_mapping=class_mapping,
            split=split,
            seed=seed,
            overwrite=overwrite,
            max_rows_per_file=max_rows,
            max_rows_per_class=max_rows_per_class,
            columns=_columns(columns),
        )
    except (
        FileNotFoundError,
        FileExistsError,
        FlowLogError,
        OutputError,
        PrepareError,
    ) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    manifest = dataset.manifest
    table = Table(title=f"{out} ({manifest['feature_set']} features)")
    table.add_column("class")
    for name in ("train", "validation", "test"):
        table.add_column(name, justify="right")
    for name in dataset.classes:
        table.add_row(
            name,
            *(
                str(manifest["splits"][s]["classes"][name])
                for s in ("train", "validation", "test")
            ),
        )
    console.print(table)
    rows = manifest["rows"]
    console.print(
        f"rows read: {rows['read']}; kept: {rows['kept']}; "
        f"duplicates dropped: {rows['duplicates_dropped']}; "
        f"excluded: {_excluded(rows['excluded'], manifest['excluded'])}; "
        f"in dropped classes: {rows['in_dropped_classes']}"
        + (
            f"; over the class cap: {rows['over_class_cap']}"
            if manifest.get("max_rows_per_class")
            else ""
        )
    )
