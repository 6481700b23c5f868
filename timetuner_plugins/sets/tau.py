"""τ lookups: for each network evaluation of a run, the noise level the network is conditioned on.

A run's k-th evaluation happens at σ_k (``eval_sigmas[k]``); the network sees
τ_k instead. The model wrapper conditions on ``sigma · (τ_k / σ_k)``, so an identity
lookup (τ = σ) multiplies by exactly 1.0 and reproduces the plain sampler bit for bit.
Two ways to find k: by counting calls (our samplers) or by matching σ within a
relative tolerance (hosts such as ComfyUI that cannot count calls).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


class TauLookupError(RuntimeError):
    """A run whose evaluations do not line up with the τ lookup."""


class TauLookup:
    """τ_k (σ units) for evaluation k at σ_k; ``tau`` may require grad (tuning)."""

    def __init__(
        self, eval_sigmas: torch.Tensor, tau: torch.Tensor, rtol: float = 1e-4, dode_lambda: torch.Tensor | None = None
    ):
        if eval_sigmas.ndim != 1 or tau.shape != eval_sigmas.shape:
            raise ValueError(
                f"eval_sigmas and tau must be 1-D of one length, got {tuple(eval_sigmas.shape)} and {tuple(tau.shape)}"
            )
        if dode_lambda is not None and dode_lambda.shape != tau.shape:
            raise ValueError(
                f"dode_lambda must have one value per evaluation ({len(tau)}), got {tuple(dode_lambda.shape)}"
            )
        self.eval_sigmas, self.tau, self.rtol, self.dode_lambda = eval_sigmas, tau, rtol, dode_lambda
        self.ratio = tau / eval_sigmas
        self._host_sigmas: list[float] | None = None
        self._moved: dict[tuple[torch.device, torch.dtype], TauLookup] = {}

    @classmethod
    def identity(cls, eval_sigmas: torch.Tensor, rtol: float = 1e-4) -> "TauLookup":
        return cls(eval_sigmas, eval_sigmas.clone(), rtol)

    def __len__(self) -> int:
        return len(self.eval_sigmas)

    def __repr__(self) -> str:
        return f"TauLookup({len(self)} evaluations, tau/sigma={[round(r, 4) for r in self.ratio.tolist()]})"

    def is_identity(self) -> bool:
        lam = self.dode_lambda
        return bool(torch.equal(self.tau.detach(), self.eval_sigmas)) and (lam is None or not bool(lam.any()))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "TauLookup":
        """This lookup on ``device``/``dtype``: moved once and kept (unless τ is being trained), so
        repeated runs on a GPU copy nothing."""
        device = torch.device(device)
        if self.ratio.device == device and self.ratio.dtype == dtype:
            return self
        key = (device, dtype)
        if key in self._moved:
            return self._moved[key]
        lam = None if self.dode_lambda is None else self.dode_lambda.to(device, dtype)
        moved = TauLookup(self.eval_sigmas.to(device, dtype), self.tau.to(device, dtype), self.rtol, lam)
        moved._host_sigmas = self._host_sigmas
        if not (self.tau.requires_grad or (lam is not None and lam.requires_grad)):
            self._moved[key] = moved
        return moved

    def cond_sigma(self, k: int, sigma: torch.Tensor) -> torch.Tensor:
        """The network's noise conditioning at evaluation ``k`` made at ``sigma``."""
        return sigma * self.ratio[k]

    def index_of(self, sigma: float, start: int = 0) -> int | None:
        """The first evaluation at or after ``start`` whose σ matches within ``rtol``, else any match."""
        if self._host_sigmas is None:
            self._host_sigmas = self.eval_sigmas.detach().double().cpu().tolist()
        matches = [k for k, s in enumerate(self._host_sigmas) if abs(sigma - s) <= self.rtol * s]
        if not matches:
            return None
        return next((k for k in matches if k >= start), matches[0])


class TauModel:
    """Wraps a tunable denoiser so the k-th call is conditioned on τ_k (counted calls).

    The per-call work is one multiply: the ratios τ_k/σ_k are moved to the run's device and
    dtype and split into per-evaluation scalars on the first call. A lookup with D-ODE
    parameters (Kim et al. 2024) also returns D̃_k = D_k + λ_k·(D_k − D_{k−1}) for k ≥ 1,
    D_{k−1} being the previous evaluation's own output.
    """

    def __init__(self, model: Callable[..., torch.Tensor], lookup: TauLookup):
        self.inner_model, self.lookup, self.calls = model, lookup, 0
        self._ratios: tuple[torch.Tensor, ...] | None = None
        self._lambdas: tuple[torch.Tensor, ...] | None = None
        self._previous: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        k = self.calls
        ratios = self._ratios
        if ratios is None:
            moved = self.lookup.to(sigma.device, sigma.dtype)
            ratios = self._ratios = moved.ratio.unbind(0)
            if moved.dode_lambda is not None:
                self._lambdas = moved.dode_lambda.unbind(0)
        if k >= len(ratios):
            raise TauLookupError(
                f"the sampler made more than {len(ratios)} network evaluations, the number this τ set "
                f"was made for: it was tuned for another sampler, schedule or step count"
            )
        self.calls = k + 1
        out = self.inner_model(x, sigma, cond_sigma=sigma * ratios[k], **extra)
        if self._lambdas is None:
            return out
        previous, self._previous = self._previous, out
        return out if previous is None else out + self._lambdas[k] * (out - previous)

    def check_complete(self) -> None:
        """Raise if the run made fewer evaluations than the lookup has."""
        if self.calls != len(self.lookup):
            raise TauLookupError(
                f"the sampler made {self.calls} network evaluations but this τ set has "
                f"{len(self.lookup)}: it was tuned for another sampler, schedule or step count"
            )


class RecordingModel:
    """Records the σ of each evaluation (host floats) and passes the call through."""

    def __init__(self, model: Callable[..., torch.Tensor]):
        self.inner_model, self.sigmas = model, []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return self.inner_model(x, sigma, **extra)
