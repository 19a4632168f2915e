"""`run_study`: the whole study grid in one call, resumable (`edgedp run`).

The stages run in this order, each skipped when `state.json` records it as
finished with the same settings key and its outputs are still in place:

1. data: the logs given, or the IoT-23 scenarios downloaded into the cache.
2. prepare: one prepared dataset shared by every grid cell.
3. grid: per cell (model x privacy level x seed) train, optimize (LiteRT
   float32 and int8), evaluate every format on the test split, and run the
   membership inference attack on the torch model. Cells run in parallel
   worker processes, one per core by default.
4. bench: timing, peak memory and size of each model's formats, alone on
   the machine after the grid.
5. report: `report.md`, `report.json` and `figures/`, always rewritten
   from the files, after the invocation's status is recorded.

Every output is written atomically, and a stage is recorded only after its
outputs are complete, so a run stopped by Ctrl-C resumes where it stopped.
A run holds an exclusive lock on its folder (`run.lock`) from start to end,
so a second run on the same folder fails at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import importlib.util
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgedp import atomic, config
from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    MANIFEST_NAME,
    TORCH_WEIGHTS,
    Bundle,
    BundleError,
    load_bundle,
    unmatched_scores,
)
from edgedp.experiment import Experiment, TrainingRun
from edgedp.study import layout, tasks
from edgedp.study.state import RunState, settings_key

logger = logging.getLogger(__name__)

MODEL_FORMATS: tuple[str, ...] = ("torch", "fp32", "int8")
"""Formats scored on the test split; the names `edgedp.evaluate` uses."""

GRID_STAGES: tuple[str, ...] = ("train", "optimize", "evaluate", "membership")

TRAINING_MODULES: tuple[str, ...] = (
    "torch",
    "opacus",
    "polars",
    "pyarrow",
    "litert_torch",
    "ai_edge_quantizer",
    "sklearn",
    "matplotlib",
)
"""Top-level modules of the `train` extra that the stages import."""


class StudyError(RuntimeError):
    """A stage of the study failed; finished stages stay recorded."""


class RunFolderLockedError(StudyError):
    """Another process holds the run folder's lock."""


class ProgressListener(Protocol):
    """Receives progress of the long stages, for a progress bar.

    `task` is one of `data`, `prepare`, `grid`, `bench` and `report`.
    `total` None means the amount of work is not known in advance.
    """

    def start(self, task: str, total: int | None, description: str) -> None: ...

    def advance(self, task: str, description: str) -> None: ...

    def finish(self, task: str, description: str) -> None: ...


class _SilentProgress:
    def start(self, task: str, total: int | None, description: str) -> None:
        pass

    def advance(self, task: str, description: str) -> None:
        pass

    def finish(self, task: str, description: str) -> None:
        pass


@dataclass
class StudyResult:
    """Outcome of one invocation of `run_study`."""

    out: Path
    wall_seconds: float = 0.0
    ran: list[str] = field(default_factory=list)
    """Stage ids that ran in this invocation, such as `train/ae-plain-seed0`."""
    skipped: list[str] = field(default_factory=list)
    """Stage ids that were already finished with the same settings."""
    report: dict[str, Path] = field(default_factory=dict)


def default_jobs() -> int:
    """Return the number of CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_study(
    experiment: Experiment,
    out: str | Path,
    *,
    force: bool = False,
    jobs: int | None = None,
    progress: ProgressListener | None = None,
    invocation: dict[str, Any] | None = None,
) -> StudyResult:
    """Run or resume the whole study and write its report into `out`.

    Args:
        experiment: the settings, with the quick profile already applied if
            wanted (`Experiment.quick_profile`).
        out: the run folder (see `edgedp.study.layout`).
        force: redo every stage even if it is recorded as finished.
        jobs: worker processes for the grid; None means one per usable CPU.
            Each worker trains with one thread.
        progress: receives progress of the long stages.
        invocation: extra facts about this call (such as the command line)
            for the record in `state.json`.

    Raises:
        ModuleNotFoundError: the `train` extra is not installed. Nothing has
            been written then.
        OutputError: `out` cannot be created or written.
        RunFolderLockedError: another run holds `out`'s lock.
        StudyError: a stage failed. Cells that finished stay recorded, so a
            rerun after the fix resumes.
        KeyboardInterrupt: the run was interrupted; a rerun resumes.
    """
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    check_training_modules()
    out = Path(out)
    # Creates `out` and fails here, naming the path, if it cannot be written.
    atomic.check_writable(out / layout.STATE)
    with lock_run_folder(out), _run_log(out / layout.LOG):
        runner = _Runner(experiment, out, force, jobs, progress or _SilentProgress())
        _run(runner, experiment, force, jobs, invocation)
    return runner.result


def _run(
    runner: _Runner,
    experiment: Experiment,
    force: bool,
    jobs: int,
    invocation: dict[str, Any] | None,
) -> None:
    """Run the stages and the report, recording the invocation in `state.json`."""
    out = runner.out
    started = time.perf_counter()
    state = runner.state

    for stale in state.close_stale_invocations():
        logger.warning(
            "run %s: the invocation started %s (PID %s) ended without recording "
            "its status, probably killed; marked interrupted",
            out,
            stale.get("started"),
            stale.get("pid", "unknown"),
        )
    state.experiment = experiment.to_dict()
    state.start_invocation(
        {"force": force, "jobs": jobs, "pid": os.getpid(), **(invocation or {})}
    )
    logger.info("run %s started (force %s, %d jobs)", out, force, jobs)

    status = "failed"
    try:
        runner.run_stages()
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        logger.warning("run %s interrupted; rerun the command to resume", out)
        raise
    finally:
        runner.result.wall_seconds = time.perf_counter() - started
        state.finish_invocation(status, runner.result.wall_seconds)
        logger.info(
            "run %s %s after %.1f s: %d stages ran, %d skipped",
            out,
            status,
            runner.result.wall_seconds,
            len(runner.result.ran),
            len(runner.result.skipped),
        )
    # Written after the invocation is recorded, so the report shows its
    # status and wall time (without the seconds the report itself takes).
    runner.write_report()


def check_training_modules() -> None:
    """Check that the `train` extra is installed, before the run writes anything.

    NOTE: this finds each module without importing it, because importing
    litert_torch alone takes seconds and prints warnings. An installed but
    broken module still fails later, in the stage that imports it.

    Raises:
        ModuleNotFoundError: a module is missing; `name` is the module's name.
    """
    for name in TRAINING_MODULES:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder `out`, without waiting for it.

    The lock is `fcntl.flock` on `out/run.lock`, which contains the holder's
    PID. The kernel releases it when the holder exits, even if it is killed.

    Raises:
        RunFolderLockedError: another process holds the lock.
    """
    path = out / layout.LOCK
    with open(path, "a+", encoding="ascii") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            raise RunFolderLockedError(
                f"{out} is in use by another edgedp run (PID {holder}); wait for "
                "it to finish or pass another --out folder"
            ) from None
        # The holder's PID is written only once the lock is ours, so a
        # rejected run never erases it.
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            yield
        finally:
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.flush()
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def run_folder_holder(out: str | Path) -> str | None:
    """Return the PID of the `edgedp run` that holds `out`'s lock, or None.

    The check takes a shared lock on `run.lock` for an instant and releases
    it. NOTE: a run that starts in that instant fails as if another run held
    the folder; rerunning it then succeeds.

    Returns:
        The PID written in `run.lock` ("unknown" if it is empty), or None
        when no process holds the lock or the folder has no `run.lock`.
    """
    path = Path(out) / layout.LOCK
    try:
        lock_file = open(path, encoding="ascii")
    except FileNotFoundError:
        return None
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock_file.read().strip() or "unknown"
        fcntl.flock(lock_file, fcntl.LOCK_UN)
    return None


class _run_log:
    """Append the `edgedp` package's log records to the run's log file."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(tasks.LOG_FORMAT))
        self.handler.setLevel(logging.INFO)
        self.package = logging.getLogger("edgedp")
        self.old_level = self.package.level

    def __enter__(self) -> None:
        if self.package.getEffectiveLevel() > logging.INFO:
            self.package.setLevel(logging.INFO)
        self.package.addHandler(self.handler)
        logging.captureWarnings(True)

    def __exit__(self, *exc_info: object) -> None:
        self.package.removeHandler(self.handler)
        self.package.setLevel(self.old_level)
        self.handler.close()


class _Runner:
    """One invocation's walk through the stages."""

    def __init__(
        self,
        experiment: Experiment,
        out: Path,
        force: bool,
        jobs: int,
        progress: ProgressListener,
    ) -> None:
        self.experiment = experiment
        self.out = out
        self.force = force
        self.jobs = jobs
        self.progress = progress
        self.state = RunState.load(out)
        if force:
            self.state.stages = {}
        self.result = StudyResult(out=out)
        self.dataset_dir = out / layout.DATASET

    def run_stages(self) -> None:
        """Run or skip every stage up to the report."""
        paths = self._data()
        dataset_id = self._prepare(paths)
        self._check_delta()
        finished = self._grid(dataset_id)
        self._bench(finished)

    def _skip(self, stage: str, reason: str) -> None:
        logger.info("%s: skipped, %s", stage, reason)
        self.result.skipped.append(stage)

    def _done(self, stage: str, key: str, **details: Any) -> None:
        self.state.record(stage, key, **details)
        self.result.ran.append(stage)

    # 1. Data.

    def _data(self) -> list[Path]:
        data = self.experiment.data
        if data.paths:
            paths = [Path(path) for path in data.paths]
            missing = [str(path) for path in paths if not path.exists()]
            if missing:
                raise StudyError(
                    f"input not found: {', '.join(missing)}; pass existing log "
                    "files or folders with --data"
                )
            return paths

        from edgedp.data import download

        self.progress.start("data", None, "downloading IoT-23 logs")
        started = time.perf_counter()

        def report(name: str, done: int, total: int | None) -> None:
            self.progress.advance("data", f"{name}: {done:,} bytes")

        try:
            paths = download.download_scenarios(
                data.scenarios,
                cache=data.cache,
                base_url=data.base_url,
                progress=report,
            )
        except download.DownloadError as error:
            raise StudyError(str(error)) from error
        key = self.experiment.fingerprint("data")
        self._done(
            "data",
            key,
            paths=[str(path) for path in paths],
            seconds=time.perf_counter() - started,
        )
        self.progress.finish("data", f"{len(paths)} IoT-23 logs in the cache")
        return paths

    # 2. Prepare.

    def _prepare(self, paths: list[Path]) -> str:
        """Prepare the dataset if needed; return its id (for later keys)."""
        from edgedp import features
        from edgedp.data.prepare import prepare_dataset
        from edgedp.data.sources import find_logs

        inputs = [
            [str(path), path.stat().st_size, path.stat().st_mtime_ns]
            for path in find_logs(paths, warn=False)
        ]
        key = settings_key(
            self.experiment.fingerprint("prepare"), inputs, features.ENCODER_VERSION
        )
        manifest = self.dataset_dir / "dataset.json"
        if self.state.is_done("prepare", key) and manifest.is_file():
            self._skip("prepare", f"{self.dataset_dir} is up to date")
            return _dataset_id(manifest)

        settings = self.experiment.prepare
        self.progress.start("prepare", None, f"preparing {len(inputs)} input files")
        started = time.perf_counter()
        self.state.forget("prepare")
        prepare_dataset(
            paths,
            self.dataset_dir,
            feature_set=settings.feature_set,
            classes=settings.classes,
            class_mapping=dict(settings.class_mapping),
            split=settings.split,
            seed=settings.split_seed,
            max_rows_per_file=settings.max_rows_per_file,
            max_rows_per_class=settings.max_rows_per_class,
            overwrite=True,
        )
        seconds = time.perf_counter() - started
        self._done("prepare", key, inputs=inputs, seconds=seconds)
        self.progress.finish("prepare", _prepared_summary(manifest))
        return _dataset_id(manifest)

    def _check_delta(self) -> None:
        """Reject a delta of 1/N or more before any DP cell starts training.

        Each DP cell would fail with the same error after its worker had
        started, so the run stops once, here, naming `[train] delta`.
        """
        from edgedp.privacy import DeltaError

        train = self.experiment.train
        if all(epsilon is None for epsilon in train.epsilons):
            return
        split = json.loads((self.dataset_dir / "dataset.json").read_text())
        split = split["splits"]["train"]
        populations = {
            "classifier": (split["rows"], "training split rows"),
            "autoencoder": (
                split["classes"].get(config.BENIGN_CLASS, 0),
                "Benign training split rows",
            ),
        }
        for model in train.models:
            rows, population = populations[model]
            if rows >= 1 and not train.delta < 1 / rows:
                raise StudyError(
                    str(DeltaError(train.delta, rows, population, "[train] delta"))
                )

    # 3. The grid: train, optimize, evaluate per cell.

    def _cell_key(self, stage: str, cell: TrainingRun, dataset_id: str) -> str | None:
        """Return the key `stage` of `cell` runs with, or None if unknown yet.

        The optimize, evaluate and membership keys depend on the bundle's
        current files, so they are unknown while the bundle is missing or
        unreadable.
        """
        if stage == "train":
            return settings_key(self.experiment.fingerprint("train", cell), dataset_id)
        bundle = _open_bundle(layout.bundle_folder(self.out, cell.name))
        if bundle is None:
            return None
        if stage == "membership":
            return settings_key(
                self.experiment.fingerprint("membership", cell), bundle.bundle_id
            )
        optimize = settings_key(
            self.experiment.fingerprint("optimize", cell), bundle.bundle_id
        )
        if stage == "optimize":
            return optimize
        files = bundle.manifest.get("files", {})
        if not all(name in files for name in (FP32_MODEL, INT8_MODEL)):
            return None
        hashes = [files[name]["sha256"] for name in (FP32_MODEL, INT8_MODEL)]
        return settings_key(optimize, hashes)

    def _cell_done(self, stage: str, cell: TrainingRun, dataset_id: str) -> bool:
        stage_id = f"{stage}/{cell.name}"
        key = self._cell_key(stage, cell, dataset_id)
        if key is None or not self.state.is_done(stage_id, key):
            return False
        bundle = _open_bundle(layout.bundle_folder(self.out, cell.name))
        if bundle is None or not _has_outputs(stage, bundle):
            return False
        if stage == "train":
            return self._bundle_trained_here(stage_id, bundle)
        if stage == "membership":
            return self._membership_current(cell, bundle)
        return True

    def _bundle_trained_here(self, stage_id: str, bundle: Bundle) -> bool:
        """Tell whether the bundle is the one this run's train stage wrote.

        A bundle retrained by hand (`edgedp train --overwrite`) has other
        weights, so another `bundle_id` than the one the state recorded.
        """
        recorded = self.state.stages[stage_id].get("bundle_id")
        if recorded is None or recorded == bundle.bundle_id:
            return True
        logger.info(
            "redoing %s: the bundle's weights (bundle_id %s) are not the ones "
            "this run trained (%s)",
            stage_id,
            bundle.bundle_id,
            recorded,
        )
        return False

    def _membership_current(self, cell: TrainingRun, bundle: Bundle) -> bool:
        """Tell whether the bundle's attack result has this run's settings.

        A manual `edgedp audit` replaces the result in `bundle.json` without
        changing the bundle's files or the run's state, so the state key
        alone cannot tell that the result came from other settings.
        """
        recorded = bundle.manifest["membership"]
        expected = {"samples": self.experiment.membership.samples, "seed": cell.seed}
        current = all(recorded.get(name) == value for name, value in expected.items())
        if not current:
            logger.info(
                "redoing membership/%s: bundle.json records samples %s and seed "
                "%s, but this run uses %s and %s",
                cell.name,
                recorded.get("samples"),
                recorded.get("seed"),
                expected["samples"],
                expected["seed"],
            )
        return current

    def _grid(self, dataset_id: str) -> list[TrainingRun]:
        """Run every unfinished cell stage; return the cells that are complete."""
        cells = self.experiment.runs()
        first_stage: dict[str, int] = {}
        for cell in cells:
            for index, stage in enumerate(GRID_STAGES):
                if not self._cell_done(stage, cell, dataset_id):
                    first_stage[cell.name] = index
                    break
                self._skip(f"{stage}/{cell.name}", "already done")

        total = sum(len(GRID_STAGES) - index for index in first_stage.values())
        if not total:
            return cells
        self.progress.start("grid", total, f"training {len(first_stage)} cells")
        failures: list[str] = []
        context = multiprocessing.get_context("spawn")
        executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(self.jobs, len(first_stage)),
            mp_context=context,
            initializer=tasks.init_worker,
            initargs=(str(self.out / layout.LOG), logging.INFO, os.getpid()),
        )
        pending: dict[concurrent.futures.Future, tuple[TrainingRun, int, str]] = {}

        def submit(cell: TrainingRun, index: int) -> None:
            stage = GRID_STAGES[index]
            key = self._cell_key(stage, cell, dataset_id)
            self.state.forget(f"{stage}/{cell.name}")
            function, arguments = self._cell_task(stage, cell)
            pending[executor.submit(function, **arguments)] = (cell, index, key)
            logger.info("%s/%s: queued", stage, cell.name)

        try:
            for cell in cells:
                if cell.name in first_stage:
                    submit(cell, first_stage[cell.name])
            while pending:
                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    cell, index, key = pending.pop(future)
                    stage_id = f"{GRID_STAGES[index]}/{cell.name}"
                    try:
                        details = future.result()
                    except Exception as error:
                        logger.error("%s failed: %s", stage_id, error)
                        failures.append(f"{stage_id}: {error}")
                        continue
                    if key is None:
                        key = self._cell_key(GRID_STAGES[index], cell, dataset_id)
                    self._done(stage_id, key, **details)
                    self.progress.advance("grid", f"{stage_id} done")
                    if index + 1 < len(GRID_STAGES):
                        submit(cell, index + 1)
        except BaseException:
            _stop_workers(executor)
            raise
        executor.shutdown(wait=True)

        if failures:
            raise StudyError(
                f"{len(failures)} grid stages failed (the log {layout.LOG} has "
                "details); fix the cause and rerun to resume:\n" + "\n".join(failures)
            )
        self.progress.finish("grid", f"{len(cells)} cells trained and scored")
        return cells

    def _cell_task(
        self, stage: str, cell: TrainingRun
    ) -> tuple[Callable[..., dict[str, Any]], dict[str, Any]]:
        bundle = str(layout.bundle_folder(self.out, cell.name))
        dataset = str(self.dataset_dir)
        train = self.experiment.train
        if stage == "train":
            model = train.model(cell.model)
            return tasks.train_cell, {
                "dataset": dataset,
                "bundle": bundle,
                "model": cell.model,
                "epsilon": cell.epsilon,
                "seed": cell.seed,
                "delta": train.delta,
                "max_grad_norm": train.max_grad_norm,
                "epochs": model.epochs,
                "batch_size": model.batch_size,
            }
        if stage == "optimize":
            optimize = self.experiment.optimize
            return tasks.optimize_cell, {
                "bundle": bundle,
                "dataset": dataset,
                "calibration": optimize.calibration,
                "calibration_size": optimize.calibration_size,
                "seed": cell.seed,
            }
        if stage == "evaluate":
            return tasks.evaluate_cell, {
                "bundle": bundle,
                "dataset": dataset,
                "formats": MODEL_FORMATS,
            }
        return tasks.membership_cell, {
            "bundle": bundle,
            "dataset": dataset,
            "samples": self.experiment.membership.samples,
            "seed": cell.seed,
        }

    # 4. Bench.

    def _bench(self, cells: list[TrainingRun]) -> None:
        """Measure one bundle per model: the first cell of that model in the grid.

        Every privacy level and seed of a model has the same architecture and
        so the same file sizes and inference cost.
        """
        from edgedp import bench

        chosen: dict[str, TrainingRun] = {}
        for cell in cells:
            chosen.setdefault(cell.model, cell)
        bundles = [
            load_bundle(layout.bundle_folder(self.out, cell.name))
            for cell in chosen.values()
        ]
        key = settings_key(
            [self.experiment.fingerprint("bench", cell) for cell in chosen.values()],
            [bundle.manifest["files"] for bundle in bundles],
        )
        path = self.out / layout.BENCH
        if self.state.is_done("bench", key) and path.is_file():
            self._skip("bench", f"{path} is up to date")
            return

        settings = self.experiment.bench
        self.state.forget("bench")
        self.progress.start("bench", len(bundles), "timing model formats")
        started = time.perf_counter()
        results = []
        for cell, bundle in zip(chosen.values(), bundles, strict=True):
            results.append(
                {
                    "cell": cell.name,
                    **bench.bench_bundle(
                        bundle, samples=settings.samples, repeat=settings.repeats
                    ),
                }
            )
            self.progress.advance("bench", f"timed {cell.name}")
        report = {
            "machine": bench.machine_description(),
            "settings": {
                "flows": settings.samples,
                "repeat": settings.repeats,
                "threads": 1,
                "variants": list(bench.VARIANTS),
                "cells": [cell.name for cell in chosen.values()],
            },
            "bundles": results,
        }
        atomic.write_json(path, report)
        self._done("bench", key, seconds=time.perf_counter() - started)
        self.progress.finish("bench", f"timed {len(bundles)} bundles")

    # 5. Report.

    def write_report(self) -> None:
        from edgedp.report import write_report

        self.progress.start("report", None, "writing the report")
        started = time.perf_counter()
        self.result.report = write_report(self.out)
        seconds = time.perf_counter() - started
        logger.info(
            "report: wrote %s in %.1f s", self.result.report["markdown"], seconds
        )
        self.progress.finish("report", f"wrote {self.result.report['markdown']}")


def _prepared_summary(manifest: Path) -> str:
    """Return how many files prepare read and set aside, from `dataset.json`."""
    dataset = json.loads(manifest.read_text(encoding="utf-8"))
    read = len(dataset.get("inputs", []))
    rejected = dataset.get("rejected", [])
    summary = f"prepared {read} {'file' if read == 1 else 'files'}"
    if rejected:
        summary += (
            f", set aside {len(rejected)} unreadable "
            f"(listed in {layout.DATASET}/dataset.json)"
        )
    return summary


def _dataset_id(manifest: Path) -> str:
    return settings_key(manifest.read_text(encoding="utf-8"))


def _open_bundle(folder: Path) -> Bundle | None:
    """Open and verify a bundle; None if it is missing or altered."""
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        return load_bundle(folder)
    except BundleError as error:
        logger.warning("%s cannot be reused: %s", folder, error)
        return None


def _has_outputs(stage: str, bundle: Bundle) -> bool:
    """Tell whether `bundle` contains what `stage` writes."""
    if stage == "train":
        return bundle.has_file(TORCH_WEIGHTS)
    if stage == "optimize":
        formats = bundle.manifest.get("formats", {})
        weights = bundle.manifest["files"].get(TORCH_WEIGHTS, {}).get("sha256")
        return (
            bundle.has_file(FP32_MODEL)
            and bundle.has_file(INT8_MODEL)
            and formats.get("source_weights_sha256") == weights
        )
    if stage == "membership":
        return "membership" in bundle.manifest
    # A manual `edgedp optimize` drops the scores of the files it replaces,
    # and scores without a file hash are from an edgedp before the check.
    scored = bundle.manifest.get("metrics", {}).get("test", {})
    unmatched = unmatched_scores(bundle.manifest, "test")
    return all(name in scored and name not in unmatched for name in MODEL_FORMATS)


def _stop_workers(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """End the worker processes of an interrupted grid without waiting for them.

    A stage cut short leaves at most a temporary folder or file, which the
    next run replaces (see `edgedp.atomic`).
    """
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=10)
    executor.shutdown(wait=False, cancel_futures=True)
