"""Check each bundle of a run against the grid cell it belongs to.

`edgedp train --overwrite` on a bundle folder of a run replaces the cell's
model, and leaves `state.json` recording the cell's stages as done. The
report would then show that model's numbers under the cell's name, so it
compares what `bundle.json` records with the cell's settings in the
`experiment` of `state.json`. It cannot tell two models apart that were
trained with the same settings.

This module uses only the standard library.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from edgedp.experiment import TrainingRun
from edgedp.study import layout


def grid_runs(experiment: dict[str, Any] | None) -> list[TrainingRun] | None:
    """Return the cells of the grid recorded in `state.json`, in grid order."""
    if not experiment:
        return None
    train = experiment["train"]
    return [
        TrainingRun(model, epsilon, seed)
        for model in train["models"]
        for epsilon in train["epsilons"]
        for seed in train["seeds"]
    ]


def expected_training(cell: TrainingRun, experiment: dict[str, Any]) -> dict[str, Any]:
    """Return the `training` values of `bundle.json` that the cell's run sets.

    The values come from the experiment's `[train]` table. A setting that
    the table lacks (an older `state.json`) is left out, and so are delta
    and the clipping norm of a cell without DP, which they do not affect.
    """
    train = experiment["train"]
    model = train.get(cell.model) or {}
    settings = {
        "epochs": model.get("epochs"),
        "batch_size": model.get("batch_size"),
    }
    if cell.epsilon is not None:
        settings["delta"] = train.get("delta")
        settings["max_grad_norm"] = train.get("max_grad_norm")

    # epsilon None is the cell's setting (no DP), so it is always compared.
    expected: dict[str, Any] = {
        "epsilon": cell.epsilon,
        "seed": cell.seed,
    }
    expected.update(
        (name, value) for name, value in settings.items() if value is not None
    )
    return expected


def cell_problems(
    manifest: dict[str, Any],
    path: Path,
    cell: TrainingRun,
    experiment: dict[str, Any],
    finished: Collection[str],
) -> list[str]:
    """List how a bundle differs from its grid cell, and a missing attack result.

    Args:
        manifest: the bundle's `bundle.json`.
        path: the bundle folder, for the messages.
        cell: the grid cell that the folder belongs to.
        experiment: the `experiment` of `state.json`.
        finished: the stage ids that `state.json` records as finished.
    """
    # The report groups bundles by the kind under `model`. `training` stores
    # the command's model option (`ff`, `ae`) as its own `model`.
    recorded = {
        **(manifest.get("training") or {}),
        "model": (manifest.get("model") or {}).get("kind"),
    }
    expected = {"model": cell.model, **expected_training(cell, experiment)}
    differences = [
        f"{name} {recorded.get(name)!r}, the cell's {value!r}"
        for name, value in expected.items()
        if recorded.get(name) != value
    ]
    problems = []
    if differences:
        problems.append(f"{path} was trained with {'; '.join(differences)}")
    if f"membership/{cell.name}" in finished and "membership" not in manifest:
        problems.append(
            f"{path} has no membership result, though {layout.STATE} records "
            "the membership stage as done (`edgedp train --overwrite` writes "
            "a new bundle.json without it)"
        )
    return problems
