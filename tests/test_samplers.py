"""Native samplers: identity τ is bit-exact, evaluation counts, convergence at the known order."""

from __future__ import annotations

import math

import pytest
import torch

import registry
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, per_sample_args, run_sampler, sample
from timetuner_plugins.sets.tau import TauLookup

from helpers import noise

NATIVE = ["ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"]


WITH_CHURN = [(name, {}) for name in NATIVE] + [
    (name, {"s_churn": 2.0}) for name in NATIVE if "s_churn" in registry.get_sampler(name).defaults
]


@pytest.mark.parametrize("name,options", WITH_CHURN)
@pytest.mark.parametrize("model_name", ["gmm", "ddpm", "edm"])
def test_identity_tau_is_bit_exact(name, options, model_name, request):
    model = request.getfixturevalue(model_name)
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(model, model.default_schedule, 7)
    ev = eval_sigmas(spec, sigmas, model.sample_shape, options)
    with torch.no_grad():
        plain = sample(model, spec, sigmas, noise(16), options=options, seed=3)
        tuned = sample(model, spec, sigmas, noise(16), options=options, seed=3, lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned)


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("schedule", ["uniform_t", "quadratic_t", "logsnr", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_evaluation_count_matches_spec(gmm, name, schedule, steps):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(gmm, schedule, steps)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())
    assert len(eval_sigmas(spec, sigmas, gmm.sample_shape)) == spec.nfe(sigmas)


def _error(model, name, steps, ref, x_noise, **kw):
    spec = registry.get_sampler(name)
    out = generate(model, spec, make_sigmas(model, "logsnr", steps), x_noise, **kw)
    return float((out.double() - ref.double()).pow(2).mean().sqrt())


@pytest.mark.parametrize("name,order", [("ddim", 1), ("heun", 2), ("dpm_2", 2), ("dpmpp_2m", 2)])
def test_deterministic_samplers_converge_at_their_order(gmm, name, order):
    x_noise = noise(32, seed=1)
    ref = generate(gmm, registry.get_sampler("dpmpp_2m"), make_sigmas(gmm, "logsnr", 4096), x_noise)
    steps = [32, 64, 128]
    errors = [_error(gmm, name, s, ref, x_noise) for s in steps]
    assert errors[0] > errors[1] > errors[2]
    slope = math.log(errors[0] / errors[2]) / math.log(steps[2] / steps[0])
    assert order - 0.25 < slope < order + 0.6, (errors, slope)


@pytest.mark.slow
def test_ddpm_converges_along_a_brownian_path(gmm):
    """Pathwise convergence along one Brownian path; the median, since at coarse steps a few samples
    land in another mixture component (a discrete difference that no step count smooths)."""
    x_noise = noise(32, seed=2)
    spec = registry.get_sampler("ddpm")
    ref = generate(gmm, spec, make_sigmas(gmm, "logsnr", 2048), x_noise, seed=5)
    medians = []
    for steps in (16, 64, 256):
        out = generate(gmm, spec, make_sigmas(gmm, "logsnr", steps), x_noise, seed=5)
        medians.append(float((out - ref).pow(2).flatten(1).mean(1).sqrt().median()))
    assert medians[0] > 2 * medians[1] > 4 * medians[2], medians


def test_stochastic_runs_are_deterministic_for_a_seed(gmm):
    spec = registry.get_sampler("ddpm")
    sigmas = make_sigmas(gmm, "quadratic_t", 6)
    with torch.no_grad():
        a = run_sampler(gmm, spec, noise(4) * sigmas[0], sigmas, seed=11)
        b = run_sampler(gmm, spec, noise(4) * sigmas[0], sigmas, seed=11)
        c = run_sampler(gmm, spec, noise(4) * sigmas[0], sigmas, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_sample_args_slices_only_per_sample_tensors():
    cond, shared, scale = torch.arange(6.0).reshape(6, 1), torch.ones(1, 3), 7.5
    args = per_sample_args({"cond": cond, "shared": shared, "scale": scale}, slice(2, 4), 6)
    assert args["cond"].tolist() == [[2.0], [3.0]]
    assert args["shared"] is shared and args["scale"] == scale
    assert per_sample_args(None, slice(0, 1), 6) is None
