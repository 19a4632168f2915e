"""The report's figures, drawn with matplotlib's Agg backend into PNG files.

- `reconstruction_error.png`: histograms of the autoencoders' reconstruction
  error on benign and malicious test flows, one panel per privacy level,
  against the study's fixed 0.16 threshold and the validation-chosen one.
  The study's figures 3 and 4 show the same comparison as bars.
- `privacy_utility.png`: classifier F1 (weighted) and autoencoder ROC-AUC per
  privacy level and format, mean with standard deviation over seeds and each
  seed's value.
- `confusion_matrices.png`: the classifier's confusion matrix per privacy
  level, summed over seeds and normalized per true class.

Every value is read from the bundles' `bundle.json` test metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedp import atomic
from edgedp.config import BENIGN_CLASS
from edgedp.report import published
from edgedp.report.collect import (
    VALIDATION_THRESHOLD,
    differences_from_study,
    privacy_label,
)

RECONSTRUCTION_ERROR = "reconstruction_error.png"
PRIVACY_UTILITY = "privacy_utility.png"
CONFUSION_MATRICES = "confusion_matrices.png"

# Reconstruction errors and confusion matrices are drawn for one format. The
# histograms show the trained torch model; the confusion matrices show int8,
# the format a gateway runs.
ERROR_FORMAT = "torch"
CONFUSION_FORMAT = "int8"
FORMAT_COLORS = {"torch": "tab:blue", "fp32": "tab:orange", "int8": "tab:green"}
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    with atomic.file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")


def _by_privacy(
    manifests: list[dict[str, Any]], kind: str
) -> list[tuple[float | None, list[dict[str, Any]]]]:
    groups: dict[float | None, list[dict[str, Any]]] = {}
    for manifest in manifests:
        if manifest["model"]["kind"] == kind:
            groups.setdefault(manifest["training"]["epsilon"], []).append(manifest)
    order = sorted(groups, key=lambda e: float("-inf") if e is None else -e)
    return [(epsilon, groups[epsilon]) for epsilon in order]


def draw_reconstruction_error(manifests: list[dict[str, Any]], path: Path) -> bool:
    """Draw the reconstruction-error histograms; False if no autoencoder is scored."""
    groups = []
    for epsilon, group in _by_privacy(manifests, "autoencoder"):
        scored = [
            m["metrics"]["test"][ERROR_FORMAT]
            for m in group
            if ERROR_FORMAT in m.get("metrics", {}).get("test", {})
        ]
        if scored:
            groups.append((epsilon, scored))
    if not groups:
        return False

    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(groups), figsize=(4.2 * len(groups), 3.4), sharey=True, squeeze=False
    )
    for axis, (epsilon, scored) in zip(axes[0], groups, strict=True):
        distribution = scored[0]["reconstruction_error"]
        edges = np.asarray(distribution["histogram_edges"], dtype=float)
        benign = np.zeros(len(edges) - 1)
        malicious = np.zeros(len(edges) - 1)
        for scores in scored:
            for name, entry in scores["reconstruction_error"]["per_class"].items():
                if not entry.get("count"):
                    continue
                target = benign if name == BENIGN_CLASS else malicious
                target += np.asarray(entry["histogram"], dtype=float)
        # The first bin starts at 0, which a log axis cannot show; it is drawn
        # one decade below the next edge.
        display_edges = edges.copy()
        display_edges[0] = edges[1] / 10
        for counts, label, color in (
            (benign, "benign", "tab:blue"),
            (malicious, "malicious", "tab:red"),
        ):
            if counts.sum():
                axis.stairs(
                    counts / counts.sum(),
                    display_edges,
                    fill=True,
                    alpha=0.45,
                    color=color,
                    label=f"{label} ({int(counts.sum()):,} flows)",
                )
        axis.axvline(
            published.AUTOENCODER_THRESHOLD,
            color="black",
            linestyle="-",
            label=f"study threshold {published.AUTOENCODER_THRESHOLD:g}",
        )
        chosen = [
            s["thresholds"][VALIDATION_THRESHOLD]["threshold"]
            for s in scored
            if VALIDATION_THRESHOLD in s.get("thresholds", {})
        ]
        if chosen:
            axis.axvline(
                float(np.mean(chosen)),
                color="gray",
                linestyle="--",
                label=f"validation threshold {np.mean(chosen):.3g}",
            )
        axis.set_xscale("log")
        used = np.flatnonzero(benign + malicious)
        if len(used):
            axis.set_xlim(
                display_edges[used[0]] / 2, max(display_edges[used[-1] + 1] * 2, 1.0)
            )
        axis.set_title(f"{privacy_label(epsilon)} ({seeds_text(len(scored))})")
        axis.set_xlabel("reconstruction error (MSE)")
        axis.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("fraction of test flows")
    figure.suptitle(
        f"Autoencoder reconstruction error on the test split ({ERROR_FORMAT})",
        y=1.04,
    )
    _save(figure, path)
    plt.close(figure)
    return True


def seeds_text(count: int) -> str:
    """Return "1 seed" or "N seeds"."""
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _curve(axis, rows: list[dict[str, Any]], metric: str, levels: list[str]) -> None:
    formats = [f for f in FORMAT_COLORS if any(r["format"] == f for r in rows)]
    several = any(
        len(row["metrics"][metric]["values"]) > 1
        for row in rows
        if metric in row["metrics"]
    )
    width = 0.1
    for offset, model_format in enumerate(formats):
        shift = (offset - (len(formats) - 1) / 2) * width
        xs, means, stds = [], [], []
        for row in rows:
            if row["format"] != model_format or metric not in row["metrics"]:
                continue
            summary = row["metrics"][metric]
            x = levels.index(row["privacy"]) + shift
            xs.append(x)
            means.append(summary["mean"])
            stds.append(summary["std"] or 0.0)
            axis.scatter(
                [x] * len(summary["values"]),
                summary["values"],
                s=10,
                color=FORMAT_COLORS[model_format],
                alpha=0.5,
            )
        axis.errorbar(
            xs,
            means,
            yerr=stds,
            fmt="o-",
            capsize=4,
            color=FORMAT_COLORS[model_format],
            label=f"{model_format} (mean ± std)" if several else model_format,
        )
    axis.set_xticks(range(len(levels)), levels)
    axis.set_xlabel("privacy level")
    axis.grid(alpha=0.3)


def draw_privacy_utility(report: dict[str, Any], path: Path) -> bool:
    """Draw utility per privacy level; False if nothing is scored."""
    classifier, autoencoder = report["classifier"], report["autoencoder"]
    if not classifier and not autoencoder:
        return False

    plt = _pyplot()
    panels = [(rows, name) for rows, name in ((classifier, "c"), (autoencoder, "a"))]
    panels = [(rows, name) for rows, name in panels if rows]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False
    )
    for axis, (rows, name) in zip(axes[0], panels, strict=True):
        levels = list(dict.fromkeys(row["privacy"] for row in rows))
        if name == "c":
            _curve(axis, rows, "f1_weighted", levels)
            study = {
                privacy_label(e["epsilon"]): e["f1"]
                for e in report["published"]["classifier"]
            }
            points = [(levels.index(k), v) for k, v in study.items() if k in levels]
            # The study's F1 is for its six classes with every row, so it is
            # drawn only beside a run with the same classes and no row limit.
            differences = differences_from_study(
                report.get("data", {}), report.get("epochs")
            )
            if points and not differences:
                axis.scatter(
                    *zip(*points, strict=True),
                    marker="x",
                    s=60,
                    color="black",
                    label="study F1",
                    zorder=3,
                )
            axis.set_ylabel("F1 (weighted), test split")
            axis.set_title("Classifier")
        else:
            _curve(axis, rows, "roc_auc", levels)
            axis.axhline(0.5, color="gray", linestyle=":", label="chance (0.5)")
            axis.set_ylabel("ROC-AUC, test split")
            axis.set_title("Autoencoder")
        axis.legend(fontsize=7)

    figure.suptitle("Privacy-utility trade-off", y=1.02)
    _save(figure, path)
    plt.close(figure)
    return True


def draw_confusion_matrices(manifests: list[dict[str, Any]], path: Path) -> bool:
    """Draw the classifier's confusion matrices; False if none is scored."""
    groups = []
    for epsilon, group in _by_privacy(manifests, "classifier"):
        matrices = [
            m["metrics"]["test"][CONFUSION_FORMAT]["confusion_matrix"]
            for m in group
            if CONFUSION_FORMAT in m.get("metrics", {}).get("test", {})
        ]
        if matrices:
            total = np.sum([np.asarray(m["matrix"]) for m in matrices], axis=0)
            groups.append((epsilon, matrices[0]["labels"], total, len(matrices)))
    if not groups:
        return False

    plt = _pyplot()
    size = 3.6
    figure, axes = plt.subplots(
        1, len(groups), figsize=(size * len(groups), size + 0.6), squeeze=False
    )
    for axis, (epsilon, labels, matrix, seeds) in zip(axes[0], groups, strict=True):
        support = matrix.sum(axis=1, keepdims=True)
        normalized = np.divide(
            matrix, support, out=np.zeros(matrix.shape), where=support > 0
        )
        axis.imshow(normalized, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                axis.text(
                    j,
                    i,
                    f"{normalized[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if normalized[i, j] > 0.5 else "black",
                )
        short = [label[:10] for label in labels]
        axis.set_xticks(range(len(labels)), short, rotation=60, fontsize=7)
        axis.set_yticks(range(len(labels)), short, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_title(f"{privacy_label(epsilon)} ({seeds_text(seeds)})", fontsize=9)
    axes[0][0].set_ylabel("true class")
    figure.suptitle(
        f"Classifier confusion matrices ({CONFUSION_FORMAT}, test split, "
        "fraction of each true class)"
    )
    _save(figure, path)
    plt.close(figure)
    return True


__all__ = [
    "CONFUSION_MATRICES",
    "PRIVACY_UTILITY",
    "RECONSTRUCTION_ERROR",
    "draw_confusion_matrices",
    "draw_privacy_utility",
    "draw_reconstruction_error",
]
