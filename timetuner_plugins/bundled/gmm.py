"""A Gaussian mixture fit to the digits, with its exact denoiser: the "ground-truth model".

For x = x₀ + σ·n and x₀ ~ Σ_k π_k N(μ_k, Σ_k), E[x₀ | x] is closed-form. The mixture
is exposed as a continuous-time VP ε-model on DDPM's time axis, so the τ substitution
means the same as for a network: the exact ε-predictor is asked for noise level τ
on the input c_in(σ)·x, and the preconditioning stays at σ.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..adapters.denoisers import DiscreteVPDenoiser, FlowDenoiser, SigmaTable, TunableDenoiser, append_dims
from ..evaluation.metrics import FrechetMetric, gmm_fd


class GMMDenoiser(TunableDenoiser):
    """Exact posterior-mean denoiser of a full-covariance Gaussian mixture (computed in float64)."""

    default_schedule = "quadratic_t"
    time_offset = 1.0

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        sample_shape: tuple[int, ...],
        alphas_cumprod: torch.Tensor | None = None,
    ):
        super().__init__()
        if alphas_cumprod is None:
            alphas_cumprod = DiscreteVPDenoiser.linear_betas()
        self.time_axis = DiscreteVPDenoiser(torch.nn.Identity(), alphas_cumprod)
        self.sigma_min, self.sigma_max = self.time_axis.sigma_min, self.time_axis.sigma_max
        self.sample_shape = tuple(sample_shape)
        evals, evecs = torch.linalg.eigh(covariances.double())
        self.register_buffer("weights", weights.double())
        self.register_buffer("means", means.double())
        self.register_buffer("covariances", covariances.double())
        self.register_buffer("eigvals", evals.clamp_min(0), persistent=False)
        self.register_buffer("eigvecs", evecs, persistent=False)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.time_axis.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_axis.t_to_sigma(t)

    def sigma_table(self) -> SigmaTable:
        return self.time_axis.sigma_table()

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
        """E[x₀ | α·x₀ + σ·n = x] for flat x (B, D), σ and α (B,) or scalars, in float64 (α = 1: the VE case;
        α = 1 − σ: the flow path, finite at σ = 1)."""
        x = x.double()
        var = (torch.as_tensor(sigma).double().reshape(-1, 1, 1)) ** 2  # (B or 1, 1, 1)
        a = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
        diff = x[:, None, :] - a * self.means[None]  # (B, K, D)
        proj = torch.einsum("bkd,kde->bke", diff, self.eigvecs)
        total = a**2 * self.eigvals[None] + var  # (B, K, D): the component's covariance, per eigenvector
        log_like = (
            -0.5 * (proj**2 / total).sum(-1) - 0.5 * total.log().sum(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        )
        resp = torch.softmax(self.weights.log()[None] + log_like, dim=1)  # (B, K)
        shrunk = a * self.eigvals[None] / total * proj
        comp_means = self.means[None] + torch.einsum("bke,kde->bkd", shrunk, self.eigvecs)
        return torch.einsum("bk,bkd->bd", resp, comp_means)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        b = x.shape[0]
        s = append_dims(sigma, x.ndim).double()
        tau = cond_sigma.double().reshape(-1) if cond_sigma.ndim else cond_sigma.double().expand(b)
        t = append_dims(tau, x.ndim)
        x_in = x.double() / (s**2 + 1) ** 0.5  # the network's input c_in(σ)·x
        x_at_tau = x_in * (t**2 + 1) ** 0.5  # read as a VP sample at level τ
        x0 = self.posterior_mean(x_at_tau.reshape(b, -1), tau).reshape(x.shape)
        eps = (x_at_tau - x0) / t  # exact ε-prediction at τ
        return (x.double() - s * eps).to(x.dtype)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's exact mean and covariance (flat, float64)."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (
            self.weights[:, None, None] * (self.covariances + self.means[:, :, None] * self.means[:, None, :])
        ).sum(0)
        return mean, second - mean[:, None] * mean[None, :]

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact draws from the mixture, shaped (n, *sample_shape)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covariances + 1e-12 * torch.eye(self.means.shape[1], dtype=torch.float64))
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[comp] + torch.einsum("nde,ne->nd", chol[comp], z)
        return x.float().reshape(n, *self.sample_shape)

    def quality_metric(self) -> FrechetMetric:
        """FD against the mixture's exact moments."""
        return gmm_fd(self)


class FlowVelocity(torch.nn.Module):
    """The mixture's exact velocity network for the flow path x_t = (1 − t)·x₀ + t·ε: v(x, t) =
    (x − E[x₀ | x_t = x]) / t, called as ``net(x, t·multiplier)`` like a trained flow network."""

    def __init__(self, mixture: GMMDenoiser, multiplier: float = 1000.0):
        super().__init__()
        self.mixture, self.multiplier = mixture, multiplier

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, **extra: Any) -> torch.Tensor:
        b = x.shape[0]
        t = (timestep.double() / self.multiplier).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t
        x0 = self.mixture.posterior_mean(x.reshape(b, -1), t, 1 - t).reshape(x.shape)
        return ((x.double() - x0) / append_dims(t, x.ndim)).to(x.dtype)


class GMMFlowDenoiser(FlowDenoiser):
    """The same mixture under the flow path, as a velocity model with the exact v (SD3-style, shift ``shift``):
    FD against its exact moments is exact, as for :class:`GMMDenoiser`."""

    def __init__(self, mixture: GMMDenoiser, shift: float = 1.0):
        super().__init__(FlowVelocity(mixture), prediction="v", shift=shift)
        self.sample_shape = mixture.sample_shape

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.mixture.moments()

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.net.mixture.sample_data(n, generator)

    def quality_metric(self) -> FrechetMetric:
        return gmm_fd(self)
