"""The gateway command: `serve`.

`serve` parses its options with argparse, not Typer. Typer 0.29 builds a
pydantic validator for every option, and importing pydantic and building
them adds about 15 MB of resident memory, a quarter of the 60 MB that the
gateway runtime is meant to fit in. So `edgedp.cli.main` hands
`edgedp serve ...` to `run_serve` before Typer parses anything. The Typer
command below only lists `serve` in `edgedp --help`, and it forwards to the
same parser when Typer is reached (for example `edgedp -v serve ...`).

The command imports only the gateway runtime (`edgedp.edge`), which needs
numpy and ai-edge-litert, so it works with the base install on a Raspberry
Pi.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import typer

from edgedp.cli import app

_DESCRIPTION = (
    "Classify the flows of a Zeek conn.log with a bundle and write one JSON "
    "line per alert. Exits 0 when the input ends or on SIGTERM/SIGINT (pending "
    "flows are classified first), 1 when the alert output closes, 3 when alert "
    "lines cannot be written (a full disk, for example), 2 on invalid "
    "options, an alert file that cannot be written, a bundle that fails "
    "verification, an input that cannot be opened, or an input file that is "
    "not a Zeek conn log (read once, or followed and naming another log in "
    "its #path header)."
)


ALERT_WRITE_FAILED = 3
"""Exit status when alert lines cannot be written, such as on a full disk."""


def _finite(value: str) -> float:
    # float() accepts "nan" and "inf", and NaN passes every comparison below,
    # so a NaN delay or interval would be taken as valid.
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def _nonnegative(value: str) -> float:
    number = _finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _positive(value: str) -> float:
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of `edgedp serve`'s arguments."""
    parser = argparse.ArgumentParser(prog="edgedp serve", description=_DESCRIPTION)
    parser.add_argument(
        "bundle", type=Path, help="bundle folder, completed by `edgedp optimize`"
    )
    parser.add_argument(
        "--input",
        "-i",
        required=True,
        help="Zeek conn.log file, folder of rotated conn logs (read in path "
        "order), or - for stdin",
    )
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading the log file like `tail -F`, across rotation and "
        "truncation, until SIGTERM or SIGINT (not for a .gz file; stdin is "
        "read until it closes anyway)",
    )
    parser.add_argument(
        "--from-end",
        action="store_true",
        help="with --follow, skip the flows already in the file (its header "
        "is still read); not for stdin",
    )

    parser.add_argument(
        "--format",
        dest="log_format",
        choices=("auto", "tsv", "json"),
        default="auto",
        help="log format; auto decides per file from its first line "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        dest="model_format",
        choices=("int8", "fp32"),
        default="int8",
        help="LiteRT model of the bundle to run (default: %(default)s)",
    )

    parser.add_argument(
        "--alerts",
        "-o",
        default="-",
        help="file to append alert JSON lines to, or - for stdout "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--all",
        dest="all_flows",
        action="store_true",
        help="write a JSON line for every flow, not only alerts",
    )

    parser.add_argument(
        "--batch",
        type=_count,
        default=1024,
        help="maximum flows per model invoke (default: %(default)s)",
    )
    parser.add_argument(
        "--max-delay",
        type=_nonnegative,
        default=10.0,
        metavar="MS",
        help="milliseconds a flow may wait for its batch to fill "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        help="autoencoder anomaly threshold: a finite number above 0, or a name "
        "recorded in the bundle (validation_fpr, study); default: "
        "validation_fpr if recorded, else study. A classifier bundle ignores "
        "it, with a warning",
    )

    parser.add_argument(
        "--stats-interval",
        type=_positive,
        default=60.0,
        metavar="S",
        help="seconds between statistics log lines (default: %(default)s)",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=_count,
        default=65536,
        help="longer lines are skipped and counted (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive,
        default=10.0,
        metavar="MS",
        help="milliseconds between checks of a followed file at its end "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="log debug messages"
    )
    return parser


def _configure_logging(verbose: bool) -> None:
    """Log one plain line per message, with a timestamp.

    A handler that `edgedp -v` set up is replaced, because Rich wraps long
    messages to the console width, which splits one record over several
    journal lines under systemd.
    """
    root = logging.getLogger()
    level = logging.DEBUG if verbose or root.level == logging.DEBUG else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_serve(argv: list[str]) -> int:
    """Run `edgedp serve` with its command line arguments; return the exit status."""
    arguments = build_parser().parse_args(argv)
    _configure_logging(arguments.verbose)

    from edgedp.atomic import OutputError
    from edgedp.bundle import BundleError
    from edgedp.edge.follow import UnreadableInputError
    from edgedp.edge.serve import Gateway, ServeSettings

    try:
        settings = ServeSettings(
            bundle=arguments.bundle,
            input=arguments.input,
            follow=arguments.follow,
            from_end=arguments.from_end,
            log_format=arguments.log_format,
            model_format=arguments.model_format,
            alerts=arguments.alerts,
            all_flows=arguments.all_flows,
            batch=arguments.batch,
            max_delay=arguments.max_delay / 1000.0,
            threshold=arguments.threshold,
            stats_interval=arguments.stats_interval,
            max_line_bytes=arguments.max_line_bytes,
            poll_interval=arguments.poll_interval / 1000.0,
        )
        gateway = Gateway(settings)
    except (
        BundleError,
        FileNotFoundError,
        OutputError,
        UnreadableInputError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    totals = gateway.run()
    if totals["events"].get("alert_output_closed"):
        return 1
    if totals["events"].get("alert_write_failed"):
        return ALERT_WRITE_FAILED
    problem = gateway.input_problem(totals)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
    help="Classify the flows of a Zeek conn.log with a bundle and write alerts "
    "(options: edgedp serve --help).",
)
def serve(context: typer.Context) -> None:
    raise typer.Exit(run_serve(list(context.args)))
