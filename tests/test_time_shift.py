"""Time-Shift sampling as a plugin on the τ hook: which σ the network sees, and that it runs with any sampler."""

from __future__ import annotations

import pytest
import torch

import registry
from timetuner_plugins.sampling.run import make_sigmas, run_sampler
from timetuner_plugins.sampling.time_shift import TimeShift, TimeShiftModel


class Recorder(torch.nn.Module):
    """Stands in for a tunable denoiser with the DDPM time grid of ``model``; records the σ and conditioning of
    each call and returns zeros (so any image size works)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.log_sigmas = getattr(model, "log_sigmas", None)
        self.sigma_min, self.sigma_max = model.sigma_min, model.sigma_max

    def sigma_to_t(self, s):
        return self.model.sigma_to_t(s)

    def t_to_sigma(self, t):
        return self.model.t_to_sigma(t)

    def forward(self, x, sigma, cond_sigma=None, **extra):
        self.calls.append((sigma.clone(), None if cond_sigma is None else cond_sigma.clone()))
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def ddpm():
    return registry.load_model("digits-ddpm")


def test_the_plugin_serves_time_shift_and_leaves_tau_lookups_alone(ddpm):
    spec = registry.get_sampler("ddim")
    assert isinstance(registry.wrap_model(ddpm, TimeShift(), spec), TimeShiftModel)
    from timetuner_plugins.sets.tau import TauLookup, TauModel

    assert isinstance(registry.wrap_model(ddpm, TauLookup.identity(torch.ones(3)), spec), TauModel)


def test_shift_follows_the_sample_variance(ddpm):
    wrapped = TimeShiftModel(Recorder(ddpm), TimeShift(window=40, cutoff_sigma=0.5))
    sigma = torch.full((3,), 4.0)
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flat = eps.reshape(3, -1)
    eps = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).reshape(eps.shape)  # variance exactly 1
    x = torch.cat([eps[:1] * 4.0, eps[1:2] * 6.0, eps[2:] * 2.0])  # matches σ, too noisy, too clean
    wrapped(x, sigma)  # first call: never shifted
    assert wrapped.inner_model.calls[0][1] is None
    wrapped(x, sigma)
    cond = wrapped.inner_model.calls[1][1]
    moved = wrapped.shifts[-1]
    assert abs(float(moved[0])) <= 1  # variance at the marginal: (almost) no shift
    assert float(moved[1]) == 20 and float(moved[2]) == -20  # pinned at the window's edges
    assert float(cond[1]) > 4.0 > float(cond[2])


def test_below_the_cutoff_the_conditioning_is_sigma_exactly(ddpm):
    wrapped = TimeShiftModel(Recorder(ddpm), TimeShift(window=20, cutoff_sigma=5.0))
    sigma = torch.tensor([8.0, 3.0])
    x = torch.randn(2, 1, 8, 8) * 20
    wrapped(x, sigma)
    wrapped(x, sigma)
    cond = wrapped.inner_model.calls[1][1]
    assert float(cond[1]) == 3.0 and float(cond[0]) != 8.0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"])
@pytest.mark.parametrize("model_name", ["digits-ddpm", "gmm-digits"])
def test_runs_with_every_native_sampler(sampler, model_name):
    model = registry.load_model(model_name)
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(model, "karras", 5)
    x = torch.randn(8, *model.sample_shape, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    with torch.no_grad():
        plain = run_sampler(model, spec, x, sigmas)
        shifted = run_sampler(model, spec, x, sigmas, lookup=TimeShift(window=40, cutoff_sigma=0.1))
    assert torch.isfinite(shifted).all()
    assert not torch.equal(plain, shifted)


@pytest.mark.parametrize("bad", [dict(window=0), dict(cutoff_sigma=float("nan")), dict(cutoff_sigma=-1.0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TimeShift(**bad)
