"""Parameter families beside τ: D-ODE λ per evaluation and the schedule's σ's, tuned by the same tuner."""

from __future__ import annotations

import pytest
import torch

import registry
from timetuner_plugins.sampling.run import make_sigmas, run_sampler, sample
from timetuner_plugins.sets.tau import TauLookup, TauModel
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetError, TunedSetMismatch
from timetuner_plugins.tuning.tuner import TuneConfig, TuneError, Tuner

SMALL = dict(batch=32, pool=64, teacher_substeps=6, show_progress=False, select=False)


class Outputs:
    """A denoiser that returns 1, 2, 4, ... times x on successive calls, so D-ODE's combination is checkable."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, cond_sigma=None):
        self.calls += 1
        return x * 2.0 ** (self.calls - 1)


def test_dode_combines_each_output_with_the_previous_one():
    ev = torch.tensor([3.0, 2.0, 1.0])
    lam = torch.tensor([0.7, 0.5, -0.25])  # λ_0 has no previous output and is never used
    wrapped = TauModel(Outputs(), TauLookup(ev, ev.clone(), dode_lambda=lam))
    x = torch.ones(2, 1, 2, 2)
    outs = [wrapped(x, torch.full((2,), s)) for s in ev.tolist()]
    assert torch.equal(outs[0], x)
    assert torch.equal(outs[1], 2 * x + 0.5 * (2 * x - x))
    assert torch.equal(outs[2], 4 * x - 0.25 * (4 * x - 2 * x))  # against the raw previous output, not D̃


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "ddpm"])
def test_zero_lambda_is_bit_exact(gmm, sampler):
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(gmm, "karras", 5)
    x = torch.randn(16, *gmm.sample_shape, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    from timetuner_plugins.sampling.run import eval_sigmas

    ev = eval_sigmas(spec, sigmas, tuple(gmm.sample_shape))
    with torch.no_grad():
        plain = run_sampler(gmm, spec, x, sigmas)
        zero = run_sampler(gmm, spec, x, sigmas, lookup=TauLookup(ev, ev.clone(), dode_lambda=torch.zeros_like(ev)))
    assert torch.equal(plain, zero)


def test_dode_tuning_lowers_the_distillation_error_and_leaves_tau(gmm):
    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    cfg = TuneConfig(objective="trajectory", families=("dode",), iters=40, lr=0.05, **SMALL)
    tuner = Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg)
    untuned = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert tuner.joint.pool_objective() < 0.95 * untuned
    assert torch.equal(result.tau, result.eval_sigmas)  # τ was not trained
    assert float(result.dode_lambda[0]) == 0.0 and bool(result.dode_lambda[1:].abs().gt(0).any())
    ts = result.tuned_set(gmm)
    assert ts.metadata()["format_version"] == "2" and ts.extra["families"] == ["dode"]


def test_schedule_tuning_moves_interior_sigmas_only(gmm):
    sigmas = make_sigmas(gmm, "uniform_t", 5)
    cfg = TuneConfig(objective="energy", families=("sigma",), iters=30, lr=0.1, **SMALL)
    tuner = Tuner(gmm, "ddim", sigmas, "uniform_t", cfg)
    untuned = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert tuner.joint.pool_objective() < untuned
    learned = result.sigmas
    assert learned[0] == sigmas[0] and learned[-2] == sigmas[-2] and learned[-1] == 0
    assert bool((learned[1:] < learned[:-1]).all()) and not torch.allclose(learned, sigmas)
    assert torch.equal(result.tau / result.eval_sigmas, torch.ones(len(result.tau)))  # τ = σ on the new schedule
    ts = result.tuned_set(gmm)
    assert ts.schedule == "learned-uniform_t"
    with pytest.raises(TunedSetMismatch):
        ts.check(model=gmm, sampler="ddim", sigmas=sigmas)
    noise = torch.randn(8, *gmm.sample_shape)
    with torch.no_grad():
        out = sample(gmm, "ddim", ts.sigmas, noise, tuned=ts)
    assert torch.isfinite(out).all()


def test_joint_sigma_and_tau_tunes_both(gmm):
    sigmas = make_sigmas(gmm, "uniform_t", 4)
    cfg = TuneConfig(objective="energy", families=("tau", "sigma"), iters=10, lr=0.1, **SMALL)
    result = Tuner(gmm, "ddim", sigmas, "uniform_t", cfg).tune()
    assert not torch.allclose(result.sigmas, sigmas) and not torch.equal(result.tau, result.eval_sigmas)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(families=()), "families"),
        (dict(families=("tau", "tau")), "families"),
        (dict(families=("lambda",)), "families"),
        (dict(objective="paper", families=("tau", "dode")), "paper"),
        (dict(objective="trajectory", families=("sigma",)), "trajectory"),
    ],
)
def test_bad_family_settings_are_refused(gmm, bad, match):
    with pytest.raises(TuneError, match=match):
        Tuner(gmm, "ddim", make_sigmas(gmm, "karras", 3), "karras", TuneConfig(**bad))


def test_tuned_set_with_lambda_round_trips_and_is_validated(gmm, tmp_path):
    sigmas = make_sigmas(gmm, "quadratic_t", 3)
    result = Tuner(
        gmm, "ddim", sigmas, "quadratic_t", TuneConfig(objective="final", families=("tau", "dode"), iters=3, **SMALL)
    ).tune()
    path = result.tuned_set(gmm).save(tmp_path / "d.safetensors")
    loaded = TunedSet.load(path)
    assert torch.equal(loaded.dode_lambda, result.dode_lambda) and loaded.format_version == 2
    assert torch.equal(loaded.lookup().dode_lambda, result.dode_lambda)
    plain = Tuner(gmm, "ddim", sigmas, "quadratic_t", TuneConfig(objective="final", iters=2, **SMALL)).tune()
    assert TunedSet.load(plain.tuned_set(gmm).save(tmp_path / "p.safetensors")).format_version == 1
    bad = result.tuned_set(gmm)
    bad.dode_lambda = torch.full_like(bad.tau, 50.0)
    with pytest.raises(TunedSetError, match="λ"):
        bad.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
