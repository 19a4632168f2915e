"""Names of the files and folders in a run folder (`edgedp run --out DIR`).

```
DIR/
  dataset/                       prepared dataset (dataset.json, *.parquet)
  bundles/<model>-<eps>-seed<k>/ one bundle per grid cell
  bench.json                     timing, memory and size per model format
  report.md, report.json         the report
  figures/*.png                  the report's figures
  run.log                        the log of every invocation
  state.json                     finished stages and their settings keys
  run.lock                       locked while a run uses the folder, with its PID
```

This module uses only the standard library, so the report can read a run
folder without the training stack.
"""

from __future__ import annotations

from pathlib import Path

DATASET = "dataset"
BUNDLES = "bundles"
BENCH = "bench.json"
REPORT_MARKDOWN = "report.md"
REPORT_JSON = "report.json"
FIGURES = "figures"
LOG = "run.log"
STATE = "state.json"
LOCK = "run.lock"


def bundle_folder(run_dir: str | Path, cell: str) -> Path:
    """Return the bundle folder of grid cell `cell` (`TrainingRun.name`)."""
    return Path(run_dir) / BUNDLES / cell
