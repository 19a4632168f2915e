"""Membership inference against a bundle's torch model (`edgedp audit`).

The attack is the loss-threshold attack of Yeom, Giacomelli, Fredrikson and
Jha ("Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", 2018). A flow's membership score is minus its loss: the
classifier's cross-entropy of the true class, or the autoencoder's
reconstruction error (its anomaly score). A flow with a small loss is guessed
to be a training row.

`audit_bundle` samples members from the rows the model trained on and as many
non-members from the test split, with the same number of flows per class. It
records in `bundle.json` under `membership` how well the score separates the
two (ROC-AUC, advantage, TPR at a low FPR), next to the bounds that the
bundle's (epsilon, delta) puts on any attack.

The numbers are a lower bound on leakage for this one attack. A low ROC-AUC
does not show that a model is private: a stronger attack may do better.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import config
from edgedp.atomic import check_writable
from edgedp.bundle import TORCH_WEIGHTS, Bundle, BundleError, add_files, load_bundle
from edgedp.dataset import PreparedDataset

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = config.MEMBERSHIP_SAMPLES
FPR_LEVELS: tuple[float, ...] = (0.01, 0.001)
# A TPR at false-positive rate `fpr` is reported only when at least this many
# non-members may score above the threshold, that is with at least
# MIN_FALSE_POSITIVES / fpr non-members. With fewer, the threshold is set by
# the few highest-scoring non-members and the TPR mostly measures their noise.
MIN_FALSE_POSITIVES = 10
ATTACK = "loss threshold (Yeom et al. 2018)"
SCORES = {
    "classifier": "minus the cross-entropy of the true class (as the logit margin)",
    "autoencoder": "minus the reconstruction error",
}


class MembershipError(ValueError):
    """The attack cannot run with these settings on this dataset."""


# Bounds that (epsilon, delta)-DP puts on any membership test. Kairouz, Oh and
# Viswanath ("The Composition Theorem for Differential Privacy", 2015) show
# that a test between neighbouring datasets has TPR <= e^eps * FPR + delta
# and 1 - FPR <= e^eps * (1 - TPR) + delta, and that one mechanism reaches
# this region's boundary for every FPR.


def _check_privacy(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and at least 0, got {epsilon}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")


def tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """Return the largest TPR at false-positive rate `fpr` under (eps, delta)-DP.

    It is min(1, e^eps * FPR + delta, 1 - e^-eps * (1 - delta - FPR)).
    """
    _check_privacy(epsilon, delta)
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    if fpr == 0:
        return delta
    # e^eps * FPR, clamped at 1 in the exponent so that a large epsilon cannot
    # overflow.
    scaled = math.exp(min(epsilon + math.log(fpr), 0.0))
    upper = 1 - (1 - delta - fpr) * math.exp(-epsilon)
    return min(1.0, scaled + delta, upper)


def advantage_bound(epsilon: float, delta: float) -> float:
    """Return the largest advantage, max(TPR - FPR), under (epsilon, delta)-DP.

    It is (e^eps - 1 + 2 delta) / (e^eps + 1), written here as
    tanh(eps / 2) + delta * (1 - tanh(eps / 2)), which does not overflow.
    """
    _check_privacy(epsilon, delta)
    ratio = math.tanh(epsilon / 2)
    return ratio + delta * (1 - ratio)


def roc_auc_bound(epsilon: float, delta: float) -> float:
    """Return the largest ROC-AUC of a membership test under (epsilon, delta)-DP.

    It is the area under the boundary that `tpr_bound` traces, which is
    delta + (1 - delta) * (e^eps + delta) / (e^eps + 1). The formula is
    derived here from that boundary and checked against numerical
    integration in the tests.
    """
    _check_privacy(epsilon, delta)
    ratio = math.tanh(epsilon / 2)
    # (e^eps + delta) / (e^eps + 1) = 1 - (1 - delta) * (1 - tanh(eps / 2)) / 2
    return delta + (1 - delta) * (1 - (1 - delta) * (1 - ratio) / 2)


def privacy_bounds(ledger: dict[str, Any]) -> dict[str, Any]:
    """Return the attack bounds that a bundle's privacy ledger implies.

    A bundle trained without DP (`private` false or an infinite epsilon) has
    no bound: its `advantage`, `roc_auc` and `tpr_at_fpr` values are None.
    """
    epsilon = float(ledger.get("epsilon", math.inf))
    delta = ledger.get("delta")
    private = bool(ledger.get("private", math.isfinite(epsilon)))
    result: dict[str, Any] = {"epsilon": epsilon, "delta": delta}
    if not private or not math.isfinite(epsilon) or delta is None:
        return {
            **result,
            "advantage": None,
            "roc_auc": None,
            "tpr_at_fpr": {str(fpr): None for fpr in FPR_LEVELS},
        }
    return {
        **result,
        "advantage": advantage_bound(epsilon, delta),
        "roc_auc": roc_auc_bound(epsilon, delta),
        "tpr_at_fpr": {str(fpr): tpr_bound(epsilon, delta, fpr) for fpr in FPR_LEVELS},
    }


def draw_sample(
    member_labels: np.ndarray,
    non_member_labels: np.ndarray,
    samples: int,
    rng: np.random.Generator,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw members and non-members with the same number of flows per class.

    Members are a uniform sample, without replacement, of at most `samples`
    rows of the member population. For each class the same number of
    non-members is drawn from the non-member population. When a class has
    fewer non-members than members were drawn, both sides keep only as many
    as the non-members have, so the sample can end up below `samples`.

    Args:
        member_labels: class indices of the member population.
        non_member_labels: class indices of the non-member population.
        samples: members to draw at most.
        rng: the generator that draws both sides.
        classes: class names by index, for the log.

    Returns:
        Indices into `member_labels` and into `non_member_labels`, grouped
        by class.

    Raises:
        MembershipError: `samples` is below 1, or no class has rows on both
            sides.
    """
    if samples < 1:
        raise MembershipError(f"samples must be at least 1, got {samples}")
    drawn = rng.choice(
        len(member_labels), size=min(samples, len(member_labels)), replace=False
    )

    members = []
    non_members = []
    for label in np.unique(member_labels[drawn]):
        chosen = drawn[member_labels[drawn] == label]
        available = np.flatnonzero(non_member_labels == label)
        count = min(len(chosen), len(available))
        if count < len(chosen):
            logger.warning(
                "class %s has %d members in the sample but only %d non-members, "
                "so both sides keep %d of its flows",
                classes[label] if classes is not None else label,
                len(chosen),
                len(available),
                count,
            )
        members.append(chosen[:count])
        non_members.append(rng.choice(available, size=count, replace=False))

    members_index = np.concatenate(members) if members else np.array([], int)
    non_members_index = np.concatenate(non_members) if members else np.array([], int)
    if len(members_index) == 0:
        raise MembershipError(
            "no class has flows among both the members and the non-members, so "
            "there is nothing to compare; check that the test split contains "
            "the classes the model trained on"
        )
    return members_index, non_members_index


def _row_keys(features: np.ndarray) -> np.ndarray:
    """View each float32 row as one opaque value, so that rows compare as a whole.

    Adding 0.0 first turns -0.0 into 0.0, so the two zeros match as they do
    in float comparison.
    """
    rows = np.ascontiguousarray(np.asarray(features, dtype=np.float32) + 0.0)
    width = rows.dtype.itemsize * rows.shape[1]
    return rows.view(np.dtype((np.void, width))).ravel()


def rows_in(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Return which rows of `features` equal a row of `reference` in every value."""
    if len(features) == 0 or len(reference) == 0:
        return np.zeros(len(features), dtype=bool)
    return np.isin(_row_keys(features), _row_keys(reference))


def occurs_once(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mark the rows whose values occur in no other row of `first` and `second`.

    Returns:
        One boolean mask over the rows of `first` and one over `second`.
    """
    keys = np.concatenate([_row_keys(first), _row_keys(second)])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    once = counts[inverse.ravel()] == 1
    return once[: len(first)], once[len(first) :]


def loss_scores(model, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return each flow's membership score, which orders flows as minus the loss.

    The autoencoder's score is minus the reconstruction error. The
    classifier's is the logit margin of the true class, z_y - logsumexp of
    the other logits. The cross-entropy equals log(1 + exp(-margin)), so the
    margin ranks flows exactly as minus the cross-entropy does, and every
    rank-based metric (ROC-AUC, advantage, TPR at an FPR) is the same. The
    margin is used because a confident prediction's cross-entropy rounds to 0
    in float32, which would tie flows that the margin still orders.

    A classifier with one class has no other logits. Its softmax is 1 and its
    cross-entropy 0 for every flow, so every score is 0 and all flows tie.

    Args:
        model: a classifier or autoencoder from `edgedp.models`.
        features: float32 features (rows, features).
        labels: class indices (rows,); the autoencoder ignores them.
    """
    import torch

    from edgedp.evaluate import PREDICT_CHUNK_ROWS, predict_torch
    from edgedp.models import Autoencoder

    if isinstance(model, Autoencoder):
        return -predict_torch(model, features).astype(np.float64)

    model.eval()
    if model.spec.output_dim == 1:
        return np.zeros(len(features), dtype=np.float64)

    margins = []
    with torch.inference_mode():
        for start in range(0, len(features), PREDICT_CHUNK_ROWS):
            stop = start + PREDICT_CHUNK_ROWS
            chunk = torch.from_numpy(np.ascontiguousarray(features[start:stop]))
            targets = torch.from_numpy(np.ascontiguousarray(labels[start:stop]))
            logits = model.net(chunk).double()
            true_logit = logits.gather(1, targets[:, None]).squeeze(1)
            others = logits.scatter(1, targets[:, None], -torch.inf)
            margins.append((true_logit - torch.logsumexp(others, dim=1)).numpy())
    return np.concatenate(margins)


def attack_metrics(
    member_scores: np.ndarray, non_member_scores: np.ndarray
) -> dict[str, Any]:
    """Score how well `member_scores` rank above `non_member_scores`.

    The advantage is max(TPR - FPR) over every threshold. It picks the best
    threshold on the same sample, so even scores that carry no membership
    signal give an advantage above 0 on a finite sample.

    Returns:
        `roc_auc`, `advantage` and `tpr_at_fpr`, which maps each FPR of
        `FPR_LEVELS` (as a string) to the largest TPR at that FPR or below,
        or None when there are fewer than MIN_FALSE_POSITIVES / FPR
        non-members.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.concatenate(
        [np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    )
    scores = np.concatenate([member_scores, non_member_scores])
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)

    tpr_at_fpr: dict[str, float | None] = {}
    for level in FPR_LEVELS:
        if len(non_member_scores) < math.ceil(MIN_FALSE_POSITIVES / level):
            tpr_at_fpr[str(level)] = None
        else:
            tpr_at_fpr[str(level)] = float(tpr[fpr <= level].max())
    return {
        "roc_auc": float(roc_auc_score(truth, scores)),
        "advantage": float(np.max(tpr - fpr)),
        "tpr_at_fpr": tpr_at_fpr,
    }


def _non_member_population(kind: str) -> str:
    return "Benign test split rows" if kind == "autoencoder" else "test split rows"


def audit_bundle(
    bundle: Bundle | str | Path,
    data: str | Path | PreparedDataset | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = config.DEFAULT_SEED,
) -> dict[str, Any]:
    """Run the loss-threshold attack on a bundle and record it in `bundle.json`.

    Members are training rows of the population the model trained on (all
    rows for the classifier, Benign rows for the autoencoder). Non-members
    are test rows of the same classes, as many per class as the members.

    Args:
        bundle: an opened bundle or its folder; its files are verified by
            sha256 and `bundle.json` is read again.
        data: the prepared dataset the bundle was trained on, by default the
            one recorded in `bundle.json`.
        samples: members to draw, and as many non-members; fewer when the
            populations are smaller.
        seed: seed of the sample.

    Returns:
        The result, also stored as `membership` in `bundle.json`.

    Raises:
        MembershipError: `samples` is below 1, or the sample is empty.
        BundleError: the bundle is altered or lacks its torch weights, or the
            dataset is not the one it was trained on (another encoder
            version, classes, features, training row count or split files).
        DatasetError: the dataset or a split is missing.
        OutputError: the bundle folder is not writable, checked before the
            attack runs.
    """
    from edgedp.export import open_dataset, require_training_dataset
    from edgedp.models import ModelSpec, load_model
    from edgedp.train import training_population

    if samples < 1:
        raise MembershipError(f"samples must be at least 1, got {samples}")
    bundle = load_bundle(bundle.root if isinstance(bundle, Bundle) else bundle)
    check_writable(bundle.root / "bundle.json")
    dataset = open_dataset(bundle, data)
    require_training_dataset(
        bundle,
        dataset,
        named=data is not None,
        risk=(
            "its training and test splits may each contain rows of the other "
            "split of the bundle's dataset, and the attack would label members "
            "as non-members and the reverse"
        ),
    )
    kind = bundle.model_kind
    classes = bundle.classes
    ledger = bundle.manifest.get("privacy", {})

    train = dataset.split("train")
    in_training, population = training_population(train.labels, classes, kind)
    if ledger.get("rows") is not None and int(in_training.sum()) != ledger["rows"]:
        raise BundleError(
            f"{dataset.root} has {int(in_training.sum())} {population}, but "
            f"{bundle.root} was trained on {ledger['rows']}; pass the dataset "
            "it was trained on with --data"
        )
    test = dataset.split("test")
    in_test, _ = training_population(test.labels, classes, kind)
    member_features = train.features[in_training]
    member_labels = train.labels[in_training]
    test_features = test.features[in_test]
    test_labels = test.labels[in_test]

    rng = np.random.default_rng(seed)
    members, non_members = draw_sample(
        member_labels, test_labels, samples, rng, classes
    )
    logger.info(
        "auditing %s: %d members from %d %s, %d non-members from %d %s of %s",
        bundle.root,
        len(members),
        len(member_labels),
        population,
        len(non_members),
        len(test_labels),
        _non_member_population(kind),
        dataset.root,
    )

    spec = ModelSpec.from_json(bundle.manifest["model"])
    if kind == "classifier" and len(classes) == 1:
        logger.warning(
            "%s classifies one class (%s), so it gives every flow the same "
            "output, and the attack cannot tell members from non-members "
            "(ROC-AUC 0.5, advantage 0)",
            bundle.root,
            classes[0],
        )
    model = load_model(spec, bundle.path(TORCH_WEIGHTS))
    member_scores = loss_scores(model, member_features[members], member_labels[members])
    non_member_scores = loss_scores(
        model, test_features[non_members], test_labels[non_members]
    )
    metrics = attack_metrics(member_scores, non_member_scores)

    # A non-member whose features equal a training row's gets the same model
    # output as that row, and so the same score (for the classifier, when
    # the two rows also have the same class).
    duplicate = rows_in(test_features[non_members], member_features)
    duplicates = {
        "non_members_matching_training_features": int(duplicate.sum()),
        "fraction": float(duplicate.mean()),
    }
    # Dropping only those non-members would compare typical members with
    # rare non-members. A row whose features occur once among the training
    # and test rows went to its side by the split alone, so on such rows the
    # two sides have the same distribution and chance is still 0.5.
    once_in_training, once_in_test = occurs_once(member_features, test_features)
    unique_members = member_scores[once_in_training[members]]
    unique_non_members = non_member_scores[once_in_test[non_members]]
    unique = {
        "members": len(unique_members),
        "non_members": len(unique_non_members),
        "roc_auc": (
            attack_metrics(unique_members, unique_non_members)["roc_auc"]
            if len(unique_members) and len(unique_non_members)
            else None
        ),
    }
    per_class = np.bincount(member_labels[members], minlength=len(classes))

    result: dict[str, Any] = {
        "attack": ATTACK,
        "score": SCORES[kind],
        "model_format": "torch",
        "dataset": str(dataset.root.resolve()),
        "seed": seed,
        "samples": samples,
        "members": len(members),
        "non_members": len(non_members),
        "member_population": population,
        "member_population_rows": len(member_labels),
        "non_member_population": _non_member_population(kind),
        "non_member_population_rows": len(test_labels),
        "per_class": {
            name: int(count)
            for name, count in zip(classes, per_class, strict=True)
            if count
        },
        **metrics,
        "min_non_members_for_tpr": {
            str(level): math.ceil(MIN_FALSE_POSITIVES / level) for level in FPR_LEVELS
        },
        "duplicates": duplicates,
        "unique_rows": unique,
        "bound": privacy_bounds(ledger),
    }
    bound = result["bound"]["advantage"]
    logger.info(
        "membership inference on %s: ROC-AUC %.4f, advantage %.4f (%s)",
        bundle.root,
        result["roc_auc"],
        result["advantage"],
        "no bound without DP" if bound is None else f"DP bound {bound:.4f}",
    )

    add_files(bundle, {}, {"membership": result})
    return result
