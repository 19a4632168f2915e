"""Commands that train and score models: `train` and `evaluate`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgedp import config, zeek
from edgedp.cli import app, console, reports_interrupt

# edgedp.train imports only numpy and the standard library at module level.
from edgedp.train import DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE, DEFAULT_THREADS


def _epsilon(value: str) -> float | None:
    if value.strip().lower() in ("none", "off"):
        return None
    not_a_number = typer.BadParameter(
        f"{value!r} is not a number; give a positive epsilon in ASCII digits "
        "without underscores, such as 1, or none for a non-private run",
        param_hint="--epsilon",
    )
    try:
        epsilon = zeek.parse_float(value)
    except ValueError as error:
        raise not_a_number from error
    if math.isnan(epsilon):
        raise not_a_number
    if math.isinf(epsilon):
        # An infinite epsilon is no guarantee at all; training without DP
        # must be asked for by name, so that a typo cannot turn DP off.
        raise typer.BadParameter(
            f"epsilon {value} is not a DP guarantee; pass --epsilon none to "
            "train without DP",
            param_hint="--epsilon",
        )
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise typer.BadParameter(
            f"epsilon must be positive, got {value}; use none for a non-private run",
            param_hint="--epsilon",
        )
    if epsilon > config.MAX_EPSILON:
        raise typer.BadParameter(
            f"epsilon {value} is above the maximum of {config.MAX_EPSILON:g}, "
            "where the guarantee says nothing useful and noise calibration "
            f"stops working (docs/privacy.md); choose up to "
            f"{config.MAX_EPSILON:g}, or none to train without DP",
            param_hint="--epsilon",
        )
    return epsilon


def _delta(value: str | float) -> float:
    # Python's float reads `1_0` as 10, but parse_float rejects it, as the log
    # readers do, so that a typo cannot change the privacy parameters.
    try:
        return zeek.parse_float(value)
    except ValueError as error:
        raise typer.BadParameter(
            f"{value!r} is not a number; give delta in ASCII digits without "
            "underscores, such as 1e-5",
            param_hint="--delta",
        ) from error


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _ledger_table(ledger: dict[str, Any]) -> Table:
    table = Table(title="privacy ledger", show_header=False)
    keys = (
        "epsilon",
        "target_epsilon",
        "epsilon_rdp",
        "delta",
        "noise_multiplier",
        "max_grad_norm",
        "sample_rate",
        "steps",
        "accountant",
        "sampling",
        "population",
        "rows",
    )
    for key in keys:
        if ledger.get(key) is not None:
            table.add_row(key, _number(ledger[key]))
    return table


def _metrics_tables(title: str, metrics: dict[str, Any]) -> list[Table]:
    summary = Table(title=title, show_header=False)
    if "accuracy" in metrics:
        from edgedp.metrics import CLASSIFIER_SUMMARY

        for key in CLASSIFIER_SUMMARY:
            summary.add_row(key, f"{metrics[key]:.4f}")
        per_class = Table(title="per class")
        for column in ("class", "precision", "recall", "f1", "support"):
            per_class.add_column(
                column, justify="left" if column == "class" else "right"
            )
        for name, row in metrics["per_class"].items():
            per_class.add_row(
                name,
                f"{row['precision']:.4f}",
                f"{row['recall']:.4f}",
                f"{row['f1']:.4f}",
                str(row["support"]),
            )
        return [summary, per_class]

    summary.add_row("ROC-AUC", f"{metrics['roc_auc']:.4f}")
    summary.add_row("PR-AUC (average precision)", f"{metrics['pr_auc']:.4f}")
    summary.add_row(
        "benign / malicious", f"{metrics['benign']} / {metrics['malicious']}"
    )
    thresholds = Table(title="thresholds")
    for column in ("name", "threshold", "precision", "recall", "f1", "FPR"):
        thresholds.add_column(column, justify="left" if column == "name" else "right")
    for name, row in metrics["thresholds"].items():
        thresholds.add_row(
            name,
            f"{row['threshold']:.4g}",
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            f"{row['false_positive_rate']:.4f}",
        )
    return [summary, thresholds]


@app.command()
@reports_interrupt
def train(
    data: Annotated[
        Path, typer.Option("--data", help="Prepared dataset folder (edgedp prepare).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create.")],
    epsilon: Annotated[
        str,
        typer.Option(
            "--epsilon",
            help="DP-SGD target epsilon (for example 0.5, 1 or 2), or none to "
            "train without DP.",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="ff: feed-forward classifier; ae: autoencoder trained on Benign rows."
        ),
    ] = "ff",
    delta: Annotated[
        float,
        typer.Option(parser=_delta, help="DP delta; must be below 1 / training rows."),
    ] = config.DEFAULT_DELTA,
    max_grad_norm: Annotated[
        float,
        typer.Option(help="DP clipping norm: L2 bound on each row's gradient."),
    ] = config.DEFAULT_MAX_GRAD_NORM,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Passes over the training rows. Default: "
            f"{config.CLASSIFIER_EPOCHS} for ff, {config.AUTOENCODER_EPOCHS} for ae.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rows per step, the expected Poisson batch size under DP. "
            f"Default: {DEFAULT_BATCH_SIZE['ff']}.",
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            help=f"Adam learning rate. Default: {DEFAULT_LEARNING_RATE['ff']:g}."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=config.MAX_SEED,
            help="Seed of weight init, batches and DP noise, from 0 to 2^32-1.",
        ),
    ] = config.DEFAULT_SEED,
    clipping: Annotated[
        str,
        typer.Option(
            help="How Opacus clips each row's gradient, both with the same "
            "result: ghost (ghost clipping, faster) or per_sample (per-sample "
            "gradients)."
        ),
    ] = "ghost",
    target_fpr: Annotated[
        float,
        typer.Option(
            help="Benign false-positive rate that sets the autoencoder's "
            "validation threshold."
        ),
    ] = 0.01,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help=f"Torch CPU threads. Default: {DEFAULT_THREADS}."),
    ] = None,
    secure_randomness: Annotated[
        bool,
        typer.Option(
            "--secure-randomness",
            help="Draw DP batches and noise from an unrecorded secret seed "
            "(not reproducible).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing --out folder if it is empty or an earlier "
            "bundle (with bundle.json).",
        ),
    ] = False,
) -> None:
    """Train one model, plain or with DP-SGD, and write its bundle."""
    from edgedp.atomic import OutputError
    from edgedp.bundle import BundleError
    from edgedp.dataset import DatasetError
    from edgedp.train import train_bundle

    try:
        bundle = train_bundle(
            data,
            out,
            model=model,
            epsilon=_epsilon(epsilon),
            delta=delta,
            max_grad_norm=max_grad_norm,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            overwrite=overwrite,
            learning_rate=learning_rate,
            clipping=clipping,
            target_fpr=target_fpr,
            threads=threads,
            secure_randomness=secure_randomness,
        )
    except (
        # TrainingError and PrivacyConfigError are ValueErrors too, and so
        # are the checks of the metrics and the accountant.
        ValueError,
        DatasetError,
        BundleError,
        FileExistsError,
        OutputError,
    ) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    manifest = bundle.manifest
    console.print(_ledger_table(manifest["privacy"]))
    for table in _metrics_tables(
        "validation metrics", manifest["metrics"]["validation"]["torch"]
    ):
        console.print(table)
    console.print(f"bundle written to [bold]{bundle.root}[/]", soft_wrap=True)


@app.command()
@reports_interrupt
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (edgedp train).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Prepared dataset folder. Default: the one recorded in the bundle.",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="Split to score: validation or test, or train for a bundle "
            "trained without DP."
        ),
    ] = "test",
    model_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="torch (trained weights), fp32 or int8 (LiteRT, after edgedp "
            "optimize).",
        ),
    ] = "torch",
    other_dataset: Annotated[
        bool,
        typer.Option(
            "--other-dataset",
            help="Accept a --data dataset other than the one the bundle was "
            "trained on. Its rows may include the bundle's training rows, so "
            "the scores are printed and not recorded in bundle.json.",
        ),
    ] = False,
) -> None:
    """Score a bundle on a split and record the metrics in its bundle.json."""
    from edgedp.atomic import OutputError
    from edgedp.bundle import BundleError
    from edgedp.dataset import DatasetError
    from edgedp.evaluate import evaluate_bundle

    try:
        metrics = evaluate_bundle(
            bundle,
            data,
            split=split,
            model_format=model_format,
            other_dataset=other_dataset,
        )
    except (
        ValueError,
        DatasetError,
        BundleError,
        FileNotFoundError,
        OutputError,
    ) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from error

    for table in _metrics_tables(f"{split} metrics ({model_format})", metrics):
        console.print(table)
    if other_dataset:
        console.print(
            f"not recorded in {bundle / 'bundle.json'} (--other-dataset)",
            soft_wrap=True,
        )
        return
    console.print(
        f"recorded in {bundle / 'bundle.json'} under metrics.{split}.{model_format}",
        soft_wrap=True,
    )
