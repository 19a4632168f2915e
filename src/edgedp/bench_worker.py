"""One inference measurement in a fresh process, for `edgedp bench`.

Run as `python -m edgedp.bench_worker --bundle B --variant V --features F.npy`.
The process imports only what the variant needs, so its peak resident
memory (`ru_maxrss`) is what a gateway running that format would pay:

- `python`: numpy and the features only, the floor of every variant.
- `torch`: torch and edgedp.models (torch eager, float32).
- `fp32`: the LiteRT float32 model; numpy and ai_edge_litert only.
- `int8`: the LiteRT int8 model fed float32 features, quantized per flow.
- `int8-input`: the LiteRT int8 model fed int8 features, quantized once.

It prints one JSON object on stdout: the wall-clock and CPU seconds for all
flows fed one at a time (one invoke per flow) and as one batch, the peak
resident set size in bytes (see `peak_resident_bytes`) after the
one-at-a-time phase and at the end (the batch phase keeps every flow's
activations in memory at once), and which heavy modules the process had
loaded. The module imports nothing but the standard library at the top.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

VARIANTS = ("python", "torch", "fp32", "int8", "int8-input")
WARMUP_FLOWS = 10
"""Flows run before timing, so one-time setup (XNNPACK packing of weights,
torch's first-call dispatch) is not charged to the measurement."""

HEAVY_MODULES = ("torch", "polars", "pyarrow", "litert_torch", "ai_edge_quantizer")


class Stopwatch:
    """Wall-clock and CPU seconds of a `with` block.

    CPU time (`time.process_time`, all threads of this process) leaves out
    the time the process waits while other jobs run, so it is the steadier
    figure on a shared machine. Wall time is what the study reported.
    """

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exception: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _time_calls(function: Callable[[int], object], flows: int) -> Stopwatch:
    for index in range(min(WARMUP_FLOWS, flows)):
        function(index)
    with Stopwatch() as watch:
        for index in range(flows):
            function(index)
    return watch


def _time_once(function: Callable[[], object]) -> Stopwatch:
    # The untimed first call resizes the input tensor to the batch size.
    function()
    with Stopwatch() as watch:
        function()
    return watch


Measured = tuple[Stopwatch, int, Stopwatch]
"""One-at-a-time timing, peak resident bytes after that phase, batch timing."""


def _measure_torch(bundle: Path, features, threads: int) -> Measured:
    import torch

    from edgedp.bundle import TORCH_WEIGHTS, load_bundle
    from edgedp.models import (
        Autoencoder,
        ModelSpec,
        build_model,
        reconstruction_error,
    )

    torch.set_num_threads(threads)
    opened = load_bundle(bundle, verify=False)
    model = build_model(ModelSpec.from_json(opened.manifest["model"]))
    state = torch.load(
        opened.path(TORCH_WEIGHTS), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    model.eval()
    is_autoencoder = isinstance(model, Autoencoder)
    inputs = torch.from_numpy(features)

    def score(batch):
        outputs = model(batch)
        if is_autoencoder:
            return reconstruction_error(batch, outputs)
        return outputs

    with torch.inference_mode():
        single = _time_calls(lambda i: score(inputs[i : i + 1]).numpy(), len(inputs))
        single_peak = peak_resident_bytes()
        batch = _time_once(lambda: score(inputs).numpy())
    return single, single_peak, batch


def _measure_litert(bundle: Path, features, variant: str, threads: int) -> Measured:
    from edgedp.edge.inference import load_runner

    model_format = "fp32" if variant == "fp32" else "int8"
    runner = load_runner(
        bundle, model_format, num_threads=threads, max_batch=len(features)
    )
    # predict checks the width once, which predict_one skips for speed.
    runner.predict(features[:1])

    if variant == "int8-input":
        # The gateway quantizes its features once, so that cost is timed
        # once, together with the per-flow loop. It keeps the float features,
        # which the autoencoder's error is measured against.
        def run_single(rows) -> None:
            for row, quantized in zip(rows, runner.quantize(rows), strict=True):
                runner.predict_one_quantized(quantized, row)

        run_single(features[:WARMUP_FLOWS])
        with Stopwatch() as single:
            run_single(features)
        single_peak = peak_resident_bytes()
        batch = _time_once(lambda: runner.predict_quantized(runner.quantize(features)))
        return single, single_peak, batch

    single = _time_calls(lambda i: runner.predict_one(features[i]), len(features))
    single_peak = peak_resident_bytes()
    batch = _time_once(lambda: runner.predict(features))
    return single, single_peak, batch


def _ru_maxrss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_resident_bytes() -> int:
    """Return the peak resident set size of this process image, in bytes.

    On Linux this is VmHWM from /proc/self/status. ru_maxrss is not used
    there, because Linux carries the parent's peak across fork and exec
    into it: a worker started by a parent holding torch (200 MB) would
    report at least 200 MB. Elsewhere it falls back to ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _ru_maxrss_bytes()


def measure(bundle: Path, variant: str, features_path: Path, threads: int) -> dict:
    """Measure one variant; return the JSON-able result."""
    import numpy as np

    features = np.load(features_path).astype(np.float32)
    single = single_peak = batch = None
    if variant == "torch":
        single, single_peak, batch = _measure_torch(bundle, features, threads)
    elif variant != "python":
        single, single_peak, batch = _measure_litert(bundle, features, variant, threads)

    return {
        "variant": variant,
        "flows": len(features),
        "single_seconds": single and single.wall,
        "single_cpu_seconds": single and single.cpu,
        "batch_seconds": batch and batch.wall,
        "batch_cpu_seconds": batch and batch.cpu,
        "single_peak_rss_bytes": single_peak,
        "peak_rss_bytes": peak_resident_bytes(),
        "ru_maxrss_bytes": _ru_maxrss_bytes(),
        "loaded_modules": {name: name in sys.modules for name in HEAVY_MODULES},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgedp.bench_worker")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--features", type=Path, required=True, help=".npy file")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    result = measure(
        arguments.bundle, arguments.variant, arguments.features, arguments.threads
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
