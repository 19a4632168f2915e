"""The `audit` command: membership inference against a bundle's torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgedp import config
from edgedp.cli import app, console, reports_interrupt


def _value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _bound(value: float | None) -> str:
    return "no bound (no DP)" if value is None else f"{value:.4f}"


def _result_table(result: dict[str, Any]) -> Table:
    bound = result["bound"]
    table = Table(title=f"membership inference: {result['attack']}")
    for column in ("measure", "attack", "DP bound"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    table.add_row(
        "members / non-members", f"{result['members']:,} / {result['non_members']:,}"
    )
    table.add_row("ROC-AUC", _value(result["roc_auc"]), _bound(bound["roc_auc"]))
    table.add_row(
        "advantage, max(TPR - FPR)",
        _value(result["advantage"]),
        _bound(bound["advantage"]),
    )
    for level, tpr in result["tpr_at_fpr"].items():
        needed = result["min_non_members_for_tpr"][level]
        table.add_row(
            f"TPR at FPR {float(level):.1%}",
            _value(tpr) if tpr is not None else f"– (needs {needed:,} non-members)",
            _bound(bound["tpr_at_fpr"][level]),
        )

    duplicates = result["duplicates"]
    table.add_row(
        "non-members equal to a training row",
        f"{duplicates['non_members_matching_training_features']:,} "
        f"({duplicates['fraction']:.1%})",
    )
    unique = result["unique_rows"]
    table.add_row(
        f"ROC-AUC on unique flows ({unique['members']:,} / {unique['non_members']:,})",
        _value(unique["roc_auc"]),
    )
    return table


@app.command()
@reports_interrupt
def audit(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (edgedp train).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Prepared dataset the bundle was trained on. Default: the one "
            "recorded in the bundle.",
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            help="Training rows drawn as members, and as many test rows as "
            "non-members with the same count per class; fewer when the rows "
            f"run out. At least {config.MIN_MEMBERSHIP_SAMPLES}.",
        ),
    ] = config.MEMBERSHIP_SAMPLES,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=config.MAX_SEED,
            help="Seed of the member and non-member sample, from 0 to 2^32-1.",
        ),
    ] = config.DEFAULT_SEED,
) -> None:
    """Run a membership inference attack on a bundle and record it in bundle.json.

    The loss-threshold attack guesses that flows with a small loss were
    training rows. Its result is a lower bound on leakage for this one attack:
    a ROC-AUC near 0.5 does not show that the model is private.
    """
    from edgedp.atomic import OutputError
    from edgedp.bundle import BundleError
    from edgedp.dataset import DatasetError
    from edgedp.membership import MembershipError, audit_bundle

    # Checked before the bundle is opened, so a too small sample never
    # replaces the recorded result.
    if samples < config.MIN_MEMBERSHIP_SAMPLES:
        raise typer.BadParameter(
            f"{samples} is below the minimum of {config.MIN_MEMBERSHIP_SAMPLES} "
            "members per side: with fewer, the attack's ROC-AUC varies by more "
            "than 0.04 (its standard error) on a model that leaks nothing, so "
            "the result would say nothing. The default is "
            f"{config.MEMBERSHIP_SAMPLES}.",
            # Quoted as click quotes the options in its own range errors.
            param_hint="'--samples'",
        )
    try:
        result = audit_bundle(bundle, data, samples=samples, seed=seed)
    except (
        MembershipError,
        BundleError,
        DatasetError,
        FileNotFoundError,
        OutputError,
    ) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    console.print(_result_table(result))
    console.print(
        f"recorded in {bundle / 'bundle.json'} under membership. The attack "
        "gives a lower bound on leakage; a stronger attack may do better.",
        soft_wrap=True,
    )
