"""Benchmark: inference time, peak memory and file size per model format.

For the default classifier and autoencoder, measures 7000 flows fed one at
a time and as one batch with `edgedp.bench.bench_bundles`, the code behind
`edgedp bench`. It compares torch eager, LiteRT float32, LiteRT int8 fed
float32 features (quantized per flow) and LiteRT int8 fed int8 features
(quantized once).

Each format runs in fresh processes, round-robin over the repeats. The
table shows medians over the repeats and the [min, max] range. CPU time
(`time.process_time`) leaves out time spent waiting for other jobs, so it
is the steadier figure on a shared machine; wall time is what the study
reported. Peak memory is each process's VmHWM (peak resident set), read
after the one-at-a-time phase and again after the batch of all flows.

Usage:

    python benchmarks/bench_inference.py BUNDLE... [--samples 7000]
        [--repeat 5] [--out bench-inference.json]

The bundles must have been through `edgedp optimize`. Without BUNDLE
arguments, `--data PREPARED` trains the default plain classifier and
autoencoder into `--work DIR` with `edgedp.train.train_bundle` and
optimizes them first.

Goals checked at the end (printed, never asserted): int8 one at a time no
slower than float32, LiteRT peak memory at most 60 MB, and the int8 file
at most a third of the float32 file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edgedp import atomic
from edgedp.bench import bench_bundles

MEMORY_GOAL_BYTES = 60 * 10**6
LITERT_VARIANTS = ("fp32", "int8", "int8-input")


def _train_defaults(data: Path, work: Path) -> list[Path]:
    from edgedp.export import optimize_bundle
    from edgedp.train import train_bundle

    paths = []
    for model in ("ff", "ae"):
        path = work / f"{model}-plain"
        if not (path / "bundle.json").is_file():
            train_bundle(data, path, model=model)
        optimize_bundle(path)
        paths.append(path)
    return paths


def _range(spread: dict | None, scale: float, digits: int) -> str:
    if spread is None:
        return "-"
    return (
        f"{spread['median'] * scale:.{digits}f} "
        f"[{spread['min'] * scale:.{digits}f}, {spread['max'] * scale:.{digits}f}]"
    )


def markdown(results: dict) -> str:
    """Render the results as one Markdown table per bundle."""
    lines = []
    for bundle in results["bundles"]:
        lines += [
            f"{bundle['kind']} `{bundle['bundle_id']}`, {bundle['flows']} flows "
            f"({bundle['features']})",
            "",
            "| variant | file KiB | one at a time, wall s | one at a time, CPU s "
            "| CPU µs/flow | one batch, CPU ms "
            "| peak RSS MB, one at a time | peak RSS MB, after batch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, variant in bundle["variants"].items():
            size = variant["file_bytes"]
            per_flow = variant.get("single_cpu_microseconds_per_flow")
            lines.append(
                f"| {name} | {'-' if size is None else f'{size / 1024:.1f}'} "
                f"| {_range(variant['single_seconds'], 1, 3)} "
                f"| {_range(variant['single_cpu_seconds'], 1, 3)} "
                f"| {'-' if per_flow is None else f'{per_flow:.1f}'} "
                f"| {_range(variant['batch_cpu_seconds'], 1e3, 2)} "
                f"| {_range(variant['single_peak_rss_bytes'], 1e-6, 1)} "
                f"| {_range(variant['peak_rss_bytes'], 1e-6, 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def goals(results: dict) -> list[str]:
    """Compare the classifier's numbers with the shrinking goals."""
    verdicts = []
    for bundle in results["bundles"]:
        variants = bundle["variants"]
        for clock in ("single_cpu_seconds", "single_seconds"):
            fp32 = variants["fp32"][clock]["median"]
            for name in ("int8", "int8-input"):
                ratio = variants[name][clock]["median"] / fp32
                verdicts.append(
                    f"{bundle['kind']}: {name} / fp32, one at a time, "
                    f"{'CPU' if 'cpu' in clock else 'wall'} median = {ratio:.2f} "
                    f"({'met' if ratio <= 1 else 'missed'}: goal <= 1)"
                )
        for phase, key in (
            ("one at a time", "single_peak_rss_bytes"),
            ("after batch", "peak_rss_bytes"),
        ):
            peak = max(variants[name][key]["max"] for name in LITERT_VARIANTS)
            verdicts.append(
                f"{bundle['kind']}: LiteRT peak RSS {phase}, max over runs "
                f"{peak / 1e6:.1f} MB "
                f"({'met' if peak <= MEMORY_GOAL_BYTES else 'missed'}: goal <= 60 MB)"
            )
        size = variants["int8"]["file_bytes"] / variants["fp32"]["file_bytes"]
        verdicts.append(
            f"{bundle['kind']}: int8 file / fp32 file = {size:.3f} "
            f"({'met' if size <= 1 / 3 else 'missed'}: goal <= 0.333)"
        )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--data", type=Path, help="prepared dataset to train on")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-inference"))
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-inference.json"))
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    paths = arguments.bundles
    if not paths:
        if arguments.data is None:
            parser.error("give BUNDLE paths, or --data PREPARED to train them")
        paths = _train_defaults(arguments.data, arguments.work)

    results = bench_bundles(paths, samples=arguments.samples, repeat=arguments.repeat)
    atomic.write_json(arguments.out, results)

    machine = results["machine"]
    print(
        f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    )
    print()
    print(markdown(results))
    for verdict in goals(results):
        print(verdict)
    print(json.dumps({"written": str(arguments.out)}))


if __name__ == "__main__":
    main()
