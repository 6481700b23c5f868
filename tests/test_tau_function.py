"""One τ function for every step count: the plan of a run, the function, its file format, tuning and applying it."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

import registry
from timetuner_plugins.cli import cli
from timetuner_plugins.tuning.function_tuner import FunctionResult, FunctionTuner
from timetuner_plugins.tuning.joint_objective import JointObjective
from timetuner_plugins.sampling.run import eval_plan, make_sigmas, sample
from timetuner_plugins.sets.tau_function import N_BASIS, TauFunction, basis
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetError, TunedSetMismatch
from timetuner_plugins.tuning.tuner import TuneConfig, TuneError

from helpers import noise

TINY = dict(iters=6, batch=16, pool=32, val_size=32, teacher_substeps=4, validate_every=3, show_progress=False)


@pytest.fixture(scope="module")
def gmm():
    return registry.load_model("gmm-digits")


def function_set(model, coef: torch.Tensor, nfe=(4, 12), schedules=("karras",)) -> TunedSet:
    """A function set with θ = ``coef`` (no tuning), shown at NFE 6 on the first schedule."""
    fn = TauFunction.for_model(model)
    with torch.no_grad():
        fn.coef.copy_(coef)
    result = FunctionResult(fn, "ddim", list(schedules), nfe, [], TuneConfig(), {}, {"fallback_identity": False})
    return result.tuned_set(model, make_sigmas(model, schedules[0], 6))


def test_the_plan_says_which_step_and_stage_each_evaluation_is(gmm):
    sigmas = make_sigmas(gmm, "karras", 4)
    heun = eval_plan(registry.get_sampler("heun"), sigmas, (1, 8, 8), model=gmm)
    assert heun.step.tolist() == [0, 0, 1, 1, 2, 2, 3] and heun.stage.tolist() == [0, 0.5, 0, 0.5, 0, 0.5, 0]
    ddim = eval_plan(registry.get_sampler("ddim"), sigmas, (1, 8, 8), model=gmm)
    assert ddim.step.tolist() == [0, 1, 2, 3] and not ddim.stage.any()
    torch.testing.assert_close(ddim.eval_sigmas, sigmas[:-1])


def test_zero_coefficients_are_the_plain_sampler_bit_for_bit(gmm):
    sigmas = make_sigmas(gmm, "karras", 7)
    one = function_set(gmm, torch.zeros(N_BASIS)).for_run(gmm, sigmas)
    assert torch.equal(one.tau, one.eval_sigmas)
    x = noise(8)
    assert torch.equal(sample(gmm, "ddim", sigmas, x, tuned=one), sample(gmm, "ddim", sigmas, x))


def test_basis_is_bounded_and_the_ratio_stays_within_e_to_the_one():
    u, g, c = torch.rand(200), torch.rand(200), torch.rand(200)
    b = basis(u, g, c)
    assert b.shape == (200, N_BASIS) and float(b.abs().max()) <= 1.0 + 1e-6
    fn = TauFunction((-5.0, 5.0), coef=torch.full((N_BASIS,), 50.0))
    ev = torch.rand(200) + 0.1
    with torch.no_grad():
        ratio = fn.tau(b, ev) / ev
    assert float(ratio.max()) <= torch.e + 1e-5 and float(ratio.min()) >= 1 / torch.e - 1e-5


def test_a_function_set_saves_as_format_3_and_gives_tau_for_any_run_in_range(gmm, tmp_path):
    coef = torch.linspace(-0.3, 0.3, N_BASIS)
    ts = function_set(gmm, coef)
    path = ts.save(tmp_path / "f.safetensors")
    back = TunedSet.load(path)
    assert back.format_version == 3 and back.is_function and back.function_range["nfe"] == [4, 12]
    torch.testing.assert_close(back.tau_function, coef)
    for steps in (4, 9, 12):
        sigmas = make_sigmas(gmm, "karras", steps)
        one = back.for_run(gmm, sigmas, schedule="karras")
        fn = back.function()
        plan = eval_plan(registry.get_sampler("ddim"), sigmas, (1, 8, 8), model=gmm)
        torch.testing.assert_close(one.tau, fn.tau(fn.features(plan, sigmas), plan.eval_sigmas))
        assert len(one.tau) == steps and not one.is_function
        one.check(model=gmm, sampler="ddim", sigmas=sigmas)  # the run's own set passes the usual check
        sample(gmm, "ddim", sigmas, noise(4), tuned=back)  # and the library applies the function directly
    assert not torch.equal(back.for_run(gmm, make_sigmas(gmm, "karras", 9)).tau[:4], one.tau[:4])


def test_outside_its_range_a_function_is_refused_or_forced_with_a_warning(gmm):
    ts = function_set(gmm, torch.full((N_BASIS,), 0.1))
    with pytest.raises(TunedSetMismatch, match="NFE 4–12 but the run makes 15"):
        ts.for_run(gmm, make_sigmas(gmm, "karras", 15))
    with pytest.warns(UserWarning, match="applied anyway"):
        ts.for_run(gmm, make_sigmas(gmm, "karras", 15), force=True)
    with pytest.warns(UserWarning, match="tuned on the schedules karras, not logsnr"):
        ts.for_run(gmm, make_sigmas(gmm, "logsnr", 6), schedule="logsnr")


def test_a_function_set_has_no_single_run_lookup(gmm):
    ts = function_set(gmm, torch.zeros(N_BASIS))
    with pytest.raises(TunedSetError, match="for_run"):
        ts.lookup()
    with pytest.raises(TunedSetError, match="for_run"):
        ts.check(model=gmm, sigmas=ts.sigmas)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ts: replace(ts, tau_function=torch.zeros(5)), "coefficients"),
        (lambda ts: replace(ts, extra={**ts.extra, "tau_function": {**ts.function_range, "basis": "x"}}), "basis"),
        (lambda ts: replace(ts, extra={**ts.extra, "tau_function": {**ts.function_range, "nfe": [9, 2]}}), "nfe"),
    ],
)
def test_a_damaged_function_set_is_refused_at_load(gmm, tmp_path, change, message):
    ts = change(function_set(gmm, torch.zeros(N_BASIS)))
    path = tmp_path / "bad.safetensors"
    try:
        ts.save(path)
    except TunedSetError as exc:  # a wrong tensor is refused at save already
        assert message in str(exc)
        return
    with pytest.raises(TunedSetError, match=message):
        TunedSet.load(path)


def test_the_tuner_keeps_a_function_only_if_it_is_better_on_every_run(gmm):
    tuner = FunctionTuner(gmm, "ddim", ["karras"], (4, 6), TuneConfig(**TINY))
    assert [r.nfe for r in tuner.runs] == [4, 5, 6]
    result = tuner.tune()
    sel = result.selection
    if sel["fallback_identity"]:
        assert not result.function.coef.any()
    else:
        assert sel["best"] < 0 and all(r["val_change"] < 0 for r in result.runs)
        assert result.function.coef.any()
    assert [s for s, _ in sel["scores"]] == [0, 3, 6]


def test_an_interrupted_function_run_resumes_to_the_same_function(gmm, tmp_path, monkeypatch):
    config = TuneConfig(**{**TINY, "checkpoint_every": 2})
    whole = FunctionTuner(gmm, "ddim", ["karras"], (4, 6), config).tune()
    path = tmp_path / "f.safetensors.ckpt"
    calls, chunk_loss = [], JointObjective.chunk_loss

    def interrupted(self, values, iteration):
        calls.append(iteration)
        if len(calls) == 5:  # iteration 5 of 6, after the checkpoint at 4
            raise KeyboardInterrupt
        return chunk_loss(self, values, iteration)

    monkeypatch.setattr(JointObjective, "chunk_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FunctionTuner(gmm, "ddim", ["karras"], (4, 6), config, checkpoint=path).tune()
    monkeypatch.undo()
    assert path.exists()
    with pytest.raises(TuneError, match="pass --resume"):
        FunctionTuner(gmm, "ddim", ["karras"], (4, 6), config, checkpoint=path).tune()
    other = FunctionTuner(gmm, "ddim", ["karras"], (4, 6), replace(config, lr=0.01), checkpoint=path)
    with pytest.raises(Exception, match="other settings"):
        other.tune(resume=True)
    resumed = FunctionTuner(gmm, "ddim", ["karras"], (4, 6), config, checkpoint=path).tune(resume=True)
    assert not path.exists()
    torch.testing.assert_close(resumed.function.coef, whole.function.coef, rtol=1e-6, atol=0)
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    assert [s for _, s in resumed.selection["scores"]] == pytest.approx(
        [s for _, s in whole.selection["scores"]], rel=1e-6
    )
    assert resumed.selection["per_run"] == whole.selection["per_run"] and resumed.runs == whole.runs


@pytest.mark.slow
def test_tune_with_an_nfe_range_writes_a_function_that_eval_applies_at_other_steps(tmp_path):
    out = tmp_path / "f.safetensors"
    runner = CliRunner()
    args = ["tune", "--model", "gmm-digits", "--sampler", "ddim", "--nfe", "4-6", "--schedule", "karras,logsnr"]
    args += ["--iters", "4", "--batch", "16", "--eval-n", "0", "--quiet", "--out", str(out)]
    made = runner.invoke(cli, args)
    assert made.exit_code == 0, made.output
    assert "a τ function for ddim on gmm-digits, NFE 4–6, karras, logsnr" in made.output
    ts = TunedSet.load(out)
    assert ts.function_range["schedules"] == ["karras", "logsnr"]
    assert [r["nfe"] for r in ts.function_range["runs"]] == [4, 5, 6, 4, 5, 6]
    ok = runner.invoke(cli, ["eval", "--tuned", str(out), "--steps", "5", "--n", "64", "--json"])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(cli, ["eval", "--tuned", str(out), "--steps", "9", "--n", "64"])
    assert refused.exit_code == 1 and "NFE 4–6 but the run makes 9" in refused.output
    shown = runner.invoke(cli, ["inspect", str(out)])
    assert "τ function: any step count with NFE 4–6" in shown.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad = runner.invoke(cli, ["tune", "--model", "gmm-digits", "--sampler", "ddim", "--nfe", "4-6", "--steps", "5"])
    assert bad.exit_code == 2 and "drop --steps" in bad.output


def test_diffusers_apply_refuses_a_function_set_instead_of_using_its_one_shown_run(gmm):
    from timetuner_plugins.adapters.diffusers_pipeline import apply_tuned_set

    with pytest.raises(TunedSetError, match="diffusers pipelines cannot apply yet"):
        apply_tuned_set(object(), function_set(gmm, torch.zeros(N_BASIS)))
