"""`inspect_logs`: what each input file holds, without writing anything."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgedp.data import readers, sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedFile:
    """An input file that cannot be read, and why."""

    path: Path
    reason: str


def inspect_logs(
    paths: Sequence[str | Path],
    *,
    columns: Sequence[str] | None = None,
    max_rows_per_file: int | None = None,
    chunk_bytes: int = sources.DEFAULT_CHUNK_BYTES,
) -> list[readers.FileReport | RejectedFile]:
    """Read every flow log under `paths` and return one result per file.

    A file that is not a flow log (or is damaged beyond single bad lines)
    gives a `RejectedFile` instead of stopping the others. A file whose
    every data line was skipped keeps its report, and a warning gives the
    reason (`FileReport.no_rows_message`).

    Raises:
        FileNotFoundError: a path does not exist.
        FlowLogError: `paths` hold no flow log file at all.
    """
    results: list[readers.FileReport | RejectedFile] = []
    for path in sources.find_logs(paths):
        try:
            report = readers.open_report(path, columns=columns)
            for _ in readers.read_flows(
                path,
                report=report,
                max_rows=max_rows_per_file,
                chunk_bytes=chunk_bytes,
            ):
                pass
        except sources.FlowLogError as error:
            log.debug("rejected %s: %s", path, error)
            results.append(RejectedFile(path=path, reason=str(error)))
            continue
        message = report.no_rows_message()
        if message is not None:
            log.warning("%s", message)
        results.append(report)
    return results
