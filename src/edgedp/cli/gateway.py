"""The gateway command: `serve`.

It imports only the gateway runtime (`edgedp.edge`), which needs numpy and
ai-edge-litert, so it works with the base install on a Raspberry Pi.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgedp.cli import app, console


def _plain_logging_for_services() -> None:
    """Log one plain line per message when stderr is not a terminal.

    Rich wraps long messages to the console width, which splits one log
    record over several journal lines under systemd.
    """
    if sys.stderr.isatty():
        return
    root = logging.getLogger()
    level = root.level
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


@app.command()
def serve(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle folder, made by `edgedp optimize`.")
    ],
    source: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="Zeek conn.log file, folder of rotated conn logs (read in path "
            "order), or - for stdin.",
        ),
    ],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep reading the log file like `tail -F`, across rotation and "
            "truncation, until SIGTERM or SIGINT.",
        ),
    ] = False,
    from_end: Annotated[
        bool,
        typer.Option(
            "--from-end",
            help="With --follow, skip the flows already in the file (its header "
            "is still read).",
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--format", help="Log format: auto (per file), tsv (Zeek ASCII) or json."
        ),
    ] = "auto",
    model_format: Annotated[
        str, typer.Option("--model", help="Model to run: int8 or fp32.")
    ] = "int8",
    alerts: Annotated[
        str,
        typer.Option(
            "--alerts",
            "-o",
            help="File to append alert JSON lines to, or - for stdout.",
        ),
    ] = "-",
    all_flows: Annotated[
        bool,
        typer.Option(
            "--all", help="Write a JSON line for every flow, not only alerts."
        ),
    ] = False,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Most flows per model invoke.")
    ] = 1024,
    max_delay: Annotated[
        float,
        typer.Option(
            "--max-delay",
            min=0.0,
            help="Milliseconds a flow may wait for its batch to fill.",
        ),
    ] = 20.0,
    threshold: Annotated[
        str | None,
        typer.Option(
            "--threshold",
            help="Autoencoder anomaly threshold: a number, or a name recorded in "
            "the bundle (validation_fpr, study). Default: validation_fpr if "
            "recorded, else study.",
        ),
    ] = None,
    stats_interval: Annotated[
        float,
        typer.Option(
            "--stats-interval", min=0.1, help="Seconds between statistics log lines."
        ),
    ] = 60.0,
    max_line_bytes: Annotated[
        int,
        typer.Option(
            "--max-line-bytes", min=1, help="Longer lines are skipped and counted."
        ),
    ] = 65536,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.1,
            help="Milliseconds between checks of a followed file at its end.",
        ),
    ] = 10.0,
) -> None:
    """Classify flows of a Zeek conn.log with a bundle and write alerts.

    Exits 0 when the input ends or on SIGTERM/SIGINT (pending flows are
    classified first), 1 when the alert output closes, 2 on bad settings or
    a bundle that fails verification.
    """
    from edgedp.bundle import BundleError
    from edgedp.edge.serve import Gateway, ServeSettings

    _plain_logging_for_services()
    try:
        settings = ServeSettings(
            bundle=bundle,
            input=source,
            follow=follow,
            from_end=from_end,
            log_format=log_format,
            model_format=model_format,
            alerts=alerts,
            all_flows=all_flows,
            batch=batch,
            max_delay=max_delay / 1000.0,
            threshold=threshold,
            stats_interval=stats_interval,
            max_line_bytes=max_line_bytes,
            poll_interval=poll_interval / 1000.0,
        )
        gateway = Gateway(settings)
    except (BundleError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from error

    totals = gateway.run()
    if totals["events"].get("alert_output_closed"):
        raise typer.Exit(1)
