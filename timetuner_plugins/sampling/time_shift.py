"""Time-Shift sampling (Li et al., ICLR 2024, "Alleviating Exposure Bias in Diffusion Models through
Sampling with Shifted Time Steps"), applied through the ``wrap_model`` τ hook to any registered sampler.

Training-free: at each network evaluation after the first, while σ is above a cutoff, each sample's
network conditioning moves to the noise level, within a window of the model's time grid around σ,
whose forward-process variance 1 − ᾱ_s = σ_s²/(1 + σ_s²) is closest to the sample's own variance (in VP
scale). As in the paper's Algorithm 3, only the network's time input moves; the solver's step stays on
its grid. ``run_sampler(..., lookup=TimeShift(...))`` uses it; the plugin in ``builtin/time_shift.py``
serves the hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .samplers import is_flow

GRID = 1000  # steps of the time grid for models without a discrete one (log σ uniform)


@dataclass(frozen=True)
class TimeShift:
    """The rule: search ``window`` grid steps (±window/2) while σ > ``cutoff_sigma``."""

    window: int = 20
    cutoff_sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 grid step, got {self.window}")
        if not self.cutoff_sigma >= 0:
            raise ValueError(f"cutoff_sigma must be ≥ 0, got {self.cutoff_sigma}")

    def is_identity(self) -> bool:
        return False


def _time_axis(
    model: Any,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], int]:
    """(σ → grid position, grid position → σ, grid size): the model's own discrete steps when it has
    them (DDPM), else ``GRID`` steps uniform in log σ over its range."""
    if getattr(model, "log_sigmas", None) is not None:
        return model.sigma_to_t, model.t_to_sigma, len(model.log_sigmas)
    lo, hi = torch.tensor(model.sigma_min).log().item(), torch.tensor(model.sigma_max).log().item()
    scale = (GRID - 1) / (hi - lo)
    return (lambda s: (s.log() - lo) * scale), (lambda u: (u / scale + lo).exp()), GRID


class TimeShiftModel:
    """Wraps a tunable denoiser: evaluation k > 0 with σ > cutoff is conditioned on each sample's shifted σ."""

    def __init__(self, model: Callable[..., torch.Tensor], rule: TimeShift):
        if is_flow(model):
            raise ValueError(
                "Time-Shift (Li et al. 2024) matches a sample's variance to the VP forward process's "
                "1 − ᾱ; it is not defined for flow models (x = (1 − σ)·x₀ + σ·ε)"
            )
        self.inner_model, self.rule, self.calls = model, rule, 0
        self.to_u, self.from_u, self.size = _time_axis(model)
        self.shifts: list[torch.Tensor] = []  # per shifted evaluation: grid steps each sample moved

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        k, self.calls = self.calls, self.calls + 1
        s = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        if k == 0:  # the first step, from pure noise, is never shifted
            return self.inner_model(x, sigma, **extra)
        with torch.no_grad():
            var = x.reshape(x.shape[0], -1).var(dim=1) / (1 + s**2)
            half = self.rule.window // 2
            centre = self.to_u(s.double()).round()
            u = (centre[:, None] + torch.arange(-half, half + 1, device=x.device)).clamp(0, self.size - 1)
            cand = self.from_u(u).to(s.dtype)
            best = (var[:, None] - cand**2 / (1 + cand**2)).abs().argmin(dim=1)
            shifted = cand.gather(1, best[:, None])[:, 0]
            keep = s <= self.rule.cutoff_sigma
            cond = torch.where(keep, s, shifted)
            self.shifts.append((u.gather(1, best[:, None])[:, 0] - centre).where(~keep, torch.zeros_like(centre)))
        return self.inner_model(x, sigma, cond_sigma=cond.reshape(sigma.shape) if sigma.numel() > 1 else cond, **extra)
