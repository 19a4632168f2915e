"""`state.json`: which stages of a run have finished, and with which settings.

Each finished stage is recorded under a stage id (`prepare`,
`train/classifier-plain-seed0`, `bench`, ...) with a key: a hash of the
stage's settings fingerprint (`Experiment.fingerprint`) and of the identity
of its inputs, such as the prepared dataset's manifest or a bundle's
weights. A rerun skips a stage whose recorded key equals the key it would
run with and whose outputs are still in place. Only the main process of
`edgedp run` writes the file, always atomically, after the stage's own
outputs are complete; so a run stopped at any moment records only stages
that are really done.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedp import atomic
from edgedp.study.layout import STATE

STATE_FORMAT = 1


class StateError(ValueError):
    """`state.json` exists but cannot be read."""


def settings_key(*parts: Any) -> str:
    """Return a 16-hex-digit sha256 of JSON-able `parts`, stable across machines."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RunState:
    """The parsed `state.json` of one run folder."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    invocations: list[dict[str, Any]] = field(default_factory=list)
    experiment: dict[str, Any] | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> RunState:
        """Read `run_dir/state.json`, or return an empty state if it is absent.

        Raises:
            StateError: the file is not JSON of this format.
        """
        path = Path(run_dir) / STATE
        if not path.is_file():
            return cls(path=path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StateError(
                f"{path} is not valid JSON ({error}); delete it or rerun with "
                "--force to redo every stage"
            ) from error
        if not isinstance(content, dict) or content.get("format") != STATE_FORMAT:
            raise StateError(
                f"{path} is not a state file of format {STATE_FORMAT}; delete "
                "it or rerun with --force to redo every stage"
            )
        return cls(
            path=path,
            stages=dict(content.get("stages", {})),
            invocations=list(content.get("invocations", [])),
            experiment=content.get("experiment"),
        )

    def is_done(self, stage: str, key: str) -> bool:
        """Tell whether `stage` finished with settings key `key`."""
        record = self.stages.get(stage)
        return record is not None and record.get("key") == key

    def record(self, stage: str, key: str, **details: Any) -> None:
        """Record `stage` as finished with `key` and save the file."""
        self.stages[stage] = {"key": key, "finished": _now(), **details}
        self.save()

    def forget(self, stage: str) -> None:
        """Drop the record of `stage` (its outputs are about to be replaced)."""
        if self.stages.pop(stage, None) is not None:
            self.save()

    def start_invocation(self, details: dict[str, Any]) -> None:
        """Append a record of this invocation, marked `running`."""
        self.invocations.append({"started": _now(), "status": "running", **details})
        self.save()

    def close_stale_invocations(self) -> list[dict[str, Any]]:
        """Mark invocations still `running` as `interrupted` and save the file.

        Call this only while holding the run folder's lock. No other run is
        active then, so a `running` record belongs to a process that was
        killed or crashed before it could record its end.

        Returns:
            The records that were changed.
        """
        stale = [item for item in self.invocations if item.get("status") == "running"]
        for item in stale:
            item["status"] = "interrupted"
            item["ended"] = None
            item["note"] = "the process ended without recording its status"
        if stale:
            self.save()
        return stale

    def finish_invocation(self, status: str, wall_seconds: float) -> None:
        """Mark the last invocation `finished`, `interrupted` or `failed`."""
        if self.invocations:
            self.invocations[-1].update(
                {"ended": _now(), "status": status, "wall_seconds": wall_seconds}
            )
        self.save()

    def save(self) -> None:
        atomic.write_json(
            self.path,
            {
                "format": STATE_FORMAT,
                "experiment": self.experiment,
                "stages": self.stages,
                "invocations": self.invocations,
            },
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
