"""Check the gateway install: a fresh venv with the base package only.

Creates a virtual environment without system site packages, installs this
repository without extras (`pip install REPO`, as a gateway would install
`edgedp`), and checks in it that:

- torch, polars and pyarrow are not installed;
- `edgedp --help` runs;
- `edgedp serve` classifies every flow of an IoT-23 Zeek log with a real
  bundle;
- each training command exits with status 2 and names the `train` extra.

It prints the time of each step. The bundle is trained with the calling
interpreter (which needs the `train` extra) unless `--bundle` names one.

The test suite does not run this script, because the install needs the
package index, and it took 9 s with pip's cache warm (docs/benchmarks.md).
Instead, `tests/test_serve.py` checks the same import boundary in-process
by blocking the training modules.

Usage: python benchmarks/check_gateway_install.py [--bundle DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data" / "iot23"
LOG = "zeek/CTU-Honeypot-Capture-5-1.conn.log.labeled"
LOG_ROWS = 1374
TRAINING_MESSAGE = "pip install 'edgedp[train]'"


def _run(command: list[str], **options) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **options)
    return result, time.perf_counter() - start


def _train_bundle(data: Path, out: Path) -> Path:
    from edgedp.data.prepare import prepare_dataset
    from edgedp.export import optimize_bundle
    from edgedp.train import train_bundle

    dataset = prepare_dataset(
        [data / "zeek", data / "csv", data / "mixed"], out / "prepared"
    )
    bundle = train_bundle(dataset, out / "bundle", model="ff", epochs=1)
    return optimize_bundle(bundle, calibration_size=200).root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="gateway-install-") as folder:
        work = Path(folder)
        bundle = args.bundle or _train_bundle(args.data, work)
        environment = work / "venv"

        start = time.perf_counter()
        venv.create(environment, with_pip=True, system_site_packages=False)
        print(f"venv created in {time.perf_counter() - start:.1f} s")
        python = environment / "bin" / "python"
        edgedp = environment / "bin" / "edgedp"

        result, seconds = _run(
            [str(python), "-m", "pip", "install", "--quiet", str(REPOSITORY)]
        )
        print(f"pip install (base only): exit {result.returncode} in {seconds:.1f} s")
        if result.returncode != 0:
            print(result.stderr)
            return 1

        listing, _ = _run([str(python), "-m", "pip", "list", "--format=freeze"])
        installed = {line.split("==")[0].lower() for line in listing.stdout.split()}
        print(f"installed: {sorted(installed)}")
        for heavy in ("torch", "polars", "pyarrow"):
            if heavy in installed:
                failures.append(f"{heavy} is installed by the base package")

        result, seconds = _run([str(edgedp), "--help"])
        print(f"edgedp --help: exit {result.returncode} in {seconds:.1f} s")
        if result.returncode != 0:
            failures.append(f"edgedp --help failed: {result.stderr}")

        result, seconds = _run(
            [str(edgedp), "serve", str(bundle), "--input", str(args.data / LOG)]
            + ["--all"]
        )
        verdicts = len(result.stdout.splitlines())
        print(
            f"edgedp serve: exit {result.returncode}, {verdicts} verdicts "
            f"in {seconds:.1f} s"
        )
        if result.returncode != 0 or verdicts != LOG_ROWS:
            failures.append(f"serve gave {verdicts} verdicts: {result.stderr}")

        commands = [
            ["train", "--data", str(work), "--epsilon", "none", "--out", "x"],
            ["evaluate", str(bundle)],
            ["optimize", str(bundle), "--force"],
            ["prepare", str(args.data / LOG), "--out", str(work / "prepared-2")],
            ["inspect", str(args.data / LOG)],
        ]
        for command in commands:
            result, _ = _run([str(edgedp), *command])
            output = " ".join((result.stdout + result.stderr).split())
            named = TRAINING_MESSAGE in output
            print(
                f"edgedp {command[0]}: exit {result.returncode}, names extra: {named}"
            )
            if result.returncode != 2 or not named:
                failures.append(f"edgedp {command[0]}: {output[-300:]}")

    for failure in failures:
        print(f"FAILED: {failure}")
    print("gateway install check:", "failed" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
