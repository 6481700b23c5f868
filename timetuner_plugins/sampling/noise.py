"""Reproducible noise for stochastic samplers: per-call seeded draws, or a Brownian path.

A sampler's ``noise_sampler(sigma, sigma_next)`` returns standard-normal noise
shaped like x. ``SeededNoise`` replays the same draws in call order (fixed noise
per batch while tuning). ``BrownianNoise`` returns the increment of one Brownian
path over the step (torchsde's Brownian tree), so runs with different step
counts from the same seed follow the same path and converge to the same sample.
"""

from __future__ import annotations

import torch


class SeededNoise:
    """The k-th call returns the k-th draw of a generator seeded with ``seed``."""

    def __init__(self, like: torch.Tensor, seed: int):
        self.like, self.seed = like, seed
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        draw = torch.randn(self.like.shape, generator=self.generator, dtype=torch.float32)
        return draw.to(self.like.device, self.like.dtype)


class BrownianNoise:
    """Normalised increments (W(t₁) − W(t₀)) / √|t₁ − t₀| of one Brownian path in t = σ."""

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int):
        import torchsde

        self.like = like
        w0 = torch.zeros_like(like, dtype=torch.float64, device="cpu")
        self.tree = torchsde.BrownianTree(
            torch.tensor(float(sigma_min) * 0.5, dtype=torch.float64),
            w0,
            torch.tensor(float(sigma_max) * 1.5, dtype=torch.float64),
            entropy=seed,
            tol=1e-6,
        )

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = float(sigma), float(sigma_next)
        lo, hi = min(t0, t1), max(t0, t1)
        w = self.tree(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64))
        if t1 < t0:
            w = -w
        return (w / abs(t1 - t0) ** 0.5).to(self.like.device, self.like.dtype)


class RowNoise:
    """Rows ``part`` of a whole batch's noise sampler, so a micro-batch (or one process's share) draws exactly
    the noise its rows get in a whole-batch run."""

    def __init__(self, inner: "SeededNoise | BrownianNoise", part: slice):
        self.inner, self.part = inner, part

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return self.inner(sigma, sigma_next)[self.part]
