"""DP-SGD with Opacus: Poisson sampling, noise calibration, clipping, the ledger.

The mechanism is the subsampled Gaussian mechanism of DP-SGD (Abadi et al.,
arXiv:1607.00133). Every step includes each row of the private population
independently with probability q (Poisson sampling) and clips each row's
gradient to L2 norm C. It then adds Gaussian noise of standard deviation
sigma * C to the sum of clipped gradients and divides by the expected batch
size before the Adam update. Opacus's accountants assume exactly this sampling, so the
epsilon they report is the epsilon of the training actually run.

The noise multiplier sigma is calibrated with the PRV accountant (Gopi, Lee,
Wutschitz, arXiv:2106.02848) for the planned q and number of steps. After
training, a fresh accountant recomputes epsilon from the steps the optimizer
really took, and that value goes into the ledger.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgedp import config

logger = logging.getLogger(__name__)

ACCOUNTANT = "prv"
COMPARISON_ACCOUNTANT = "rdp"
SAMPLING = "poisson"
NEIGHBOURING = "add or remove one flow record"

GHOST_CLIPPING = "ghost"
PER_SAMPLE_CLIPPING = "per_sample"
CLIPPING_MODES: tuple[str, ...] = (GHOST_CLIPPING, PER_SAMPLE_CLIPPING)

MAX_EPSILON = config.MAX_EPSILON
MIN_DELTA = config.MIN_DELTA

# Largest discretization domain, in points, that edgedp lets Opacus's PRV
# accountant build to compute one epsilon. `PRVAccountant._get_domain`
# (Opacus 1.5 and 1.6) discretizes the privacy loss on [-L, L] with a mesh of
# eps_error / sqrt(T * ln(12 / delta_error) / 2) for T steps, eps_error 0.01
# and delta_error = delta / 1000. L is 3 plus the RDP epsilon of the whole
# run at delta_error / 4, or of one step at delta_error / (8 T) if larger.
# So the points grow with sqrt(T) and with the RDP epsilon, which rises
# steeply as the noise multiplier falls. Over whole calibrations of six
# settings, peak RSS grew by 130 to 490 bytes per point of the largest
# evaluation, and evaluations took 0.5 to 1.1 microseconds per point (Opacus
# 1.6.0, shared 2-core AMD EPYC; the command is in docs/privacy.md). 2**21
# points thus cost up to about 1 GiB and 2 s per evaluation, and those
# calibrations made 8 to 12 evaluations.
MAX_ACCOUNTANT_DOMAIN = 2**21
# Upper end of the measured peak memory per domain point, for messages.
ACCOUNTANT_BYTES_PER_POINT = 500
# Evaluations of this many points or more take about 0.5 s or longer, so
# calibration logs them at INFO as progress.
SLOW_ACCOUNTANT_DOMAIN = 2**20
# `PRVAccountant.get_epsilon`'s default errors: eps_error, and delta_error
# as a fraction of delta.
PRV_EPSILON_ERROR = 0.01
PRV_DELTA_ERROR = 1e-3
# Calibration stops when epsilon is within this of the target, as Opacus's
# `get_noise_multiplier` does by default, or when the bisection bracket is
# narrower than this fraction of the multiplier.
EPSILON_TOLERANCE = 0.01
BISECTION_WIDTH = 1e-3

# Largest noise multiplier that calibration considers. Past it the noise
# standard deviation is 200 clipping norms per step, which leaves no usable
# gradient at the batch sizes a CPU trains with, and each PRV evaluation
# slows down as the multiplier grows.
MAX_NOISE_MULTIPLIER = 200.0

History = list[tuple[float, float, int]]
"""Accountant history: (noise multiplier, sample rate, steps) per phase."""


class PrivacyConfigError(ValueError):
    """DP settings that cannot be trained, with what to change."""


def suggested_delta(rows: int) -> float:
    """Return the largest power of ten at or below 1 / (10 N) for N = `rows`.

    This is the delta that errors suggest. A delta just under 1/N still
    allows a mechanism that publishes a whole row with probability delta,
    so the suggestion stays an order of magnitude below 1/N.
    """
    return 10.0 ** math.floor(math.log10(1 / (10 * max(rows, 1))))


class DeltaError(PrivacyConfigError):
    """A delta that is not above 0 and below 1 / N for N rows of the population.

    The message names `setting` as the thing to change: `--delta` of `edgedp
    train` by default. `for_setting` returns the same error naming another
    setting, such as the experiment file's `[train] delta`.
    """

    def __init__(
        self, delta: float, rows: int, population: str, setting: str = "--delta"
    ) -> None:
        self.delta = delta
        self.rows = rows
        self.population = population
        self.setting = setting
        super().__init__(
            f"delta must be above 0 and below 1/N = {1 / rows:.3g} for "
            f"N = {rows} {population}, got {delta:g}; a delta of 1/N or more "
            f"allows publishing a whole row, so set a smaller {setting}, such "
            f"as {suggested_delta(rows):g}"
        )

    def __reduce__(self) -> tuple[type, tuple[float, int, str, str]]:
        # Worker processes send exceptions back pickled; the default would
        # call __init__ with the message alone.
        return (type(self), (self.delta, self.rows, self.population, self.setting))

    def for_setting(self, setting: str) -> DeltaError:
        """Return this error with a message that names `setting`."""
        return DeltaError(self.delta, self.rows, self.population, setting)


@dataclass(frozen=True)
class DPSettings:
    """The DP-SGD settings of one training run, checked before it starts.

    Attributes:
        target_epsilon: the epsilon to reach at `target_delta`.
        target_delta: the delta of the (epsilon, delta) guarantee. It must be
            below 1 / `rows`, or the mechanism may publish a whole row.
        max_grad_norm: the clipping norm C, an L2 bound on each row's gradient.
        expected_batch_size: the mean Poisson batch size, q * `rows`.
        epochs: passes over the data; steps are `epochs` times
            `poisson_steps_per_epoch(rows, expected_batch_size)`.
        rows: rows of the private population that training samples from.
        population: what those rows are, for the ledger.
    """

    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    expected_batch_size: int
    epochs: int
    rows: int
    population: str = "training split rows"

    def __post_init__(self) -> None:
        if math.isnan(self.target_epsilon):
            raise PrivacyConfigError(
                "epsilon must be a number, got nan; give a positive epsilon "
                "such as 1, or none for a non-private run"
            )
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise PrivacyConfigError(
                f"epsilon must be a positive number, got {self.target_epsilon}; "
                "use none for a non-private run"
            )
        if self.target_epsilon > MAX_EPSILON:
            raise PrivacyConfigError(epsilon_limit_message(self.target_epsilon))
        if self.rows < 2:
            raise PrivacyConfigError(
                f"DP training needs at least 2 rows in the {self.population}, "
                f"got {self.rows}; prepare a larger dataset"
            )
        if not 0 < self.target_delta < 1 / self.rows:
            raise DeltaError(self.target_delta, self.rows, self.population)
        if self.target_delta < MIN_DELTA:
            raise PrivacyConfigError(min_delta_message(self.target_delta))
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise PrivacyConfigError(
                f"the clipping norm (max grad norm) must be positive, got "
                f"{self.max_grad_norm}; 1.0 is the usual start"
            )
        if self.epochs < 1:
            raise PrivacyConfigError(f"epochs must be at least 1, got {self.epochs}")
        if not 1 <= self.expected_batch_size < self.rows:
            raise PrivacyConfigError(
                f"the batch size must be at least 1 and below the {self.rows} "
                f"{self.population}, got {self.expected_batch_size}; "
                "choose a smaller batch size"
            )

    @property
    def sample_rate(self) -> float:
        """Poisson sampling probability q of each row at each step."""
        return self.expected_batch_size / self.rows

    @property
    def steps(self) -> int:
        """Planned optimizer steps, the number that training takes."""
        return self.epochs * poisson_steps_per_epoch(
            self.rows, self.expected_batch_size
        )


def poisson_steps_per_epoch(rows: int, expected_batch_size: int) -> int:
    """Return the DP-SGD steps of one epoch: rows / batch, rounded half up.

    That is 1 / q for the sample rate q = batch / rows. Calibration and the
    training loop both call this function, and its integer arithmetic keeps
    ties exact: 99 rows in batches of 2 give 50 steps, where rounding the
    float 1 / q would give 49.
    """
    if rows < 1 or expected_batch_size < 1:
        raise ValueError(
            f"need rows >= 1 and a batch size >= 1, got rows={rows}, "
            f"batch size={expected_batch_size}"
        )
    return (2 * rows + expected_batch_size) // (2 * expected_batch_size)


def min_delta_message(delta: float) -> str:
    """Return the error message for a delta below `MIN_DELTA`."""
    return (
        f"delta must be at least {MIN_DELTA:g}, got {delta!r}: at smaller deltas "
        "Opacus's PRV accountant runs for minutes, overstates epsilon or fails "
        f"on floating-point error; use {MIN_DELTA:g} or more"
    )


def epsilon_limit_message(epsilon: float) -> str:
    """Return the error message for a target epsilon above `MAX_EPSILON`."""
    return (
        f"epsilon {epsilon:g} is above the maximum of {MAX_EPSILON:g}: a "
        "guarantee that weak says nothing useful, and the PRV accountant "
        "cannot calibrate the noise for it in reasonable time; choose an "
        f"epsilon up to {MAX_EPSILON:g}, or none to train without DP"
    )


@contextlib.contextmanager
def _accountant_errors(delta: float, steps: int, points: int) -> Iterator[None]:
    """Turn the PRV accountant's precision and memory errors into
    `PrivacyConfigError`s that name what to change.

    The PRV accountant stops when its domain size times the float precision
    exceeds delta. `MIN_DELTA` and `MAX_ACCOUNTANT_DOMAIN` avoid that where
    numpy's long double is the 80-bit x87 type, but not where it is a
    64-bit double. A `MemoryError` can still happen below the domain limit
    on a machine with little free memory.
    """
    try:
        yield
    except ValueError as error:
        if "Floating point errors will dominate" not in str(error):
            raise
        raise PrivacyConfigError(
            f"the PRV accountant cannot compute epsilon at delta {delta:g} for "
            f"these settings ({error}); use a larger --delta, or fewer steps "
            "(fewer epochs or a larger batch size)"
        ) from error
    except MemoryError as error:
        raise PrivacyConfigError(
            f"the PRV accountant ran out of memory computing epsilon for "
            f"{steps} steps on a domain of {points:,} points (up to about "
            f"{_domain_mebibytes(points):,.0f} MiB); free memory, or use fewer "
            "steps (fewer epochs or a larger batch size) or a smaller epsilon"
        ) from error


def _create_accountant(name: str):
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=name)


def _domain_mebibytes(points: int) -> float:
    return points * ACCOUNTANT_BYTES_PER_POINT / 2**20


def accountant_domain_size(
    history: Sequence[tuple[float, float, int]], *, delta: float
) -> int:
    """Return the points of the domain on which Opacus's PRV accountant
    discretizes `history` to compute epsilon at `delta`.

    It costs two RDP evaluations, a fraction of a second, while the PRV
    evaluation's memory and time grow in proportion to the result. A domain
    too large to count, as for a noise multiplier near 0, returns
    `sys.maxsize`.
    """
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest")
        try:
            # NOTE: `_get_domain` is private in Opacus. It is the sizing that
            # `PRVAccountant.get_epsilon` runs with its default errors.
            domain = PRVAccountant()._get_domain(
                prvs=prvs,
                num_self_compositions=[int(n) for _, _, n in history],
                eps_error=PRV_EPSILON_ERROR,
                delta_error=delta * PRV_DELTA_ERROR,
            )
        except OverflowError:
            return sys.maxsize
    return int(domain.size)


def _accounting_cost_message(points: int, steps: int, delta: float) -> str:
    return (
        f"computing epsilon at delta {delta:g} for {steps} steps would take "
        f"Opacus's PRV accountant a domain of {points:,} points (up to about "
        f"{_domain_mebibytes(points):,.0f} MiB), above edgedp's limit of "
        f"{MAX_ACCOUNTANT_DOMAIN:,}; use fewer steps (fewer epochs, or a "
        "larger batch size, which takes fewer steps per epoch) or a smaller "
        "epsilon"
    )


def _prv_epsilon(history: History, delta: float, points: int) -> float:
    """Return the PRV epsilon of `history` at `delta`.

    `points` is `accountant_domain_size(history, delta=delta)`, which the
    caller has checked against `MAX_ACCOUNTANT_DOMAIN`.

    Raises:
        PrivacyConfigError: the accountant fails on float precision or memory.
    """
    steps = sum(n for _, _, n in history)
    accountant = _create_accountant(ACCOUNTANT)
    accountant.history = list(history)
    with _accountant_errors(delta, steps, points), warnings.catch_warnings():
        # The PRV accountant sizes its domain with RDP, which warns as in
        # `compute_epsilon`.
        warnings.filterwarnings("ignore", message="Optimal order is the largest")
        return float(accountant.get_epsilon(delta=delta))


def compute_epsilon(
    history: Sequence[tuple[float, float, int]],
    *,
    delta: float,
    accountant: str = ACCOUNTANT,
) -> float:
    """Return the epsilon at `delta` of a sequence of DP-SGD phases.

    Args:
        history: (noise multiplier, sample rate, steps) of each phase, in the
            form of Opacus's `IAccountant.history`.
        delta: the delta of the guarantee.
        accountant: an Opacus accountant name, `prv` or `rdp`.

    Returns:
        The accountant's upper bound on epsilon, or 0.0 for an empty history.

    Raises:
        PrivacyConfigError: the PRV accountant would need a domain above
            `MAX_ACCOUNTANT_DOMAIN`, ran out of memory, or delta is too small
            for its float precision.
    """
    if not history:
        return 0.0
    phases = [(float(s), float(q), int(n)) for s, q, n in history]
    if accountant == ACCOUNTANT:
        points = accountant_domain_size(phases, delta=delta)
        if points > MAX_ACCOUNTANT_DOMAIN:
            steps = sum(n for _, _, n in phases)
            raise PrivacyConfigError(_accounting_cost_message(points, steps, delta))
        return _prv_epsilon(phases, delta, points)

    fresh = _create_accountant(accountant)
    fresh.history = phases
    with warnings.catch_warnings():
        # The RDP accountant warns when its best order is the largest one it
        # tries; its bound is then looser but still valid.
        warnings.filterwarnings("ignore", message="Optimal order is the largest")
        return float(fresh.get_epsilon(delta=delta))


def calibrate_noise(settings: DPSettings) -> float:
    """Return the noise multiplier that reaches the target epsilon.

    The search finds the smallest multiplier whose PRV epsilon at
    `target_delta` after `settings.steps` steps at rate `settings.sample_rate`
    is at most the target, to within `EPSILON_TOLERANCE` below it:

    1. The RDP accountant, cheap to evaluate, calibrates a first multiplier,
       capped at `MAX_NOISE_MULTIPLIER`. RDP overstates epsilon, so the PRV
       multiplier is usually smaller.
    2. If the PRV domain at that multiplier exceeds `MAX_ACCOUNTANT_DOMAIN`,
       the settings are rejected before any PRV evaluation, because smaller
       multipliers need larger domains.
    3. Bisection with the PRV accountant below it. A multiplier whose domain
       exceeds the limit is not evaluated but counted as too small, so no
       evaluation exceeds the limit. When that stops the search early, the
       result reaches less than the target epsilon, and a warning is logged.

    Opacus's `get_noise_multiplier` bisects from 0 up to a power of two
    times 20, and its lowest probes can need 20 times the domain of the
    result. Evaluations of at least `SLOW_ACCOUNTANT_DOMAIN` points are
    logged at INFO as progress. Results are cached per process, so runs
    that differ only in seed calibrate once.

    Raises:
        PrivacyConfigError: even `MAX_NOISE_MULTIPLIER` does not reach the
            target, the accounting would exceed `MAX_ACCOUNTANT_DOMAIN`, or
            the accountant fails on float precision or memory.
    """
    sigma = _noise_multiplier(
        settings.target_epsilon,
        settings.target_delta,
        settings.sample_rate,
        settings.steps,
    )
    logger.info(
        "calibrated noise multiplier %.4f for epsilon %g at delta %g "
        "(%d steps, sample rate %.4g, %s accountant)",
        sigma,
        settings.target_epsilon,
        settings.target_delta,
        settings.steps,
        settings.sample_rate,
        ACCOUNTANT,
    )
    return sigma


def _rdp_noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, steps: int
) -> float:
    """Return the RDP accountant's multiplier for the target, at most
    `MAX_NOISE_MULTIPLIER`."""
    from opacus.accountants.utils import get_noise_multiplier

    phase = [(MAX_NOISE_MULTIPLIER, sample_rate, steps)]
    if compute_epsilon(phase, delta=target_delta, accountant="rdp") > target_epsilon:
        return MAX_NOISE_MULTIPLIER
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest")
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=COMPARISON_ACCOUNTANT,
            epsilon_tolerance=EPSILON_TOLERANCE,
        )
    return min(float(sigma), MAX_NOISE_MULTIPLIER)


@functools.lru_cache(maxsize=64)
def _noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, steps: int
) -> float:
    evaluations = 0

    def domain_points(sigma: float) -> int:
        history = [(sigma, sample_rate, steps)]
        return accountant_domain_size(history, delta=target_delta)

    def evaluate(sigma: float, points: int) -> float:
        nonlocal evaluations
        started = time.perf_counter()
        history = [(sigma, sample_rate, steps)]
        epsilon = _prv_epsilon(history, target_delta, points)
        evaluations += 1
        logger.log(
            logging.INFO if points >= SLOW_ACCOUNTANT_DOMAIN else logging.DEBUG,
            "noise calibration, evaluation %d: noise multiplier %.4g gives "
            "epsilon %.4g (PRV domain of %d points, %.1f s)",
            evaluations,
            sigma,
            epsilon,
            points,
            time.perf_counter() - started,
        )
        return epsilon

    upper = _rdp_noise_multiplier(target_epsilon, target_delta, sample_rate, steps)
    points = domain_points(upper)
    if points > MAX_ACCOUNTANT_DOMAIN:
        raise PrivacyConfigError(_accounting_cost_message(points, steps, target_delta))

    # RDP rarely gives a smaller multiplier than PRV. Then double it, which
    # shrinks the domain.
    upper_epsilon = evaluate(upper, points)
    while upper_epsilon > target_epsilon:
        if upper >= MAX_NOISE_MULTIPLIER:
            raise PrivacyConfigError(
                f"epsilon {target_epsilon:g} at delta {target_delta:g} is out "
                f"of reach: with {steps} steps at sample rate {sample_rate:.3g} "
                f"even noise multiplier {MAX_NOISE_MULTIPLIER:g} gives epsilon "
                f"{upper_epsilon:.3g}; use more training data, fewer epochs, a "
                "smaller batch size or a larger epsilon"
            )
        upper = min(2 * upper, MAX_NOISE_MULTIPLIER)
        upper_epsilon = evaluate(upper, domain_points(upper))

    lower = 0.0
    limited = False
    while (
        target_epsilon - upper_epsilon > EPSILON_TOLERANCE
        and upper - lower > upper * BISECTION_WIDTH
    ):
        middle = (lower + upper) / 2
        points = domain_points(middle)
        if points > MAX_ACCOUNTANT_DOMAIN:
            # Every smaller multiplier needs a larger domain still.
            lower = middle
            limited = True
            continue
        epsilon = evaluate(middle, points)
        if epsilon <= target_epsilon:
            upper, upper_epsilon = middle, epsilon
        else:
            lower = middle

    if limited and target_epsilon - upper_epsilon > EPSILON_TOLERANCE:
        logger.warning(
            "noise multiplier %.4g gives epsilon %.4g, less than the target %g: "
            "a smaller multiplier would need a PRV domain above %d points. "
            "Fewer steps (fewer epochs or a larger batch size) would allow it",
            upper,
            upper_epsilon,
            target_epsilon,
            MAX_ACCOUNTANT_DOMAIN,
        )
    return upper


def random_generator(seed: int | None) -> torch.Generator:
    """Return a CPU generator seeded with `seed`, or from OS entropy if None."""
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


class PoissonSampler:
    """Draw Poisson-subsampled batches of row indices.

    Each call includes every row in 0..rows-1 independently with probability
    `sample_rate`, which is the sampling the accountant assumes. It draws the
    gaps between included rows from a geometric distribution (the number of
    failures before each success of the Bernoulli trials), so a step costs
    time in proportion to the batch, not to the whole dataset.
    """

    def __init__(
        self, rows: int, sample_rate: float, generator: torch.Generator
    ) -> None:
        if rows < 1 or not 0 < sample_rate <= 1:
            raise ValueError(
                f"need rows >= 1 and 0 < sample_rate <= 1, "
                f"got rows={rows}, sample_rate={sample_rate}"
            )
        self.rows = rows
        self.sample_rate = sample_rate
        self.generator = generator
        # log(1 - q) in float64; -inf when q == 1 makes every gap 0.
        self._log_miss = math.log1p(-sample_rate) if sample_rate < 1 else -math.inf
        mean = rows * sample_rate
        self._chunk = max(16, int(mean + 6 * math.sqrt(mean) + 16))

    def _gaps(self, count: int) -> torch.Tensor:
        # 1 - U lies in (0, 1], so log() is finite; floor(log(1-U)/log(1-q))
        # is geometric: P(gap >= k) = (1 - q) ** k.
        uniform = torch.rand(count, generator=self.generator, dtype=torch.float64)
        if self._log_miss == -math.inf:
            return torch.zeros(count, dtype=torch.int64)
        return torch.floor(torch.log1p(-uniform) / self._log_miss).to(torch.int64)

    def sample(self) -> torch.Tensor:
        """Return the sorted int64 indices of one batch; it may be empty."""
        positions: list[torch.Tensor] = []
        start = 0
        while True:
            ends = torch.cumsum(self._gaps(self._chunk) + 1, dim=0) + (start - 1)
            inside = ends[ends < self.rows]
            positions.append(inside)
            if len(inside) < len(ends):
                break
            start = int(ends[-1]) + 1
        return torch.cat(positions)


class DPStep:
    """One DP-SGD optimizer step per call, through Opacus.

    Wraps `net` for per-sample gradient norms and `optimizer` (Adam in
    training) in an Opacus `DPOptimizer`. Each call clips every row's
    gradient to `max_grad_norm`, sums the clipped gradients, adds Gaussian
    noise of standard deviation `noise_multiplier * max_grad_norm`, divides by
    `expected_batch_size` and updates the parameters. An empty batch, which
    Poisson sampling can draw, still takes a step with noise only, because
    the accountant counts every step.

    Clipping modes give the same update and differ only in speed:

    - `ghost`: Opacus's `GradSampleModuleFastGradientClipping` computes each
      row's gradient norm from layer activations and output gradients
      without forming per-sample gradients. For `nn.Linear` on 2-D input the
      norm is exact (||g_i|| * ||a_i||). A second backward pass weights each
      row's loss by its clipping factor.
    - `per_sample`: Opacus's `GradSampleModule` forms every row's gradient
      and `DPOptimizer` clips it.

    Args:
        net: the module to train; every trainable layer must be supported
            by Opacus.
        optimizer: an optimizer over `net.parameters()`.
        loss: a loss module with a `reduction` attribute that, set to
            `"none"`, returns one loss per row.
        noise_multiplier: sigma; 0 adds no noise (for tests).
        max_grad_norm: the clipping norm C.
        expected_batch_size: q * N, the divisor of the noisy gradient sum.
        sample_rate: q, recorded with each step for the accountant.
        noise_generator: the source of the Gaussian noise.
        clipping: `ghost` or `per_sample`.
        secure_noise: use Opacus's noise sampling that resists floating
            point attacks (four Gaussian draws per value).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        loss: nn.Module,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        sample_rate: float,
        noise_generator: torch.Generator,
        clipping: str = GHOST_CLIPPING,
        secure_noise: bool = False,
    ) -> None:
        from opacus.grad_sample import (
            GradSampleModule,
            GradSampleModuleFastGradientClipping,
        )
        from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import (
            DPLossFastGradientClipping,
        )

        if clipping not in CLIPPING_MODES:
            raise ValueError(
                f"unknown clipping mode {clipping!r}; "
                f"choose one of {', '.join(CLIPPING_MODES)}"
            )
        if getattr(loss, "reduction", None) != "mean":
            raise ValueError(
                f"the loss must have reduction='mean', got "
                f"{getattr(loss, 'reduction', None)!r}"
            )
        self.clipping = clipping
        self.sample_rate = sample_rate
        self.loss = loss
        self.accountant = _create_accountant(ACCOUNTANT)

        options = {
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": max_grad_norm,
            "expected_batch_size": expected_batch_size,
            "loss_reduction": "mean",
            "generator": noise_generator,
            "secure_mode": secure_noise,
        }
        if clipping == GHOST_CLIPPING:
            self.module = GradSampleModuleFastGradientClipping(
                net,
                loss_reduction="mean",
                max_grad_norm=max_grad_norm,
                use_ghost_clipping=True,
            )
            self.optimizer = DPOptimizerFastGradientClipping(optimizer, **options)
            self._ghost_loss = DPLossFastGradientClipping(
                self.module, self.optimizer, loss, "mean"
            )
        else:
            self.module = GradSampleModule(net, loss_reduction="mean")
            self.optimizer = DPOptimizer(optimizer, **options)
        self.optimizer.attach_step_hook(self._record_step)
        self._parameters = [p for p in net.parameters() if p.requires_grad]

    def _record_step(self, optimizer) -> None:
        # Called by Opacus after the noise is added, so only noised steps count.
        self.accountant.step(
            noise_multiplier=optimizer.noise_multiplier, sample_rate=self.sample_rate
        )

    @property
    def history(self) -> History:
        """(noise multiplier, sample rate, steps) of the steps taken so far."""
        return [(s, q, n) for s, q, n in self.accountant.history]

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Take one step on a Poisson batch; `inputs` may have zero rows."""
        self.optimizer.zero_grad(set_to_none=True)
        if len(inputs) == 0:
            self._prepare_empty_batch()
        else:
            with warnings.catch_warnings():
                # Opacus hooks fire on outputs when inputs need no gradient,
                # which is expected for a first layer fed with data.
                warnings.filterwarnings("ignore", message="Full backward hook")
                outputs = self.module(inputs)
                if self.clipping == GHOST_CLIPPING:
                    self._ghost_loss(outputs, targets).backward()
                else:
                    self.loss(outputs, targets).backward()
        self.optimizer.step()

    def _prepare_empty_batch(self) -> None:
        # The clipped sum over zero rows is zero, so the step adds noise only.
        for parameter in self._parameters:
            if self.clipping == PER_SAMPLE_CLIPPING:
                parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
            else:
                parameter.grad = torch.zeros_like(parameter)

    def close(self) -> None:
        """Remove the hooks and Opacus attributes from the wrapped module."""
        self.module.cleanup()


def private_ledger(
    settings: DPSettings,
    *,
    noise_multiplier: float,
    history: History,
    clipping: str,
    secure_randomness: bool,
) -> dict[str, Any]:
    """Return the privacy ledger of a finished DP-SGD run.

    Epsilon is recomputed by a fresh PRV accountant from `history`, the steps
    that the optimizer took, and an RDP epsilon is added for comparison.

    Raises:
        PrivacyConfigError: the achieved epsilon exceeds the target, which
            means training took more steps than were calibrated.
    """
    steps = sum(n for _, _, n in history)
    epsilon = compute_epsilon(history, delta=settings.target_delta)
    epsilon_rdp = compute_epsilon(
        history, delta=settings.target_delta, accountant=COMPARISON_ACCOUNTANT
    )
    if epsilon > settings.target_epsilon:
        raise PrivacyConfigError(
            f"the achieved epsilon {epsilon:.4f} exceeds the target "
            f"{settings.target_epsilon:g} after {steps} steps "
            f"({settings.steps} were calibrated); this is a bug in the training "
            "loop, so do not publish this model"
        )
    return {
        "private": True,
        "epsilon": epsilon,
        "target_epsilon": settings.target_epsilon,
        "delta": settings.target_delta,
        "epsilon_rdp": epsilon_rdp,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": settings.max_grad_norm,
        "sample_rate": settings.sample_rate,
        "expected_batch_size": settings.expected_batch_size,
        "steps": steps,
        "epochs": settings.epochs,
        "accountant": ACCOUNTANT,
        "sampling": SAMPLING,
        "clipping": clipping,
        "unit": "one flow record",
        "neighbouring": NEIGHBOURING,
        "population": settings.population,
        "rows": settings.rows,
        "randomness": "secret" if secure_randomness else "seeded",
    }


def non_private_ledger(*, population: str, rows: int, steps: int) -> dict[str, Any]:
    """Return the ledger of a run without DP: epsilon is infinite."""
    return {
        "private": False,
        "epsilon": math.inf,
        "target_epsilon": None,
        "delta": None,
        "noise_multiplier": 0.0,
        "max_grad_norm": None,
        "sample_rate": None,
        "steps": steps,
        "accountant": None,
        "sampling": "shuffled fixed-size batches",
        "unit": "one flow record",
        "population": population,
        "rows": rows,
    }
