"""k-diffusion's denoiser wrappers as tunable denoisers (imports nothing from k-diffusion itself).

Each wrapper keeps its own preconditioning at σ; only the inner model's noise conditioning
moves to τ. With τ = σ the same operations run as in the wrapper's ``forward``, so identity
τ reproduces it bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from .denoisers import TunableDenoiser, append_dims

KINDS = ("eps", "discrete_v", "continuous_v", "karras")


class KDiffusionDenoiser(TunableDenoiser):
    """``kind``: ``eps`` (DiscreteEpsDDPMDenoiser, CompVisDenoiser, OpenAIDenoiser), ``discrete_v``
    (DiscreteVDDPMDenoiser, CompVisVDenoiser), ``continuous_v`` (VDenoiser) or ``karras`` (layers.Denoiser)."""

    def __init__(
        self,
        wrapper: torch.nn.Module,
        kind: str,
        sample_shape: tuple[int, ...] = (),
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        model_id: str = "",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.wrapper, self.kind, self.sample_shape, self.model_id = wrapper, kind, tuple(sample_shape), model_id
        discrete = kind in ("eps", "discrete_v")
        self.sigma_min = float(sigma_min if sigma_min is not None else wrapper.sigma_min if discrete else 0.002)
        self.sigma_max = float(sigma_max if sigma_max is not None else wrapper.sigma_max if discrete else 80.0)
        self.default_schedule = "quadratic_t" if discrete else "karras"
        self.time_offset = 1.0 if discrete else 0.0

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.wrapper.sigma_to_t(sigma) if self.kind != "karras" else sigma

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.wrapper.t_to_sigma(t) if self.kind != "karras" else t

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        w = self.wrapper
        if self.kind == "eps":
            c_out, c_in = [append_dims(s, x.ndim) for s in w.get_scalings(sigma)]
            return x + w.get_eps(x * c_in, w.sigma_to_t(cond_sigma), **extra) * c_out
        c_skip, c_out, c_in = [append_dims(s, x.ndim) for s in w.get_scalings(sigma)]
        if self.kind == "discrete_v":
            return w.get_v(x * c_in, w.sigma_to_t(cond_sigma), **extra) * c_out + x * c_skip
        noise_level = w.sigma_to_t(cond_sigma) if self.kind == "continuous_v" else cond_sigma
        return w.inner_model(x * c_in, noise_level, **extra) * c_out + x * c_skip
