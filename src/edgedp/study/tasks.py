"""The work of one grid cell, run in a worker process of `edgedp run`.

Each function is one stage of one cell: train, optimize or evaluate a
bundle, or run the membership inference attack on it. They run in processes
started with the `spawn` method, so every worker imports torch afresh
instead of inheriting the main process's threads. `init_worker` sends a
worker's log records, warnings and the native libraries' messages to the
run's log file, so the terminal shows only the progress bars.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

# Every stage in a worker uses one CPU thread. The workers run side by side,
# one per core, and more threads per worker would make them compete.
WORKER_THREADS = 1
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
PARENT_POLL_SECONDS = 0.5
"""How often a worker checks that the run that started it is still alive."""

logger = logging.getLogger(__name__)


def init_worker(log_path: str, level: int, parent_pid: int) -> None:
    """Configure a fresh worker process: one thread, output to `log_path`.

    The worker ends itself once the process `parent_pid` (the run) is gone.
    """
    exit_with_parent(parent_pid)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(WORKER_THREADS)
    # Native code (LiteRT, XLA) writes to file descriptors 1 and 2 directly,
    # so the descriptors themselves point at the log.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)

    import torch

    torch.set_num_threads(WORKER_THREADS)


def exit_with_parent(parent_pid: int) -> threading.Thread:
    """End this process soon after the process `parent_pid` exits.

    A run killed with SIGKILL or by the out-of-memory killer cannot stop its
    workers, and an idle worker of a process pool would wait for work
    forever, holding hundreds of MB. When the parent exits, the kernel gives
    its children a new parent (init or a subreaper), so a daemon thread
    polls `os.getppid()` every `PARENT_POLL_SECONDS` and calls `os._exit`
    once it differs. A parent that died before the thread started is caught
    on the first check.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        logger.warning(
            "worker %d: the run (PID %d) is gone; exiting", os.getpid(), parent_pid
        )
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def train_cell(
    *,
    dataset: str,
    bundle: str,
    model: str,
    epsilon: float | None,
    seed: int,
    delta: float,
    max_grad_norm: float,
    epochs: int,
    batch_size: int,
) -> dict[str, Any]:
    """Train one cell's bundle, replacing any bundle folder already there.

    Returns:
        `bundle_id`, `seconds` (wall time of the stage) and the achieved
        `epsilon` (infinity without DP).
    """
    from edgedp.privacy import DeltaError
    from edgedp.train import MODEL_CHOICES, train_bundle

    started = time.perf_counter()
    code = {kind: short for short, kind in MODEL_CHOICES.items()}[model]
    try:
        result = train_bundle(
            dataset,
            bundle,
            model=code,
            epsilon=epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            threads=WORKER_THREADS,
            overwrite=True,
        )
    except DeltaError as error:
        # `edgedp run` has no --delta option; the setting is in the file.
        raise error.for_setting("[train] delta") from None
    return {
        "bundle_id": result.bundle_id,
        "epsilon": result.manifest["privacy"]["epsilon"],
        "seconds": time.perf_counter() - started,
    }


def optimize_cell(
    *, bundle: str, dataset: str, calibration: str, calibration_size: int, seed: int
) -> dict[str, Any]:
    """Convert one cell's bundle to LiteRT float32 and int8.

    Returns:
        The size in bytes of each model file and `seconds`.
    """
    from edgedp.export import optimize_bundle

    started = time.perf_counter()
    result = optimize_bundle(
        bundle,
        data=dataset,
        calibration=calibration,
        calibration_size=calibration_size,
        seed=seed,
        force=True,
    )
    files = result.manifest["files"]
    return {
        "bytes": {name: entry["bytes"] for name, entry in files.items()},
        "seconds": time.perf_counter() - started,
    }


def evaluate_cell(
    *, bundle: str, dataset: str, formats: tuple[str, ...]
) -> dict[str, Any]:
    """Score every model format of one cell's bundle on the test split.

    Returns:
        `seconds` of the whole stage; the metrics go into `bundle.json`.
    """
    from edgedp.evaluate import evaluate_bundle

    started = time.perf_counter()
    for model_format in formats:
        evaluate_bundle(bundle, dataset, split="test", model_format=model_format)
    return {"seconds": time.perf_counter() - started}


def membership_cell(
    *, bundle: str, dataset: str, samples: int, seed: int
) -> dict[str, Any]:
    """Run the membership inference attack on one cell's torch model.

    Returns:
        The attack's `roc_auc` and `advantage` and `seconds`; the whole
        result goes into `bundle.json` under `membership`.
    """
    from edgedp.membership import audit_bundle

    started = time.perf_counter()
    result = audit_bundle(bundle, dataset, samples=samples, seed=seed)
    return {
        "roc_auc": result["roc_auc"],
        "advantage": result["advantage"],
        "seconds": time.perf_counter() - started,
    }
