"""Loss functions of the tuner's objectives."""

from __future__ import annotations

import torch


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of x and the rows of y."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return sq.clamp_min(0).add(1e-12).sqrt()


def _mean_distance(x: torch.Tensor, y: torch.Tensor, same: bool) -> torch.Tensor:
    """Mean Euclidean distance between rows of x and rows of y (off-diagonal mean when ``same``)."""
    d = _distances(x, y)
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


def resampled_energy_distances(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """:func:`energy_distance` of ``a[idx], b[idx]`` for many paired resamples at once, each given by its row counts
    (``counts[r, i]``: how often row i is drawn in resample r); the distances are computed once, so a bootstrap of
    hundreds of resamples costs about one energy distance."""
    a, b, w = a.flatten(1).double(), b.flatten(1).double(), counts.double()
    n = len(a)

    def mean(d: torch.Tensor, same: bool) -> torch.Tensor:
        total = ((w @ d) * w).sum(1)  # Σ over drawn pairs (i, j) of d[idx_i, idx_j]
        if not same:
            return total / n**2
        return (total - w @ d.diagonal()) / (n * (n - 1))  # without the pairs of a draw with itself

    cross, within_a, within_b = _distances(a, b), _distances(a, a), _distances(b, b)
    return (2 * mean(cross, False) - mean(within_a, True) - mean(within_b, True)).float()


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
