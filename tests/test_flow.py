"""Flow-matching models: the adapter, the exact mixture under the flow path, every sampler on them, τ bounds."""

from __future__ import annotations

import math

import pytest
import torch

import registry
from timetuner_plugins.adapters.denoisers import FlowDenoiser, flow_shift
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.evaluation.metrics import gmm_fd
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, sample
from timetuner_plugins.sampling.samplers import is_flow
from timetuner_plugins.sets.tau import TauLookup, TauModel
from timetuner_plugins.sets.tuned_set import TunedSetMismatch
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise


@pytest.fixture(scope="module")
def gflow():
    return registry.load_model("gmm-digits-flow")


class Recorder(torch.nn.Module):
    """A linear velocity network that records the timesteps it is called with."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, **extra):
        self.seen.append(t.detach().clone())
        return self.lin(x.flatten(1)).reshape(x.shape) * (t.reshape(-1, 1, 1, 1) / 1000)


def test_denoised_is_x_minus_sigma_v_and_x0_prediction_passes_through():
    net = Recorder()
    model = FlowDenoiser(net, prediction="v", shift=3.0)
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.6)
    v = net(x, sigma * 1000)
    assert torch.allclose(model(x, sigma), x - 0.6 * v)
    assert torch.allclose(FlowDenoiser(net, prediction="x0")(x, sigma), v)
    with pytest.raises(ValueError, match="'v'"):
        FlowDenoiser(net, prediction="eps")


def test_shift_sets_the_table_not_the_conditioning():
    net = Recorder()
    model = FlowDenoiser(net, shift=3.0)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(model.t_to_sigma(t), 3 * t / (1 + 2 * t)) and torch.allclose(
        model.sigma_to_t(flow_shift(3.0, t)), t
    )
    assert math.isclose(model.sigma_min, 3 * 0.001 / (1 + 2 * 0.001), rel_tol=1e-9) and model.sigma_max == 1.0
    model(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5))
    assert torch.equal(net.seen[-1], torch.full((2,), 500.0))  # σ itself, times the multiplier


def test_tau_above_the_trained_range_never_reaches_the_network():
    net = Recorder()
    model = FlowDenoiser(net, shift=1.0)
    model(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.9), cond_sigma=torch.full((2,), 2.5))
    assert float(net.seen[-1].max()) == 1000.0


def test_exact_flow_mixture_agrees_with_the_ve_mixture(gmm, gflow):
    """x = (1 − σ)x₀ + σε is the VE sample x/(1 − σ) at σ/(1 − σ): both exact denoisers give one E[x₀|x]."""
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    for sigma in (0.05, 0.5, 0.95):
        flow = gflow(x.float(), torch.full((6,), sigma)).double()
        ve = gmm.posterior_mean((x / (1 - sigma)).reshape(6, -1), torch.tensor(sigma / (1 - sigma))).reshape(x.shape)
        assert torch.allclose(flow, ve, atol=1e-5)
    pure = gflow(torch.randn(3, 1, 8, 8), torch.ones(3))  # σ = 1: the prior mean, finite
    mean, _ = gmm.moments()
    assert torch.allclose(pure.double().reshape(3, -1), mean.expand(3, -1), atol=1e-5)


NATIVE = ["ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"]


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("schedule", ["simple", "beta", "sgm_uniform", "linear_quadratic", "karras", "exponential"])
def test_identity_tau_is_bit_exact_on_flow_models(gflow, name, schedule):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(gflow, schedule, 6)
    ev = eval_sigmas(spec, sigmas, gflow.sample_shape)
    with torch.no_grad():
        plain = sample(gflow, spec, sigmas, noise(8), seed=3)
        tuned = sample(gflow, spec, sigmas, noise(8), seed=3, lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned) and torch.isfinite(plain).all()


def _error(model, name, steps, ref, x_noise):
    out = generate(model, registry.get_sampler(name), make_sigmas(model, "simple", steps), x_noise)
    return float((out.double() - ref.double()).pow(2).mean().sqrt())


@pytest.mark.parametrize("name,order", [("ddim", 1), ("heun", 2), ("dpm_2", 2), ("dpmpp_2m", 2)])
def test_samplers_converge_at_their_order_on_the_flow_mixture(gflow, name, order):
    x_noise = noise(32, seed=1)
    ref = generate(gflow, registry.get_sampler("heun"), make_sigmas(gflow, "simple", 1000), x_noise)
    steps = [32, 64, 128]
    errors = [_error(gflow, name, s, ref, x_noise) for s in steps]
    assert errors[0] > errors[1] > errors[2]
    slope = math.log(errors[0] / errors[2]) / math.log(steps[2] / steps[0])
    assert order - 0.25 < slope < order + 0.6, (errors, slope)


@pytest.mark.slow
def test_ancestral_sampling_uses_the_flow_step_and_reaches_the_distribution(gflow):
    assert is_flow(TauModel(gflow, TauLookup.identity(torch.ones(1)))) and not is_flow(
        registry.load_model("gmm-digits")
    )
    fd = gmm_fd(gflow)
    x_noise = noise(1000, seed=4)
    ode = generate(gflow, registry.get_sampler("ddim"), make_sigmas(gflow, "simple", 200), x_noise)
    sde = generate(gflow, registry.get_sampler("ddpm"), make_sigmas(gflow, "simple", 200), x_noise)
    assert fd(sde) < 2 * fd(ode) + 0.5, (fd(sde), fd(ode))  # a VE noise step on this x would be far off


def test_tuner_keeps_tau_at_or_below_one(gflow):
    sigmas = make_sigmas(gflow, "simple", 4)
    cfg = TuneConfig(
        iters=30, batch=16, pool=16, val_size=16, lr=0.5, teacher_substeps=4, select=False, show_progress=False
    )
    result = Tuner(gflow, "ddim", sigmas, "simple", cfg).tune()
    assert float(result.tau.max()) <= 1.0 and float(result.eval_sigmas[0]) == 1.0
    ts = result.tuned_set(gflow)
    assert ts.extra["model"] == {"space": "flow", "shift": gflow.shift, "multiplier": 1000.0}


def test_a_set_for_another_space_or_shift_is_refused(gmm, gflow):
    sigmas = make_sigmas(gflow, "simple", 3)
    cfg = TuneConfig(iters=2, batch=8, pool=8, teacher_substeps=2, select=False, show_progress=False)
    flow_set = Tuner(gflow, "ddim", sigmas, "simple", cfg).tune().tuned_set(gflow)
    with pytest.raises(TunedSetMismatch, match="tuned for a flow model .* but the run's model is a VE/VP model"):
        flow_set.check(model=gmm, force=True)
    ve_sigmas = make_sigmas(gmm, "logsnr", 3)
    ve_set = Tuner(gmm, "ddim", ve_sigmas, "logsnr", cfg).tune().tuned_set(gmm)
    with pytest.raises(TunedSetMismatch, match="tuned for a VE/VP model .* but the run's model is a flow model"):
        ve_set.check(model=gflow, force=True)
    shifted = FlowDenoiser(gflow.net, shift=3.0)
    with pytest.raises(TunedSetMismatch, match="flow shift 1 but the run's model has shift 3"):
        flow_set.check(model=shifted)


def test_time_shift_refuses_flow_models(gflow):
    from timetuner_plugins.sampling.time_shift import TimeShift

    sigmas = make_sigmas(gflow, "simple", 3)
    with pytest.raises(ValueError, match="not defined for flow models"):
        sample(gflow, "ddim", sigmas, noise(2), lookup=TimeShift())
