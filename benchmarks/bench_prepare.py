"""Flows per second from a raw Zeek conn log to encoded features.

Builds a Zeek TSV log of at least one million rows by repeating the data
rows of the IoT-23 sample logs (with their three-space label quirk) under one
header, then times, in the same run and interleaved repeat by repeat:

- edgedp extended / paper: `read_flows` with the fields that `edgedp prepare`
  reads (encoder inputs, labels, `uid` and `ts`), plus
  `prepare.encode_frame` into a reused column-major buffer, as
  `edgedp prepare` runs them. Every line is still checked in full;
- edgedp all fields: `read_flows` yielding every record field plus
  `features.encode` (row-major output), the public API path;
- Polars floor: Polars' typed CSV reader alone on the same blocks and the
  columns the extended path reads, with no checks, labels or encoding. It
  is the lower bound of this design;
- Arrow floor: the same with Arrow's multithreaded CSV reader (pyarrow),
  the fastest maintained CSV parser installed with edgedp;
- pandas: a plain `pandas.read_csv` of the same file (tab separator, `#`
  comments skipped, no type checks and no encoding);
- with `--baseline-rev REV`: the same all-fields path of an earlier git
  revision, run from that revision's source tree in a child process (the
  child times only its reading and encoding, not its start-up).

Each case runs `--repeats` times; the script prints the median wall time,
the median CPU time of the process (all threads), and the load average
before and after. Other jobs on the machine inflate wall times more than
CPU times.

Usage: python benchmarks/bench_prepare.py [--rows N] [--repeats N] [--data DIR]
                                          [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas
import polars
import pyarrow
import pyarrow.csv

from edgedp import features, zeek
from edgedp.data import readers, sources
from edgedp.data.prepare import (
    EncodeBuffer,
    encode_frame,
    encoder_columns,
    record_fields,
)

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "iot23"
TARGET_FLOWS_PER_SECOND = 1_000_000
TARGET_PANDAS_RATIO = 3.0


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


def run_prepare_path(path: Path, feature_set: str) -> int:
    flows = 0
    buffer = EncodeBuffer(feature_set)
    for frame in readers.read_flows(path, fields=record_fields(feature_set)):
        encoded = encode_frame(frame, feature_set, out=buffer.rows(frame.height))
        flows += encoded.shape[0]
    return flows


def run_all_fields(path: Path) -> int:
    flows = 0
    for frame in readers.read_flows(path):
        encoded = features.encode(encoder_columns(frame, features.EXTENDED))
        flows += encoded.shape[0]
    return flows


# Physical columns of the benchmark log (the last three fields are joined by
# three spaces) and the ones the extended path reads.
FLOOR_NAMES = [*zeek.CONN_FIELDS[:-1], "tail"]
FLOOR_COLUMNS = [
    name
    for name in FLOOR_NAMES
    if name in {*record_fields(features.EXTENDED), *zeek.NUMERIC_FIELDS, "tail"}
]


def data_blocks(path: Path) -> Iterator[bytes]:
    """Yield the blocks that edgedp reads, without their directive lines."""
    for _, data, _ in sources.read_chunks(path):
        offset = 0
        while data.startswith(b"#", offset):
            offset = data.find(b"\n", offset) + 1
        yield data[offset:] if offset else data


def run_polars_floor(path: Path) -> int:
    """Read the extended path's columns with Polars alone, block by block."""
    schema = {
        name: polars.Float64 if name in zeek.NUMERIC_FIELDS else polars.String
        for name in FLOOR_NAMES
    }
    flows = 0
    for data in data_blocks(path):
        frame = (
            polars.scan_csv(
                data,
                has_header=False,
                separator="\t",
                quote_char=None,
                schema=schema,
                null_values=[zeek.UNSET, zeek.EMPTY],
            )
            .select(FLOOR_COLUMNS)
            .collect()
        )
        flows += frame.height
    return flows


def run_arrow_floor(path: Path) -> int:
    """Read the extended path's columns with Arrow alone, block by block."""
    read_options = pyarrow.csv.ReadOptions(column_names=FLOOR_NAMES)
    parse_options = pyarrow.csv.ParseOptions(
        delimiter="\t", quote_char=False, double_quote=False
    )
    convert_options = pyarrow.csv.ConvertOptions(
        include_columns=FLOOR_COLUMNS,
        column_types={
            name: pyarrow.float64() if name in zeek.NUMERIC_FIELDS else pyarrow.string()
            for name in FLOOR_COLUMNS
        },
        null_values=[zeek.UNSET, zeek.EMPTY],
        strings_can_be_null=True,
    )
    flows = 0
    for data in data_blocks(path):
        table = pyarrow.csv.read_csv(
            pyarrow.py_buffer(data),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        flows += table.num_rows
    return flows


def run_pandas(path: Path) -> int:
    names = list(zeek.CONN_FIELDS) + ["labels"]
    frame = pandas.read_csv(path, sep="\t", comment="#", header=None, names=names)
    return len(frame)


# Run in a child process against an older source tree, so it uses only the
# API that every revision has: read_flows, encoder_columns and encode.
_BASELINE_CHILD = """
import resource, sys, time
from edgedp import features
from edgedp.data import readers
from edgedp.data.prepare import encoder_columns

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

start, start_cpu = time.perf_counter(), cpu()
flows = 0
for frame in readers.read_flows(sys.argv[1]):
    flows += features.encode(encoder_columns(frame, "extended")).shape[0]
print(flows, time.perf_counter() - start, cpu() - start_cpu)
"""

Measurement = tuple[int, float, float]
"""Flows read, wall seconds and CPU seconds of one run."""


def timed(run: Callable[[Path], int]) -> Callable[[Path], Measurement]:
    """Wrap an in-process case so that it returns its own timings."""

    def measure(path: Path) -> Measurement:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        flows = run(path)
        return flows, time.perf_counter() - start, cpu_seconds() - start_cpu

    return measure


def baseline_case(revision: str, folder: Path) -> Callable[[Path], Measurement]:
    """Return a case that runs `_BASELINE_CHILD` on the source of `revision`."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", revision, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    environment = {**os.environ, "PYTHONPATH": str(folder / "src")}

    def run(path: Path) -> Measurement:
        result = subprocess.run(
            [sys.executable, "-c", _BASELINE_CHILD, str(path)],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        )
        flows, wall, cpu = result.stdout.split()
        return int(flows), float(wall), float(cpu)

    return run


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--baseline-rev",
        help="also time the all-fields path of this git revision, such as c2ab23b",
    )
    args = parser.parse_args()

    cases: dict[str, Callable[[Path], Measurement]] = {
        "edgedp extended": timed(
            lambda path: run_prepare_path(path, features.EXTENDED)
        ),
        "edgedp paper": timed(lambda path: run_prepare_path(path, features.PAPER)),
        "edgedp all fields": timed(run_all_fields),
        "Polars floor": timed(run_polars_floor),
        "Arrow floor": timed(run_arrow_floor),
        "pandas read_csv": timed(run_pandas),
    }

    with tempfile.TemporaryDirectory() as folder:
        if args.baseline_rev:
            name = f"{args.baseline_rev} all fields"
            cases[name] = baseline_case(args.baseline_rev, Path(folder) / "baseline")
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        path = Path(folder) / "bench.conn.log"
        rows = build_log(args.data, args.rows, path)
        size = path.stat().st_size / 1e6
        print(f"log: {rows} rows, {size:.0f} MB")
        print(
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"polars {polars.__version__}, pyarrow {pyarrow.__version__}, "
            f"pandas {pandas.__version__}, "
            f"cores {os.cpu_count()}, Polars threads {polars.thread_pool_size()}"
        )
        print(f"load average before: {load_average()}")

        # Interleaving the cases spreads changes in the machine's load over
        # all of them instead of penalising whichever runs during a burst.
        for _ in range(args.repeats):
            for name, run in cases.items():
                count, wall, cpu = run(path)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if count != rows:
                    sys.exit(f"{name} read {count} rows, expected {rows}")
        print(f"load average after: {load_average()}")

    print(f"{'':24}{'median s':>10}{'flows/s':>14}{'median CPU s':>14}")
    medians = {name: statistics.median(times) for name, times in walls.items()}
    for name in cases:
        print(
            f"{name:24}{medians[name]:10.3f}{rows / medians[name]:14,.0f}"
            f"{statistics.median(cpus[name]):14.3f}"
        )
    pandas_seconds = medians["pandas read_csv"]
    for name in ("edgedp extended", "edgedp paper"):
        speed = rows / medians[name]
        ratio = pandas_seconds / medians[name]
        print(
            f"{name}: {ratio:.2f}x pandas "
            f"(targets {TARGET_FLOWS_PER_SECOND:,} flows/s: "
            f"{'met' if speed >= TARGET_FLOWS_PER_SECOND else 'not met'}, "
            f"{TARGET_PANDAS_RATIO:.0f}x pandas: "
            f"{'met' if ratio >= TARGET_PANDAS_RATIO else 'not met'})"
        )


if __name__ == "__main__":
    main()
