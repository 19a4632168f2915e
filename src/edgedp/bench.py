"""Inference timing, peak memory and file size of a bundle's model formats.

`bench_bundles` measures each variant of each bundle in fresh processes
(`python -m edgedp.bench_worker`, one process per variant and repeat), so
that the peak resident memory of a LiteRT variant is that of a process
that never imported torch. Variants:

| variant | model file | input fed per flow |
|---|---|---|
| `python` | none | numpy and the features only: the memory floor |
| `torch` | model.pt | float32, torch eager |
| `fp32` | model_fp32.tflite | float32 |
| `int8` | model_int8.tflite | float32, quantized on every call |
| `int8-input` | model_int8.tflite | int8, all flows quantized once up front |

Each variant reports the wall-clock and CPU seconds for all flows fed one at
a time (one call and one invoke per flow, as a gateway reading a live log
does) and as one batch. It also reports the process's peak resident set
size, after the one-at-a-time phase and again after the batch. The result
gives the median, minimum and maximum over the repeats, which run
round-robin over the variants.

The flows come from the test split of the bundle's prepared dataset,
repeated when the split is smaller than the requested count.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgedp.bundle import FP32_MODEL, INT8_MODEL, TORCH_WEIGHTS, Bundle, load_bundle
from edgedp.config import STUDY_BENCH_FLOWS

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("python", "torch", "fp32", "int8", "int8-input")
VARIANT_FILES: dict[str, str | None] = {
    "python": None,
    "torch": TORCH_WEIGHTS,
    "fp32": FP32_MODEL,
    "int8": INT8_MODEL,
    "int8-input": INT8_MODEL,
}
DEFAULT_REPEAT = 5
WORKER_TIMEOUT_SECONDS = 600


class BenchError(RuntimeError):
    """A measurement process failed."""


def _spread(values: Sequence[float | None]) -> dict[str, Any] | None:
    if any(value is None for value in values):
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def _bench_features(bundle: Bundle, samples: int, seed: int) -> tuple[np.ndarray, str]:
    """Return `samples` flows for timing and a note on where they come from."""
    from edgedp.dataset import DatasetError, load_prepared

    width = int(bundle.manifest["model"]["input_dim"])
    recorded = bundle.manifest.get("dataset")
    path = recorded.get("path") if isinstance(recorded, dict) else recorded
    try:
        if path is None:
            raise DatasetError("bundle.json records no prepared dataset")
        features = load_prepared(path).split("test").features
    except (DatasetError, OSError) as error:
        # Timing and memory do not depend on feature values, so a bundle
        # whose dataset is gone is still measured, on uniform draws.
        logger.warning(
            "%s: no test split to time on (%s); using uniform random flows",
            bundle.root,
            error,
        )
        generator = np.random.default_rng(seed)
        return generator.random((samples, width), dtype=np.float32), "uniform"
    if len(features) == 0 or features.shape[1] != width:
        raise BenchError(
            f"the test split of {path} has shape {features.shape}, but "
            f"{bundle.root} takes {width} features; pass bundles trained on it"
        )
    return np.resize(features, (samples, width)), f"test split of {path}"


def run_worker(
    bundle: Path, variant: str, features: Path, *, threads: int = 1
) -> dict[str, Any]:
    """Run one measurement in a fresh Python process and return its result.

    Raises:
        BenchError: the process failed or timed out; the message carries the
            end of its standard error.
    """
    command = [
        sys.executable,
        "-m",
        "edgedp.bench_worker",
        "--bundle",
        str(bundle),
        "--variant",
        variant,
        "--features",
        str(features),
        "--threads",
        str(threads),
    ]
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(
            f"measuring {variant} of {bundle} timed out after "
            f"{WORKER_TIMEOUT_SECONDS} s; measure fewer flows"
        ) from error
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        raise BenchError(
            f"measuring {variant} of {bundle} failed with exit code "
            f"{completed.returncode}:\n{tail}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_bundle(
    bundle: Bundle | str | Path,
    *,
    samples: int = STUDY_BENCH_FLOWS,
    repeat: int = DEFAULT_REPEAT,
    threads: int = 1,
    variants: Sequence[str] = VARIANTS,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure every variant of one bundle; see `bench_bundles`."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    for variant in variants:
        if variant not in VARIANT_FILES:
            raise ValueError(
                f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}"
            )
        name = VARIANT_FILES[variant]
        if name is not None:
            # Raises a BundleError that names `edgedp optimize` as the fix.
            bundle.path(name)

    features, features_source = _bench_features(bundle, samples, seed)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgedp-bench-") as folder:
        features_path = Path(folder) / "features.npy"
        np.save(features_path, features)

        # Round-robin over the variants, so that a change in machine load
        # during the run spreads over all of them instead of one.
        runs: dict[str, list[dict]] = {variant: [] for variant in variants}
        for index in range(repeat):
            for variant in variants:
                logger.info(
                    "measuring %s of %s (%d/%d)",
                    variant,
                    bundle.root.name,
                    index + 1,
                    repeat,
                )
                runs[variant].append(
                    run_worker(bundle.root, variant, features_path, threads=threads)
                )
        for variant in variants:
            results[variant] = _summarize(bundle, variant, runs[variant])

    return {
        "bundle": str(bundle.root),
        "bundle_id": bundle.bundle_id,
        "kind": bundle.model_kind,
        "flows": samples,
        "features": features_source,
        "variants": results,
    }


def _summarize(bundle: Bundle, variant: str, runs: list[dict]) -> dict[str, Any]:
    name = VARIANT_FILES[variant]
    single = _spread([run["single_seconds"] for run in runs])
    summary: dict[str, Any] = {
        "file": name,
        "file_bytes": bundle.manifest["files"][name]["bytes"] if name else None,
        "single_seconds": single,
        "single_cpu_seconds": _spread([run["single_cpu_seconds"] for run in runs]),
        "batch_seconds": _spread([run["batch_seconds"] for run in runs]),
        "batch_cpu_seconds": _spread([run["batch_cpu_seconds"] for run in runs]),
        "single_peak_rss_bytes": _spread(
            [run["single_peak_rss_bytes"] for run in runs]
        ),
        "peak_rss_bytes": _spread([run["peak_rss_bytes"] for run in runs]),
        "loaded_modules": runs[0]["loaded_modules"],
    }
    if single is not None:
        flows = runs[0]["flows"]
        summary["single_microseconds_per_flow"] = single["median"] / flows * 1e6
        summary["single_cpu_microseconds_per_flow"] = (
            summary["single_cpu_seconds"]["median"] / flows * 1e6
        )
    return summary


def machine_description() -> dict[str, Any]:
    """Describe the CPU, Python and library versions behind a measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libraries = {}
    for name in ("numpy", "ai-edge-litert", "torch", "litert-torch"):
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libraries,
    }


def bench_bundles(
    paths: Sequence[str | Path | Bundle],
    *,
    samples: int = STUDY_BENCH_FLOWS,
    repeat: int = DEFAULT_REPEAT,
    threads: int = 1,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, Any]:
    """Time and size each bundle's torch, LiteRT float32 and int8 models.

    Args:
        paths: bundle folders (or opened bundles) that `edgedp optimize` has
            processed.
        samples: flows per measurement (the study timed 7000).
        repeat: fresh processes per variant; the result gives the median,
            minimum and maximum over them.
        threads: CPU threads of torch and of the LiteRT interpreter.
        variants: a subset of `VARIANTS`.

    Returns:
        A JSON-able dict with the machine, the settings and, per bundle and
        variant, `single_seconds`, `batch_seconds` and `peak_rss_bytes`
        spreads, the file size and which heavy modules the process loaded.

    Raises:
        BundleError: a bundle is missing, altered, or not optimized.
        BenchError: a measurement process failed.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    bundles = [
        path if isinstance(path, Bundle) else load_bundle(path) for path in paths
    ]
    return {
        "machine": machine_description(),
        "settings": {
            "flows": samples,
            "repeat": repeat,
            "threads": threads,
            "variants": list(variants),
        },
        "bundles": [
            bench_bundle(
                bundle,
                samples=samples,
                repeat=repeat,
                threads=threads,
                variants=variants,
            )
            for bundle in bundles
        ],
    }
