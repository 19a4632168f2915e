"""Flows per second from a raw Zeek conn log to encoded features.

Builds a Zeek TSV log of at least one million rows by repeating the data
rows of the IoT-23 sample logs (with their three-space label quirk) under one
header, then times, in the same run:

- edgedp: `read_flows` (parse, type, check every line) plus
  `features.encode` on every block, as `edgedp prepare` does it;
- pandas: a plain `pandas.read_csv` of the same file (tab separator, `#`
  comments skipped, no type checks and no encoding).

Each is run `--repeats` times and the median is reported.

Usage: python benchmarks/bench_prepare.py [--rows N] [--repeats N] [--data DIR]
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas
import polars

from edgedp import features, zeek
from edgedp.data import readers
from edgedp.data.prepare import encoder_columns

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iot23"


def build_log(data: Path, rows: int, path: Path) -> int:
    """Write a Zeek TSV log of at least `rows` data rows; return the count."""
    header: list[bytes] = []
    body: list[bytes] = []
    for source in sorted((data / "zeek").iterdir()):
        raw = source.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        if not header:
            header = [line for line in lines if line.startswith(b"#")][:8]
        body += [line for line in lines if line and not line.startswith(b"#")]
    copies = -(-rows // len(body))
    with open(path, "wb") as handle:
        handle.write(b"\n".join(header) + b"\n")
        for _ in range(copies):
            handle.write(b"\n".join(body) + b"\n")
    return copies * len(body)


def run_edgedp(path: Path) -> int:
    flows = 0
    for frame in readers.read_flows(path):
        encoded = features.encode(encoder_columns(frame, features.EXTENDED))
        flows += encoded.shape[0]
    return flows


def run_pandas(path: Path) -> int:
    names = list(zeek.CONN_FIELDS) + ["labels"]
    frame = pandas.read_csv(path, sep="\t", comment="#", header=None, names=names)
    return len(frame)


def median_seconds(function, path: Path, repeats: int) -> tuple[float, int]:
    times = []
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.conn.log"
        rows = build_log(args.data, args.rows, path)
        size = path.stat().st_size / 1e6
        print(f"log: {rows} rows, {size:.0f} MB")
        print(
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"polars {polars.__version__}, pandas {pandas.__version__}, "
            f"cores {os.cpu_count()}"
        )

        edgedp_seconds, edgedp_rows = median_seconds(run_edgedp, path, args.repeats)
        pandas_seconds, pandas_rows = median_seconds(run_pandas, path, args.repeats)

    if edgedp_rows != rows or pandas_rows != rows:
        sys.exit(f"row counts differ: edgedp {edgedp_rows}, pandas {pandas_rows}")
    print(f"{'':28}{'median s':>10}{'flows/s':>14}")
    for name, seconds in (
        ("edgedp read+encode", edgedp_seconds),
        ("pandas read_csv", pandas_seconds),
    ):
        print(f"{name:28}{seconds:10.3f}{rows / seconds:14,.0f}")
    print(f"edgedp / pandas speed: {pandas_seconds / edgedp_seconds:.2f}x")


if __name__ == "__main__":
    main()
