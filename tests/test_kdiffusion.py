"""The real k-diffusion package as a registry plugin: registration, parity, identity τ, adapters, tuning.

Needs k-diffusion importable (see the README); CI sets TIMETUNER_REQUIRE_KDIFFUSION=1 so these
tests fail instead of skipping when it is not.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

import registry
from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser
from timetuner_plugins.sampling.noise import SeededNoise
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

try:
    import k_diffusion
    from k_diffusion import external, layers, sampling
except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
    if os.environ.get("TIMETUNER_REQUIRE_KDIFFUSION"):
        raise
    pytest.skip(
        f"k-diffusion is not importable here ({type(exc).__name__}: {exc}); CI runs these tests in an "
        f"environment with it",
        allow_module_level=True,
    )

KD = sorted(name for name, spec in registry.samplers().items() if name.startswith("k_diffusion."))
TUNABLE = [n for n in KD if registry.get_sampler(n).tunable]
PARITY = [
    ("ddim", "euler"),
    ("heun", "heun"),
    ("dpm_2", "dpm_2"),
    ("dpmpp_2m", "dpmpp_2m"),
    ("ddpm", "euler_ancestral"),
]


def test_samplers_are_registered_with_the_real_functions():
    expected = {
        "euler",
        "euler_ancestral",
        "heun",
        "dpm_2",
        "dpm_2_ancestral",
        "lms",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
    }
    assert {f"k_diffusion.{n}" for n in expected} <= set(TUNABLE)
    for name in expected:
        spec = registry.get_sampler(f"k_diffusion.{name}")
        assert spec.fn is inspect.unwrap(getattr(sampling, f"sample_{name}"))
        assert spec.plugin == "timetuner_plugins.builtin.kdiffusion"
    for name in ("dpm_fast", "dpm_adaptive"):
        spec = registry.get_sampler(f"k_diffusion.{name}")
        assert not spec.tunable and spec.untunable_reason
    assert not [p for p in registry.problems() if "k-diffusion" in p.message]


@pytest.mark.parametrize("ours,theirs", PARITY)
def test_native_samplers_match_k_diffusion(ddpm, ours, theirs):
    sigmas = make_sigmas(ddpm, "karras", 8)
    x = noise(32, seed=5) * sigmas[0]
    with torch.no_grad():
        a = run_sampler(ddpm, registry.get_sampler(ours), x, sigmas, noise_sampler=SeededNoise(x, 9))
        kwargs = {"noise_sampler": SeededNoise(x, 9)} if theirs == "euler_ancestral" else {}
        b = getattr(sampling, f"sample_{theirs}")(ddpm, x, sigmas, disable=True, **kwargs)
    assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("name", TUNABLE)
def test_identity_tau_through_k_diffusion_is_bit_exact(ddpm, name):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(ddpm, "karras", 6)
    ev = eval_sigmas(spec, sigmas, ddpm.sample_shape)
    x = noise(8, seed=2) * sigmas[0]
    fresh = lambda: SeededNoise(x, 4) if spec.is_stochastic() else None  # noqa: E731 - same draws for both runs
    with torch.no_grad():
        kwargs = {"noise_sampler": fresh()} if spec.is_stochastic() else {}
        plain = getattr(sampling, f"sample_{name.split('.', 1)[1]}")(ddpm, x, sigmas, disable=True, **kwargs)
        tuned = run_sampler(ddpm, spec, x, sigmas, lookup=TauLookup.identity(ev), noise_sampler=fresh())
    assert torch.equal(plain, tuned)


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)
        self.seen = []

    def forward(self, x, noise_level, **kw):
        self.seen.append(noise_level.detach().clone())
        return self.lin(x.flatten(1)).reshape(x.shape) * 0.1

    def apply_model(self, x, t, cond=None):  # CompVis style
        return self(x, t)


def _wrappers():
    abar = DiscreteVPDenoiser.linear_betas().float()
    return [
        ("eps", lambda net: external.DiscreteEpsDDPMDenoiser(net, abar, quantize=False)),
        ("discrete_v", lambda net: external.DiscreteVDDPMDenoiser(net, abar, quantize=False)),
        ("continuous_v", lambda net: external.VDenoiser(net)),
        ("karras", lambda net: layers.Denoiser(net, sigma_data=0.5)),
    ]


@pytest.mark.parametrize("kind,make", _wrappers())
def test_k_diffusion_wrappers_adapt_to_the_tau_protocol(kind, make):
    net = Recorder()
    wrapper = make(net)
    model = registry.adapt_model(wrapper, sample_shape=(1, 8, 8))
    assert model.kind == kind and model.fingerprint
    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 2.5)
    with torch.no_grad():
        assert torch.equal(model(x, sigma, cond_sigma=sigma * 1.0), wrapper(x, sigma))
        model(x, sigma, cond_sigma=sigma * 1.3)
    expected = sigma * 1.3 if kind == "karras" else wrapper.sigma_to_t(sigma * 1.3)
    torch.testing.assert_close(net.seen[-1], expected)


@pytest.mark.parametrize("name", TUNABLE)
def test_the_generic_tuner_tunes_every_k_diffusion_sampler(gmm, name):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(gmm, "karras", 4)
    cfg = TuneConfig(
        objective="final", iters=12, lr=0.05, batch=16, pool=32, teacher_substeps=4, select=False, show_progress=False
    )
    tuner = Tuner(gmm, spec, sigmas, "karras", cfg)
    untuned = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert len(result.tau) == spec.nfe(sigmas)
    assert tuner.joint.pool_objective() < untuned
    assert k_diffusion.__name__ == "k_diffusion"
