"""Benchmark: int8 accuracy for each calibration source, on the test split.

For each bundle, converts the torch model to LiteRT float32 once. Then it
quantizes it to int8 with activation ranges from each calibration source
(`validation`, `train` and `synthetic`) and from `uniform` draws (every
feature uniform in [0, 1], to show what the encoder-aware synthetic draws
gain), once per calibration seed. It scores torch, float32 and every int8
model on the test split: accuracy for a classifier, ROC-AUC of benign
against malicious flows for an autoencoder.
The test split is used because the `validation` source calibrates on the
validation split, which would flatter it there.

Usage:

    python benchmarks/bench_calibration.py BUNDLE... [--size 1000]
        [--seeds 0 1 2] [--out bench-calibration.json]

The bundles need `model.pt` and the prepared dataset recorded in their
`bundle.json`; they are not modified.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from edgedp import atomic
from edgedp.bundle import load_bundle
from edgedp.edge.inference import LiteRTModel, Runner
from edgedp.export import (
    CALIBRATION_SOURCES,
    DEFAULT_CALIBRATION_SIZE,
    calibration_features,
    convert_fp32,
    load_torch_model,
    open_dataset,
    quantize_int8,
    torch_outputs,
    validation_score,
)

UNIFORM = "uniform"
"""Baseline column: each feature drawn uniformly from [0, 1], the fallback of
`synthetic_features` for feature names it does not know."""
SOURCES = (*CALIBRATION_SOURCES, UNIFORM)


def _runner(bundle, content: bytes, model_format: str) -> Runner:
    return Runner(
        LiteRTModel(content),
        kind=bundle.model_kind,
        classes=bundle.classes,
        model_format=model_format,
    )


def measure(path: Path, size: int, seeds: list[int]) -> dict:
    """Score one bundle's torch, float32 and int8 models per calibration source."""
    bundle = load_bundle(path)
    dataset = open_dataset(bundle, None)
    test = dataset.split("test")
    model = load_torch_model(bundle)
    width = model.spec.input_dim

    def score(outputs) -> float | None:
        (value,) = validation_score(
            bundle.model_kind, bundle.classes, test.labels, outputs
        ).values()
        return value

    fp32 = convert_fp32(model, width)
    result = {
        "bundle": str(path),
        "kind": bundle.model_kind,
        "epsilon": bundle.manifest.get("privacy", {}).get("epsilon"),
        "metric": "accuracy" if bundle.model_kind == "classifier" else "roc_auc",
        "test_flows": len(test),
        "torch": score(torch_outputs(model, test.features)),
        "fp32": score(_runner(bundle, fp32, "fp32").predict(test.features)),
        "int8": {},
    }
    for source in SOURCES:
        values = []
        for seed in seeds:
            flows = calibration_features(
                "synthetic" if source == UNIFORM else source,
                size=size,
                n_features=width,
                dataset=dataset,
                # Names that match no feature set make synthetic draws uniform.
                feature_names=None
                if source == UNIFORM
                else bundle.manifest.get("feature_names"),
                seed=seed,
            )
            int8 = _runner(bundle, quantize_int8(fp32, flows), "int8")
            values.append(score(int8.predict(test.features)))
        result["int8"][source] = {
            "values": values,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return result


def markdown(results: list[dict]) -> str:
    """Render one row per bundle: torch, float32 and int8 per source."""
    sources = list(SOURCES)
    lines = [
        "| bundle | epsilon | metric | torch | fp32 | "
        + " | ".join(f"int8, {s}" for s in sources)
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(sources),
    ]
    for result in results:
        cells = [
            f"{result['int8'][s]['median']:.4f} "
            f"[{result['int8'][s]['min']:.4f}, {result['int8'][s]['max']:.4f}]"
            for s in sources
        ]
        epsilon = result["epsilon"]
        if isinstance(epsilon, (int, float)):
            epsilon = f"{epsilon:.3g}"
        lines.append(
            f"| {Path(result['bundle']).name} | {epsilon} | {result['metric']} | "
            f"{result['torch']:.4f} | {result['fp32']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=DEFAULT_CALIBRATION_SIZE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-calibration.json"))
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    results = [
        measure(path, arguments.size, arguments.seeds) for path in arguments.bundles
    ]
    atomic.write_json(
        arguments.out,
        {"size": arguments.size, "seeds": arguments.seeds, "bundles": results},
    )
    print(
        f"int8 calibrated on {arguments.size} flows, seeds {arguments.seeds}; "
        "test split; median [min, max] over seeds"
    )
    print(markdown(results))


if __name__ == "__main__":
    main()
