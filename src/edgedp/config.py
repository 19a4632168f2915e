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
# Largest target epsilon that training and the experiment file accept. At
# epsilon 20 a membership test may already reach a true-positive rate e^20
# (about 5e8) times its false-positive rate, so the guarantee protects
# nothing in practice. Past it the PRV accountant's noise calibration slows
# down until it hangs or runs out of memory (docs/privacy.md gives the
# measurements and the command).
MAX_EPSILON = 20.0

# Smallest delta that training and the experiment file accept. At 1e-12
# Opacus's PRV accountant ran for minutes on some settings and overstated
# epsilon on others, and below about 1e-13 it stops with "Floating point
# errors will dominate". 1e-10 only matters for about 10^9 training rows.
MIN_DELTA = 1e-10

CLASSIFIER_EPOCHS = 15
AUTOENCODER_EPOCHS = 25

# Anomaly threshold on the autoencoder's reconstruction error that the study
# chose by looking at its plots.
STUDY_AE_THRESHOLD = 0.16

# Flows the study timed on its Raspberry Pi 4 gateway.
STUDY_BENCH_FLOWS = 7000

DEFAULT_SEED = 0
# Seeds are whole numbers from 0 to MAX_SEED in the experiment file and the
# commands. numpy's SeedSequence, which splits them, rejects negative seeds.
MAX_SEED = 2**32 - 1

# Training seeds: every model and privacy level is trained once per seed, and
# the report gives the mean and standard deviation over them.
STUDY_SEEDS: tuple[int, ...] = (0, 1, 2)

# `paper` encodes only the features the study names (ports, protocol,
# connection state, duration). `extended` adds service, byte and packet
# counts, missed bytes and history flags.
FEATURE_SET = "extended"
# `random` is the study's stratified split. `independent` assigns each flow
# alone, and `capture` keeps each input file in one split.
SPLIT_METHOD = "random"

# The next three blocks repeat the defaults of `edgedp train`, `edgedp
# optimize` and `edgedp bench`, whose modules import torch or numpy, for the
# experiment file. tests/test_experiment.py checks that they stay equal.

# Expected Poisson batch size (rows per step) of plain and DP training, for
# both models. The training benchmark chose it.
BATCH_SIZE = 2048

# Source of the flows that calibrate the int8 ranges: `validation`, `train`,
# `synthetic` or `auto`. `auto` picks synthetic flows for DP-trained bundles
# and validation flows for non-private ones (docs/shrinking.md).
CALIBRATION_SOURCE = "auto"
CALIBRATION_SIZE = 1000

# Timed repeats per format in `edgedp bench`. The report gives their median.
BENCH_REPEATS = 5

# Members that `edgedp audit` draws for its membership inference attack, and
# as many non-members. Fewer are drawn when the training or test rows run out.
MEMBERSHIP_SAMPLES = 5000
# The minimum number of members per side that `edgedp audit --samples` and the
# experiment file's `[membership] samples` accept. With n rows per side and
# no signal, the attack's ROC-AUC has a standard error of
# sqrt((2n + 1) / (12 n^2)), that of the Mann-Whitney U statistic without
# ties. That is 0.041 at 100 rows and 0.5 at 1 row, where it measures nothing.
MIN_MEMBERSHIP_SAMPLES = 100

# Small IoT-23 captures that `edgedp download` fetches when no logs are given.
# Together they hold Benign, PartOfAHorizontalPortScan, DDoS and C&C flows.
# The study's Okiru and Attack classes are only in captures of several GB.
IOT23_SCENARIOS: tuple[str, ...] = (
    "CTU-IoT-Malware-Capture-34-1",
    "CTU-IoT-Malware-Capture-20-1",
    "CTU-IoT-Malware-Capture-42-1",
    "CTU-IoT-Malware-Capture-44-1",
    "CTU-Honeypot-Capture-4-1",
    "CTU-Honeypot-Capture-5-1",
)

# Settings that `edgedp run --quick` replaces, as section -> key -> value
# (model sections nest one level deeper). The sample and the grid are sized
# for a run of a few minutes on two cores (an estimate, not a measurement).
QUICK_PROFILE: dict[str, dict[str, object]] = {
    "prepare": {"max_rows_per_class": 2000},
    "train": {
        "seeds": (0,),
        "epsilons": (None, 1.0),
        # A few thousand rows with batches of 2048 give sampling rates near
        # 0.5. Calibrating the noise multiplier is slow there and DP-SGD
        # learns little, so the sample gets smaller batches.
        "classifier": {"epochs": 3, "batch_size": 256},
        "autoencoder": {"epochs": 5, "batch_size": 256},
    },
    "optimize": {"calibration_size": 200},
    "bench": {"samples": 1000, "repeats": 2},
}
