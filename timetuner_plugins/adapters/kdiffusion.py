"""k-diffusion's denoiser wrappers as tunable denoisers (imports nothing from k-diffusion itself).

Each wrapper keeps its own preconditioning at σ; only the inner model's noise conditioning
moves to τ. With τ = σ the same operations run as in the wrapper's ``forward``, so identity
τ reproduces it bit for bit. One small class per kind of wrapper.
"""

from __future__ import annotations

from typing import Any

import torch

from .denoisers import TunableDenoiser, append_dims


class KDiffusionDenoiser(TunableDenoiser):
    """A k-diffusion wrapper (``wrapper``) as a tunable denoiser. Discrete-time wrappers carry their σ range and
    timestep maps; continuous ones get EDM's range unless given."""

    kind = ""  # the wrapper's kind, named by each subclass
    discrete = True

    def __init__(
        self,
        wrapper: torch.nn.Module,
        sample_shape: tuple[int, ...] = (),
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        model_id: str = "",
    ):
        super().__init__()
        self.wrapper, self.sample_shape, self.model_id = wrapper, tuple(sample_shape), model_id
        own = self.discrete
        self.sigma_min = float(sigma_min if sigma_min is not None else wrapper.sigma_min if own else 0.002)
        self.sigma_max = float(sigma_max if sigma_max is not None else wrapper.sigma_max if own else 80.0)
        self.default_schedule = "quadratic_t" if own else "karras"
        self.time_offset = 1.0 if own else 0.0

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.wrapper.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.wrapper.t_to_sigma(t)

    def _scalings(self, x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        return [append_dims(s, x.ndim) for s in self.wrapper.get_scalings(sigma)]

    def _network(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.wrapper.inner_model(x, t, **extra)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """c_skip·x + c_out·F(c_in·x, t(τ)): the v-prediction and Karras wrappers."""
        c_skip, c_out, c_in = self._scalings(x, sigma)
        return self._network(x * c_in, self.sigma_to_t(cond_sigma), **extra) * c_out + x * c_skip


class DiscreteEpsDenoiser(KDiffusionDenoiser):
    """DiscreteEpsDDPMDenoiser, CompVisDenoiser, OpenAIDenoiser: ε-prediction on a discrete timestep."""

    kind = "eps"

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        c_out, c_in = self._scalings(x, sigma)
        return x + self.wrapper.get_eps(x * c_in, self.wrapper.sigma_to_t(cond_sigma), **extra) * c_out


class DiscreteVDenoiser(KDiffusionDenoiser):
    """DiscreteVDDPMDenoiser, CompVisVDenoiser: v-prediction on a discrete timestep."""

    kind = "discrete_v"

    def _network(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.wrapper.get_v(x, t, **extra)


class ContinuousVDenoiser(KDiffusionDenoiser):
    """VDenoiser: v-prediction on continuous time (its own σ ↔ t maps, EDM's σ range unless given)."""

    kind = "continuous_v"
    discrete = False


class KarrasDenoiser(KDiffusionDenoiser):
    """layers.Denoiser (Karras et al.'s preconditioning): the network is conditioned on σ itself."""

    kind = "karras"
    discrete = False

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t
