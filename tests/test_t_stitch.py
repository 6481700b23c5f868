"""T-Stitch as a plugin on the ``model_for_run`` hook: which model makes each evaluation, exactness at the
ends, composition with τ, the tuner, the CLI and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import registry
from timetuner_plugins import bundled
from timetuner_plugins.cli import cli
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler
from timetuner_plugins.sampling.t_stitch import StitchedDenoiser, StitchError, StitchRun, stitch
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.bundled.training import digits as training
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise


class Recorder(torch.nn.Module):
    """Stands in for a tunable denoiser with ``model``'s σ space; logs (name, σ, cond σ) per call, returns zeros."""

    def __init__(self, model, name, log):
        super().__init__()
        self.name, self.log, self.model = name, log, model
        self.sigma_min, self.sigma_max, self.sample_shape = model.sigma_min, model.sigma_max, model.sample_shape
        self.default_schedule, self.model_id, self.time_offset = model.default_schedule, name, 1.0
        self.register_buffer("log_sigmas", model.log_sigmas.clone(), persistent=False)

    @property
    def fingerprint(self):
        return self.name

    def forward(self, x, sigma, cond_sigma=None, **extra):
        cond = sigma if cond_sigma is None else cond_sigma
        self.log.append((self.name, float(sigma.reshape(-1)[0]), float(cond.reshape(-1)[0])))
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def small():
    return registry.load_model("digits-ddpm-small")


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m", "ddpm"])
def test_the_ends_reproduce_each_model_bit_for_bit(ddpm, small, sampler):
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(ddpm, "quadratic_t", 5)
    x = noise(16, seed=3) * sigmas[0]
    with torch.no_grad():
        for f, alone in ((0.0, ddpm), (1.0, small)):
            assert torch.equal(
                run_sampler(StitchedDenoiser(ddpm, small, f), spec, x, sigmas, seed=7),
                run_sampler(alone, spec, x, sigmas, seed=7),
            )


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.3, 3), (0.4, 4), (0.5, 5), (1.0, 9)])
def test_a_second_order_sampler_switches_at_the_right_evaluation(ddpm, fraction, expected):
    log = []
    pair = StitchedDenoiser(Recorder(ddpm, "large", log), Recorder(ddpm, "small", log), fraction)
    spec = registry.get_sampler("heun")
    sigmas = make_sigmas(ddpm, "karras", 5)
    with torch.no_grad():
        run_sampler(pair, spec, noise(2) * sigmas[0], sigmas)
    assert len(log) == spec.nfe(sigmas) == 9
    assert [name for name, _, _ in log] == ["small"] * expected + ["large"] * (9 - expected)
    assert [s for _, s, _ in log] == eval_sigmas(spec, sigmas, (1, 8, 8)).tolist()


def test_every_run_counts_from_its_own_first_evaluation(ddpm):
    log = []
    pair = StitchedDenoiser(Recorder(ddpm, "large", log), Recorder(ddpm, "small", log), 0.5)
    spec = registry.get_sampler("ddim")
    with torch.no_grad():
        for steps in (4, 4, 10):
            log.clear()
            sigmas = make_sigmas(ddpm, "quadratic_t", steps)
            run_sampler(pair, spec, noise(2) * sigmas[0], sigmas)
            assert [name for name, _, _ in log] == ["small"] * (steps // 2) + ["large"] * (steps - steps // 2)


def test_composed_with_an_identity_tau_lookup_it_is_bit_exact(ddpm, small):
    spec = registry.get_sampler("dpmpp_2m")
    sigmas = make_sigmas(ddpm, "quadratic_t", 6)
    pair = StitchedDenoiser(ddpm, small, 0.5)
    x = noise(16, seed=5) * sigmas[0]
    lookup = TauLookup.identity(eval_sigmas(spec, sigmas, (1, 8, 8)))
    with torch.no_grad():
        assert torch.equal(run_sampler(pair, spec, x, sigmas, lookup=lookup), run_sampler(pair, spec, x, sigmas))


def test_tau_reaches_both_models(ddpm):
    log = []
    pair = StitchedDenoiser(Recorder(ddpm, "large", log), Recorder(ddpm, "small", log), 0.5)
    spec = registry.get_sampler("ddim")
    sigmas = make_sigmas(ddpm, "quadratic_t", 4)
    ev = eval_sigmas(spec, sigmas, (1, 8, 8))
    with torch.no_grad():
        run_sampler(pair, spec, noise(2) * sigmas[0], sigmas, lookup=TauLookup(ev, ev * 1.5))
    assert [name for name, _, _ in log] == ["small", "small", "large", "large"]
    assert all(cond == pytest.approx(1.5 * s, rel=1e-5) for _, s, cond in log)


def test_the_hook_leaves_other_models_alone(ddpm, small):
    spec = registry.get_sampler("ddim")
    sigmas = make_sigmas(ddpm, "quadratic_t", 4)
    assert registry.model_for_run(ddpm, spec, sigmas) is ddpm
    run = registry.model_for_run(StitchedDenoiser(ddpm, small, 0.5), spec, sigmas)
    assert isinstance(run, StitchRun) and run.switch == 2 and run.sigma_max == ddpm.sigma_max


def test_the_generic_tuner_tunes_tau_for_the_stitched_pair(ddpm, small):
    pair = StitchedDenoiser(ddpm, small, 0.5)
    sigmas = make_sigmas(ddpm, "quadratic_t", 4)
    cfg = TuneConfig(iters=2, batch=8, pool=8, val_size=8, teacher_substeps=2, validate_every=1, show_progress=False)
    tuner = Tuner(pair, "ddim", sigmas, "quadratic_t", cfg)
    result = tuner.tune()
    assert result.tau.shape == (4,) and torch.isfinite(result.tau).all()
    tuned = result.tuned_set(pair)
    assert tuned.model_id == "digits-ddpm+digits-ddpm-small@0.5" and tuned.model_fingerprint == pair.fingerprint
    assert pair.fingerprint != StitchedDenoiser(ddpm, small, 0.6).fingerprint != ddpm.fingerprint


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_a_fraction_outside_0_1_is_refused(ddpm, small, fraction):
    with pytest.raises(StitchError, match=r"must be in \[0, 1\]"):
        StitchedDenoiser(ddpm, small, fraction)


def test_an_unknown_small_model_is_named_with_the_fix(ddpm):
    with pytest.raises(StitchError, match=r"unknown model 'digits-ddpm-tiny'.*digits-ddpm-small"):
        stitch(ddpm, "digits-ddpm-tiny", 0.5)


def test_a_small_model_with_another_sigma_space_is_refused(ddpm, edm):
    with pytest.raises(StitchError, match=r"different σ spaces.*same noise schedule"):
        StitchedDenoiser(ddpm, edm, 0.5)


def test_the_small_model_is_bundled_and_much_smaller(ddpm, small):
    assert "digits-ddpm-small" in registry.models()
    assert small.fingerprint != ddpm.fingerprint and torch.equal(small.log_sigmas, ddpm.log_sigmas)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) * 4 <= count(ddpm)
    assert bundled.weights_path("digits-ddpm-small").stat().st_size <= 5 * 2**20


def test_the_small_training_script_runs_a_few_steps(tmp_path, ddpm):
    out = tmp_path / "small.safetensors"
    training.train_ddpm_small(out, steps=3, batch=16)
    model = bundled.load_path(out)
    assert model.model_id == "digits-ddpm-small" and torch.equal(model.log_sigmas, ddpm.log_sigmas)
    assert model.net.config["width"] == training.SMALL_UNET["width"]


def test_cli_smoke(tmp_path):
    out = tmp_path / "stitch"
    result = CliRunner().invoke(
        cli,
        [
            "stitch",
            "--steps",
            "3",
            "--fractions",
            "0,1",
            "--n",
            "40",
            "--batch",
            "20",
            "--repeats",
            "1",
            "--tune",
            "1",
            "--tune-iters",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [r["fraction"] for r in data["rows"]] == [0.0, 1.0]
    assert "fd_tuned" in data["rows"][1] and "fd_tuned" not in data["rows"][0]
    assert (out / "stitch.png").stat().st_size > 0 and "| 1.00 | 3 / 3 |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fractions", "0,1.5"], "must be in [0, 1]"),
        (["--small", "digits-edm"], "different σ spaces"),
        (["--small", "nope"], "unknown model 'nope'"),
        (["--fractions", "a,b"], "comma-separated list of numbers"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["stitch", "--n", "10", "--out", str(tmp_path / "o"), "--quiet", *args])
    assert result.exit_code != 0 and message in result.output
