"""Gateway runtime: throughput, follow-mode delay and peak memory of `serve`.

Runs three measurements on one CPU core (`os.sched_setaffinity`), each with
a naive baseline in the same run:

1. Batch mode: flows per second from Zeek TSV lines to verdicts, through
   `edgedp.edge.serve.Gateway` reading a log of `--rows` flows (the IoT-23
   Zeek samples repeated under one header). It runs once with the alert
   writer replaced by a counter (lines to verdicts) and once writing the
   alert lines of the flagged flows to /dev/null. Baseline: the obvious
   per-flow loop
   (`zeek.split_line`, `zeek.parse_number`, a one-row `features.encode` and
   one float32 `predict_one` invoke per flow) on `--naive-rows` flows.
2. Follow mode: a writer process (on core 1) appends flows to a live log at
   `--rate` flows per second for `--seconds` seconds, stamping each with a
   unique uid. `edgedp serve --follow --all` (int8, default batching) reads
   it on core 0 and writes every verdict to a pipe. This script stamps each
   verdict on arrival and reports the delay from the write of a line to the
   arrival of its verdict. Baselines: serve with `--batch 1 --model fp32`
   (one float invoke per flow), and the naive per-flow loop of (1) behind
   a `readline` poll of the log, the simplest follower one would write.
3. Peak resident memory (VmHWM of the follower process, read from /proc
   before it stops) of each follow-mode run.

The bundle is trained and converted by this script (`--epochs`) unless
`--bundle` names one. Each throughput case runs `--repeats` times and the
median is reported. The load average before and after shows whether other
jobs shared the machine.

Usage: python benchmarks/bench_serve.py [--rows N] [--repeats N] [--rate N]
       [--seconds S] [--bundle DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iot23"
ZEEK_LOGS = (
    "zeek/CTU-IoT-Malware-Capture-34-1.conn.log.labeled.gz",
    "zeek/CTU-IoT-Malware-Capture-42-1.conn.log.labeled",
    "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled",
)
GOAL_FLOWS_PER_SECOND = 100_000
GOAL_P99_MS = 50.0
# The goal is 60 MB (10^6 bytes); VmHWM and the output are in MiB (2^20 bytes).
GOAL_RSS_MIB = 60e6 / 2**20
CORE = 0


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _load_logs(data: Path) -> tuple[list[bytes], list[bytes]]:
    """Return the header of the first log and the data lines of all three."""
    header: list[bytes] = []
    rows: list[bytes] = []
    for index, name in enumerate(ZEEK_LOGS):
        lines = _read(data / name).replace(b"\r\n", b"\n").split(b"\n")
        if index == 0:
            header = [line for line in lines if line.startswith(b"#")]
            header = [line for line in header if not line.startswith(b"#close")]
        rows += [line for line in lines if line and not line.startswith(b"#")]
    return header, rows


def _train_bundle(data: Path, out: Path, epochs: int) -> Path:
    from edgedp.data.prepare import prepare_dataset
    from edgedp.export import optimize_bundle
    from edgedp.train import train_bundle

    dataset = prepare_dataset(
        [data / "zeek", data / "csv", data / "mixed"], out / "prepared"
    )
    bundle = train_bundle(dataset, out / "bundle", model="ff", epochs=epochs)
    optimize_bundle(bundle)
    return bundle.root


class _VerdictCounter:
    """Stands in for the alert writer to time lines to verdicts alone."""

    def write(self, flows, verdicts) -> int:
        return int(np.count_nonzero(verdicts.alert))

    def close(self) -> None:
        pass


def _batch_throughput(
    bundle: Path, log: Path, rows: int, repeats: int, *, write_alerts: bool
) -> dict:
    from edgedp.edge.serve import Gateway, ServeSettings

    times, cpu, alerts = [], [], 0
    for _ in range(repeats):
        settings = ServeSettings(
            bundle=bundle, input=str(log), alerts=os.devnull, stats_interval=3600
        )
        gateway = Gateway(settings)
        if not write_alerts:
            gateway.writer.close()
            gateway.writer = _VerdictCounter()  # type: ignore[assignment]
        start, start_cpu = time.perf_counter(), time.process_time()
        totals = gateway.run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        assert totals["flows"] == rows, totals
        alerts = totals["alerts"]
    median = statistics.median(times)
    return {
        "seconds": median,
        "cpu_seconds": statistics.median(cpu),
        "flows_per_second": rows / median,
        "alerts": alerts,
    }


def _stage_times(bundle: Path, log: Path) -> dict:
    """CPU µs per flow of each step of the batch path, run step by step."""
    from edgedp import features
    from edgedp.edge.follow import FileSource
    from edgedp.edge.records import LineParser, categorical, needed_fields
    from edgedp.edge.serve import Gateway, ServeSettings

    gateway = Gateway(ServeSettings(bundle=bundle, input=str(log)))
    gateway.source.close()
    source = FileSource(log)
    parser = LineParser(needed_fields(gateway.feature_set))
    stages = dict.fromkeys(["read", "parse", "categories", "encode", "predict"], 0.0)
    flows = 0
    clock = time.process_time
    while not source.finished:
        start = clock()
        chunk = source.read(0)
        read = clock()
        stages["read"] += read - start
        if chunk is None:
            continue
        parsed = parser.parse(chunk)
        parsed_at = clock()
        columns = dict(parsed.columns)
        for name in gateway._categorical_fields:
            columns[name] = categorical(columns[name])
        encoded_at = clock()
        rows = features.encode(columns, gateway.feature_set)
        featured_at = clock()
        gateway.rule.decide(gateway.runner.predict(rows))
        done = clock()
        stages["parse"] += parsed_at - read
        stages["categories"] += encoded_at - parsed_at
        stages["encode"] += featured_at - encoded_at
        stages["predict"] += done - featured_at
        flows += len(parsed)
    return {name: seconds / flows * 1e6 for name, seconds in stages.items()}


def _naive_throughput(bundle: Path, header: list[bytes], rows: list[bytes]) -> dict:
    """Per-flow parse, encode and one float32 invoke: the obvious gateway."""
    from edgedp import features, zeek
    from edgedp.bundle import load_bundle
    from edgedp.edge.inference import load_runner

    opened = load_bundle(bundle)
    runner = load_runner(opened, "fp32")
    parsed = zeek.parse_header(line.decode() for line in header)
    needed = features.input_fields(features.EXTENDED)
    benign = opened.classes.index("Benign")

    start = time.perf_counter()
    flagged = 0
    for line in rows:
        values = zeek.split_line(line.decode(), parsed)
        record = dict(zip(parsed.fields, values, strict=True))
        columns = {}
        for name in needed:
            value = record[name]
            if name in zeek.NUMERIC_FIELDS:
                columns[name] = [zeek.parse_number(value, parsed)]
            else:
                columns[name] = [None if zeek.is_missing(value, parsed) else value]
        row = features.encode(columns, features.EXTENDED)[0]
        probabilities = runner.predict_one(row)
        flagged += int(np.argmax(probabilities)) != benign
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "flows_per_second": len(rows) / seconds}


WRITER = r"""
import json, sys, time
log, rate, seconds, header_path, rows_path = sys.argv[1:6]
rate, seconds = float(rate), float(seconds)
header = open(header_path, "rb").read()
rows = open(rows_path, "rb").read().split(b"\n")
stamps = {}
with open(log, "ab", buffering=0) as handle:
    handle.write(header)
    start = time.perf_counter()
    for index in range(int(rate * seconds)):
        due = start + index / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        fields = rows[index % len(rows)].split(b"\t")
        uid = "B%09d" % index
        fields[1] = uid.encode()
        stamps[uid] = time.time()
        handle.write(b"\t".join(fields) + b"\n")
json.dump(stamps, sys.stdout)
"""


NAIVE_FOLLOWER = r"""
import json, sys, time
import numpy as np
from edgedp import features, zeek
from edgedp.bundle import load_bundle
from edgedp.edge.inference import load_runner

bundle, log = sys.argv[1:3]
opened = load_bundle(bundle)
runner = load_runner(opened, "fp32")
needed = features.input_fields(features.EXTENDED)
header_lines = []
print("ready", flush=True)
with open(log, "rb") as handle:
    header = None
    while True:
        raw = handle.readline()
        if not raw.endswith(b"\n"):
            time.sleep(0.01)
            handle.seek(-len(raw), 1)
            continue
        line = raw.decode()
        if line.startswith("#"):
            header_lines.append(line)
            header = zeek.parse_header(header_lines)
            continue
        record = dict(zip(header.fields, zeek.split_line(line, header)))
        columns = {}
        for name in needed:
            value = record[name]
            if name in zeek.NUMERIC_FIELDS:
                columns[name] = [zeek.parse_number(value, header)]
            else:
                columns[name] = [None if zeek.is_missing(value, header) else value]
        probabilities = runner.predict_one(features.encode(columns)[0])
        verdict = opened.classes[int(np.argmax(probabilities))]
        print(json.dumps({"uid": record["uid"], "class": verdict}), flush=True)
"""


def _peak_rss_mib(pid: int) -> float:
    """Return VmHWM of a live process in MiB (it restarts at exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _follow_delay(
    header: list[bytes],
    rows: list[bytes],
    work: Path,
    *,
    rate: float,
    seconds: float,
    command: list[str],
) -> dict:
    """Delay from a line's write to its verdict, and the server's peak RSS.

    `command` runs the follower; `{log}` in it is replaced by the live log.
    """
    log = work / f"follow-{time.monotonic_ns()}" / "conn.log"
    log.parent.mkdir()
    header_path = log.parent / "header"
    rows_path = log.parent / "rows"
    header_path.write_bytes(b"\n".join(header) + b"\n")
    rows_path.write_bytes(b"\n".join(rows[:20000]))
    log.touch()

    server = subprocess.Popen(
        ["taskset", "-c", str(CORE)]
        + [part.replace("{log}", str(log)) for part in command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    arrivals: dict[str, float] = {}

    def read_verdicts() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith(b"{"):
                arrivals[json.loads(line)["uid"]] = time.time()

    reader = threading.Thread(target=read_verdicts, daemon=True)
    reader.start()
    time.sleep(3.0)  # Let serve load the bundle before the clock starts.

    other_core = {1} if os.cpu_count() and os.cpu_count() > 1 else {CORE}
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(log), str(rate), str(seconds)]
        + [str(header_path), str(rows_path)],
        capture_output=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, other_core),
    )
    written = json.loads(writer.stdout)
    deadline = time.monotonic() + 30
    while len(arrivals) < len(written) and time.monotonic() < deadline:
        time.sleep(0.05)

    peak_rss = _peak_rss_mib(server.pid)
    server.terminate()
    server.wait(timeout=30)
    reader.join(timeout=5)

    delays = np.array(
        [arrivals[uid] - stamp for uid, stamp in written.items() if uid in arrivals]
    )
    # A flow without a verdict 30 s after the writer stopped counts as
    # infinitely late, so the percentiles of a follower that falls behind
    # are not flattered by dropping its missing verdicts.
    missing = len(written) - len(delays)
    padded = np.concatenate([delays, np.full(missing, np.inf)])
    return {
        "flows_written": len(written),
        "verdicts": len(delays),
        "p50_ms": float(np.percentile(padded, 50) * 1000),
        "p99_ms": float(np.percentile(padded, 99) * 1000),
        "max_ms": float(padded.max() * 1000),
        "peak_rss_mib": peak_rss,
        "exit_code": server.returncode,
    }


def _machine() -> dict:
    import ai_edge_litert

    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--stages-only",
        action="store_true",
        help="only print the CPU time per flow of each batch step",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        work = Path(folder)
        bundle = args.bundle or _train_bundle(args.data, work, args.epochs)
        header, rows = _load_logs(args.data)
        repeated = (rows * (args.rows // len(rows) + 1))[: args.rows]
        log = work / "conn.log"
        log.write_bytes(b"\n".join(header + repeated) + b"\n")

        os.sched_setaffinity(0, {CORE})
        machine = _machine()
        print(f"machine: {machine}", flush=True)
        stages = _stage_times(bundle, log)
        print(f"batch steps, CPU µs per flow: {stages}", flush=True)
        if args.stages_only:
            return

        verdicts = _batch_throughput(
            bundle, log, args.rows, args.repeats, write_alerts=False
        )
        print(f"batch serve, verdicts only: {verdicts}", flush=True)
        batch = _batch_throughput(
            bundle, log, args.rows, args.repeats, write_alerts=True
        )
        print(f"batch serve, alert lines to /dev/null: {batch}", flush=True)
        naive = _naive_throughput(bundle, header, rows[: args.naive_rows])
        print(f"batch naive per-flow fp32: {naive}", flush=True)

        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        edgedp = str(Path(sys.executable).with_name("edgedp"))
        serve = [edgedp, "serve", str(bundle), "--input", "{log}", "--follow"]
        serve += ["--all", "--stats-interval", "3600"]
        runs = {
            "follow": serve,
            "follow_batch_1_fp32": [*serve, "--batch", "1", "--model", "fp32"],
            "follow_naive": [
                sys.executable,
                "-c",
                NAIVE_FOLLOWER,
                str(bundle),
                "{log}",
            ],
        }
        follow = {}
        for name, command in runs.items():
            follow[name] = _follow_delay(
                header,
                rows,
                work,
                rate=args.rate,
                seconds=args.seconds,
                command=command,
            )
            print(f"{name}: {follow[name]}", flush=True)
        print(f"load average after: {os.getloadavg()}")

        print(
            json.dumps(
                {
                    "goals": {
                        "flows_per_second": GOAL_FLOWS_PER_SECOND,
                        "p99_ms": GOAL_P99_MS,
                        "peak_rss_mib": GOAL_RSS_MIB,
                    },
                    "batch_verdicts": verdicts,
                    "batch_alerts": batch,
                    "batch_naive": naive,
                    **follow,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
