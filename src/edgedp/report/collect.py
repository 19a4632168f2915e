"""Gather a run folder's numbers into the report's JSON structure.

Every number comes from the run's files: the bundles' `bundle.json`, the
prepared dataset's `dataset.json`, `bench.json` and `state.json`. The only
exception is the study's published numbers (`edgedp.report.published`).
Values over seeds are summarized as mean and sample standard deviation
(None with a single seed), with each seed's value and bundle listed.

This module uses only the standard library.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedp import config
from edgedp.bundle import MANIFEST_NAME, BundleError, load_bundle, unmatched_scores
from edgedp.experiment import MODELS
from edgedp.metrics import CLASSIFIER_SUMMARY
from edgedp.report import published
from edgedp.report.cells import cell_problems, grid_runs
from edgedp.study import layout

CLASSIFIER_METRICS = CLASSIFIER_SUMMARY
AUTOENCODER_METRICS: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "f1_study_threshold",
    "f1_validation_threshold",
    "validation_threshold",
)
MODEL_FORMATS: tuple[str, ...] = ("torch", "fp32", "int8")
# The thresholds that `edgedp train` stores in an autoencoder's bundle.json.
STUDY_THRESHOLD = "study"
VALIDATION_THRESHOLD = "validation_fpr"


class ReportError(ValueError):
    """The run folder lacks a file that the report needs."""


def read_json(path: Path) -> Any:
    """Read a JSON file, or raise ReportError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"{path} not found; run `edgedp run` on this folder first"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path} is not valid JSON: {error}") from error


def summarize(values: list[float]) -> dict[str, Any]:
    """Return mean, sample standard deviation (None below 2 values) and values."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def privacy_label(epsilon: float | None) -> str:
    """Return `no DP` or `eps 0.5`, the privacy level's name in tables."""
    return "no DP" if epsilon is None else f"eps {epsilon:g}"


def _privacy_order(epsilon: float | None) -> float:
    # No DP first, then from the weakest to the strongest privacy.
    return float("-inf") if epsilon is None else -epsilon


def grid_cells(experiment: dict[str, Any] | None) -> list[str] | None:
    """Return the bundle names of the grid recorded in `state.json`."""
    runs = grid_runs(experiment)
    return None if runs is None else [run.name for run in runs]


def read_bundles(
    run_dir: Path,
    names: list[str] | None,
    stages: Iterable[str] = (),
    experiment: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Return the manifests of the run's bundles, with `name` set to the folder.

    With `names`, only those bundles are read (the run's current grid), in
    that order; otherwise every bundle folder, sorted by name. Each bundle's
    files are checked against the sha256 in its manifest first, and its test
    scores against the files they scored (`unmatched_scores`), so a report
    never shows the numbers of a damaged bundle or of a replaced model file.

    Args:
        run_dir: the run folder.
        names: the bundle folders of the grid, or None for every folder.
        stages: the stage ids that `state.json` records as finished, such as
            `train/classifier-plain-seed0`. A missing bundle with a finished
            stage is an error, and so is a bundle without the test scores of
            a finished `evaluate` stage. A bundle whose stages have not
            finished yet is left out.
        experiment: the `experiment` of `state.json`. With it, each bundle
            of the grid is checked against its cell's training settings
            (`edgedp.report.cells`), and a bundle without the membership
            result of a finished `membership` stage is an error.

    Raises:
        ReportError: a bundle with finished stages is missing, a bundle file
            is missing, truncated or altered, a bundle does not match its
            cell or lacks its membership result, a test score is not of the
            bundle's current model file, or a manifest is not valid JSON.
    """
    folder = run_dir / layout.BUNDLES
    if names is None:
        paths = sorted(p for p in folder.glob("*") if (p / MANIFEST_NAME).is_file())
    else:
        paths = [folder / name for name in names]
    finished = list(stages)
    rerun = (
        f"Rerun the `edgedp run` command of {run_dir} (same options, same "
        "--out): it redoes the stages whose outputs are damaged, missing or "
        "out of date and writes the report again"
    )
    cells = {run.name: run for run in grid_runs(experiment) or []}
    missing = []
    mismatches = []
    problems = []
    manifests = []
    for path in paths:
        if not (path / MANIFEST_NAME).is_file():
            done = [s.split("/")[0] for s in finished if s.endswith(f"/{path.name}")]
            if done:
                stages_done = ", ".join(done)
                missing.append(f"{path} (stages recorded as done: {stages_done})")
            continue
        manifest = read_json(path / MANIFEST_NAME)
        try:
            load_bundle(path, verify=True)
        except BundleError as error:
            raise ReportError(f"{error}. {rerun}") from error
        manifest["name"] = path.name
        manifests.append(manifest)
        if experiment is not None and path.name in cells:
            cell = cells[path.name]
            mismatches += cell_problems(manifest, path, cell, experiment, finished)
        evaluated = f"evaluate/{path.name}" in finished
        problems += _score_problems(manifest, path, evaluated)

    if missing:
        raise ReportError(
            f"bundles of the grid in {run_dir / layout.STATE} are missing: "
            f"{'; '.join(missing)}. {rerun}"
        )
    if mismatches:
        raise ReportError(
            "the report cannot show these bundles under their grid cells: "
            f"{'; '.join(mismatches)}. Rerun the `edgedp run` command of "
            f"{run_dir} (same options, same --out): it trains, scores and "
            "audits again a bundle that it did not train, and adds a missing "
            "membership result"
        )
    if problems:
        raise ReportError(
            "the report cannot show these test scores, because they are not "
            f"known to be of the bundles' current model files: "
            f"{'; '.join(problems)}. {rerun}, or "
            "score each listed format again with `edgedp evaluate BUNDLE "
            "--format FORMAT`"
        )
    return manifests


def _score_problems(manifest: dict[str, Any], path: Path, evaluated: bool) -> list[str]:
    """List the test scores the report must not show, and the missing ones.

    `evaluated` is true when `state.json` records the bundle's evaluate
    stage as finished, which scored every format on the test split.
    """
    scores = (manifest.get("metrics") or {}).get("test") or {}
    reasons = dict(unmatched_scores(manifest, "test"))
    if evaluated:
        for model_format in MODEL_FORMATS:
            if model_format not in scores:
                reasons[model_format] = (
                    f"there are no scores, though {layout.STATE} records the "
                    "evaluate stage as done (`edgedp optimize` drops the scores "
                    "of the files it replaces)"
                )
    formats_by_reason: dict[str, list[str]] = {}
    for model_format, reason in reasons.items():
        formats_by_reason.setdefault(reason, []).append(model_format)
    return [
        f"{path} ({', '.join(formats)}): {reason}"
        for reason, formats in formats_by_reason.items()
    ]


def _epsilon(manifest: dict[str, Any]) -> float | None:
    return manifest["training"]["epsilon"]


def _group(
    manifests: Iterable[dict[str, Any]], kind: str
) -> dict[float | None, list[dict[str, Any]]]:
    groups: dict[float | None, list[dict[str, Any]]] = {}
    for manifest in manifests:
        if manifest["model"]["kind"] == kind:
            groups.setdefault(_epsilon(manifest), []).append(manifest)
    return dict(sorted(groups.items(), key=lambda item: _privacy_order(item[0])))


def _metric_rows(
    manifests: list[dict[str, Any]],
    kind: str,
    metrics: tuple[str, ...],
    read: Callable[[dict[str, Any], str], float | None],
) -> list[dict[str, Any]]:
    """Summarize each metric over seeds, one row per privacy level and format."""
    rows = []
    for epsilon, group in _group(manifests, kind).items():
        for model_format in MODEL_FORMATS:
            scored = [
                (m, m.get("metrics", {}).get("test", {}).get(model_format))
                for m in group
            ]
            scored = [(m, s) for m, s in scored if s is not None]
            if not scored:
                continue
            row: dict[str, Any] = {
                "privacy": privacy_label(epsilon),
                "epsilon": epsilon,
                "format": model_format,
                "bundles": [m["name"] for m, _ in scored],
                "seeds": [m["training"]["seed"] for m, _ in scored],
                "metrics": {},
            }
            for metric in metrics:
                values = [read(s, metric) for _, s in scored]
                if all(value is not None for value in values):
                    row["metrics"][metric] = summarize(values)
            rows.append(row)
    return rows


def _classifier_value(scores: dict[str, Any], metric: str) -> float | None:
    return scores.get(metric)


def _autoencoder_value(scores: dict[str, Any], metric: str) -> float | None:
    thresholds = scores.get("thresholds", {})
    if metric == "f1_study_threshold":
        return thresholds.get(STUDY_THRESHOLD, {}).get("f1")
    if metric == "f1_validation_threshold":
        return thresholds.get(VALIDATION_THRESHOLD, {}).get("f1")
    if metric == "validation_threshold":
        return thresholds.get(VALIDATION_THRESHOLD, {}).get("threshold")
    return scores.get(metric)


def collect_data(dataset: dict[str, Any]) -> dict[str, Any]:
    """Build the data section: inputs, rows, classes per split, what was skipped.

    `rejected` lists the files that prepare found in a folder but could not
    read, each as `path` and `reason`. `skipped_folders` lists the folders
    that the search did not enter because they are edgedp outputs, each as
    `path`, `marker` and `kind`.
    """
    inputs = []
    for entry in dataset.get("inputs", []):
        skipped = entry.get("rows_skipped") or {}
        inputs.append(
            {
                "file": Path(entry["path"]).name,
                "path": entry["path"],
                "format": entry.get("format"),
                "rows_read": entry.get("rows_read"),
                "rows_skipped": skipped.get("total", 0),
                "skip_reasons": skipped.get("reasons", {}),
                "skip_examples": skipped.get("examples", []),
                "duplicates_dropped": entry.get("duplicates_dropped", 0),
                "labels": entry.get("labels", {}),
                "detailed_labels": entry.get("detailed_labels", {}),
            }
        )
    return {
        "feature_set": dataset.get("feature_set"),
        "features": len(dataset.get("feature_names", [])),
        "encoder_version": dataset.get("encoder_version"),
        "classes": dataset.get("classes", []),
        "split": dataset.get("split"),
        "max_rows_per_file": dataset.get("max_rows_per_file"),
        "max_rows_per_class": dataset.get("max_rows_per_class"),
        "over_class_cap": (dataset.get("rows") or {}).get("over_class_cap", 0),
        "inputs": inputs,
        "rejected": [
            {"path": entry.get("path"), "reason": entry.get("reason")}
            for entry in dataset.get("rejected", [])
        ],
        "skipped_folders": [
            {
                "path": entry.get("path"),
                "marker": entry.get("marker"),
                "kind": entry.get("kind"),
            }
            for entry in dataset.get("skipped_folders", [])
        ],
        "splits": dataset.get("splits", {}),
        "excluded_labels": dataset.get("excluded", {}),
        "dropped_classes": dataset.get("dropped_classes", {}),
        "duplicates_dropped": dataset.get("duplicates_dropped", 0),
    }


def collect_efficiency(
    bench: dict[str, Any] | None, manifests: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Build the efficiency section: time, memory and size per model and format."""
    if bench is None:
        return None
    rows = []
    flows = bench.get("settings", {}).get("flows")
    for measured in bench["bundles"]:
        for variant, values in measured["variants"].items():
            rows.append(
                {
                    "model": measured["kind"],
                    "bundle": measured.get("cell", Path(measured["bundle"]).name),
                    "format": variant,
                    "flows": flows,
                    "file_bytes": values.get("file_bytes"),
                    "single_seconds": _median(values.get("single_seconds")),
                    "batch_seconds": _median(values.get("batch_seconds")),
                    "single_peak_rss_bytes": _median(
                        values.get("single_peak_rss_bytes")
                    ),
                    "peak_rss_bytes": _median(values.get("peak_rss_bytes")),
                    "single_seconds_spread": values.get("single_seconds"),
                    "batch_seconds_spread": values.get("batch_seconds"),
                }
            )
    machine = dict(bench.get("machine", {}))
    if manifests:
        versions = manifests[0].get("training", {}).get("versions", {})
        libraries = dict(machine.get("libraries", {}))
        for name in ("opacus", "scikit-learn"):
            if name in versions:
                libraries[name] = versions[name]
        machine["libraries"] = libraries
    return {"machine": machine, "settings": bench.get("settings", {}), "rows": rows}


def _median(spread: dict[str, Any] | None) -> float | None:
    return None if spread is None else spread["median"]


LEDGER_KEYS: tuple[str, ...] = (
    "epsilon",
    "target_epsilon",
    "epsilon_rdp",
    "delta",
    "noise_multiplier",
    "sample_rate",
    "expected_batch_size",
    "steps",
    "epochs",
    "max_grad_norm",
    "clipping",
    "accountant",
    "sampling",
    "population",
    "rows",
)


def collect_privacy(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build the privacy ledger of every bundle, with the int8 calibration source.

    `private` is False for a bundle trained without DP. Its
    `int8_training_rows_covered` is None, because there is no guarantee to
    cover. `int8_exposed_flows` names the split whose flows the int8 scales
    reveal outside DP (None for synthetic calibration), and
    `int8_calibration_fallback_from` the source that `auto` gave up.
    """
    rows = []
    for manifest in manifests:
        ledger = manifest.get("privacy", {})
        calibration = _calibration_entry(ledger.get("calibration") or {})
        private = ledger.get("private", _epsilon(manifest) is not None)
        rows.append(
            {
                "bundle": manifest["name"],
                "model": manifest["model"]["kind"],
                "seed": manifest["training"]["seed"],
                "privacy": privacy_label(_epsilon(manifest)),
                "private": private,
                **{key: ledger.get(key) for key in LEDGER_KEYS},
                "int8_calibration": calibration.get("source"),
                "int8_calibration_flows": calibration.get("flows"),
                "int8_calibration_fallback_from": calibration.get("fallback_from"),
                "int8_training_rows_covered": (
                    calibration.get("training_rows_covered") if private else None
                ),
                "int8_exposed_flows": calibration.get("exposed_flows"),
            }
        )
    return rows


# (training_rows_covered, exposed_flows) of each calibration source, as in
# `edgedp.export.CALIBRATION_SOURCES`, for the ledgers that `optimize`
# wrote before it recorded the two fields.
_CALIBRATION_COVERAGE = {
    "synthetic": (True, None),
    "validation": (True, "validation"),
    "train": (False, "train"),
}


def _calibration_entry(calibration: dict[str, Any]) -> dict[str, Any]:
    """Return the ledger's `calibration` entry with both coverage fields."""
    if "training_rows_covered" in calibration:
        return calibration
    covered, exposed = _CALIBRATION_COVERAGE.get(
        calibration.get("source"), (None, None)
    )
    return {**calibration, "training_rows_covered": covered, "exposed_flows": exposed}


MEMBERSHIP_METRICS: tuple[str, ...] = (
    "members",
    "roc_auc",
    "advantage",
    "tpr_at_fpr_0.01",
    "tpr_at_fpr_0.001",
    "bound_advantage",
    "bound_roc_auc",
    "duplicate_fraction",
    "roc_auc_unique_rows",
)


def _membership_value(result: dict[str, Any], metric: str) -> float | None:
    """Read one metric of a bundle's `membership` entry (`edgedp audit`).

    Returns None for a metric the entry lacks, such as a TPR that the sample
    was too small for.
    """
    if metric.startswith("tpr_at_fpr_"):
        return result.get("tpr_at_fpr", {}).get(metric.removeprefix("tpr_at_fpr_"))
    if metric.startswith("bound_"):
        return result.get("bound", {}).get(metric.removeprefix("bound_"))
    if metric == "duplicate_fraction":
        return result.get("duplicates", {}).get("fraction")
    if metric == "roc_auc_unique_rows":
        return result.get("unique_rows", {}).get("roc_auc")
    return result.get(metric)


def collect_membership(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summarize the membership inference results over seeds.

    One row per model and privacy level, from the bundles that have a
    `membership` entry. A metric is summarized only when every seed has a
    value: a bundle trained without DP has no bound, and a TPR at an FPR is
    None when the sample had too few non-members for it.
    """
    rows = []
    for kind in MODELS:
        for epsilon, group in _group(manifests, kind).items():
            audited = [m for m in group if m.get("membership")]
            if not audited:
                continue
            results = [m["membership"] for m in audited]
            row: dict[str, Any] = {
                "model": kind,
                "privacy": privacy_label(epsilon),
                "epsilon": epsilon,
                "bundles": [m["name"] for m in audited],
                "seeds": [m["training"]["seed"] for m in audited],
                "attack": results[0]["attack"],
                "score": results[0]["score"],
                "unit": audited[0].get("privacy", {}).get("unit"),
                "min_non_members_for_tpr": results[0]["min_non_members_for_tpr"],
                "metrics": {},
            }
            for metric in MEMBERSHIP_METRICS:
                values = [_membership_value(result, metric) for result in results]
                if all(value is not None for value in values):
                    row["metrics"][metric] = summarize(values)
            rows.append(row)
    return rows


def collect_run(state: dict[str, Any] | None) -> dict[str, Any]:
    """Build the run section: invocations and the seconds each stage took."""
    if not state:
        return {}
    stage_seconds: dict[str, float] = {}
    for stage_id, record in state.get("stages", {}).items():
        if "seconds" in record:
            stage = stage_id.split("/")[0]
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + record["seconds"]
    return {
        "invocations": state.get("invocations", []),
        "stage_seconds": stage_seconds,
        "experiment": state.get("experiment"),
    }


@dataclass(frozen=True)
class RunFiles:
    """The files of a run folder that the report reads."""

    folder: Path
    dataset: dict[str, Any]
    state: dict[str, Any] | None
    bench: dict[str, Any] | None
    manifests: list[dict[str, Any]]
    """`bundle.json` of each bundle of the grid, with `name` set."""


def read_run(run_dir: str | Path) -> RunFiles:
    """Read the files of a run folder.

    Raises:
        ReportError: `dataset/dataset.json` is missing or a file is not JSON.
    """
    run_dir = Path(run_dir)
    dataset = read_json(run_dir / layout.DATASET / "dataset.json")
    state_path = run_dir / layout.STATE
    state = read_json(state_path) if state_path.is_file() else None
    bench_path = run_dir / layout.BENCH
    bench = read_json(bench_path) if bench_path.is_file() else None
    manifests = read_bundles(
        run_dir,
        grid_cells((state or {}).get("experiment")),
        (state or {}).get("stages", {}),
        (state or {}).get("experiment"),
    )
    return RunFiles(run_dir, dataset, state, bench, manifests)


def collect(files: RunFiles) -> dict[str, Any]:
    """Return the whole report of a run folder as JSON-able values."""
    manifests = files.manifests
    return {
        "run": {"folder": str(files.folder.resolve()), **collect_run(files.state)},
        "data": collect_data(files.dataset),
        "epochs": collect_epochs(manifests),
        "classifier": _metric_rows(
            manifests, "classifier", CLASSIFIER_METRICS, _classifier_value
        ),
        "autoencoder": _metric_rows(
            manifests, "autoencoder", AUTOENCODER_METRICS, _autoencoder_value
        ),
        "efficiency": collect_efficiency(files.bench, manifests),
        "privacy": collect_privacy(manifests),
        "membership": collect_membership(manifests),
        "published": published.as_json(),
    }


def collect_epochs(manifests: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Return the epochs each model kind trained for, over all bundles."""
    epochs: dict[str, set[int]] = {}
    for manifest in manifests:
        training = manifest.get("training", {})
        if "kind" in training and "epochs" in training:
            epochs.setdefault(training["kind"], set()).add(training["epochs"])
    return {kind: sorted(values) for kind, values in sorted(epochs.items())}


# Epochs of the study's models, which edgedp's defaults follow.
_STUDY_EPOCHS = {
    "classifier": config.CLASSIFIER_EPOCHS,
    "autoencoder": config.AUTOENCODER_EPOCHS,
}


def differences_from_study(
    data: dict[str, Any], epochs: dict[str, list[int]] | None = None
) -> list[str]:
    """Return how the run differs from the study: classes, row limits, epochs."""
    differences = []
    classes = list(data.get("classes", []))
    if classes != list(config.STUDY_CLASSES):
        differences.append(
            f"{len(classes)} classes ({', '.join(classes)}) instead of the "
            f"study's {len(config.STUDY_CLASSES)}"
        )
    if data.get("max_rows_per_file"):
        differences.append(f"at most {data['max_rows_per_file']:,} rows per file")
    if data.get("max_rows_per_class"):
        differences.append(f"at most {data['max_rows_per_class']:,} flows per class")
    for kind, values in (epochs or {}).items():
        study = _STUDY_EPOCHS.get(kind)
        if study is not None and values != [study]:
            trained = ", ".join(str(value) for value in values)
            differences.append(
                f"the {kind} trained for {trained} epochs instead of the study's "
                f"{study}"
            )
    return differences
