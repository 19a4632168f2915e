"""The study's defaults, in one place.

Every default that reproduces the published study (Silva, dos Santos, Bezerra,
"Avaliação do Impacto de DP-SGD em Modelos Otimizados com TinyML") lives here.
Commands take these as option defaults, and `edgedp run` reads an experiment
file whose missing keys fall back to them.
"""

# The six detailed-labels the study classifies. Benign rows carry no
# detailed-label in IoT-23 (`-` or empty), so "Benign" comes from `label`.
STUDY_CLASSES: tuple[str, ...] = (
    "Benign",
    "PartOfAHorizontalPortScan",
    "Okiru",
    "DDoS",
    "C&C",
    "Attack",
)
BENIGN_CLASS = "Benign"

# Train, test and validation fractions of the study's random split.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.5, "test": 0.3, "validation": 0.2}

# Privacy levels of the study; None is the non-private baseline.
STUDY_EPSILONS: tuple[float | None, ...] = (None, 2.0, 1.0, 0.5)
DEFAULT_DELTA = 1e-5
DEFAULT_MAX_GRAD_NORM = 1.0

CLASSIFIER_EPOCHS = 15
AUTOENCODER_EPOCHS = 25

# Anomaly threshold on the autoencoder's reconstruction error that the study
# chose by looking at its plots.
STUDY_AE_THRESHOLD = 0.16

# Flows the study timed on its Raspberry Pi 4 gateway.
STUDY_BENCH_FLOWS = 7000

DEFAULT_SEED = 0
