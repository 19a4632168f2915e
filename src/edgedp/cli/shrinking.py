"""Commands that convert and measure bundles: `optimize` and `bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgedp.bench import DEFAULT_REPEAT, VARIANTS
from edgedp.cli import app, console, reports_interrupt
from edgedp.config import STUDY_BENCH_FLOWS
from edgedp.export import (
    AUTO_CALIBRATION,
    CALIBRATION_SOURCES,
    DEFAULT_CALIBRATION,
    DEFAULT_CALIBRATION_SIZE,
    NO_GUARANTEE,
)


def _score(entry: dict[str, Any]) -> str:
    validation = entry.get("validation", {})
    for name, value in validation.items():
        return "-" if value is None else f"{name} {value:.4f}"
    return "-"


@app.command()
@reports_interrupt
def optimize(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder from `edgedp train`.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Prepared dataset for calibration and validation scores; "
            "default: the one recorded in bundle.json."
        ),
    ] = None,
    calibration: Annotated[
        str,
        typer.Option(
            help="Flows that set the int8 activation ranges: `synthetic` "
            "(drawn from the feature encoder's fixed vocabularies; reads no "
            "data, so the DP guarantee still covers the whole int8 model), "
            "`validation` (validation-split flows; the training rows stay "
            "covered, but the int8 scales expose the validation flows outside "
            "DP), `train` (training flows; the DP guarantee then no longer "
            "covers the int8 model), or `auto`: synthetic for a DP-trained "
            "bundle, validation for a non-private one. See docs/shrinking.md."
        ),
    ] = DEFAULT_CALIBRATION,
    calibration_size: Annotated[
        int, typer.Option(min=1, help="Number of calibration flows.")
    ] = DEFAULT_CALIBRATION_SIZE,
    force: Annotated[
        bool, typer.Option(help="Convert again even if the models are up to date.")
    ] = False,
) -> None:
    """Add LiteRT float32 and int8 models to a bundle and score them."""
    from edgedp.atomic import OutputError
    from edgedp.bundle import BundleError
    from edgedp.dataset import DatasetError
    from edgedp.export import optimize_bundle

    choices = [AUTO_CALIBRATION, *CALIBRATION_SOURCES]
    if calibration not in choices:
        raise typer.BadParameter(
            f"{calibration!r} is not one of {', '.join(choices)}",
            param_hint="--calibration",
        )
    try:
        updated = optimize_bundle(
            bundle,
            data=data,
            calibration=calibration,
            calibration_size=calibration_size,
            force=force,
        )
    except (BundleError, DatasetError, OutputError) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    formats = updated.manifest["formats"]
    table = Table(title=f"{updated.root} ({updated.model_kind})")
    table.add_column("format")
    table.add_column("file")
    table.add_column("KiB", justify="right")
    table.add_column("validation", justify="right")
    for name in ("torch", "fp32", "int8"):
        entry = formats[name]
        table.add_row(
            name, entry["file"], f"{entry['bytes'] / 1024:.1f}", _score(entry)
        )
    console.print(table)

    ledger = updated.manifest["privacy"]
    entry = ledger["calibration"]
    summary = f"int8 calibration: {entry['flows']} {entry['source']} flows"
    if "fallback_from" in entry:
        summary += (
            f" (fell back from {entry['fallback_from']}, whose int8 model scored "
            f"{entry['synthetic_validation_loss']:.4f} below float32)"
        )
    if ledger.get("private") is False:
        console.print(f"{summary}; {NO_GUARANTEE}", soft_wrap=True)
        return
    covered = "covered" if entry["training_rows_covered"] else "NOT covered"
    exposed = entry["exposed_flows"]
    exposed = "none" if exposed is None else f"the {exposed}-split calibration flows"
    console.print(
        f"{summary}. Training rows {covered} by DP; flows exposed outside DP: "
        f"{exposed}. {entry['effect']}",
        soft_wrap=True,
    )


def _seconds(spread: dict[str, Any] | None) -> str:
    # The range goes on a line of its own, so that an 80-column terminal
    # shows it whole instead of cutting it.
    if spread is None:
        return "-"
    return f"{spread['median']:.4f}\n{spread['min']:.4f}-{spread['max']:.4f}"


def _mebibytes(spread: dict[str, Any] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['median'] / 2**20:.1f}"


@app.command()
@reports_interrupt
def bench(
    bundles: Annotated[
        list[Path], typer.Argument(help="Bundle folders that `optimize` processed.")
    ],
    samples: Annotated[
        int, typer.Option(min=1, help="Flows per measurement (the study used 7000).")
    ] = STUDY_BENCH_FLOWS,
    repeat: Annotated[
        int, typer.Option(min=1, help="Fresh processes per format and bundle.")
    ] = DEFAULT_REPEAT,
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads for torch and LiteRT.")
    ] = 1,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Measure only this variant (repeatable): "
            + ", ".join(VARIANTS)
            + ". Default: all."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON file for the full results.")] = Path(
        "bench.json"
    ),
) -> None:
    """Time one-at-a-time and batched inference, peak memory and file size."""
    from edgedp import atomic
    from edgedp.bench import BenchError, bench_bundles
    from edgedp.bundle import BundleError

    unknown = sorted(set(variant or ()) - set(VARIANTS))
    if unknown:
        raise typer.BadParameter(
            f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}",
            param_hint="--variant",
        )
    try:
        if out.is_dir():
            raise atomic.OutputError(
                f"cannot write {out}: it is a folder, and --out takes the path "
                "of a JSON file; pass a file name such as "
                f"{out / 'bench.json'}"
            )
        atomic.check_writable(out)
    except atomic.OutputError as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error
    try:
        results = bench_bundles(
            bundles,
            samples=samples,
            repeat=repeat,
            threads=threads,
            variants=variant or VARIANTS,
        )
    except (BundleError, BenchError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from error

    for result in results["bundles"]:
        table = Table(
            title=f"{result['bundle']} ({result['kind']}, {result['flows']} flows; "
            f"seconds: median, then min-max of {repeat} runs)"
        )
        table.add_column("variant", no_wrap=True)
        table.add_column("file KiB", justify="right")
        table.add_column("one at a time s", justify="right", no_wrap=True)
        table.add_column("CPU µs/flow", justify="right")
        table.add_column("one batch s", justify="right", no_wrap=True)
        table.add_column("peak RSS MiB one at a time / after batch", justify="right")
        for name, variant in result["variants"].items():
            size = variant["file_bytes"]
            per_flow = variant.get("single_cpu_microseconds_per_flow")
            table.add_row(
                name,
                "-" if size is None else f"{size / 1024:.1f}",
                _seconds(variant["single_seconds"]),
                "-" if per_flow is None else f"{per_flow:.1f}",
                _seconds(variant["batch_seconds"]),
                _mebibytes(variant["single_peak_rss_bytes"])
                + " / "
                + _mebibytes(variant["peak_rss_bytes"]),
            )
        console.print(table)

    atomic.write_json(out, results)
    console.print(f"wrote {out}")
