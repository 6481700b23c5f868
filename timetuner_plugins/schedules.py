"""σ schedules over a model's σ range; each returns n σ's from high to low, then 0."""

from __future__ import annotations

import torch

from .denoisers import TunableDenoiser


def _finish(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


def _t_spaced(n: int, model: TunableDenoiser, power: float) -> torch.Tensor:
    t_min, t_max = model.t_range
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** power
    return _finish(model.t_to_sigma(t_min + (t_max - t_min) * ramp))


def uniform_t(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Evenly spaced in the model's time (DDIM's uniform skip; σ itself for EDM models)."""
    return _t_spaced(n, model, 1.0)


def quadratic_t(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Quadratically spaced in the model's time, dense near the data (Song et al. 2021, DDIM)."""
    return _t_spaced(n, model, 2.0)


def logsnr_uniform(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Evenly spaced in log-SNR = −2 log σ (DPM-Solver's recommended spacing)."""
    return _finish(torch.linspace(torch.tensor(model.sigma_max).log(), torch.tensor(model.sigma_min).log(), n,
                                  dtype=torch.float64).exp())


def karras(n: int, model: TunableDenoiser, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5, ρ = 7."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = model.sigma_min ** (1 / rho), model.sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho)


def refine(sigmas: torch.Tensor, substeps: int, sigma_floor: float) -> tuple[torch.Tensor, list[int]]:
    """A finer schedule that passes through every σ of ``sigmas``: ``substeps`` log-uniform steps per
    interval; the last interval (to 0) is refined down to ``sigma_floor`` first. Returns the schedule and
    the positions of the original σ's in it."""
    host = sigmas.double().tolist()
    out: list[float] = [host[0]]
    positions = [0]
    for a, b in zip(host[:-1], host[1:]):
        if b > 0:
            pts = torch.logspace(torch.tensor(a).log10(), torch.tensor(b).log10(), substeps + 1, dtype=torch.float64)
            out += pts[1:].tolist()
        elif a > sigma_floor * 1.0001:
            pts = torch.logspace(torch.tensor(a).log10(), torch.tensor(sigma_floor).log10(), substeps,
                                 dtype=torch.float64)
            out += pts[1:].tolist() + [0.0]
        else:
            out.append(0.0)
        positions.append(len(out) - 1)
    return torch.tensor(out, dtype=torch.float32), positions
