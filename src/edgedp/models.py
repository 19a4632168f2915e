"""The study's two models: a feed-forward classifier and an autoencoder.

Both are plain stacks of `nn.Linear` and ReLU, which Opacus computes
per-sample gradients for without hooks of its own, and which LiteRT lowers to
FULLY_CONNECTED operators that have int8 kernels.

An architecture is described by a small JSON-able dict (`ModelSpec`) stored in
`bundle.json`, so a bundle can be rebuilt without pickled code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASSIFIER = "classifier"
AUTOENCODER = "autoencoder"

# Five Linear layers for the classifier and six for the autoencoder, as in
# the study. The study does not publish its layer widths; these are sized for
# tens of input features.
DEFAULT_CLASSIFIER_HIDDEN: tuple[int, ...] = (128, 64, 32, 16)
DEFAULT_AUTOENCODER_HIDDEN: tuple[int, ...] = (32, 16, 8, 16, 32)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one model, as stored in `bundle.json`."""

    kind: str
    input_dim: int
    hidden: tuple[int, ...]
    output_dim: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in (CLASSIFIER, AUTOENCODER):
            raise ValueError(
                f"unknown model kind {self.kind!r}; use {CLASSIFIER} or {AUTOENCODER}"
            )
        if self.input_dim < 1 or self.output_dim < 1 or any(w < 1 for w in self.hidden):
            raise ValueError(f"layer widths must be positive, got {self}")
        if self.kind == AUTOENCODER and self.output_dim != self.input_dim:
            raise ValueError(
                "an autoencoder reconstructs its input, so output_dim "
                f"({self.output_dim}) must equal input_dim ({self.input_dim})"
            )

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["hidden"] = list(self.hidden)
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ModelSpec:
        return cls(
            kind=value["kind"],
            input_dim=int(value["input_dim"]),
            hidden=tuple(int(w) for w in value["hidden"]),
            output_dim=int(value["output_dim"]),
            extra=dict(value.get("extra", {})),
        )


def classifier_spec(
    input_dim: int, classes: int, hidden: tuple[int, ...] | None = None
) -> ModelSpec:
    """Return the spec of the default feed-forward classifier."""
    return ModelSpec(
        CLASSIFIER, input_dim, hidden or DEFAULT_CLASSIFIER_HIDDEN, classes
    )


def autoencoder_spec(
    input_dim: int, hidden: tuple[int, ...] | None = None
) -> ModelSpec:
    """Return the spec of the default autoencoder."""
    return ModelSpec(
        AUTOENCODER, input_dim, hidden or DEFAULT_AUTOENCODER_HIDDEN, input_dim
    )


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(
        zip(widths[:-1], widths[1:], strict=True)
    ):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Feed-forward classifier. `forward` returns class probabilities.

    Training uses `net`, which returns logits, with a cross-entropy loss. The
    softmax is applied only in `forward`, which is what gets exported.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = _mlp([spec.input_dim, *spec.hidden, spec.output_dim])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(features), dim=-1)


class Autoencoder(nn.Module):
    """Autoencoder with a sigmoid output. `forward` returns the reconstruction."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.net = nn.Sequential(
            *_mlp([spec.input_dim, *spec.hidden, spec.output_dim]), nn.Sigmoid()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def reconstruction_error(
    features: torch.Tensor, reconstruction: torch.Tensor
) -> torch.Tensor:
    """Return each flow's mean squared reconstruction error, the anomaly score."""
    return ((features - reconstruction) ** 2).mean(dim=-1)


class ReconstructionLoss(nn.Module):
    """Mean squared reconstruction error, with one value per flow on request.

    `reduction="none"` returns each flow's mean over features (the anomaly
    score), because Opacus's ghost clipping needs a per-sample loss. `"mean"`
    averages those over the batch and `"sum"` adds them up.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, reconstruction: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        per_flow = reconstruction_error(features, reconstruction)
        if self.reduction == "none":
            return per_flow
        if self.reduction == "sum":
            return per_flow.sum()
        if self.reduction == "mean":
            return per_flow.mean()
        raise ValueError(f"unknown reduction {self.reduction!r}; use none, mean or sum")


def build_model(spec: ModelSpec) -> Classifier | Autoencoder:
    """Build an untrained model for `spec`."""
    if spec.kind == CLASSIFIER:
        return Classifier(spec)
    return Autoencoder(spec)


def training_loss(spec: ModelSpec) -> nn.Module:
    """Return the loss that `net` of a model for `spec` is trained with.

    The classifier's `net` returns logits, so it gets cross-entropy; the
    autoencoder's returns the reconstruction, compared with its input.
    """
    if spec.kind == CLASSIFIER:
        return nn.CrossEntropyLoss()
    return ReconstructionLoss()


def load_model(spec: ModelSpec, weights: str | Path) -> Classifier | Autoencoder:
    """Build the model for `spec` and load its `state_dict` from `weights`.

    Raises:
        ValueError: the file contains weights of another architecture.
    """
    model = build_model(spec)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{weights} does not hold weights for {spec.kind} "
            f"{[spec.input_dim, *spec.hidden, spec.output_dim]}: {error}"
        ) from error
    return model.eval()
