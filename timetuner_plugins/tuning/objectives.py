"""Loss functions of the tuner's objectives."""

from __future__ import annotations

import torch


def _mean_distance(x: torch.Tensor, y: torch.Tensor, same: bool) -> torch.Tensor:
    """Mean Euclidean distance between rows of x and rows of y (off-diagonal mean when ``same``)."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    d = sq.clamp_min(0).add(1e-12).sqrt()
    if not same:
        return d.mean()
    n = len(x)
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Energy distance 2E‖A−B‖ − E‖A−A′‖ − E‖B−B′‖ between two sample sets (Székely & Rizzo 2013),
    with U-statistics inside each set. Zero iff the distributions agree; unbiased on minibatches, so
    minimising it matches the student's output distribution to the target's without the shrinkage
    toward the mean that a per-sample squared error rewards."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (2 * _mean_distance(a, b, False) - _mean_distance(a, a, True) - _mean_distance(b, b, True)).float()


def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element."""
    return (a - b).pow(2).mean()


def trajectory_error(states: list[torch.Tensor], targets: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Squared error at each σ_i after the first, weighted by 1/(σ_i²+1) (comparisons in VP scale)."""
    weights = 1 / (sigmas.to(targets.device) ** 2 + 1)
    per_step = [squared_error(s, t) * w for s, t, w in zip(states[1:], targets[1:], weights[1:])]
    return torch.stack(per_step).mean()


def eps_consistency(eps_here: torch.Tensor, eps_next: torch.Tensor) -> torch.Tensor:
    """The TimeTuner loss (Xia et al. 2024): squared ε difference summed per sample, batch-averaged."""
    return (eps_here - eps_next).pow(2).flatten(1).sum(1).mean()
