"""What a tuning run trains: τ per evaluation (and D-ODE λ, learned σ's) as one raw vector with named slices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..sets.tau import TauLookup
from ..sets.tau_function import bounded_log_ratio

DODE_BOUND = 1.0  # |λ| ≤ 1 via a tanh


@dataclass
class RunValues:
    """What one run uses: the schedule, its evaluation σ's, τ per evaluation and D-ODE λ's (or None)."""

    sigmas: torch.Tensor
    ev: torch.Tensor
    tau: torch.Tensor | None  # None: the plain sampler
    dode_lambda: torch.Tensor | None = None

    def lookup(self) -> TauLookup | None:
        return None if self.tau is None else TauLookup(self.ev, self.tau, dode_lambda=self.dode_lambda)


class TauParam(torch.nn.Module):
    """The trained parameters as one raw vector [τ (K) | D-ODE λ (K) | schedule gaps (N−1)], named by ``parts``;
    zeros (ones for ``t_ratio``'s τ) are the plain sampler.

    τ: ``log_ratio``: τ = σ·exp(b·tanh(raw/b)); ``t_ratio`` (the paper's): the model's continuous
    time is scaled, t(τ) = r·t(σ), with t counted from the model's time origin. λ = b·tanh(raw/b)
    (λ_0 has no previous output and stays 0). Schedule: σ_0 and σ_{N−1} stay; the N−1 gaps between
    them in log σ are a softmax of their initial shares plus raw, so σ's stay decreasing.
    """

    def __init__(
        self,
        eval_sigmas: torch.Tensor,
        model: Any,
        kind: str,
        sigmas: torch.Tensor | None = None,
        families: tuple[str, ...] = ("tau",),
        eval_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.kind, self.model, self.families, self.eval_fn = kind, model, tuple(families), eval_fn
        self.register_buffer("eval_sigmas", eval_sigmas.clone())
        sigmas = sigmas if sigmas is not None else torch.cat([eval_sigmas[:1], eval_sigmas.new_zeros(1)])
        self.register_buffer("sigmas", sigmas.to(eval_sigmas).clone())
        k, gaps = len(eval_sigmas), max(0, len(sigmas) - 2)
        self.parts = {"tau": slice(0, k), "dode": slice(k, 2 * k), "sigma": slice(2 * k, 2 * k + gaps)}
        self.raw = torch.nn.Parameter(self.identity_raw())

    def identity_raw(self) -> torch.Tensor:
        ev = self.eval_sigmas
        raw = ev.new_zeros(self.parts["sigma"].stop)
        if self.kind == "t_ratio":
            raw[self.parts["tau"]] = 1.0
        return raw

    def trainable(self, evaluations: list[int]) -> torch.Tensor:
        """The mask of raw entries a phase training ``evaluations`` updates."""
        mask = torch.zeros(len(self.raw), dtype=torch.bool, device=self.raw.device)
        if "tau" in self.families:
            mask[self.parts["tau"]][evaluations] = True
        if "dode" in self.families:
            mask[self.parts["dode"]][1:] = True  # λ_0 has no previous output
        if "sigma" in self.families:
            mask[self.parts["sigma"]] = True
        return mask

    def tau(self, raw: torch.Tensor | None = None, ev: torch.Tensor | None = None) -> torch.Tensor:
        raw = (self.raw if raw is None else raw)[self.parts["tau"]]
        ev = self.eval_sigmas if ev is None else ev
        if self.kind == "log_ratio":
            tau_max = getattr(self.model, "tau_max", None)
            tau = ev * torch.exp(bounded_log_ratio(raw, ev, tau_max))
            return tau if tau_max is None else tau.clamp(max=tau_max)  # exp's rounding may not pass τ_max
        offset = float(getattr(self.model, "time_offset", 0.0))
        t = self.model.sigma_to_t(ev) + offset
        return self.model.t_to_sigma(raw * t - offset)

    def schedule(self, raw: torch.Tensor) -> torch.Tensor:
        gaps = raw[self.parts["sigma"]]
        if "sigma" not in self.families or len(gaps) == 0:
            return self.sigmas
        log = self.sigmas[:-1].log()
        total = log[0] - log[-1]
        shares = torch.softmax((log[:-1] - log[1:]).div(total).log() + gaps, dim=0)
        inner = log[0] - total * torch.cumsum(shares, dim=0)[:-1]
        return torch.cat([self.sigmas[:1], inner.exp(), self.sigmas[-2:]])

    def values(self, raw: torch.Tensor | None = None) -> RunValues:
        raw = self.raw if raw is None else raw
        sigmas = self.schedule(raw)
        ev = self.eval_sigmas if sigmas is self.sigmas else self.eval_fn(sigmas.detach())
        lam = DODE_BOUND * torch.tanh(raw[self.parts["dode"]] / DODE_BOUND) if "dode" in self.families else None
        return RunValues(sigmas, ev, self.tau(raw, ev), lam)

    def plain(self) -> RunValues:
        return RunValues(self.sigmas, self.eval_sigmas, None)
