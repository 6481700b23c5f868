"""Multistep samplers that flow-matching users default to, with ComfyUI's numerics.

Each is one function with k-diffusion's signature (see :mod:`.samplers`) and agrees with the
ComfyUI sampler of the same name within float32 rounding on the same denoiser, noise and σ's.
They run on the ODE dx/dσ = (x − D(x, σ))/σ, which has this form both for VE models and for flow
models read as D(x, σ) = x − σ·v, so none of them needs to know which kind of model it drives
(nor do ComfyUI's: these five never read ``model_sampling``). No ``torch.no_grad``: the tuner
differentiates through a run, σ-dependent coefficients included; branches use host floats read
once per run.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from .samplers import _report, to_d

UNIPC_LAST_SIGMA = 0.001  # ComfyUI's UniPC stops here instead of at σ = 0


def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """RES 2nd-order multistep (Zhang et al. 2023, arXiv:2308.02157), ComfyUI's ``res_multistep``.

    An exponential integrator in t = −log σ on the data prediction:
    x' = e^{−h}·x + h·(b₁·D_i + b₂·D_{i−1}), b₂ = φ₂(−h)/c₂, b₁ = φ₁(−h) − b₂, c₂ = (t_{i−1} − t_i)/h.
    The first step and the step to σ = 0 are Euler steps.
    """
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    previous = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0 or previous is None:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next, t_prev = -sigmas[i].log(), -sigmas[i + 1].log(), -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)  # h = 0 (a repeated σ) leaves x as it is
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = torch.exp(-h) * x + h * (b1 * denoised + b2 * previous)
        previous = denoised
    return x


# Adams–Bashforth on equal steps, order 1–4: (numerators, newest first; denominator)
_AB = {1: ((1,), 1), 2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24)}


def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 4) -> torch.Tensor:
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, arXiv:2204.13902): Adams–Bashforth on d = dx/dσ with
    the fixed equal-step coefficients of order min(i+1, max_order) ≤ 4, whatever the σ spacing. The step to
    σ = 0 returns the denoised x (ComfyUI's ``ipndm``)."""
    if max_order not in _AB:
        raise ValueError(f"max_order must be 1 to 4, got {max_order}")
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    history: list[torch.Tensor] = []  # d of the previous steps, newest last
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if host[i + 1] == 0:
            x = denoised
        else:
            nums, den = _AB[min(max_order, i + 1)]
            slope = nums[0] * d
            for c, d_old in zip(nums[1:], reversed(history)):
                slope = slope + c * d_old
            x = x + (sigmas[i + 1] - sigmas[i]) * slope / den
        history = (history + [d])[-(max_order - 1) :] if max_order > 1 else []
    return x


def _f32_log1p_sq(sigma: float) -> float:
    """log(1 + σ²) with 1 + σ² rounded to float32 first, as ComfyUI's DEIS fit computes it."""
    return math.log(float(torch.tensor(sigma, dtype=torch.float32) ** 2 + 1))


def deis_coefficients(sigmas: torch.Tensor, max_order: int = 3, n: int = 10_000) -> list[list[torch.Tensor]]:
    """DEIS's tAB coefficients (Zhang & Chen 2023, arXiv:2204.13902, §4) as ComfyUI tabulates them.

    Time is t of the VP SDE fitted to σ ∈ [0.002, 80] with ε_s = 1e-3 (log(1+σ²) = β_d·t²/2 + β_min·t),
    whatever the model. Step i's coefficient for d at t_{i−j} is ∫_{t_i}^{t_{i+1}} σ'(t)·ℓ_j(t) dt, ℓ_j
    the Lagrange basis over t_i, t_{i−1}, …, as a sum over ``n`` points from t_i to t_{i+1} inclusive
    times (t_{i+1} − t_i)/n, with σ'(t) = ½·(β_d·t + β_min)/√(ᾱ(1−ᾱ)), ᾱ = 1/(1+σ²). That Riemann sum,
    the fit's rounding and the σ dtype are ComfyUI's: its float32 coefficients carry errors (1 − ᾱ
    cancels near σ = 0) that move a VE run by ~1e-5. Differentiable in σ; entry i is empty for an Euler
    step.
    """
    eps_s, s_min, s_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (_f32_log1p_sq(s_min) / eps_s - _f32_log1p_sq(s_max)) / (eps_s - 1)
    beta_min = _f32_log1p_sq(s_max) - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
    grid = torch.linspace(0, 1, n, dtype=sigmas.dtype, device=sigmas.device)
    host = sigmas.tolist()
    table: list[list[torch.Tensor]] = [[] for _ in host[1:]]
    for order in range(2, max_order + 1):  # all steps of one order at once, as (steps, n) arrays
        rows = [i for i in range(len(host) - 1) if min(i + 1, max_order) == order and host[i + 1] > 0]
        if not rows:
            continue
        lo, hi = rows[0], rows[-1] + 1  # consecutive steps: slices, no index tensor to copy to the device
        span = (t[lo + 1 : hi + 1] - t[lo:hi])[:, None]
        taus = t[lo:hi, None] + span * grid
        alpha_bar = torch.exp(-0.5 * taus**2 * beta_d - taus * beta_min)
        weight = 0.5 * (taus * beta_d + beta_min) / torch.sqrt(alpha_bar * (1 - alpha_bar)) * (span / n)
        nodes = [t[lo - k : hi - k, None] for k in range(order)]
        columns = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            columns.append((weight * basis).sum(1))
        for row in rows:
            table[row] = [c[row - lo] for c in columns]
    return table


def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 3) -> torch.Tensor:
    """DEIS-tAB (Zhang & Chen 2023, arXiv:2204.13902), ComfyUI's ``deis`` (its default tab mode, max order 3):
    x_{i+1} = x_i + Σ_j C_ij·d_{i−j} with :func:`deis_coefficients`; the first step and the step to σ = 0 are
    Euler steps."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    table = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if not table[i]:
            x = x + (sigmas[i + 1] - sigmas[i]) * d
        else:
            for c, d_j in zip(table[i], [d, *reversed(history)]):
                x = x + c * d_j
        history = (history + [d])[-(max_order - 1) :] if max_order > 1 else []
    return x


def _vp(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """α, σ_VP and λ = log(α/σ_VP) of VE σ (α² = 1/(1+σ²)), by ComfyUI's UniPC formulas in σ's dtype; near
    σ = 0 they round differently from −log σ, and matching ComfyUI's last step needs the same rounding."""
    log_alpha = 0.5 * torch.log(1 / (sigma * sigma + 1))
    var = 1.0 - torch.exp(2.0 * log_alpha)
    return log_alpha.exp(), var.sqrt(), log_alpha - 0.5 * var.log()


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve`` without its error check, which would sync with the device every step."""
    return torch.linalg.solve_ex(a, b, check_errors=False)[0]


def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant: str = "bh1") -> torch.Tensor:
    """UniPC (Zhao et al. 2023, arXiv:2302.04867), multistep, data prediction, B(h) = h (``bh1``) or e^h − 1
    (``bh2``), as ComfyUI's ``uni_pc``/``uni_pc_bh2`` run it.

    The state is VP-scaled, x/√(1+σ²); order min(3, steps − 1), lower near the start and at the end; UniC
    corrects every step but the last, reusing the evaluation at the predicted point as the next step's
    D. A final σ = 0 is replaced by 0.001 (the caller's σ's are left alone) and the output is x at that
    σ, not D. With one step (order 0) the run evaluates once and returns its input times
    √(1+0.001²)/√(1+σ₀²), as ComfyUI's does.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    host = sigmas.tolist()
    steps = len(host) - 1
    t = torch.cat([sigmas[:-1], sigmas.new_full((1,), UNIPC_LAST_SIGMA)]) if host[-1] == 0 else sigmas
    alpha, sd, lam = _vp(t)
    order = min(3, steps - 1)

    def data(x_vp: torch.Tensor, i: int) -> torch.Tensor:  # D at t_i through ε, as ComfyUI's wrapper computes it
        x_in = x_vp * (t[i] ** 2 + 1.0) ** 0.5
        eps = (x_in - model(x_in, t[i] * ones, **extra_args)) / t[i]
        return (x_vp - sd[i] * eps) / alpha[i]

    x = x / torch.sqrt(1.0 + t[0] ** 2.0)
    history = [(0, data(x, 0))]  # (σ index, D), newest last, at most `order` entries
    for i in trange(steps, disable=disable):
        j0, m0 = history[-1]
        if callback is not None:
            _report(callback, x / alpha[i], i, sigmas[i], sigmas[i], m0)
        s = i + 1
        p = s if s < order else min(order, steps + 1 - s)
        if p < 1:
            continue
        h = lam[s] - lam[j0]
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = hh if variant == "bh1" else h_phi_1
        rks, d1s = [], []
        for k in range(1, p):
            jk, mk = history[-(k + 1)]
            rks.append((lam[jk] - lam[j0]) / h)
            d1s.append((mk - m0) / rks[-1])
        r = torch.stack(rks + [torch.ones_like(h)])
        b, h_phi_k, fact = [], h_phi_1 / hh - 1, 1
        for k in range(1, p + 1):  # b_k = k!·h·φ_{k+1}(h)/B(h), φ by recurrence
            b.append(h_phi_k * fact / b_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        big_r = torch.stack([r**k for k in range(p)])
        b = torch.stack(b)
        x_base = (sd[s] / sd[j0]) * x - (alpha[s] * h_phi_1) * m0
        x_pred = x_base
        if p >= 2:
            rhos_p = [0.5] if p == 2 else _solve(big_r[:-1, :-1], b[:-1])
            x_pred = x_base - (alpha[s] * b_h) * sum(rho * d for rho, d in zip(rhos_p, d1s))
        if s == steps:  # no corrector on the last step, and no evaluation there
            x = x_pred
            continue
        m_s = data(x_pred, s)
        rhos_c = [0.5] if p == 1 else _solve(big_r, b)
        corr = rhos_c[-1] * (m_s - m0)
        if d1s:
            corr = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s)) + corr
        x = x_base - (alpha[s] * b_h) * corr
        history = (history + [(s, m_s)])[-order:]
    return x / alpha[-1]


def sample_unipc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None) -> torch.Tensor:
    """UniPC with B(h) = e^h − 1 (ComfyUI's ``uni_pc_bh2``); see :func:`sample_unipc`."""
    return sample_unipc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
