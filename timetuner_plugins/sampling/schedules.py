"""σ schedules over a model's σ range; each returns n σ's from high to low, then 0."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..adapters.denoisers import TunableDenoiser


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
    return _finish(
        torch.linspace(
            torch.tensor(model.sigma_max).log(), torch.tensor(model.sigma_min).log(), n, dtype=torch.float64
        ).exp()
    )


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
            pts = torch.logspace(
                torch.tensor(a).log10(), torch.tensor(sigma_floor).log10(), substeps, dtype=torch.float64
            )
            out += pts[1:].tolist() + [0.0]
        else:
            out.append(0.0)
        positions.append(len(out) - 1)
    return torch.tensor(out, dtype=torch.float32), positions


# ComfyUI's schedulers, by its names, on the model's σ table (``TunableDenoiser.sigma_table``), so a set tuned
# here matches a ComfyUI run with the same scheduler and steps. Each returns float32 σ's ending at 0.


def _with_zero(values: list[float]) -> torch.Tensor:
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def simple(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Every (len/n)-th entry of the σ table from the top: uniform in the model's training time."""
    table = model.sigma_table().sigmas
    stride = len(table) / n
    return _with_zero([float(table[-(1 + int(i * stride))]) for i in range(n)])


def ddim_uniform(n: int, model: TunableDenoiser) -> torch.Tensor:
    """DDIM's uniform skip over the table from its second entry (ComfyUI's ``ddim_uniform``; the step count can
    come out one higher when len/n does not divide the table)."""
    table = model.sigma_table().sigmas
    start_zero = not math.isclose(float(table[1]), 0.0, abs_tol=1e-5)
    stride = max(len(table) // (n if start_zero else n + 1), 1)
    picked = [float(table[i]) for i in range(1, len(table), stride)]
    return torch.tensor(picked[::-1] + ([0.0] if start_zero else []), dtype=torch.float32)


def _normal(n: int, model: TunableDenoiser, sgm: bool) -> torch.Tensor:
    table = model.sigma_table()
    start, end = table.timestep(table.sigma_max), table.timestep(table.sigma_min)
    if sgm:
        return _with_zero([float(table.sigma(t)) for t in torch.linspace(start, end, n + 1)[:-1]])
    if math.isclose(float(table.sigma(end)), 0.0, abs_tol=1e-5):
        return torch.tensor([float(table.sigma(t)) for t in torch.linspace(start, end, n + 1)], dtype=torch.float32)
    return _with_zero([float(table.sigma(t)) for t in torch.linspace(start, end, n)])


def normal(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Uniform in the model's timestep from σ_max to σ_min, then 0."""
    return _normal(n, model, sgm=False)


def sgm_uniform(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Uniform in the timestep over n + 1 points, the last (σ_min) dropped for 0 (Stability's sgm samplers)."""
    return _normal(n, model, sgm=True)


def beta(n: int, model: TunableDenoiser, alpha: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """Table entries at the Beta(0.6, 0.6) quantiles of the training time (Lee et al. 2024, arXiv:2407.12173);
    repeated entries are dropped, so very large n can give fewer steps."""
    from scipy.stats import beta as beta_dist

    table = model.sigma_table().sigmas
    last = len(table) - 1
    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    picked, previous = [], None
    for index in np.rint(beta_dist.ppf(quantiles, alpha, b) * last):
        if index != previous:
            picked.append(float(table[int(index)]))
        previous = index
    return _with_zero(picked)


def linear_quadratic(n: int, model: TunableDenoiser, threshold: float = 0.025) -> torch.Tensor:
    """Mochi's schedule (Genmo 2024) times σ_max: the first half of the steps lower the noise linearly to
    ``threshold``, the rest quadratically to 0; made for flow models (σ_max = 1)."""
    sigma_max = float(model.sigma_table().sigma_max)
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float32)
    lin = n // 2
    quad = n - lin
    gap = lin - threshold * n
    a = gap / (lin * quad**2)
    b = threshold / lin - 2 * gap / quad**2
    c = a * lin**2
    done = [i * threshold / lin for i in range(lin)] + [a * i**2 + b * i + c for i in range(lin, n)] + [1.0]
    return torch.tensor([1.0 - d for d in done], dtype=torch.float32) * sigma_max


def kl_optimal(n: int, model: TunableDenoiser) -> torch.Tensor:
    """Uniform in arctan σ between σ_max and σ_min (the KL-optimal schedule of Sabour et al. 2024), then 0."""
    table = model.sigma_table()
    if n == 1:  # ComfyUI divides by n − 1 here and returns NaN; one step is the step from σ_max
        return torch.tensor([float(table.sigma_max), 0.0])
    w = torch.arange(n, dtype=torch.float32) / (n - 1)
    lo, hi = math.atan(float(table.sigma_min)), math.atan(float(table.sigma_max))
    return torch.cat([(w * lo + (1 - w) * hi).tan(), torch.zeros(1)])
