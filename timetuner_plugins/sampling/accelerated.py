"""Training-free accelerated DDIM and DDPM samplers.

G. Li, Y. Huang, T. Efimov, Y. Wei, Y. Chi, Y. Chen, *Accelerating Convergence of Score-Based Diffusion
Models, Provably*, ICML 2024 (arXiv:2403.03852). Their bounds are on the distance between the sample
distribution and the data distribution (KL / TV), for a VP (DDPM) forward process with ᾱ_t and
α_t = ᾱ_t / ᾱ_{t−1}: O(1/T²) for the accelerated deterministic sampler against O(1/T) for DDIM, and
O(1/T) for the accelerated stochastic one against O(1/√T) for DDPM.

Written here in k-diffusion's σ space (x = z/√ᾱ, σ² = (1 − ᾱ)/ᾱ, so ᾱ(σ) = 1/(1 + σ²)) with ε̂ = (x − D)/σ:

- ``accel_ddim``: the DDIM step plus a correction from the previous step's ε̂, which makes the ε̂
  entering DDIM's exact integral linear in ᾱ between the last two evaluations:

      x_{i+1} = x_i + (σ_{i+1} − σ_i)·ε̂_i + k_i·(ε̂_i − ε̂_{i−1}),
      k_i = [arctan σ_{i+1} − arctan σ_i − ᾱ_i·(σ_{i+1} − σ_i)] / (ᾱ_i − ᾱ_{i−1})

  (∫ ᾱ(σ) dσ = arctan σ; the authors' form in ᾱ has arcsin √ᾱ = π/2 − arctan σ). One evaluation per
  step, like DPM-Solver++(2M); the first step is DDIM.

- ``accel_ddpm``: half of the step's noise is injected *before* the score evaluation, which is then
  made at the perturbed point with the unperturbed step's noise level, and the other half after:

      x⁺ = x_i + √((σ_i² − σ_{i+1}²)/2)·z,
      x_{i+1} = x⁺ − (σ_i² − σ_{i+1}²)/σ_i · ε̂(x⁺, σ_i) + √(β/(2ᾱ_{i+1}))·z⁺,   β = 1 − ᾱ_i/ᾱ_{i+1}

  (the paper's Y⁺ = Y + √((1−α_t)/2)·Z, Y_{t−1} = (Y⁺ + (1−α_t)s_t(Y⁺))/√α_t + √((1−α_t)/2)·Z⁺;
  β/ᾱ_i = σ_i² − σ_{i+1}²). No noise after the last step, as in the authors' code. z and z⁺ are the
  noise sampler's draws over the two halves of [σ_{i+1}, σ_i], so a Brownian noise sampler makes
  runs with different step counts follow one path.

Both use only D(x, σ) and the σ's. The formulas (the ᾱ used to interpolate ε̂, the β noise of the
stochastic step) come from the VP process; for an EDM model, whose σ space is the same, that is the VP
process with the same σ path. A flow model's σ is its time (x = (1 − σ)·x₀ + σ·ε): ``accel_ddim`` still
runs there, as a second-order two-step method on dx/dσ = (x − D)/σ whose ε̂ is interpolated in
1/(1 + σ²), a reparametrisation of the flow time rather than the paper's ᾱ; ``accel_ddpm``, whose noise is
the VE/VP process's, refuses flow models.
"""

from __future__ import annotations

import torch
from tqdm.auto import trange

from .option_checks import SamplerOptionError, work_dtype
from .samplers import NoiseSampler, _randn_sampler, _report, is_flow, to_d


def _accel_coefficients(sigmas: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """k_i for i ≥ 1 (k_0 unused), on the σ's device, differentiable in the σ's."""
    s = sigmas.to(work_dtype(sigmas))
    abar = 1 / (1 + s**2)
    here, nxt = s[1:-1], s[2:]
    k = (torch.atan(nxt) - torch.atan(here) - abar[1:-1] * (nxt - here)) / (abar[1:-1] - abar[:-2])
    return list(torch.cat([k.new_zeros(1), k]).to(dtype).unbind(0))


def sample_accel_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """Li et al.'s accelerated deterministic sampler (ICML 2024): DDIM plus k_i·(ε̂_i − ε̂_{i−1}), ε̂ linear
    in ᾱ = 1/(1+σ²) between the last two evaluations; the first step is DDIM."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    k = _accel_coefficients(sigmas, x.dtype)
    eps_prev = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        eps = to_d(x, sigmas[i], denoised)
        new = x + eps * (sigmas[i + 1] - sigmas[i])
        if eps_prev is not None:
            new = new + k[i] * (eps - eps_prev)
        eps_prev, x = eps, new
    return x


def sample_accel_ddpm(
    model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler: NoiseSampler | None = None
) -> torch.Tensor:
    """Li et al.'s accelerated stochastic sampler (ICML 2024): half the step's noise before the
    evaluation at the perturbed point (still at σ_i), half after; no noise after the last step."""
    if is_flow(model):
        raise SamplerOptionError(
            "accel_ddpm adds the noise of the VP/VE process (x = x₀ + σ·ε in σ space), not a "
            "flow model's; on a flow model use ddpm (which has a flow form) or a deterministic "
            "sampler such as accel_ddim"
        )
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or _randn_sampler(x)
    ones = x.new_ones([x.shape[0]])
    positive = [s > 0 for s in sigmas.tolist()]
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        drop = sigma**2 - sigma_next**2  # β / ᾱ_i
        middle = (sigma + sigma_next) / 2
        x_plus = x + noise_sampler(sigma, middle) * (drop / 2) ** 0.5
        denoised = model(x_plus, sigma * ones, **extra_args)
        _report(callback, x, i, sigma, sigma, denoised)
        new = x_plus - to_d(x_plus, sigma, denoised) * (drop / sigma)
        if positive[i + 1]:
            spread = drop * (1 + sigma_next**2) / (2 * (1 + sigma**2))  # β / (2 ᾱ_{i+1})
            new = new + noise_sampler(middle, sigma_next) * spread**0.5
        x = new
    return x
