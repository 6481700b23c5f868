"""Tunable denoisers: ``D(x, sigma, cond_sigma=None, **extra)`` in k-diffusion's σ (VE) space.

Every adapter computes D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(τ)): the
preconditioning stays at the σ the sampler evaluates at, and only the network's
noise conditioning moves to ``cond_sigma`` = τ (defaults to σ).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so ``v`` broadcasts against an ``ndim`` tensor."""
    return v[(...,) + (None,) * (ndim - v.ndim)]


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: the model's identity."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class TunableDenoiser(nn.Module):
    """Base class: subclasses implement ``denoise(x, sigma, cond_sigma, **extra)``.

    Attributes a sampler, schedule or tuner may read: ``sigma_min``/``sigma_max``
    (the σ range the model was trained on), ``sample_shape`` (one sample, no
    batch), ``default_schedule``, ``model_id`` and ``fingerprint``.
    """

    is_tunable_denoiser = True
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sample_shape: tuple[int, ...] = ()
    default_schedule: str = "karras"
    model_id: str = ""
    time_offset: float = 0.0  # the model's continuous time is t + time_offset (1 for DDPM's steps 0..N-1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None,
                **extra: Any) -> torch.Tensor:
        """Denoised x in x's dtype (the network may run in another, e.g. a half-precision model)."""
        return self.denoise(x, sigma, sigma if cond_sigma is None else cond_sigma, **extra).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's own time for σ (σ itself unless the model has a discrete time axis)."""
        return sigma

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def t_range(self) -> tuple[float, float]:
        """(t at sigma_min, t at sigma_max)."""
        return (float(self.sigma_to_t(torch.tensor(self.sigma_min, dtype=torch.float64))),
                float(self.sigma_to_t(torch.tensor(self.sigma_max, dtype=torch.float64))))

    @property
    def fingerprint(self) -> str:
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = fingerprint_tensors(dict(self.state_dict()))
            self._fingerprint = cached
        return cached


class DiscreteVPDenoiser(TunableDenoiser):
    """A discrete-time VP model (DDPM): ε- or v-prediction with fractional timesteps.

    ``net(x_in, t, **extra)`` gets ``t`` in [0, N-1], possibly fractional: τ may fall
    between training steps. t(σ) interpolates linearly in log σ between steps.
    """

    default_schedule = "quadratic_t"
    time_offset = 1.0

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        super().__init__()
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.net = net
        self.prediction = prediction
        sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])

    @staticmethod
    def linear_betas(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
        """DDPM's linear β schedule (Ho et al. 2020), as ᾱ."""
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, dim=0)

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        """The log σ table on ``like``'s device, in float64 where the device has it."""
        dtype = torch.float32 if like.device.type == "mps" else torch.float64
        return self.log_sigmas.to(like.device, dtype)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        table = self._table(sigma)
        log_sigma = sigma.to(table.dtype).log()
        high = torch.searchsorted(table, log_sigma.detach().reshape(-1).contiguous()).reshape(log_sigma.shape)
        high = high.clamp(1, len(table) - 1)
        low = high - 1
        w = (log_sigma - table[low]) / (table[high] - table[low])
        return (low + w).to(sigma.dtype)  # linear extrapolation past either end

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        table = self._table(t)
        t_hi = t.to(table.dtype)
        low = t_hi.detach().floor().long().clamp(0, len(table) - 2)
        w = t_hi - low
        out = (table[low] * (1 - w) + table[low + 1] * w).exp()
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = append_dims(sigma, x.ndim)
        c_in = 1 / (s ** 2 + 1) ** 0.5
        out = self.net(x * c_in, self.sigma_to_t(cond_sigma), **extra)
        if self.prediction == "eps":
            return x - s * out
        return x / (s ** 2 + 1) - s * c_in * out


class EDMDenoiser(TunableDenoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1): c_noise = ln(τ)/4."""

    default_schedule = "karras"

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.net = net
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = append_dims(sigma, x.ndim)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2) ** 0.5
        c_in = 1 / (s ** 2 + sd2) ** 0.5
        return c_skip * x + c_out * self.net(x * c_in, cond_sigma.log() / 4, **extra)


class CFGDenoiser(TunableDenoiser):
    """Classifier-free guidance over a tunable denoiser; both branches see τ.

    Extra arguments ``cond`` and ``uncond`` are passed to the inner model as
    ``cond_key`` (one batched call); D = D_u + scale·(D_c − D_u).
    """

    def __init__(self, inner: TunableDenoiser, scale: float, cond_key: str = "label"):
        super().__init__()
        self.inner, self.scale, self.cond_key = inner, scale, cond_key
        for attr in ("sigma_min", "sigma_max", "sample_shape", "default_schedule", "model_id"):
            setattr(self, attr, getattr(inner, attr))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.inner.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.inner.t_to_sigma(t)

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, cond: Any = None,
                uncond: Any = None, **extra: Any) -> torch.Tensor:
        if cond is None or uncond is None:
            raise ValueError("CFGDenoiser needs extra_args 'cond' and 'uncond' (the two branches' conditioning)")
        b = x.shape[0]
        both = lambda v: torch.cat([v, v]) if v.ndim else v  # noqa: E731
        out = self.inner(torch.cat([x, x]), both(sigma), cond_sigma=both(cond_sigma),
                         **{self.cond_key: torch.cat([uncond, cond])}, **extra)
        d_uncond, d_cond = out[:b], out[b:]
        return d_uncond + (d_cond - d_uncond) * self.scale
