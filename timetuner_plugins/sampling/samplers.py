"""Native samplers, each one function with k-diffusion's signature.

``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``;
``model(x, sigma, **extra_args)`` returns the denoised x. ``sigmas`` end at 0.
None of them is wrapped in ``torch.no_grad`` so that the tuner can differentiate
through a run; callers sample under ``torch.no_grad()``. Branches read the
schedule once as host floats, so a run makes no per-step host sync.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from tqdm.auto import trange

from ..adapters.denoisers import append_dims

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dσ = (x − D(x, σ)) / σ."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up) for an ancestral step σ → σ_next; η=1 is DDPM's posterior variance."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def is_flow(model: Any) -> bool:
    """Whether ``model`` (through wrappers' ``inner_model``) is a flow model, x = (1 − σ)·x₀ + σ·ε: our
    denoisers say so with ``space == "flow"``, ComfyUI's with a CONST ``model_sampling``. Only samplers that add
    noise need to know; the ODE dx/dσ = (x − D)/σ has the same form in both spaces."""
    for _ in range(8):  # wrappers nest a few deep (τ hook, CFG, ComfyUI's guider)
        space = getattr(model, "space", None)
        if isinstance(space, str):
            return space == "flow"
        sampling = getattr(model, "model_sampling", None)
        if sampling is not None:
            return any(cls.__name__ == "CONST" for cls in type(sampling).__mro__)
        model = getattr(model, "inner_model", None)
        if model is None:
            return False
    return False


def _randn_sampler(x: torch.Tensor) -> NoiseSampler:
    return lambda sigma, sigma_next: torch.randn_like(x)


def _report(
    callback: Callable | None,
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """Euler on the probability-flow ODE; for a VP ε-model this is DDIM with η=0 (Song et al. 2021)."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral Euler steps; η=1 is DDPM's ancestral sampler (Ho et al. 2020) in σ space. On a flow model each
    step goes deterministically to σ_down = σ_next·(1 + (σ_next/σ − 1)·η), rescales the signal to σ_next's
    1 − σ_next and adds the noise that brings the total back to σ_next (ComfyUI's rectified-flow form)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or _randn_sampler(x)
    ones = x.new_ones([x.shape[0]])
    positive = [s > 0 for s in sigmas.tolist()]
    flow = is_flow(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if flow:
            x = _flow_ancestral_step(
                x, denoised, sigmas[i], sigmas[i + 1], eta, s_noise, noise_sampler, positive[i + 1]
            )
            continue
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if positive[i + 1]:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _flow_ancestral_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    eta: float,
    s_noise: float,
    noise_sampler: NoiseSampler,
    renoise: bool,
) -> torch.Tensor:
    if not renoise:
        return denoised
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised  # the deterministic (DDIM) step to σ_down
    if not eta:
        return x
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise_scale = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return (alpha_next / alpha_down) * x + noise_sampler(sigma, sigma_next) * s_noise * renoise_scale


def _check_churn(model: Any, s_churn: float) -> None:
    if s_churn > 0 and is_flow(model):
        raise ValueError(
            "s_churn adds noise for a VE state (x = x₀ + σ·ε), not a flow model's; keep s_churn = 0 "
            "on flow models, or use 'ddpm' for ancestral sampling"
        )


def _churn(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
    host: list[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2): raise σ_i to σ̂ and add matching noise."""
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= host[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        noise = noise_sampler(sigmas[i], sigma_hat) if noise_sampler else torch.randn_like(x)
        x = x + noise * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def sample_heun(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 2); the step to σ=0 is Euler."""
    _check_churn(model, s_churn)
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, host)
        denoised = model(x, sigma_hat * ones, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if host[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * ones, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_dpm_2(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al. 2022) as a midpoint method in log σ; the step to σ=0 is Euler."""
    _check_churn(model, s_churn)
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, host)
        denoised = model(x, sigma_hat * ones, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if host[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * ones, **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b): 2nd-order multistep in λ = −log σ on the data prediction."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    previous = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = denoised
        else:
            lam, lam_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = lam_next - lam
            if previous is None:
                direction = denoised
            else:
                r = (lam - (-sigmas[i - 1].log())) / h
                direction = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * direction
        previous = denoised
    return x


def run_options(fn: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options a sampler function does not take (e.g. ``noise_sampler`` for Euler)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}
