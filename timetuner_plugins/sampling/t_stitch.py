"""T-Stitch (Pan et al. 2024, "T-Stitch: Accelerating Sampling in Pre-Trained Diffusion Models with
Trajectory Stitching", arXiv 2402.14167): a small model makes the first, high-noise share of a run's
network evaluations, the large one the rest.

:class:`StitchedDenoiser` is a tunable denoiser over the pair; the plugin in ``builtin/t_stitch.py``
serves the registry's ``model_for_run`` hook with a :class:`StitchRun` per run, which counts the
run's calls (like a τ lookup, so any registered sampler works) and sends the first
``round(f·K)`` of its K evaluations to the small model. A τ lookup wraps that as it wraps any
model, so the generic tuner tunes τ for the stitched pair unchanged. Called directly, outside
a sampler run (e.g. the paper objective's ε targets), the stitched denoiser is the large model.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from ..contract import OPTIONAL_MEMBERS
from ..adapters.denoisers import TunableDenoiser

SMALL_HINT = "train one on the large model's noise schedule, like digits-ddpm-small for digits-ddpm"


class StitchError(ValueError):
    """A stitch that cannot work, named with the fix."""


def check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise StitchError(
            f"switch fraction must be in [0, 1], got {fraction}: it is the share of a run's network "
            f"evaluations the small model makes (0: only the large model, 1: only the small one)"
        )
    return fraction


def _sigma_space(model: Any) -> str:
    if getattr(model, "space", "ve") == "flow":
        return f"a flow model, σ {model.sigma_min:.4g}…{model.sigma_max:.4g}"
    table = getattr(model, "log_sigmas", None)
    if table is not None:
        return f"a discrete {len(table)}-step schedule, σ {model.sigma_min:.4g}…{model.sigma_max:.4g}"
    return f"continuous σ {model.sigma_min:.4g}…{model.sigma_max:.4g}"


def check_pair(large: Any, small: Any) -> None:
    """Raise :class:`StitchError` unless both models share one σ space and sample shape: the run's state
    passes from one to the other at one σ, so both must read it the same way."""
    names = (
        f"small model {getattr(small, 'model_id', '') or 'small'!r} and large model "
        f"{getattr(large, 'model_id', '') or 'large'!r}"
    )
    if tuple(large.sample_shape) != tuple(small.sample_shape):
        raise StitchError(
            f"{names} make samples of different shapes ({tuple(small.sample_shape)} vs "
            f"{tuple(large.sample_shape)}); stitch models of one data set"
        )
    a, b = getattr(large, "log_sigmas", None), getattr(small, "log_sigmas", None)
    spaces = getattr(large, "space", "ve"), getattr(small, "space", "ve")
    same = (
        spaces[0] == spaces[1]
        and (a is None) == (b is None)
        and math.isclose(large.sigma_min, small.sigma_min, rel_tol=1e-6)
        and math.isclose(large.sigma_max, small.sigma_max, rel_tol=1e-6)
    )
    if same and a is not None:
        same = a.shape == b.shape and bool(torch.allclose(a.cpu().double(), b.cpu().double(), rtol=1e-6, atol=0))
    if not same:
        raise StitchError(
            f"{names} have different σ spaces ({_sigma_space(small)} vs {_sigma_space(large)}); "
            f"T-Stitch needs a small model trained on the same noise schedule: {SMALL_HINT}"
        )


class StitchedDenoiser(TunableDenoiser):
    """The pair as one tunable denoiser: σ range, time axis, schedule, metric and features are the
    large model's; the fingerprint covers both models and the fraction."""

    def __init__(self, large: TunableDenoiser, small: TunableDenoiser, fraction: float):
        super().__init__()
        self.fraction = check_fraction(fraction)
        check_pair(large, small)
        self.large, self.small = large, small
        for attr in ("sigma_min", "sigma_max", "sample_shape", "default_schedule", "time_offset", "space", "tau_max"):
            setattr(self, attr, getattr(large, attr, getattr(TunableDenoiser, attr)))
        for attr in OPTIONAL_MEMBERS:
            if hasattr(large, attr):
                setattr(self, attr, getattr(large, attr))
        self.model_id = f"{large.model_id}+{small.model_id}@{self.fraction:g}"

    @property
    def log_sigmas(self) -> torch.Tensor | None:
        return getattr(self.large, "log_sigmas", None)

    def small_evaluations(self, total: int) -> int:
        """How many of a run's ``total`` evaluations, counted from the first, the small model makes."""
        return min(total, math.floor(self.fraction * total + 0.5))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.large.sigma_to_t(sigma)

    def sigma_table(self):
        return self.large.sigma_table()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.large.t_to_sigma(t)

    @property
    def fingerprint(self) -> str:
        text = f"t-stitch|{self.large.fingerprint}|{self.small.fingerprint}|{self.fraction!r}"
        return hashlib.sha256(text.encode()).hexdigest()

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None, **extra: Any
    ) -> torch.Tensor:
        """A call outside a sampler run (no evaluation index): the large model."""
        return self.large(x, sigma, cond_sigma=cond_sigma, **extra)


class StitchRun:
    """One run's evaluations: calls 0 … switch−1 go to the small model, the rest to the large one."""

    def __init__(self, stitched: StitchedDenoiser, total: int):
        self.stitched, self.total, self.calls = stitched, total, 0
        self.switch = stitched.small_evaluations(total)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None, **extra: Any
    ) -> torch.Tensor:
        k, self.calls = self.calls, self.calls + 1
        net = self.stitched.small if k < self.switch else self.stitched.large
        return net(x, sigma, cond_sigma=cond_sigma, **extra)

    def __getattr__(self, name: str) -> Any:  # σ range, time axis, ... for wrappers such as Time-Shift
        return getattr(self.stitched, name)


def stitch(large: Any, small: Any, fraction: float) -> StitchedDenoiser:
    """The stitched pair from models or registered names (the small one moved to the large one's device)."""
    import registry

    from ..devices import model_device

    check_fraction(fraction)
    if isinstance(large, str):
        large = registry.load_model(large)
    if isinstance(small, str):
        try:
            small = registry.load_model(small)
        except registry.UnknownNameError as exc:
            raise StitchError(
                f"{exc}. The small model must be a registered model on the large one's noise schedule ({SMALL_HINT})"
            ) from None
    return StitchedDenoiser(large, small.to(model_device(large)), fraction)
