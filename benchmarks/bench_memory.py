"""Peak resident memory of `edgedp inspect` and `edgedp prepare` by log size.

Builds Zeek TSV logs of about one and two million rows, the way
`bench_prepare.py` does, and runs each case in a child process of its own
on each log. The child reports its own peak resident set size
(`ru_maxrss`) when it exits. The cases:

- imports: a child that only imports what `edgedp prepare` imports, the
  floor under every other case;
- edgedp inspect: `edgedp inspect LOG`;
- edgedp prepare: `edgedp prepare LOG --out DIR` with the default settings;
- pandas read_csv: a plain `pandas.read_csv` of the same log, which keeps
  the whole file as a frame.

Reading streams the log, so edgedp's peak should not grow with the log,
while the pandas peak does. `prepare` also keeps the keys of every flow
read (uid, ts, class, file and line) until it assigns the splits, so its
peak grows with the number of flows, much more slowly than the log.

Usage: python benchmarks/bench_memory.py [--rows N] [--repeats N] [--data DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_prepare import DEFAULT_DATA, build_log, load_average

# Each child writes its peak resident set size (KiB on Linux) to stderr as
# the last line, also when the code it runs ends with SystemExit.
_REPORT = """
import atexit, resource, sys
atexit.register(lambda: sys.stderr.write(
    "\\npeak_rss_kib %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""
_IMPORTS = _REPORT + "import edgedp.cli.data, edgedp.data.prepare, polars, pyarrow\n"
_EDGEDP = _REPORT + (
    "sys.argv = ['edgedp', *sys.argv[1:]]\nfrom edgedp.cli import main\nmain()\n"
)
_PANDAS = _REPORT + (
    "import pandas\n"
    "frame = pandas.read_csv(sys.argv[1], sep='\\t', comment='#', header=None)\n"
    "print(len(frame))\n"
)


def peak_mib(code: str, *arguments: str) -> float:
    """Run `code` in a child Python process and return its peak RSS in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"child failed ({result.returncode}):\n{result.stderr}")
    last = result.stderr.strip().splitlines()[-1]
    name, value = last.split()
    if name != "peak_rss_kib":
        sys.exit(f"child did not report its peak memory:\n{result.stderr}")
    return int(value) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    print(f"python {platform.python_version()}, load average before: {load_average()}")
    results: dict[tuple[str, int], list[float]] = {}
    sizes: dict[int, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        logs = {}
        for factor in (1, 2):
            path = Path(folder) / f"bench-{factor}.conn.log"
            rows = build_log(args.data, args.rows * factor, path)
            logs[factor] = path
            sizes[factor] = (rows, path.stat().st_size / 1e6)

        for repeat in range(args.repeats):
            for factor, path in logs.items():
                out = Path(folder) / f"dataset-{factor}-{repeat}"
                cases = {
                    "imports": (_IMPORTS,),
                    "edgedp inspect": (_EDGEDP, "inspect", str(path)),
                    "edgedp prepare": (
                        _EDGEDP,
                        "prepare",
                        str(path),
                        "--out",
                        str(out),
                    ),
                    "pandas read_csv": (_PANDAS, str(path)),
                }
                for name, (code, *arguments) in cases.items():
                    peak = peak_mib(code, *arguments)
                    results.setdefault((name, factor), []).append(peak)
    print(f"load average after: {load_average()}")

    header = "".join(
        f"{f'{rows:,} rows, {size:.0f} MB':>26}" for rows, size in sizes.values()
    )
    print(f"median peak RSS in MiB{header}")
    for name in ("imports", "edgedp inspect", "edgedp prepare", "pandas read_csv"):
        cells = "".join(
            f"{statistics.median(results[name, factor]):26.0f}" for factor in sizes
        )
        print(f"{name:22}{cells}")


if __name__ == "__main__":
    main()
