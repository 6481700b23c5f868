"""What a model must provide to be tuned, sampled and applied, and what it may provide to be measured.

Every adapter in :mod:`timetuner_plugins.adapters.denoisers` (and the k-diffusion, diffusers and ComfyUI ones) meets
:class:`TunableModel`. The optional capabilities are separate protocols, checked with ``isinstance``, so a
third-party model supplies its own quality metric, tuning features or real data by having the member; the
bundled models are given theirs by :mod:`timetuner_plugins.bundled`, the same way.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class TunableModel(Protocol):
    """A denoiser in k-diffusion's convention: ``model(x, sigma, cond_sigma=None, **extra)`` returns the denoised
    x for the state ``x`` at noise level σ, with the network conditioned on ``cond_sigma`` (τ) where given."""

    sigma_min: float
    sigma_max: float
    sample_shape: tuple[int, ...]  # one sample's shape, without the batch dimension
    space: str  # "ve" (x = x₀ + σ·ε) or "flow" (x = (1 − σ)·x₀ + σ·ε)
    model_id: str  # a name for the sets tuned on it

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None, **extra
    ) -> torch.Tensor: ...

    @property
    def fingerprint(self) -> str:
        """A digest of the weights as loaded: a set applies to the model it was tuned on."""
        ...


class QualityMetric(Protocol):
    """A distance between samples and the model's data (lower is better), in two steps so resampling reuses the
    per-sample features: :class:`timetuner_plugins.evaluation.metrics.FrechetMetric` is one."""

    def features(self, samples: torch.Tensor) -> torch.Tensor: ...

    def from_features(self, features: torch.Tensor) -> float: ...

    def __call__(self, samples: torch.Tensor) -> float: ...


@runtime_checkable
class HasQualityMetric(Protocol):
    """A model with a metric of its own: reported as FD next to trajectory error, and usable for selection
    (``select_by="fd"``)."""

    def quality_metric(self) -> QualityMetric: ...


@runtime_checkable
class HasTuningFeatures(Protocol):
    """A model with a feature network for the objective (``features="tuning_features"``)."""

    tuning_features: Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class HasRealData(Protocol):
    """A model with real training data, for the paper's objective (``data="real"``)."""

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


OPTIONAL = (HasQualityMetric, HasTuningFeatures, HasRealData)
OPTIONAL_MEMBERS = ("quality_metric", "tuning_features", "sample_data")  # what a wrapper passes on
