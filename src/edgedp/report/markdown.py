"""Render the collected report (`edgedp.report.collect`) as Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgedp.report import published
from edgedp.report.collect import (
    CLASSIFIER_METRICS,
    differences_from_study,
    privacy_label,
)

MIB = 1 << 20
"""Memory and file sizes are shown in MiB (2^20 bytes), as `edgedp bench`
prints them: the peak resident set size comes from the kernel in KiB."""

NOT_APPLICABLE = "n/a"
EXPOSED_FLOWS = {"validation": "validation flows", "train": "training flows"}
"""Names of the splits that the int8 scales expose, as the ledger shows them."""

FORMAT_NOTES = {
    "python": "numpy only, no model: the memory floor",
    "torch": "torch eager, float32",
    "fp32": "LiteRT float32",
    "int8": "LiteRT int8, float32 input quantized per call",
    "int8-input": "LiteRT int8, input quantized once up front",
}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a Markdown table; numbers are right-aligned."""
    align = [
        "---:" if any(_is_number(row[i]) for row in rows) else "---"
        for i in range(len(header))
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def mean_std(
    summary: dict[str, Any] | None, mean_format: str = ".4f", std_format: str = ".4f"
) -> str:
    """Format a summary as `mean ± std`, or the mean alone for one seed."""
    if summary is None:
        return "–"
    text = format(summary["mean"], mean_format)
    if summary["std"] is not None:
        text += " ± " + format(summary["std"], std_format)
    return text


def _run_section(report: dict[str, Any]) -> list[str]:
    run = report["run"]
    lines = ["## Run", ""]
    invocations = run.get("invocations", [])
    if invocations:
        rows = [
            [
                item.get("started"),
                item.get("status"),
                item.get("wall_seconds"),
                item.get("command"),
            ]
            for item in invocations
        ]
        lines += [table(["started", "status", "wall s", "command"], rows), ""]
    if any(item.get("status") == "running" for item in invocations):
        lines += [
            "**An invocation is recorded as `running`.** Either it was still "
            "running when this report was written, so the cells and stages it "
            "had not finished are missing below, or it was killed before it "
            "could record its end, which the next `edgedp run` on this folder "
            "marks as interrupted.",
            "",
        ]
    seconds = run.get("stage_seconds", {})
    if seconds:
        lines += [
            "Seconds per stage, summed over the grid cells that ran in parallel "
            "worker processes (so the sum can exceed the wall time):",
            "",
            table(["stage", "seconds"], [[k, v] for k, v in seconds.items()]),
            "",
        ]
    return lines


def _data_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## 1. Data",
        "",
        f"Feature set `{data['feature_set']}` ({data['features']} features, "
        f"encoder {data['encoder_version']}); split "
        f"{_split_text(data.get('split'))}"
        + (
            f"; at most {data['max_rows_per_file']:,} rows read per file"
            if data.get("max_rows_per_file")
            else ""
        )
        + (
            f"; at most {data['max_rows_per_class']:,} flows kept per class"
            if data.get("max_rows_per_class")
            else ""
        )
        + ".",
        "",
    ]
    rows = [
        [
            entry["file"],
            entry["format"],
            entry["rows_read"],
            entry["rows_skipped"],
            ", ".join(f"{k} {v}" for k, v in entry["skip_reasons"].items()) or None,
            entry["duplicates_dropped"],
        ]
        for entry in data["inputs"]
    ]
    lines += [
        table(
            [
                "file",
                "format",
                "rows read",
                "lines skipped",
                "why skipped",
                "duplicates dropped",
            ],
            rows,
        ),
        "",
    ]
    rejected = data.get("rejected", [])
    if rejected:
        lines += [
            f"Files read: {len(data['inputs'])}. Files found in the input "
            f"folders but set aside because they could not be read as flow "
            f"logs: {len(rejected)}.",
            "",
        ]
        for entry in rejected:
            reason = " ".join(str(entry.get("reason") or "no reason recorded").split())
            lines.append(f"- `{entry.get('path')}`: {reason}")
        lines.append("")
    skipped_folders = data.get("skipped_folders", [])
    if skipped_folders:
        lines += [
            "Folders in the inputs that were not searched, because they "
            f"contain edgedp output: {len(skipped_folders)}.",
            "",
        ]
        for entry in skipped_folders:
            lines.append(
                f"- `{entry.get('path')}`: {entry.get('kind')} "
                f"(`{entry.get('marker')}`)"
            )
        lines.append("")

    splits = data["splits"]
    names = list(splits)
    rows = [
        [name, *(splits[s]["classes"].get(name, 0) for s in names)]
        for name in data["classes"]
    ]
    rows.append(["all", *(splits[s]["rows"] for s in names)])
    lines += [
        "Flows per class and split, after repeated flows are dropped:",
        "",
        table(["class", *names], rows),
        "",
    ]
    excluded = data["excluded_labels"]
    lines.append(
        f"Repeated flows dropped (same uid and ts): {data['duplicates_dropped']:,}."
    )
    if excluded:
        lines.append(
            "Flows of labels outside the classes, excluded: "
            + ", ".join(f"{k} {v:,}" for k, v in excluded.items())
            + "."
        )
    if data.get("max_rows_per_class"):
        lines.append(
            f"Flows left out by the class cap (`[prepare] max_rows_per_class` "
            f"{data['max_rows_per_class']:,}, a seeded random choice): "
            f"{data['over_class_cap']:,}."
        )
    if data["dropped_classes"]:
        lines.append(
            "Classes dropped because a split had none of their flows: "
            + ", ".join(data["dropped_classes"])
            + "."
        )
        if data.get("max_rows_per_file"):
            lines.append(
                f"Only the first {data['max_rows_per_file']:,} rows of each file "
                "were read (`[prepare] max_rows_per_file`), so a class whose "
                "flows come later in its files can be missing. Unset it to "
                "read every row, or use `max_rows_per_class` for a smaller "
                "sample that keeps every class."
            )
    return [*lines, ""]


def _split_text(split: dict[str, Any] | None) -> str:
    if not split:
        return "unknown"
    fractions = ", ".join(
        f"{name} {fraction:.0%}" for name, fraction in split["fractions"].items()
    )
    return f"`{split['method']}` ({fractions}, seed {split['seed']})"


def _classifier_section(
    rows: list[dict[str, Any]],
    data: dict[str, Any],
    epochs: dict[str, list[int]] | None = None,
) -> list[str]:
    lines = [
        "## 2. Classifier",
        "",
        "Test split; mean ± standard deviation over seeds. Study rows are the "
        f"published numbers ({published.SOURCE}), which do not say how their "
        "precision, recall and F1 are averaged.",
        "",
    ]
    differences = differences_from_study(data, epochs)
    if differences:
        lines += [
            "**This run differs from the study's setup** ("
            + "; ".join(differences)
            + "), so its scores and the study rows measure different tasks "
            "and are not comparable.",
            "",
        ]
    if not rows:
        return [*lines, "No classifier was scored.", ""]
    study = {privacy_label(e): scores for e, scores in published.CLASSIFIER.items()}
    header = [
        "privacy",
        "format",
        "seeds",
        "accuracy",
        "precision (weighted)",
        "recall (weighted)",
        "F1 (weighted)",
        "precision (macro)",
        "recall (macro)",
        "F1 (macro)",
    ]
    body = []
    shown_study = set()
    for row in rows:
        metrics = row["metrics"]
        body.append(
            [
                row["privacy"],
                row["format"],
                len(row["seeds"]),
                *(mean_std(metrics.get(name)) for name in CLASSIFIER_METRICS),
            ]
        )
        level = row["privacy"]
        last_of_level = row is rows[-1] or rows[rows.index(row) + 1]["privacy"] != level
        if last_of_level and level in study and level not in shown_study:
            shown_study.add(level)
            scores = study[level]
            body.append(
                [
                    level,
                    "study (Keras)",
                    1,
                    f"{scores['accuracy']:.2f}",
                    f"{scores['precision']:.2f}",
                    f"{scores['recall']:.2f}",
                    f"{scores['f1']:.2f}",
                    None,
                    None,
                    None,
                ]
            )
    return [*lines, table(header, body), ""]


def _autoencoder_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## 3. Autoencoder",
        "",
        "Benign against malicious test flows (malicious is positive); a flow is "
        "flagged when its reconstruction error exceeds the threshold. "
        f"F1 at the study's fixed {published.AUTOENCODER_THRESHOLD:g} and at "
        "the threshold chosen on benign validation flows (stored in each "
        f"bundle). The study: {published.AUTOENCODER_FINDING}.",
        "",
    ]
    if not rows:
        return [*lines, "No autoencoder was scored.", ""]
    header = [
        "privacy",
        "format",
        "seeds",
        "ROC-AUC",
        "PR-AUC",
        f"F1 at {published.AUTOENCODER_THRESHOLD:g}",
        "F1 at validation threshold",
        "validation threshold",
    ]
    body = [
        [
            row["privacy"],
            row["format"],
            len(row["seeds"]),
            *(
                mean_std(row["metrics"].get(name))
                for name in (
                    "roc_auc",
                    "pr_auc",
                    "f1_study_threshold",
                    "f1_validation_threshold",
                )
            ),
            mean_std(row["metrics"].get("validation_threshold"), ".3g", ".2g"),
        ]
        for row in rows
    ]
    return [*lines, table(header, body), ""]


def _efficiency_section(efficiency: dict[str, Any] | None) -> list[str]:
    lines = ["## 4. Efficiency", ""]
    if efficiency is None:
        return [*lines, "Not measured (bench.json is missing).", ""]
    settings = efficiency["settings"]
    machine = efficiency["machine"]
    flows = settings.get("flows")
    libraries = ", ".join(
        f"{name} {version}"
        for name, version in machine.get("libraries", {}).items()
        if version
    )
    lines += [
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"Python {machine.get('python')}, {machine.get('platform')}; {libraries}.",
        "",
        f"{flows:,} test flows per measurement, each variant in fresh processes, "
        f"median of {settings.get('repeat')} repeats, {settings.get('threads')} "
        "thread. One bundle per model is timed "
        f"({', '.join(settings.get('cells', []))}), because every privacy level "
        "and seed of a model has the same architecture. Memory is the peak "
        "resident set size of the whole process. Memory and file sizes are in "
        "MiB (2^20 bytes). The study's numbers are for "
        f"{published.PI_FLOWS:,} flows on a {published.PI_DEVICE}, in MB as "
        "published; the study does not say whether its MB is 10^6 or 2^20 "
        "bytes, which differ by about 5%.",
        "",
    ]
    study_seconds = f"study s ({published.PI_FLOWS:,} flows)"
    if flows != published.PI_FLOWS:
        lines += [
            f"**This run timed {flows:,} flows, not the study's "
            f"{published.PI_FLOWS:,}**, so its seconds and the study's seconds "
            "cover different amounts of work. Neither is scaled.",
            "",
        ]
        study_seconds = f"study s ({published.PI_FLOWS:,} flows, this run {flows:,})"

    header = [
        "model",
        "format",
        "flows",
        "file MiB",
        "one at a time, s",
        "batched, s",
        "peak MiB (one at a time)",
        "peak MiB (with batch)",
        study_seconds,
        "study MB",
        "study file MB",
    ]
    body = []
    for row in efficiency["rows"]:
        study = published.EFFICIENCY.get(row["model"], {}).get(row["format"], {})
        body.append(
            [
                row["model"],
                row["format"],
                row.get("flows", flows),
                _mebibytes(row["file_bytes"], 4),
                _fixed(row["single_seconds"], 3),
                _fixed(row["batch_seconds"], 4),
                _mebibytes(row["single_peak_rss_bytes"], 0),
                _mebibytes(row["peak_rss_bytes"], 0),
                study.get("seconds"),
                study.get("memory_mb"),
                study.get("size_mb"),
            ]
        )

    notes = [f"- `{name}`: {text}" for name, text in FORMAT_NOTES.items()]
    return [*lines, table(header, body), "", "Formats:", "", *notes, ""]


def _mebibytes(value: int | None, digits: int) -> str | None:
    return None if value is None else f"{value / MIB:.{digits}f}"


def _fixed(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _privacy_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## 5. Privacy ledger",
        "",
        "As each bundle's training recorded it. epsilon is the achieved value "
        "from the accountant over the steps actually taken; ∞ means no DP. "
        "sigma is the noise multiplier, q the Poisson sampling rate, C the "
        "clipping norm. For a bundle trained without DP, n/a marks the "
        "settings that only DP training has, and `no DP` the coverage, "
        "because there is no guarantee.",
        "",
        "The int8 columns name the flows that set the int8 activation ranges "
        "(and the source that `auto` fell back from, when synthetic flows "
        "cost too much accuracy), whether the bundle's epsilon still covers "
        "the training rows in the int8 model, and which flows the int8 scales "
        "expose outside DP. Calibration on validation flows keeps the training "
        "rows covered, because the int8 model is then post-processing of the "
        "DP weights with flows that are not training rows. The scales reveal "
        "the min and max of those validation flows, which DP does not "
        "protect. Calibration on training flows leaves the int8 model outside "
        "the guarantee.",
        "",
        "Each epsilon covers its own bundle only. Bundles trained on the same "
        "training split compose: releasing the classifier and the autoencoder "
        "at epsilon 1 each costs up to epsilon 2 together, and every further "
        "seed or privacy level released adds up to its epsilon as well.",
        "",
    ]
    header = [
        "bundle",
        "epsilon",
        "target",
        "delta",
        "sigma",
        "q",
        "steps",
        "C",
        "clipping",
        "accountant",
        "sampling",
        "int8 calibration",
        "int8: training rows covered by DP",
        "int8: flows exposed outside DP",
    ]
    body = [_ledger_row(row) for row in rows]
    return [*lines, table(header, body), ""]


def _ledger_row(row: dict[str, Any]) -> list[Any]:
    private = row.get("private", True)

    def dp_only(value: Any) -> Any:
        return value if private else NOT_APPLICABLE

    calibration = None
    if row["int8_calibration"]:
        calibration = f"{row['int8_calibration']} ({row['int8_calibration_flows']:,})"
        if row.get("int8_calibration_fallback_from"):
            calibration += f", fell back from {row['int8_calibration_fallback_from']}"
    exposed = None
    if row["int8_calibration"]:
        split = row.get("int8_exposed_flows")
        exposed = EXPOSED_FLOWS.get(split, split) if split else "none"
    return [
        row["bundle"],
        row["epsilon"],
        dp_only(row["target_epsilon"]),
        dp_only(row["delta"]),
        dp_only(row["noise_multiplier"]),
        dp_only(row["sample_rate"]),
        row["steps"],
        dp_only(row["max_grad_norm"]),
        dp_only(row.get("clipping")),
        dp_only(row["accountant"]),
        row["sampling"],
        calibration,
        row["int8_training_rows_covered"] if private else "no DP",
        exposed if private else "no DP",
    ]


def _membership_section(rows: list[dict[str, Any]]) -> list[str]:
    units = sorted({row["unit"] for row in rows if row.get("unit")})
    unit = " and ".join(units) or "one flow record"
    lines = [
        "## 6. Membership inference",
        "",
        "Loss-threshold attack (Yeom et al. 2018, `edgedp audit`) on each "
        "bundle's torch model. A flow's score is minus its loss: the "
        "classifier's cross-entropy of the true class, the autoencoder's "
        "reconstruction error. Members are training rows the model learned "
        "from. Non-members are test rows, as many as the members in each class "
        "(Benign only for the autoencoder), so `members per side` is the size "
        "of each side. Mean ± standard deviation over seeds.",
        "",
        "Chance is a ROC-AUC of 0.5 and an advantage, max(TPR - FPR), of 0. On "
        "a finite sample even a chance attack has an advantage above 0, "
        "because the best threshold is picked on the same sample. These "
        "numbers are a lower bound on leakage for this one attack: a ROC-AUC "
        "near 0.5 does not show that a model is private, because a stronger "
        "attack may do better.",
        "",
        "The bound columns are the most that any attack can reach under the "
        "bundle's achieved (epsilon, delta): advantage (e^eps - 1 + 2 delta) "
        "/ (e^eps + 1), and the ROC-AUC under the same limit on TPR at each "
        "FPR. A bundle trained without DP has no bound. The bound protects "
        f"{unit}, the privacy ledger's unit, and not a device or a capture "
        "that contributes many flows.",
        "",
        "A non-member whose encoded features equal a training row's gets the "
        "same model output as that row, so no attack on the outputs can tell "
        "it from a member of its class. The second last column gives the "
        "share of such non-members. The last column is the ROC-AUC on the "
        "flows of both sides whose encoded features occur in only one "
        "training or test row: the split alone chose their side, so chance is "
        "0.5 for them too, and no copy on the other side hides a member.",
        "",
    ]
    if not rows:
        return [*lines, "No bundle was audited.", ""]

    # A TPR column is shown when at least one row has that TPR; each level is
    # missing where the sample had too few non-members for it.
    levels = [
        (level, label)
        for level, label in (("0.01", "1%"), ("0.001", "0.1%"))
        if any(f"tpr_at_fpr_{level}" in row["metrics"] for row in rows)
    ]
    header = [
        "model",
        "privacy",
        "seeds",
        "members per side",
        "ROC-AUC",
        "advantage",
        "advantage bound",
        "ROC-AUC bound",
        *(f"TPR at {label} FPR" for _, label in levels),
        "non-members equal to a training row",
        "ROC-AUC on unique flows",
    ]
    body = []
    for row in rows:
        metrics = row["metrics"]
        body.append(
            [
                row["model"],
                row["privacy"],
                len(row["seeds"]),
                mean_std(metrics.get("members"), ",.0f", ",.0f"),
                mean_std(metrics.get("roc_auc")),
                mean_std(metrics.get("advantage")),
                _bound_cell(metrics.get("bound_advantage"), row["epsilon"]),
                _bound_cell(metrics.get("bound_roc_auc"), row["epsilon"]),
                *(mean_std(metrics.get(f"tpr_at_fpr_{level}")) for level, _ in levels),
                mean_std(metrics.get("duplicate_fraction"), ".1%", ".1%"),
                mean_std(metrics.get("roc_auc_unique_rows")),
            ]
        )
    lines += [table(header, body), ""]

    needed = rows[0]["min_non_members_for_tpr"]
    for level, label in (("0.01", "1%"), ("0.001", "0.1%")):
        missing = [row for row in rows if f"tpr_at_fpr_{level}" not in row["metrics"]]
        if not missing:
            continue
        above = round(needed[level] * float(level))
        reason = (
            f"needs at least {needed[level]:,} non-members, so that {above} of "
            "them score above the threshold"
        )
        if len(missing) == len(rows):
            lines.append(f"TPR at {label} FPR is not reported: it {reason}.")
        else:
            lines.append(
                f"– under TPR at {label} FPR: too few non-members; it {reason}."
            )
        lines.append("")
    return lines


def _bound_cell(summary: dict[str, Any] | None, epsilon: float | None) -> str:
    if summary is None:
        return "no bound" if epsilon is None else "–"
    return mean_std(summary)


def _figures_section(figures: list[str]) -> list[str]:
    lines = ["## 7. Figures", ""]
    captions = {
        "reconstruction_error.png": "Reconstruction error of benign and "
        "malicious test flows",
        "privacy_utility.png": "Privacy-utility trade-off",
        "confusion_matrices.png": "Classifier confusion matrices",
    }
    for name in figures:
        caption = captions.get(name.rsplit("/", 1)[-1], name)
        lines += [f"![{caption}]({name})", ""]
    return lines


def render(report: dict[str, Any]) -> str:
    """Return the whole report as Markdown."""
    lines = [
        "# edgedp study report",
        "",
        f"Run folder: `{report['run']['folder']}`. Every number below comes "
        "from this folder's `bundles/*/bundle.json`, `dataset/dataset.json` "
        "and `bench.json`, except the study's published numbers.",
        "",
    ]
    lines += _run_section(report)
    lines += _data_section(report["data"])
    lines += _classifier_section(
        report["classifier"], report["data"], report.get("epochs")
    )
    lines += _autoencoder_section(report["autoencoder"])
    lines += _efficiency_section(report["efficiency"])
    lines += _privacy_section(report["privacy"])
    lines += _membership_section(report.get("membership", []))
    lines += _figures_section(report.get("figures", []))
    return "\n".join(lines).rstrip() + "\n"
