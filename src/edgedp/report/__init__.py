"""The study report: `report.md`, `report.json` and `figures/*.png` of a run.

`write_report(RUN_DIR)` reads only the run folder's files (see
`edgedp.report.collect`), so `edgedp report RUN_DIR` regenerates the same
report at any time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgedp import atomic
from edgedp.report.collect import ReportError, collect, read_run
from edgedp.study import layout

logger = logging.getLogger(__name__)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write the report of a run folder and return its paths.

    Returns:
        `markdown` and `json` paths, and `figures`, the folder of the PNGs.

    Raises:
        ReportError: the run folder has no prepared dataset yet, one of
            its JSON files cannot be read, or a bundle's files do not match
            the sha256 in its `bundle.json`.
    """
    from edgedp.report import figures, markdown

    run_dir = Path(run_dir)
    files = read_run(run_dir)
    report = collect(files)

    folder = run_dir / layout.FIGURES
    folder.mkdir(exist_ok=True)
    drawn = []
    for name, draw, source in (
        (figures.RECONSTRUCTION_ERROR, figures.draw_reconstruction_error, None),
        (figures.PRIVACY_UTILITY, figures.draw_privacy_utility, report),
        (figures.CONFUSION_MATRICES, figures.draw_confusion_matrices, None),
    ):
        if draw(files.manifests if source is None else source, folder / name):
            drawn.append(f"{layout.FIGURES}/{name}")
    report["figures"] = drawn

    paths = {
        "markdown": run_dir / layout.REPORT_MARKDOWN,
        "json": run_dir / layout.REPORT_JSON,
        "figures": folder,
    }
    atomic.write_json(paths["json"], report)
    atomic.write_text(paths["markdown"], markdown.render(report))
    logger.info(
        "wrote %s, %s and %d figures", paths["markdown"], paths["json"], len(drawn)
    )
    return paths


__all__ = ["ReportError", "write_report"]
