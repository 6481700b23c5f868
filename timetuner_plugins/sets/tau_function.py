"""One τ for every step count: τ/σ as a small smooth function of where and how a run evaluates the network.

For evaluation k of a run (see :class:`~timetuner_plugins.sampling.run.EvalPlan`):

- u ∈ [0, 1]: where log σ_k lies in the model's log-σ range (recorded with the function, so a host with other
  σ_min/σ_max reads it the same way);
- g = 1 − σ_{i+1}/σ_i ∈ (0, 1]: the size of the step σ_i → σ_{i+1} it belongs to (1 for the step to σ = 0);
- c ∈ [0, 1): its place in that step (0 for the step's first evaluation, ½ for Heun's or DPM-Solver-2's second).

log τ/σ = b·tanh(f/b) with f = Σ_j θ_j φ_j(u, g, c) over 14 basis functions: the Legendre polynomials P0…P3 of
2u − 1 times {1, 2g − 1, (2g − 1)²}, and c, c·(2u − 1); b = 1, and below log(τ_max/σ) for a model whose network
was trained up to τ_max (flow models). θ = 0 is the plain sampler, exactly.
"""

from __future__ import annotations

from typing import Any

import torch

BASIS = "legendre3(u)*quadratic(g)+stage(c)*linear(u)"
N_BASIS = 14
LOG_RATIO_BOUND = 1.0  # |log τ/σ| ≤ 1 via a tanh


def bounded_log_ratio(raw: torch.Tensor, ev: torch.Tensor, tau_max: float | None) -> torch.Tensor:
    """log τ/σ = b·tanh(raw/b), b = LOG_RATIO_BOUND; upwards also at most log(τ_max/σ) for a model whose network was
    trained up to ``tau_max`` (a flow model's σ = 1), so τ never leaves that range."""
    bound = LOG_RATIO_BOUND
    if tau_max is None:
        return bound * torch.tanh(raw / bound)
    up = torch.log(tau_max / ev).clamp(1e-6, bound)  # σ at τ_max: τ may only move down
    return torch.where(raw > 0, up * torch.tanh(raw / up), bound * torch.tanh(raw / bound))


def basis(u: torch.Tensor, g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The 14 basis functions at each evaluation: (K,) inputs → (K, 14)."""
    x, y = 2 * u - 1, 2 * g - 1
    legendre = torch.stack([torch.ones_like(x), x, (3 * x**2 - 1) / 2, (5 * x**3 - 3 * x) / 2], dim=1)
    in_g = torch.stack([torch.ones_like(y), y, y**2], dim=1)
    products = (legendre[:, :, None] * in_g[:, None, :]).flatten(1)
    return torch.cat([products, torch.stack([c, c * x], dim=1)], dim=1)


class TauFunction(torch.nn.Module):
    """θ (14 coefficients) and what reads them the same way everywhere: the model's log-σ range and its τ_max."""

    def __init__(
        self, log_sigma_range: tuple[float, float], tau_max: float | None = None, coef: torch.Tensor | None = None
    ):
        super().__init__()
        lo, hi = (float(v) for v in log_sigma_range)
        if not hi > lo:
            raise ValueError(f"log_sigma_range must be increasing, got {(lo, hi)}")
        self.log_sigma_range, self.tau_max = (lo, hi), (None if tau_max is None else float(tau_max))
        self.coef = torch.nn.Parameter(torch.zeros(N_BASIS) if coef is None else coef.detach().float().clone())
        if self.coef.shape != (N_BASIS,):
            raise ValueError(f"a τ function has {N_BASIS} coefficients, got shape {tuple(self.coef.shape)}")

    @classmethod
    def for_model(cls, model: Any) -> "TauFunction":
        """The identity function over ``model``'s σ range."""
        lo, hi = float(model.sigma_min), float(model.sigma_max)
        return cls((float(torch.tensor(lo).log()), float(torch.tensor(hi).log())), getattr(model, "tau_max", None))

    def features(self, plan: Any, sigmas: torch.Tensor) -> torch.Tensor:
        """The basis at each evaluation of a run on ``sigmas`` planned as ``plan`` (an EvalPlan)."""
        ev, step = plan.eval_sigmas.double().cpu(), plan.step.cpu()
        lo, hi = self.log_sigma_range
        u = ((ev.log() - lo) / (hi - lo)).clamp(0, 1)
        s = sigmas.double().cpu()
        g = 1 - s[step + 1] / s[step]
        return basis(u, g, plan.stage.double().cpu()).float()

    def tau(self, features: torch.Tensor, ev: torch.Tensor, coef: torch.Tensor | None = None) -> torch.Tensor:
        """τ at evaluations ``ev`` with ``features`` (from :meth:`features`), for θ = ``coef`` (default: its own)."""
        coef = self.coef if coef is None else coef
        raw = features.to(coef) @ coef
        tau = ev * torch.exp(bounded_log_ratio(raw, ev, self.tau_max))
        return tau if self.tau_max is None else tau.clamp(max=self.tau_max)

    def describe(self) -> dict[str, Any]:
        """What a tuned set records beside θ, to read it back the same way."""
        return {"basis": BASIS, "log_sigma_range": list(self.log_sigma_range), "tau_max": self.tau_max}
