"""DP-SGD wiring: settings checks, calibration, clipping, noise and sampling."""

import logging
import math
import pickle
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgedp import privacy
from edgedp.models import ReconstructionLoss
from edgedp.privacy import (
    CLIPPING_MODES,
    MAX_ACCOUNTANT_DOMAIN,
    DeltaError,
    DPSettings,
    DPStep,
    PoissonSampler,
    PrivacyConfigError,
    _noise_multiplier,
    accountant_domain_size,
    calibrate_noise,
    compute_epsilon,
    poisson_steps_per_epoch,
    private_ledger,
    random_generator,
    suggested_delta,
)
from edgedp.train import TrainSettings, steps_per_epoch


def _settings(**changes):
    values = {
        "target_epsilon": 1.0,
        "target_delta": 1e-5,
        "max_grad_norm": 1.0,
        "expected_batch_size": 500,
        "epochs": 2,
        "rows": 10_000,
    }
    return DPSettings(**{**values, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_epsilon": 0.0}, "epsilon must be a positive number"),
        ({"target_epsilon": -1.0}, "epsilon must be a positive number"),
        ({"target_epsilon": math.nan}, "epsilon must be a number, got nan"),
        ({"target_delta": 0.0}, "delta must be above 0"),
        ({"target_delta": 1e-4}, r"below 1/N = 0.0001 for N = 10000"),
        ({"target_delta": 0.5}, "set a smaller --delta"),
        ({"target_epsilon": 20.5}, "above the maximum of 20"),
        ({"max_grad_norm": 0.0}, "clipping norm"),
        ({"max_grad_norm": math.inf}, "clipping norm"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"expected_batch_size": 10_000}, "choose a smaller batch size"),
        ({"expected_batch_size": 0}, "batch size must be at least 1"),
        ({"rows": 1, "target_delta": 0.5}, "at least 2 rows"),
    ],
)
def test_settings_reject(changes, message):
    with pytest.raises(PrivacyConfigError, match=message):
        _settings(**changes)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(2, 0.01), (10_000, 1e-5), (34_015, 1e-6), (100_001, 1e-7), (462_900, 1e-7)],
)
def test_suggested_delta_below_one_tenth(rows, expected):
    suggestion = suggested_delta(rows)

    assert suggestion == pytest.approx(expected)
    assert suggestion <= 1 / (10 * rows)


def test_default_delta_error_suggests_from_rows():
    with pytest.raises(DeltaError) as caught:
        _settings(rows=462_900, target_delta=1e-5, expected_batch_size=2048)

    message = str(caught.value)
    assert "below 1/N = 2.16e-06 for N = 462900" in message
    assert "set a smaller --delta, such as 1e-07" in message
    assert "such as 1e-05" not in message


@pytest.mark.parametrize("delta", [1e-12, 1e-17, 5e-324])
def test_tiny_delta_rejected(delta):
    with pytest.raises(PrivacyConfigError, match="delta must be at least 1e-10"):
        _settings(rows=4561, target_delta=delta, expected_batch_size=256)


def test_accountant_precision_error_explained():
    history = [(1.0, 2048 / 34_015, 170)]

    with pytest.raises(PrivacyConfigError, match="use a larger --delta"):
        compute_epsilon(history, delta=1e-14)


def test_smallest_delta_calibrates():
    settings = _settings(rows=34_015, target_delta=1e-10, expected_batch_size=2048)

    sigma = calibrate_noise(settings)
    epsilon = compute_epsilon(
        [(sigma, settings.sample_rate, settings.steps)], delta=1e-10
    )

    assert epsilon <= settings.target_epsilon


def test_delta_error_names_experiment_setting():
    with pytest.raises(DeltaError) as caught:
        _settings(rows=462_900, target_delta=1e-5, expected_batch_size=2048)

    renamed = caught.value.for_setting("[train] delta")
    # Grid workers send their errors to the run pickled.
    restored = pickle.loads(pickle.dumps(renamed))

    assert isinstance(restored, PrivacyConfigError)
    assert "set a smaller [train] delta, such as 1e-07" in str(restored)
    assert "--delta" not in str(restored)
    assert restored.rows == 462_900


def test_settings_steps_and_rate():
    settings = _settings(expected_batch_size=300, epochs=3)

    assert settings.sample_rate == pytest.approx(0.03)
    # 10,000 rows / 300 = 33.3, so 33 steps per epoch.
    assert settings.steps == 99


def _rounded_half_up(numerator, denominator):
    return math.floor(Fraction(numerator, denominator) + Fraction(1, 2))


def test_steps_per_epoch_exact_for_all_pairs():
    # Every batch size below 1,000 rows. For 99 rows in batches of 2,
    # rounding the float 1 / q gives 49 steps and rounding 99 / 2 gives 50.
    for rows in range(2, 1000):
        for batch in range(1, rows):
            assert poisson_steps_per_epoch(rows, batch) == _rounded_half_up(
                rows, batch
            ), (rows, batch)


def test_planned_steps_match_training_at_ties():
    # Ties, where rows / batch ends in .5, up to 3,000 rows.
    ties = [
        (rows, batch)
        for rows in range(2, 3000)
        for batch in range(2, rows, 2)
        if (2 * rows) % batch == 0 and (2 * rows // batch) % 2 == 1
    ]

    assert len(ties) > 300
    for rows, batch in ties:
        planned = _settings(rows=rows, expected_batch_size=batch, target_delta=1e-4)
        trained = TrainSettings(epsilon=1.0, batch_size=batch, epochs=2)

        assert planned.steps == 2 * steps_per_epoch(trained, rows), (rows, batch)
        assert planned.steps == 2 * _rounded_half_up(rows, batch), (rows, batch)


@pytest.fixture(scope="module")
def calibrated():
    settings = _settings(target_epsilon=1.0)
    return settings, calibrate_noise(settings)


def test_calibrated_epsilon_within_target(calibrated):
    settings, sigma = calibrated

    achieved = compute_epsilon(
        [(sigma, settings.sample_rate, settings.steps)], delta=settings.target_delta
    )

    assert sigma > 0
    assert achieved <= settings.target_epsilon
    # The search stops within 0.01 of the target.
    assert achieved >= settings.target_epsilon - 0.011


def test_more_noise_lowers_epsilon(calibrated):
    settings, sigma = calibrated
    phase = (settings.sample_rate, settings.steps)

    louder = compute_epsilon([(2 * sigma, *phase)], delta=settings.target_delta)

    assert louder < settings.target_epsilon / 1.5


def test_unreachable_epsilon_says_what_to_change():
    settings = _settings(target_epsilon=0.005, expected_batch_size=2000, epochs=30)

    with pytest.raises(PrivacyConfigError, match="out of reach") as error:
        calibrate_noise(settings)

    assert "larger epsilon" in str(error.value)
    assert "fewer epochs" in str(error.value)


@pytest.mark.parametrize(
    "history",
    [[(1.0, 0.06, 255)], [(0.7, 0.002, 5000)], [(3.0, 0.01, 10), (2.0, 0.02, 40)]],
)
def test_domain_size_matches_opacus(history):
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = history
    # The discretized and composed privacy loss that get_epsilon reads.
    discrete = accountant._get_dprv(eps_error=0.01, delta_error=1e-5 / 1000)

    assert accountant_domain_size(history, delta=1e-5) == len(discrete.pmf)


def test_costly_accounting_rejected_before_evaluation(caplog):
    # 64-row batches of 34,015 rows for 200 epochs at epsilon 20. Opacus's
    # get_noise_multiplier probes noise multiplier 0.3125 here, whose PRV
    # domain has about 100 million points.
    settings = _settings(
        target_epsilon=20.0,
        target_delta=1e-10,
        expected_batch_size=64,
        epochs=200,
        rows=34_015,
    )

    with caplog.at_level(logging.DEBUG, logger="edgedp"):
        with pytest.raises(PrivacyConfigError, match="above edgedp's limit") as error:
            calibrate_noise(settings)

    message = str(error.value)
    assert "for 106200 steps" in message
    assert "fewer steps" in message
    assert "larger batch size" in message
    assert "smaller epsilon" in message
    assert "noise calibration, evaluation" not in caplog.text


def test_costly_history_rejected():
    history = [(0.45, 64 / 34_015, 30_000)]

    assert accountant_domain_size(history, delta=1e-5) > MAX_ACCOUNTANT_DOMAIN
    with pytest.raises(PrivacyConfigError, match="above edgedp's limit of 2,097,152"):
        compute_epsilon(history, delta=1e-5)


@pytest.fixture
def fresh_calibration():
    """Clear calibrate_noise's cache before and after the test."""
    _noise_multiplier.cache_clear()
    yield
    _noise_multiplier.cache_clear()


def test_domain_limit_caps_calibration(fresh_calibration, monkeypatch, caplog):
    settings = _settings(
        target_epsilon=2.0, expected_batch_size=2048, epochs=15, rows=34_015
    )
    phase = (settings.sample_rate, settings.steps)
    free = calibrate_noise(settings)
    _noise_multiplier.cache_clear()
    # A limit that only multipliers above 1.03 times the free result meet.
    limit = accountant_domain_size([(1.03 * free, *phase)], delta=1e-5)
    monkeypatch.setattr(privacy, "MAX_ACCOUNTANT_DOMAIN", limit)

    with caplog.at_level(logging.DEBUG, logger="edgedp"):
        capped = calibrate_noise(settings)

    evaluated = [
        int(points) for points in re.findall(r"domain of (\d+) points", caplog.text)
    ]
    achieved = compute_epsilon([(capped, *phase)], delta=1e-5)
    assert capped > free
    assert achieved <= 2.0
    assert evaluated
    assert max(evaluated) <= limit
    assert "less than the target 2" in caplog.text


@pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="reads VmSize from /proc"
)
def test_accountant_out_of_memory_explained():
    # The address space limit leaves 100 MiB above what the imports use,
    # less than a PRV domain of 1.1 million points needs.
    script = """
import re, resource
from edgedp.privacy import PrivacyConfigError, compute_epsilon

compute_epsilon([(5.0, 0.01, 100)], delta=1e-5)
status = open("/proc/self/status").read()
used = int(re.search(r"VmSize:\\s+(\\d+) kB", status).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + 100 * 2**20, resource.RLIM_INFINITY))
try:
    compute_epsilon([(0.6, 64 / 34015, 20000)], delta=1e-5)
except PrivacyConfigError as error:
    print(error)
"""

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert "ran out of memory" in done.stdout
    assert "20000 steps" in done.stdout
    assert "fewer steps" in done.stdout
    assert "Traceback" not in done.stderr


def test_ledger_rejects_extra_steps(calibrated):
    settings, sigma = calibrated
    history = [(sigma, settings.sample_rate, settings.steps * 3)]

    with pytest.raises(PrivacyConfigError, match="exceeds the target"):
        private_ledger(
            settings,
            noise_multiplier=sigma,
            history=history,
            clipping="ghost",
            secure_randomness=False,
        )


def test_ledger_records_achieved_epsilon(calibrated):
    settings, sigma = calibrated
    history = [(sigma, settings.sample_rate, settings.steps)]

    ledger = private_ledger(
        settings,
        noise_multiplier=sigma,
        history=history,
        clipping="ghost",
        secure_randomness=False,
    )

    assert ledger["epsilon"] == pytest.approx(
        compute_epsilon(history, delta=settings.target_delta)
    )
    assert ledger["epsilon"] <= ledger["target_epsilon"]
    # RDP bounds are looser than PRV bounds for the same mechanism.
    assert ledger["epsilon_rdp"] > ledger["epsilon"]
    assert ledger["steps"] == settings.steps
    assert ledger["sampling"] == "poisson"
    assert ledger["accountant"] == "prv"


def _sgd_step(net, *, loss, clipping="ghost", sample_rate=0.5, **options):
    """Return a DPStep around SGD(lr=1), so an update equals minus the gradient."""
    return DPStep(
        net,
        torch.optim.SGD(net.parameters(), lr=1.0),
        loss=loss,
        sample_rate=sample_rate,
        noise_generator=random_generator(0),
        clipping=clipping,
        **options,
    )


def _linear_gradients(weight, bias, inputs, targets):
    """Per-example gradients of mean((W x + b - t)^2) over outputs, by hand."""
    residual = inputs @ weight.T + bias - targets
    scale = 2.0 / targets.shape[1]
    grad_weight = scale * residual[:, :, None] * inputs[:, None, :]
    grad_bias = scale * residual
    return grad_weight, grad_bias


def _one_step(clipping, inputs, targets, *, clip, expected_batch_size):
    """Take one noiseless DP step with SGD(lr=1) and return the update."""
    torch.manual_seed(0)
    layer = nn.Linear(inputs.shape[1], targets.shape[1])
    before = [p.detach().clone() for p in layer.parameters()]
    step = _sgd_step(
        layer,
        loss=ReconstructionLoss(),
        clipping=clipping,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
    )
    step(torch.from_numpy(inputs), torch.from_numpy(targets))
    step.close()
    return [
        (b - p.detach()).numpy()
        for b, p in zip(before, layer.parameters(), strict=True)
    ]


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    inputs = rng.normal(size=(6, 3)).astype(np.float32)
    targets = rng.normal(size=(6, 2)).astype(np.float32)
    # One outlier whose gradient is far above the clipping norm.
    inputs[2] *= 100.0
    return inputs, targets


@pytest.mark.parametrize("clipping", CLIPPING_MODES)
def test_clipped_update_matches_hand(clipping, batch):
    inputs, targets = batch
    clip = 0.5
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    weight = layer.weight.detach().numpy().astype(np.float64)
    bias = layer.bias.detach().numpy().astype(np.float64)

    grad_weight, grad_bias = _linear_gradients(weight, bias, inputs, targets)
    norms = np.sqrt((grad_weight**2).sum(axis=(1, 2)) + (grad_bias**2).sum(axis=1))
    factors = np.minimum(1.0, clip / (norms + 1e-6))
    expected_weight = (factors[:, None, None] * grad_weight).sum(axis=0) / 8
    expected_bias = (factors[:, None] * grad_bias).sum(axis=0) / 8

    update_weight, update_bias = _one_step(
        clipping, inputs, targets, clip=clip, expected_batch_size=8
    )

    assert norms.max() > 100 * clip
    np.testing.assert_allclose(update_weight, expected_weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(update_bias, expected_bias, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clipping", CLIPPING_MODES)
def test_each_example_contributes_at_most_clip(clipping, batch):
    inputs, targets = batch
    clip = 0.5
    expected_batch_size = 4
    full = _one_step(
        clipping, inputs, targets, clip=clip, expected_batch_size=expected_batch_size
    )

    for left_out in range(len(inputs)):
        keep = np.arange(len(inputs)) != left_out
        without = _one_step(
            clipping,
            inputs[keep],
            targets[keep],
            clip=clip,
            expected_batch_size=expected_batch_size,
        )
        difference = np.sqrt(
            sum(((a - b) ** 2).sum() for a, b in zip(full, without, strict=True))
        )
        assert difference <= clip / expected_batch_size * (1 + 1e-4)


@pytest.mark.parametrize("clipping", CLIPPING_MODES)
def test_empty_batch_adds_noise_only(clipping):
    sigma, clip, expected_batch_size = 2.0, 0.5, 4
    layer = nn.Linear(200, 50)
    before = [p.detach().clone() for p in layer.parameters()]
    step = _sgd_step(
        layer,
        loss=ReconstructionLoss(),
        clipping=clipping,
        sample_rate=0.1,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
    )

    step(torch.zeros((0, 200)), torch.zeros((0, 50)))
    update = torch.cat(
        [
            (b - p.detach()).flatten()
            for b, p in zip(before, layer.parameters(), strict=True)
        ]
    )

    assert step.history == [(sigma, 0.1, 1)]
    # The noise on the gradient sum has std sigma * C; the update divides it
    # by the expected batch size. 10,050 values pin the std to about 1.5%.
    assert float(update.std()) == pytest.approx(
        sigma * clip / expected_batch_size, rel=0.05
    )
    assert abs(float(update.mean())) < 0.01


def test_modes_agree_on_deeper_model():
    rng = np.random.default_rng(3)
    inputs = torch.from_numpy(rng.random((64, 10), dtype=np.float32))
    targets = torch.from_numpy(rng.integers(0, 3, 64))
    updates = {}

    for clipping in CLIPPING_MODES:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
        before = [p.detach().clone() for p in net.parameters()]
        step = _sgd_step(
            net,
            loss=nn.CrossEntropyLoss(),
            clipping=clipping,
            noise_multiplier=0.0,
            max_grad_norm=0.1,
            expected_batch_size=64,
        )
        step(inputs, targets)
        step.close()
        updates[clipping] = torch.cat(
            [
                (b - p.detach()).flatten()
                for b, p in zip(before, net.parameters(), strict=True)
            ]
        )

    assert float(updates["ghost"].abs().max()) > 0
    torch.testing.assert_close(updates["ghost"], updates["per_sample"])


def test_sampler_matches_bernoulli_rates():
    rows, rate, draws = 2000, 0.05, 2000
    sampler = PoissonSampler(rows, rate, random_generator(3))
    counts = np.zeros(rows)
    sizes = []

    for _ in range(draws):
        batch = sampler.sample().numpy()
        assert np.all(np.diff(batch) > 0)
        assert batch.min(initial=0) >= 0
        assert batch.max(initial=0) < rows
        counts[batch] += 1
        sizes.append(len(batch))

    # Each row is in Binomial(2000, 0.05) batches: mean 100, std about 9.7.
    assert counts.mean() == pytest.approx(draws * rate, rel=0.01)
    assert counts.min() > 100 - 6 * 9.7
    assert counts.max() < 100 + 6 * 9.7
    # Batch sizes are Binomial(2000, 0.05): mean 100, variance 95.
    assert np.mean(sizes) == pytest.approx(rows * rate, rel=0.02)
    assert np.var(sizes) == pytest.approx(rows * rate * (1 - rate), rel=0.15)


def test_sampler_edge_rates():
    assert PoissonSampler(5, 1.0, random_generator(0)).sample().tolist() == [
        0,
        1,
        2,
        3,
        4,
    ]
    empty = [
        len(PoissonSampler(5, 1e-9, random_generator(0)).sample()) for _ in range(5)
    ]
    assert empty == [0] * 5


def test_sampler_repeats_with_seed():
    first = PoissonSampler(1000, 0.1, random_generator(11))
    second = PoissonSampler(1000, 0.1, random_generator(11))

    for _ in range(5):
        assert torch.equal(first.sample(), second.sample())
