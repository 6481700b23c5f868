"""The multistep samplers of timetuner_plugins.sampling.multistep: ComfyUI parity, evaluation counts, convergence
order, identity τ, gradients and the generic tuner.

The parity tests need COMFYUI_PATH (a ComfyUI checkout importable by this interpreter, with its
dependencies) and skip without it; everything else runs on the bundled exact GMM model.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import registry
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler, sample
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

NEW = ["res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2"]


def karras_ve(n: int, lo: float = 0.03, hi: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras σ's from 80 down to 0.03, then 0 (a VE schedule as ComfyUI's karras scheduler builds it)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([sigmas.float(), torch.zeros(1)])


def flow_shift(n: int, shift: float = 3.0) -> torch.Tensor:
    """A flow-matching (CONST) schedule: σ = shift·t/(1 + (shift−1)·t) for t = 1, 1 − 1/n, …, then 0
    (SD3/Flux-style; it starts at σ = 1 exactly, as ComfyUI's simple scheduler does for such models)."""
    t = 1 - torch.arange(n, dtype=torch.float64) / n
    return torch.cat([(shift * t / (1 + (shift - 1) * t)).float(), torch.zeros(1)])


def flow_denoiser(gmm):
    """The GMM's exact denoiser for flow interpolation x = (1−σ)·x₀ + σ·n: E[x₀ | x], defined at σ = 1."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        b, s = x.shape[0], sigma.double().reshape(-1, 1, 1)
        a = 1 - s
        diff = x.double().reshape(b, 1, -1) - a * gmm.means[None]
        proj = torch.einsum("bkd,kde->bke", diff, gmm.eigvecs)
        total = a**2 * gmm.eigvals[None] + s**2
        log_like = -0.5 * (proj**2 / total).sum(-1) - 0.5 * total.log().sum(-1)
        resp = torch.softmax(gmm.weights.log()[None] + log_like, dim=1)
        means = gmm.means[None] + torch.einsum("bke,kde->bkd", a * gmm.eigvals[None] / total * proj, gmm.eigvecs)
        return torch.einsum("bk,bkd->bd", resp, means).reshape(x.shape).to(x.dtype)

    return denoise


@pytest.fixture(scope="module")
def comfy_samplers():
    """ComfyUI's sampler function for each name, as comfy.samplers.sampler_object registers it."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to compare with ComfyUI's own samplers")
    sys.path.insert(0, path)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what main.py --cpu does
    import comfy.samplers

    return {name: comfy.samplers.sampler_object(name).sampler_function for name in NEW}


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("kind", ["ve", "flow"])
@pytest.mark.parametrize(
    "steps,end", [(1, "zero"), (2, "zero"), (3, "zero"), (10, "zero"), (2, "open"), (3, "open"), (10, "open")]
)
def test_matches_comfyui(comfy_samplers, gmm, name, kind, steps, end):
    """Same denoiser, noise and σ's: within 1e-5 max abs in float32, the last step included; ``open`` drops
    the final 0 (a split schedule, as SamplerCustom runs)."""
    model, sigmas = (
        (lambda x, s, **_: gmm(x, s), karras_ve(steps)) if kind == "ve" else (flow_denoiser(gmm), flow_shift(steps))
    )
    sigmas = sigmas if end == "zero" else sigmas[:-1]
    x, before = noise(16, seed=steps) * sigmas[0], sigmas.clone()
    with torch.no_grad():
        theirs = comfy_samplers[name](model, x.clone(), sigmas.clone(), extra_args={}, disable=True)
        ours = registry.get_sampler(name).fn(model, x.clone(), sigmas, disable=True)
    assert torch.equal(sigmas, before)  # ours leaves the σ's alone (ComfyUI's UniPC sets a final 0 to 0.001)
    assert (ours - theirs).abs().max() < 1e-5, float((ours - theirs).abs().max())


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("schedule", ["logsnr", "karras", "flow"])
def test_one_evaluation_per_step_at_each_sigma(gmm, name, schedule):
    """A counting run on 1–20 steps makes spec.nfe evaluations, the i-th at σ_i (what τ lookups assume)."""
    spec = registry.get_sampler(name)
    for steps in range(1, 21):
        sigmas = flow_shift(steps) if schedule == "flow" else make_sigmas(gmm, schedule, steps)
        ev = eval_sigmas(spec, sigmas, gmm.sample_shape)  # raises if the count differs from spec.nfe
        assert spec.nfe(sigmas) == steps and torch.equal(ev, sigmas[:-1])


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("model_name", ["gmm", "ddpm", "edm"])
def test_identity_tau_is_bit_exact(name, model_name, request):
    model = request.getfixturevalue(model_name)
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(model, model.default_schedule, 7)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    with torch.no_grad():
        plain = sample(model, spec, sigmas, noise(16), seed=3)
        tuned = sample(model, spec, sigmas, noise(16), seed=3, lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned)


def _state_at_sigma_min(model, name: str, steps: int, x_noise: torch.Tensor) -> torch.Tensor:
    """x at σ_min, the last σ before 0 (UniPC's fixed last step σ_min → 0.001 would hide the order)."""
    sigmas = make_sigmas(model, "logsnr", steps)
    states = []
    with torch.no_grad():
        run_sampler(
            model,
            registry.get_sampler(name),
            x_noise * sigmas[0],
            sigmas,
            callback=lambda info: states.append(info["x"]),
        )
    return states[-1].double()


@pytest.fixture(scope="module")
def reference(gmm):
    """UniPC at 256 log-SNR steps (error ~4e-7 RMS), checked against an independent 2nd-order solver:
    DPM-Solver++(2M) at 256 steps, whose own error is ~1e-4."""
    x_noise = noise(16, seed=1)
    ref = _state_at_sigma_min(gmm, "uni_pc", 256, x_noise)
    check = _state_at_sigma_min(gmm, "dpmpp_2m", 256, x_noise)
    assert float((check - ref).pow(2).mean().sqrt()) < 2e-4
    return x_noise, ref


@pytest.mark.parametrize(
    "name,low,high",
    [
        ("res_multistep", 1.75, 2.6),
        ("ipndm", 1.75, 2.6),  # equal-step AB coefficients on geometric steps: 2nd order, not 4th
        ("deis", 2.3, 3.6),  # 3rd order; still approaching it at 128 steps
        ("uni_pc", 3.4, 4.8),  # UniP-3 with UniC: 4th order
        ("uni_pc_bh2", 3.4, 4.8),
    ],
)
def test_converges_at_its_order(gmm, reference, name, low, high):
    x_noise, ref = reference
    steps = [32, 64, 128]
    errors = [float((_state_at_sigma_min(gmm, name, s, x_noise) - ref).pow(2).mean().sqrt()) for s in steps]
    assert errors[0] > errors[1] > errors[2]
    slope = math.log(errors[0] / errors[2]) / math.log(steps[2] / steps[0])
    assert low < slope < high, (errors, slope)


@pytest.mark.parametrize("name", NEW)
def test_gradients_reach_every_tau_and_sigma(gmm, name):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(gmm, "quadratic_t", 5)
    ev = eval_sigmas(spec, sigmas, gmm.sample_shape)
    tau = ev.clone().requires_grad_(True)
    moving = sigmas.clone().requires_grad_(True)
    out = run_sampler(gmm, spec, noise(8) * sigmas[0], moving, lookup=TauLookup(ev, tau))
    out.square().mean().backward()
    assert torch.isfinite(tau.grad).all() and bool((tau.grad != 0).all()), tau.grad
    assert torch.isfinite(moving.grad).all() and bool((moving.grad[1:-1] != 0).all()), moving.grad


@pytest.mark.parametrize("name", NEW)
def test_the_generic_tuner_tunes_it(gmm, name):
    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    cfg = TuneConfig(
        iters=3, batch=8, pool=8, val_size=8, select=False, teacher_substeps=2, lr=0.05, show_progress=False
    )
    result = Tuner(gmm, name, sigmas, "quadratic_t", cfg).tune()
    assert len(result.tau) == registry.get_sampler(name).nfe(sigmas)
    assert torch.isfinite(result.tau).all() and not torch.equal(result.tau, result.eval_sigmas)
