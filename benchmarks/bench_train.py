"""Training throughput of the default classifier, plain and with DP-SGD.

Prepares the IoT-23 sample logs (or reads a prepared dataset), then times one
epoch of `edgedp.train.fit` at a time on the training split, in the same
run, for:

- plain: shuffled fixed-size batches, Adam;
- DP ghost: Poisson batches, Opacus's ghost clipping module, then noise
  and Adam through Opacus's `DPOptimizerFastGradientClipping` (the default
  of `edgedp train`);
- DP per_sample: the same with per-sample gradients materialised by
  Opacus's `GradSampleModule` (every third round only, because it is slow).

Each configuration runs one warm-up epoch, then all of them take turns for
`--repeats` rounds, so that other load on the machine hits them alike. The
script reports median rows per second of wall time and of process CPU time,
and the DP/plain time ratio, for each batch size and thread count.

Usage: python benchmarks/bench_train.py [--data PREPARED] [--repeats N]
           [--batch-sizes 1024,2048,4096] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import opacus
import torch

from edgedp.dataset import load_prepared
from edgedp.models import build_model, classifier_spec
from edgedp.train import TrainingData, TrainSettings, fit

DEFAULT_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "iot23"


def prepared_dataset(data: Path | None, scratch: Path):
    """Open `data`, or prepare the IoT-23 sample logs into `scratch`."""
    if data is not None:
        return load_prepared(data)
    from edgedp.data.prepare import prepare_dataset

    logs = [DEFAULT_LOGS / "zeek", DEFAULT_LOGS / "csv", DEFAULT_LOGS / "mixed"]
    return prepare_dataset(logs, scratch / "prepared")


@dataclass
class Run:
    """One configuration: a model, its settings and its measured epochs."""

    name: str
    settings: TrainSettings
    model: torch.nn.Module
    every: int = 1
    """Time an epoch on every `every`-th repeat only (for slow runs)."""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def time_runs(data: TrainingData, runs: list[Run], repeats: int) -> None:
    """Time one epoch of each run per repeat, interleaved, after a warm-up.

    Interleaving gives every run the same share of whatever else loads the
    machine, which keeps the DP/plain ratio fair on a shared machine.
    """
    for run in runs:
        fit(run.model, data, run.settings, noise_multiplier=_noise(run))
    for repeat in range(repeats):
        for run in runs:
            if repeat % run.every:
                continue
            torch.set_num_threads(run.settings.threads)
            wall, cpu = time.perf_counter(), time.process_time()
            fit(run.model, data, run.settings, noise_multiplier=_noise(run))
            run.wall.append(data.rows / (time.perf_counter() - wall))
            run.cpu.append(data.rows / (time.process_time() - cpu))


def _noise(run: Run) -> float:
    # Any multiplier costs the same; 1.0 is a typical value.
    return 1.0 if run.settings.private else 0.0


def _runs(features: int, classes: int, batch: int, threads: int) -> list[Run]:
    plain = TrainSettings(model="ff", batch_size=batch, threads=threads, epochs=1)
    configurations = [
        ("plain", plain, 1),
        ("ghost", replace(plain, epsilon=1.0, clipping="ghost"), 1),
        ("per_sample", replace(plain, epsilon=1.0, clipping="per_sample"), 3),
    ]
    runs = []
    for name, settings, every in configurations:
        torch.manual_seed(0)
        model = build_model(classifier_spec(features, classes))
        runs.append(Run(name, settings, model, every))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset folder")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch-sizes", default="1024,2048,4096")
    parser.add_argument("--threads", default="1,2")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        dataset = prepared_dataset(arguments.data, Path(scratch))
        train = dataset.split("train")
    data = TrainingData(
        torch.from_numpy(np.ascontiguousarray(train.features)),
        torch.from_numpy(train.labels),
        "training split rows",
    )

    print(f"python {platform.python_version()}, torch {torch.__version__}, ", end="")
    print(f"opacus {opacus.__version__}, numpy {np.__version__}")
    print(f"{data.rows} training rows x {data.features.shape[1]} features")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| threads | batch | plain rows/s | DP ghost rows/s | DP/plain time "
        "| DP per_sample rows/s | plain rows/CPU-s | DP ghost rows/CPU-s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (int(t) for t in arguments.threads.split(",")):
        for batch in (int(b) for b in arguments.batch_sizes.split(",")):
            runs = _runs(data.features.shape[1], len(dataset.classes), batch, threads)
            time_runs(data, runs, arguments.repeats)
            plain, ghost, per_sample = (statistics.median(r.wall) for r in runs)
            plain_cpu, ghost_cpu = (statistics.median(r.cpu) for r in runs[:2])
            print(
                f"| {threads} | {batch} | {plain:,.0f} | {ghost:,.0f} "
                f"| {plain / ghost:.2f} | {per_sample:,.0f} "
                f"| {plain_cpu:,.0f} | {ghost_cpu:,.0f} |",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
