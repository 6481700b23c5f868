"""Sample-quality metrics: Fréchet distances and the error against a reference run."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from scipy import linalg

from ..contract import HasQualityMetric, QualityMetric


def gaussian_stats(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of flat rows, in float64."""
    v = values.reshape(len(values), -1).double().cpu().numpy()
    return v.mean(axis=0), np.cov(v, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) (Heusel et al. 2017)."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
        offset = np.eye(len(cov1)) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean.real))


@lru_cache(maxsize=1)
def _classifier_and_reference() -> tuple[torch.nn.Module, tuple[np.ndarray, np.ndarray]]:
    from ..bundled import load_classifier
    from ..bundled.data import digits

    net = load_classifier()
    held_out, _ = digits("held_out")
    with torch.no_grad():
        return net, gaussian_stats(net.features(held_out))


class FrechetMetric:
    """An FD as two steps, so that resampling (bootstrap) reuses the per-sample features: ``features``
    embeds samples row by row, ``from_features`` compares their moments with the reference's."""

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], reference: tuple[np.ndarray, np.ndarray]):
        self.embed, self.reference = embed, reference

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.embed(samples)

    def from_features(self, features: torch.Tensor) -> float:
        return frechet_distance(*gaussian_stats(features), *self.reference)

    def __call__(self, samples: torch.Tensor) -> float:
        return self.from_features(self.features(samples))


def _digits_features(samples: torch.Tensor) -> torch.Tensor:
    net, _ = _classifier_and_reference()
    return torch.cat([net.features(chunk.float().clamp(-1, 1).cpu()) for chunk in samples.split(1000)])


@lru_cache(maxsize=1)
def digits_metric() -> FrechetMetric:
    """FD between the samples and the held-out digits in the bundled classifier's 64-d features."""
    return FrechetMetric(_digits_features, _classifier_and_reference()[1])


def digits_fd(samples: torch.Tensor) -> float:
    return digits_metric()(samples)


def gmm_fd(model: Any) -> FrechetMetric:
    """FD between the samples' moments and the mixture's exact mean and covariance (pixel space)."""
    mean, cov = (t.detach().cpu().numpy() for t in model.moments())
    return FrechetMetric(lambda samples: samples.reshape(len(samples), -1).cpu(), (mean, cov))


def fd_metric(model: Any) -> QualityMetric | None:
    """The model's own quality metric (reported as FD), or None for a model without one (then only trajectory
    error is reported)."""
    return model.quality_metric() if isinstance(model, HasQualityMetric) else None


def trajectory_error(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over samples of the RMS difference to the reference run from the same noise."""
    diff = (samples.double() - reference.double()).reshape(len(samples), -1)
    return float(diff.pow(2).mean(dim=1).sqrt().mean())
