"""The published numbers of the study that edgedp reproduces.

Source: Silva, dos Santos, Bezerra, "Avaliação do Impacto de DP-SGD em
Modelos Otimizados com TinyML". The study trained Keras models with DP-Adam
from TensorFlow Privacy on IoT-23 and timed them on a Raspberry Pi 4 with
the tflite runtime, feeding 7000 test flows. These are the only values in
the report that are not computed from the run's own files.
"""

from __future__ import annotations

from typing import Any

SOURCE = (
    'Silva, dos Santos, Bezerra: "Avaliação do Impacto de DP-SGD em Modelos '
    'Otimizados com TinyML"'
)

# Classifier scores on the test split per privacy level (None: no DP).
# NOTE: the study does not say how precision, recall and F1 are averaged over
# classes; the report shows them beside edgedp's weighted averages.
CLASSIFIER: dict[float | None, dict[str, float]] = {
    None: {"accuracy": 0.93, "precision": 0.92, "recall": 0.93, "f1": 0.92},
    2.0: {"accuracy": 0.89, "precision": 0.89, "recall": 0.89, "f1": 0.87},
    1.0: {"accuracy": 0.88, "precision": 0.87, "recall": 0.88, "f1": 0.86},
    0.5: {"accuracy": 0.87, "precision": 0.87, "recall": 0.87, "f1": 0.85},
}

# The study reports no autoencoder scores, only that the private
# autoencoders could no longer separate benign from malicious flows.
AUTOENCODER_FINDING = (
    "the private autoencoders could no longer separate benign from malicious "
    "traffic (no scores published)"
)
AUTOENCODER_THRESHOLD = 0.16

# Raspberry Pi 4 measurements for 7000 flows, per model and format: seconds,
# memory in MB and model file size in MB. The study's formats map to
# edgedp's as Keras -> torch (the framework model), tflite -> fp32 and
# int8 -> int8 (float inputs quantized on every call).
PI_FLOWS = 7000
PI_DEVICE = "Raspberry Pi 4, tflite runtime"
EFFICIENCY: dict[str, dict[str, dict[str, float]]] = {
    "classifier": {
        "torch": {"seconds": 35.22, "memory_mb": 612, "size_mb": 0.18},
        "fp32": {"seconds": 6.60, "memory_mb": 112, "size_mb": 0.05},
        "int8": {"seconds": 12.86, "memory_mb": 112, "size_mb": 0.02},
    },
    "autoencoder": {
        "torch": {"seconds": 36.39, "memory_mb": 630, "size_mb": 0.24},
        "fp32": {"seconds": 7.09, "memory_mb": 112, "size_mb": 0.06},
        "int8": {"seconds": 13.66, "memory_mb": 112, "size_mb": 0.02},
    },
}


def as_json() -> dict[str, Any]:
    """Return the published numbers for `report.json`."""
    return {
        "source": SOURCE,
        "classifier": [
            {"epsilon": epsilon, **scores} for epsilon, scores in CLASSIFIER.items()
        ],
        "autoencoder": {
            "finding": AUTOENCODER_FINDING,
            "threshold": AUTOENCODER_THRESHOLD,
        },
        "efficiency": {"flows": PI_FLOWS, "device": PI_DEVICE, "models": EFFICIENCY},
    }
