"""Plain and DP-SGD training of the study's two models (`edgedp train`).

`train_bundle` reads a prepared dataset, trains the feed-forward classifier
on every training row or the autoencoder on the Benign training rows, scores
the result on the validation split and writes a bundle folder with the
weights, `bundle.json` and `train.log`.

Plain training shuffles the rows each epoch into fixed-size batches. DP
training draws Poisson batches by index (`edgedp.privacy.PoissonSampler`)
and gathers their rows from in-memory tensors, so no per-row Dataset or
DataLoader sits in the loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import math
import platform
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import config
from edgedp.atomic import check_replaceable, check_writable
from edgedp.bundle import (
    MANIFEST_NAME,
    TORCH_WEIGHTS,
    Bundle,
    create_bundle,
    sha256_file,
)
from edgedp.dataset import (
    SPLITS,
    DatasetError,
    PreparedDataset,
    Split,
    load_prepared,
)

logger = logging.getLogger(__name__)

MODEL_CHOICES: dict[str, str] = {"ff": "classifier", "ae": "autoencoder"}
DEFAULT_EPOCHS: dict[str, int] = {
    "ff": config.CLASSIFIER_EPOCHS,
    "ae": config.AUTOENCODER_EPOCHS,
}
# Expected rows per step and Adam learning rates. A DP step has a fixed cost
# in Python and Opacus hooks, so rows per second grow with the batch
# (benchmarks/bench_train.py, docs/benchmarks.md). A larger batch also lowers
# the noise per row (sigma / batch) at a given epsilon. Past 2048 rows the 15
# or 25 epochs leave too few steps on the IoT-23 samples, and validation F1
# and ROC-AUC fall at every epsilon.
# NOTE: batch sizes and learning rates were chosen by validation F1 (ff) and
# ROC-AUC (ae) on the IoT-23 sample logs, a choice outside the DP guarantee.
DEFAULT_BATCH_SIZE: dict[str, int] = {"ff": 2048, "ae": 2048}
DEFAULT_LEARNING_RATE: dict[str, float] = {"ff": 1e-2, "ae": 1e-2}
# False-positive rate on benign validation flows that picks the autoencoder's
# second threshold; the first is the study's fixed 0.16.
DEFAULT_TARGET_FPR = 0.01
# Intra-op threads. On an idle 2-core machine a second thread made DP
# training 1.2 to 1.6 times faster at batches of 2048 and 4096. When another
# process shares the cores, OpenMP threads that wait for each other slow it
# several times over (benchmarks/bench_train.py measures both). `edgedp run`
# trains grid cells in parallel processes, so each gets one thread.
DEFAULT_THREADS = 1
TRAIN_LOG = "train.log"


class TrainingError(ValueError):
    """Training cannot start on this dataset with these settings."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines one training run, checked on creation.

    `epochs`, `batch_size`, `learning_rate` and `threads` left as None take
    the model's default. `epsilon` None trains without DP, and `delta` and
    `max_grad_norm` then go unused.
    """

    model: str = "ff"
    epsilon: float | None = None
    delta: float = config.DEFAULT_DELTA
    max_grad_norm: float = config.DEFAULT_MAX_GRAD_NORM
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = config.DEFAULT_SEED
    clipping: str = "ghost"
    target_fpr: float = DEFAULT_TARGET_FPR
    threads: int | None = None
    secure_randomness: bool = False

    def __post_init__(self) -> None:
        from edgedp.privacy import (
            CLIPPING_MODES,
            epsilon_limit_message,
            min_delta_message,
        )

        if self.model not in MODEL_CHOICES:
            raise TrainingError(
                f"unknown model {self.model!r}; use ff (classifier) or ae (autoencoder)"
            )
        defaults = {
            "epochs": DEFAULT_EPOCHS[self.model],
            "batch_size": DEFAULT_BATCH_SIZE[self.model],
            "learning_rate": DEFAULT_LEARNING_RATE[self.model],
            "threads": DEFAULT_THREADS,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

        if self.epsilon is not None and not (
            math.isfinite(self.epsilon) and self.epsilon > 0
        ):
            raise TrainingError(
                f"epsilon must be a positive number, got {self.epsilon}; "
                "use none for a non-private run"
            )
        if self.epsilon is not None and self.epsilon > config.MAX_EPSILON:
            raise TrainingError(epsilon_limit_message(self.epsilon))
        if not 0 <= self.seed <= config.MAX_SEED:
            raise TrainingError(
                f"the seed must be a whole number from 0 to {config.MAX_SEED}, "
                f"got {self.seed}"
            )
        # Without DP, delta and the clipping norm go unused, but bundle.json
        # records them with the other settings, so they are checked anyway.
        unused = (
            "without DP (epsilon none) it goes unused, but bundle.json records "
            "it with the other settings, so leave it out or give a value such as"
        )
        if not 0 < self.delta < 1:
            advice = (
                "the usual choice is well below 1 / training rows, such as"
                if self.private
                else unused
            )
            raise TrainingError(
                f"delta must be in (0, 1), got {self.delta}; {advice} 1e-5"
            )
        if self.epsilon is not None and self.delta < config.MIN_DELTA:
            raise TrainingError(min_delta_message(self.delta))
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            advice = "1.0 is the usual start" if self.private else f"{unused} 1.0"
            raise TrainingError(
                f"the clipping norm (max grad norm) must be positive, "
                f"got {self.max_grad_norm}; {advice}"
            )
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise TrainingError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise TrainingError(
                f"the learning rate must be positive, got {self.learning_rate}"
            )
        if self.clipping not in CLIPPING_MODES:
            raise TrainingError(
                f"unknown clipping mode {self.clipping!r}; "
                f"choose one of {', '.join(CLIPPING_MODES)}"
            )
        if not 0 < self.target_fpr < 1:
            raise TrainingError(
                f"the target false-positive rate must be in (0, 1), "
                f"got {self.target_fpr}"
            )

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    @property
    def kind(self) -> str:
        """`classifier` or `autoencoder`."""
        return MODEL_CHOICES[self.model]


@dataclass
class TrainingData:
    """The rows one run trains on, and what they are for the ledger."""

    features: Any
    """float32 torch tensor (rows, features)."""
    targets: Any
    """int64 class indices (classifier) or the features again (autoencoder)."""
    population: str

    @property
    def rows(self) -> int:
        return len(self.features)


def _check_dataset(
    dataset: PreparedDataset, train: Split, validation: Split, settings: TrainSettings
) -> None:
    """Reject a dataset that training or its validation metrics cannot use.

    The checks run before training, so that a dataset that cannot be scored
    fails in seconds rather than after the last epoch.
    """
    classes = dataset.classes
    counts = np.bincount(train.labels, minlength=len(classes))
    if len(validation) == 0:
        raise TrainingError(
            f"the validation split of {dataset.root} has no rows to score the "
            "model on; prepare the dataset from more flows"
        )
    if settings.kind == "classifier":
        missing = [
            name for name, count in zip(classes, counts, strict=True) if not count
        ]
        if missing:
            raise TrainingError(
                f"the training split of {dataset.root} has no rows of class "
                f"{', '.join(missing)}; prepare the dataset from logs that "
                "contain it, or leave it out with `edgedp prepare --classes`"
            )
        return
    if config.BENIGN_CLASS not in classes:
        raise TrainingError(
            f"{dataset.root} has no {config.BENIGN_CLASS} class, which the "
            "autoencoder learns from; prepare it with Benign among --classes"
        )
    benign = classes.index(config.BENIGN_CLASS)
    if counts[benign] == 0:
        raise TrainingError(
            f"the training split of {dataset.root} has no {config.BENIGN_CLASS} "
            "rows for the autoencoder to learn from; prepare it from logs with "
            "benign traffic"
        )
    benign_validation = int(np.count_nonzero(validation.labels == benign))
    malicious_validation = len(validation) - benign_validation
    if benign_validation == 0 or malicious_validation == 0:
        raise TrainingError(
            f"the validation split of {dataset.root} has {benign_validation} "
            f"{config.BENIGN_CLASS} and {malicious_validation} malicious flows, "
            "but the autoencoder's validation metrics (ROC-AUC, PR-AUC, F1) "
            "need both; prepare the dataset from logs with benign and "
            "malicious traffic"
        )


def dataset_fingerprint(dataset: PreparedDataset) -> str:
    """Return a fingerprint of a prepared dataset's split files, as hex.

    It is an HMAC-SHA256, keyed with the dataset folder's secret
    (`dataset.FINGERPRINT_KEY_NAME`), of the sha256 of each split file. With
    a plain hash of the files, an attacker with all training flows but one
    could test each candidate dataset against a bundle's fingerprint,
    outside the DP guarantee. A copy of the folder keeps the key and so the
    fingerprint. The same logs prepared again into a new folder get a new
    key, and another fingerprint. A folder written before datasets had a
    key gets the plain sha256, so that old bundles still match it, but
    `train_bundle` rejects such a folder.
    """
    digest = hashlib.sha256()
    for name in SPLITS:
        path = dataset.root / f"{name}.parquet"
        if not path.is_file():
            raise DatasetError(f"{path} is missing; rerun `edgedp prepare`")
        digest.update(f"{name} {sha256_file(path)}\n".encode())
    key = dataset.fingerprint_key
    if key is None:
        return digest.hexdigest()
    return hmac.new(key, digest.digest(), hashlib.sha256).hexdigest()


def training_population(
    labels: np.ndarray, classes: list[str], kind: str
) -> tuple[np.ndarray, str]:
    """Select the training split rows that a model of `kind` trains on.

    The classifier trains on every row and the autoencoder on the Benign
    rows only. The privacy ledger's `population` and `rows` describe this
    population.

    Returns:
        A boolean mask over `labels` and the population's name for the
        ledger (`training split rows` or `Benign training split rows`).
    """
    if kind == "classifier":
        return np.ones(len(labels), dtype=bool), "training split rows"
    benign = labels == classes.index(config.BENIGN_CLASS)
    return benign, "Benign training split rows"


def _check_delta_before_reading(
    dataset: PreparedDataset, settings: TrainSettings
) -> None:
    """Check delta against the population size that `dataset.json` records.

    The same check runs again on the rows read, but only after the whole
    training split is in memory, which for a large split is slow.
    """
    from edgedp.privacy import DeltaError

    counts = dataset.manifest.get("splits", {}).get("train", {})
    if settings.kind == "classifier":
        rows, population = counts.get("rows"), "training split rows"
    else:
        rows = counts.get("classes", {}).get(config.BENIGN_CLASS)
        population = "Benign training split rows"
    if isinstance(rows, int) and rows > 0 and not settings.delta < 1 / rows:
        raise DeltaError(settings.delta, rows, population)


def _training_data(train: Split, classes: list[str], kind: str) -> TrainingData:
    import torch

    mask, population = training_population(train.labels, classes, kind)
    features = torch.from_numpy(np.ascontiguousarray(train.features))
    if kind == "classifier":
        return TrainingData(features, torch.from_numpy(train.labels), population)
    features = features[torch.from_numpy(mask)].contiguous()
    return TrainingData(features, features, population)


@contextlib.contextmanager
def _torch_runtime(threads: int) -> Iterator[None]:
    """Set torch's thread count and deterministic kernels, then restore them."""
    import torch

    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


@contextlib.contextmanager
def _captured_log() -> Iterator[io.StringIO]:
    """Collect the INFO log of the `edgedp` package during the block."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("edgedp")
    old_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield buffer
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)


def _seeds(seed: int) -> tuple[int, int, int]:
    """Return independent seeds for weight init, batch sampling and noise."""
    init, sampling, noise = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(sampling), int(noise)


def _validation_loss(model, loss, validation: Split, kind: str) -> float:
    import torch

    features = torch.from_numpy(np.ascontiguousarray(validation.features))
    with torch.inference_mode():
        outputs = model.net(features)
        if kind == "classifier":
            return float(loss(outputs, torch.from_numpy(validation.labels)))
        return float(loss(outputs, features))


def steps_per_epoch(settings: TrainSettings, rows: int) -> int:
    """Return optimizer steps per epoch for N = `rows` and batch size B.

    Under DP it is `privacy.poisson_steps_per_epoch`, the count that noise
    calibration plans with: N / B rounded half up. Without DP it is
    ceil(N / B), one step per shuffled batch.
    """
    from edgedp.privacy import poisson_steps_per_epoch

    if settings.private:
        return poisson_steps_per_epoch(rows, settings.batch_size)
    return -(-rows // settings.batch_size)


def _diverged_message(epoch: int, settings: TrainSettings, cause: str) -> str:
    return (
        f"the model diverged: {cause} after epoch {epoch}/{settings.epochs} at "
        f"learning rate {settings.learning_rate:g}; lower the learning rate "
        "(--learning-rate), for example by a factor of 10"
    )


def _check_finite_weights(net, epoch: int, settings: TrainSettings) -> None:
    import torch

    for name, parameter in net.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            raise TrainingError(
                _diverged_message(
                    epoch, settings, f"parameter {name} has NaN or infinite values"
                )
            )


def fit(
    model,
    data: TrainingData,
    settings: TrainSettings,
    *,
    noise_multiplier: float = 0.0,
    validation: Split | None = None,
) -> list:
    """Train `model.net` in place for `settings.epochs` epochs.

    Plain training shuffles the rows into batches of `settings.batch_size`
    every epoch. DP training takes `steps_per_epoch` Poisson steps per epoch
    at rate batch size / rows, with `noise_multiplier`.

    Args:
        model: a model from `edgedp.models.build_model`.
        data: the rows to train on.
        settings: the run's settings; `settings.private` selects DP-SGD.
        noise_multiplier: sigma of DP-SGD, from `privacy.calibrate_noise`.
        validation: when given, each epoch logs the validation loss.

    Returns:
        The accountant history of the DP steps taken, empty without DP.

    Raises:
        TrainingError: a weight is NaN or infinite after an epoch, because
            the model diverged.
    """
    import torch

    from edgedp.models import training_loss
    from edgedp.privacy import DPStep, PoissonSampler, random_generator

    _, sampling_seed, noise_seed = _seeds(settings.seed)
    if settings.secure_randomness:
        sampling_seed = noise_seed = None
    sampling = random_generator(sampling_seed)
    loss = training_loss(model.spec)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=settings.learning_rate)
    steps = steps_per_epoch(settings, data.rows)

    dp_step = None
    sampler = None
    if settings.private:
        dp_step = DPStep(
            model.net,
            optimizer,
            loss=loss,
            noise_multiplier=noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            expected_batch_size=settings.batch_size,
            sample_rate=settings.batch_size / data.rows,
            noise_generator=random_generator(noise_seed),
            clipping=settings.clipping,
            secure_noise=settings.secure_randomness,
        )
        sampler = PoissonSampler(
            data.rows, settings.batch_size / data.rows, generator=sampling
        )

    try:
        for epoch in range(1, settings.epochs + 1):
            started = time.perf_counter()
            model.train()
            if dp_step is not None:
                for _ in range(steps):
                    batch = sampler.sample()
                    dp_step(data.features[batch], data.targets[batch])
            else:
                order = torch.randperm(data.rows, generator=sampling)
                for start in range(0, data.rows, settings.batch_size):
                    batch = order[start : start + settings.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss(
                        model.net(data.features[batch]), data.targets[batch]
                    ).backward()
                    optimizer.step()
            model.eval()
            elapsed = time.perf_counter() - started
            _check_finite_weights(model.net, epoch, settings)
            if validation is None:
                logger.info(
                    "epoch %d/%d: %d steps in %.2f s",
                    epoch,
                    settings.epochs,
                    steps,
                    elapsed,
                )
                continue
            # Only validation numbers are logged: a training loss would be
            # computed on private rows outside the DP mechanism.
            logger.info(
                "epoch %d/%d: %d steps in %.2f s, validation loss %.5f",
                epoch,
                settings.epochs,
                steps,
                elapsed,
                _validation_loss(model, loss, validation, settings.kind),
            )
    finally:
        if dp_step is not None:
            dp_step.close()
    return dp_step.history if dp_step is not None else []


def _library_versions() -> dict[str, str]:
    import opacus
    import sklearn
    import torch

    import edgedp

    return {
        "edgedp": edgedp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _supported_encoder_version() -> str:
    from edgedp.features import ENCODER_VERSION

    return ENCODER_VERSION


def train_bundle(
    data: str | Path | PreparedDataset,
    out: str | Path,
    *,
    model: str = "ff",
    epsilon: float | None = None,
    delta: float = config.DEFAULT_DELTA,
    max_grad_norm: float = config.DEFAULT_MAX_GRAD_NORM,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = config.DEFAULT_SEED,
    overwrite: bool = False,
    learning_rate: float | None = None,
    clipping: str = "ghost",
    target_fpr: float = DEFAULT_TARGET_FPR,
    threads: int | None = None,
    secure_randomness: bool = False,
) -> Bundle:
    """Train one model on a prepared dataset and write its bundle.

    Args:
        data: a prepared dataset folder (`edgedp prepare`) or an opened one.
        out: the bundle folder to create.
        model: `ff` (feed-forward classifier) or `ae` (autoencoder, trained
            on Benign training rows only).
        epsilon: the DP target epsilon, or None for plain training.
        delta: the DP delta; it must be below 1 / training rows.
        max_grad_norm: the DP clipping norm.
        epochs: passes over the training rows (default 15 for ff, 25 for ae).
        batch_size: rows per step; the expected Poisson batch size under DP.
        seed: seeds weight init, batch sampling and DP noise. On CPU the
            same seed and thread count reproduce the same weights.
        overwrite: replace an existing bundle folder.
        learning_rate: Adam's learning rate.
        clipping: `ghost` or `per_sample`, which give the same
            update at different speeds (see `edgedp.privacy.DPStep`).
        target_fpr: benign false-positive rate that picks the autoencoder's
            validation threshold.
        threads: torch intra-op threads during training.
        secure_randomness: draw DP batches and noise from a secret seed (OS
            entropy) that is not recorded. The run is then not reproducible,
            but a reader of the bundle cannot replay its batches and noise.

    Raises:
        TrainingError: invalid settings, a class missing from training, a
            validation split that cannot be scored, or a model that
            diverged (weights or outputs that are not finite).
        PrivacyConfigError: DP settings that cannot reach the target epsilon.
        DatasetError: the dataset is missing, from another encoder version,
            or has no valid `fingerprint.key`.
        FileExistsError: `out` exists and `overwrite` is not set.
        OutputError: `out` cannot be written; raised before training starts.
    """
    import torch

    from edgedp.evaluate import anomaly_thresholds, predict_torch, score_outputs
    from edgedp.metrics import threshold_for_fpr
    from edgedp.models import autoencoder_spec, build_model, classifier_spec
    from edgedp.privacy import (
        DPSettings,
        calibrate_noise,
        non_private_ledger,
        private_ledger,
    )

    settings = TrainSettings(
        model=model,
        epsilon=epsilon,
        delta=delta,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        clipping=clipping,
        target_fpr=target_fpr,
        threads=threads,
        secure_randomness=secure_randomness,
    )
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another bundle folder or pass "
            "--overwrite to replace it"
        )
    check_replaceable(out, overwrite=overwrite, marker=MANIFEST_NAME)
    check_writable(out)

    with _captured_log() as log, _torch_runtime(settings.threads):
        root = data.root if isinstance(data, PreparedDataset) else data
        dataset = load_prepared(root, encoder_version=_supported_encoder_version())
        dataset.require_fingerprint_key()
        fingerprint = dataset_fingerprint(dataset)
        if settings.private:
            _check_delta_before_reading(dataset, settings)
        train = dataset.split("train")
        validation = dataset.split("validation")
        _check_dataset(dataset, train, validation, settings)
        if settings.kind == "classifier" and len(dataset.classes) == 1:
            logger.warning(
                "%s has the single class %s, so the classifier predicts it for "
                "every flow and its metrics are 1 by construction; prepare the "
                "dataset from logs with more classes for a useful classifier",
                dataset.root,
                dataset.classes[0],
            )
        training = _training_data(train, dataset.classes, settings.kind)
        logger.info(
            "training %s on %d %s of %s (%s)",
            settings.kind,
            training.rows,
            training.population,
            dataset.root,
            f"DP-SGD, epsilon {settings.epsilon:g}" if settings.private else "no DP",
        )

        noise_multiplier = 0.0
        if settings.private:
            dp = DPSettings(
                target_epsilon=settings.epsilon,
                target_delta=settings.delta,
                max_grad_norm=settings.max_grad_norm,
                expected_batch_size=settings.batch_size,
                epochs=settings.epochs,
                rows=training.rows,
                population=training.population,
            )
            noise_multiplier = calibrate_noise(dp)

        n_features = len(dataset.feature_names)
        init_seed, _, _ = _seeds(settings.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            spec = (
                classifier_spec(n_features, len(dataset.classes))
                if settings.kind == "classifier"
                else autoencoder_spec(n_features)
            )
            net = build_model(spec)

        started = time.perf_counter()
        history = fit(
            net,
            training,
            settings,
            noise_multiplier=noise_multiplier,
            validation=validation,
        )
        wall_seconds = time.perf_counter() - started
        steps = steps_per_epoch(settings, training.rows) * settings.epochs
        # Rows seen, in expectation under Poisson sampling.
        samples_per_second = settings.epochs * training.rows / wall_seconds

        if settings.private:
            ledger = private_ledger(
                dp,
                noise_multiplier=noise_multiplier,
                history=history,
                clipping=settings.clipping,
                secure_randomness=settings.secure_randomness,
            )
            logger.info(
                "achieved epsilon %.4f (target %g, RDP %.4f) at delta %g after "
                "%d steps",
                ledger["epsilon"],
                settings.epsilon,
                ledger["epsilon_rdp"],
                settings.delta,
                ledger["steps"],
            )
        else:
            ledger = non_private_ledger(
                population=training.population, rows=training.rows, steps=steps
            )

        outputs = predict_torch(net, validation.features)
        if not np.all(np.isfinite(outputs)):
            bad = int(np.count_nonzero(~np.isfinite(outputs)))
            raise TrainingError(
                _diverged_message(
                    settings.epochs,
                    settings,
                    f"{bad} validation outputs are NaN or infinite",
                )
            )
        thresholds: dict[str, Any] = {}
        if settings.kind == "autoencoder":
            benign = validation.labels == dataset.classes.index(config.BENIGN_CLASS)
            thresholds = {
                "study": {"value": config.STUDY_AE_THRESHOLD},
                "validation_fpr": {
                    "value": threshold_for_fpr(outputs[benign], settings.target_fpr),
                    "target_fpr": settings.target_fpr,
                },
            }
        with warnings.catch_warnings():
            # scikit-learn warns when a single class gives a 1 x 1 confusion
            # matrix. The warning logged before training covers that case.
            warnings.filterwarnings("ignore", message="A single label was found")
            validation_metrics = score_outputs(
                settings.kind,
                dataset.classes,
                validation.labels,
                outputs,
                anomaly_thresholds({"thresholds": thresholds}),
            )
        validation_metrics["rows"] = len(validation)
        logger.info(
            "trained in %.1f s (%.0f samples/s); validation %s",
            wall_seconds,
            samples_per_second,
            _headline(validation_metrics),
        )

    manifest = {
        "model": spec.to_json(),
        "encoder_version": dataset.encoder_version,
        "feature_names": dataset.feature_names,
        "classes": dataset.classes,
        "dataset": {
            "path": str(dataset.root.resolve()),
            "encoder_version": dataset.encoder_version,
            "feature_set": dataset.manifest.get("feature_set"),
            "fingerprint": fingerprint,
        },
        "privacy": ledger,
        "training": {
            **asdict(settings),
            "kind": settings.kind,
            "optimizer": "Adam",
            "population": training.population,
            "rows": training.rows,
            "steps": steps,
            "wall_seconds": wall_seconds,
            "samples_per_second": samples_per_second,
            "device": "cpu",
            "versions": _library_versions(),
        },
        "metrics": {"validation": {"torch": validation_metrics}},
    }
    if thresholds:
        manifest["thresholds"] = thresholds

    def write_weights(path: Path) -> None:
        torch.save(net.state_dict(), path)

    def write_log(path: Path) -> None:
        path.write_text(log.getvalue(), encoding="utf-8")

    bundle = create_bundle(
        out,
        manifest,
        {TORCH_WEIGHTS: write_weights, TRAIN_LOG: write_log},
        overwrite=overwrite,
    )
    logger.info("wrote bundle %s (id %s)", bundle.root, bundle.bundle_id)
    return bundle


def _headline(metrics: dict[str, Any]) -> str:
    if "accuracy" in metrics:
        return (
            f"accuracy {metrics['accuracy']:.4f}, F1 weighted "
            f"{metrics['f1_weighted']:.4f}, F1 macro {metrics['f1_macro']:.4f}"
        )
    return f"ROC-AUC {metrics['roc_auc']:.4f}, PR-AUC {metrics['pr_auc']:.4f}"
