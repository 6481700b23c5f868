"""The generic tuner: every objective lowers its loss, runs are deterministic, and resume is exact."""

from __future__ import annotations

import pytest
import torch

import registry
from timetuner_plugins.tuning import objectives
from timetuner_plugins.evaluation.evaluate import evaluate
from timetuner_plugins.sampling.run import make_sigmas
from timetuner_plugins.tuning.checkpoint import CheckpointError
from timetuner_plugins.sets.tuned_set import TunedSet
from timetuner_plugins.tuning.tuner import NoiseSet, TuneConfig, TuneError, Tuner, stalled

SMALL = dict(batch=16, pool=32, teacher_substeps=6, show_progress=False, select=False)


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "ddpm"])
def test_final_objective_lowers_loss_and_held_out_error(ddpm, sampler):
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(ddpm, "quadratic_t", 4)
    tuner = Tuner(ddpm, spec, sigmas, "quadratic_t", TuneConfig(objective="final", iters=60, lr=0.03, **SMALL))
    untuned = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert tuner.joint.pool_objective() < 0.95 * untuned
    before = evaluate(ddpm, spec, sigmas, "quadratic_t", n=200)
    after = evaluate(ddpm, spec, sigmas, "quadratic_t", n=200, lookup=result.tuned_set(ddpm).lookup())
    assert after["traj_err"] < before["traj_err"]


@pytest.mark.parametrize("objective", ["trajectory", "energy"])
def test_joint_objectives_lower_their_loss(gmm, objective):
    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    cfg = TuneConfig(objective=objective, iters=40, lr=0.03, **{**SMALL, "batch": 32, "pool": 64})
    tuner = Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg)
    untuned = tuner.joint.pool_objective(tuner.untuned)
    tuner.tune()
    assert tuner.joint.pool_objective() < 0.95 * untuned


def test_energy_objective_can_match_real_data(gmm):
    sigmas = make_sigmas(gmm, "quadratic_t", 3)
    cfg = TuneConfig(objective="energy", data="real", iters=30, lr=0.05, **{**SMALL, "batch": 32, "pool": 64})
    tuner = Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg)
    untuned = tuner.joint.pool_objective(tuner.untuned)
    tuner.tune()
    assert tuner.joint.pool_objective() < untuned


def test_real_data_from_a_data_loader(gmm):
    """A torch DataLoader of (x0, label) batches is real data, the same as the tensor it holds."""
    x0 = gmm.sample_data(96, torch.Generator().manual_seed(3))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x0, torch.zeros(96)), batch_size=40)
    sigmas = make_sigmas(gmm, "quadratic_t", 3)
    cfg = TuneConfig(objective="energy", data="real", iters=3, **{**SMALL, "batch": 32, "pool": 64})
    from_loader = Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg, data=loader)
    assert torch.equal(from_loader.data, x0)
    assert torch.equal(from_loader.tune().tau, Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg, data=x0).tune().tau)
    with pytest.raises(TuneError, match="shape"):
        Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg, data=torch.zeros(10, 3))
    with pytest.raises(TuneError, match="iterable of batches"):
        Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg, data=42)


def test_selection_keeps_the_best_and_falls_back_to_identity(gmm, tmp_path):
    sigmas = make_sigmas(gmm, "logsnr", 25)  # already near-exact: any large τ change hurts
    cfg = TuneConfig(
        objective="energy",
        iters=10,
        lr=1.0,
        validate_every=5,
        val_size=64,
        **{**SMALL, "select": True, "batch": 32, "pool": 64},
    )
    result = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", cfg).tune()
    sel = result.selection
    assert [s for s, _ in sel["scores"]] == [0, 5, 10]
    assert sel["best"] == min(score for _, score in sel["scores"])
    assert sel["fallback_identity"] and sel["best_iteration"] == 0
    assert torch.equal(result.tau, result.eval_sigmas)  # exactly the untuned sampler
    assert result.tuned_set(gmm).lookup().is_identity()
    saved = result.tuned_set(gmm).save(tmp_path / "identity.safetensors")  # τ may share memory with eval σ's
    assert TunedSet.load(saved).lookup().is_identity()


def test_stalled_counts_validations_without_a_relative_gain():
    scores = [(0, 100.0), (25, 90.0), (50, 89.8), (75, 89.9)]
    assert stalled(scores, 2, 0.005)  # 89.8 and 89.9 are within 0.5 % of 90
    assert not stalled(scores, 2, 0.001)  # 89.8 is a 0.22 % gain
    assert not stalled(scores, 3, 0.005)  # 90 was a gain over 100
    assert not stalled(scores, 0, 0.005) and not stalled(scores[:2], 2, 0.005)
    assert stalled([(0, -1.0), (5, -0.9), (10, -1.0)], 2, 0.0)  # negative scores (energy can go below 0)


def test_early_stop_ends_a_run_that_stopped_improving(gmm):
    sigmas = make_sigmas(gmm, "logsnr", 25)  # already near-exact: the untuned sampler stays best
    cfg = dict(
        objective="energy",
        iters=40,
        lr=1.0,
        validate_every=5,
        val_size=64,
        **{**SMALL, "select": True, "batch": 32, "pool": 64},
    )
    seen = []
    early = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(patience=2, **cfg)).tune(
        progress=lambda done, total: seen.append((done, total))
    )
    assert early.selection["stopped_early_at"] == 10 and len(early.losses) == 10
    assert [s for s, _ in early.selection["scores"]] == [0, 5, 10]
    assert seen[-1] == (40, 40)  # a progress bar fed by the callback ends full
    assert early.selection["fallback_identity"] and early.tuned_set(gmm).lookup().is_identity()
    full = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(patience=0, **cfg)).tune()
    assert full.selection["stopped_early_at"] is None and len(full.losses) == 40
    assert full.losses[:10] == early.losses  # the same run up to the stop
    with pytest.raises(TuneError, match="patience"):
        TuneConfig(patience=-1).validate()


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_paper_objective_lowers_each_interval_loss(ddpm, mode, sampler):
    sigmas = make_sigmas(ddpm, "quadratic_t", 4)
    tuner = Tuner(ddpm, sampler, sigmas, "quadratic_t", TuneConfig.paper(mode, iters=40, lr=0.01, **SMALL))
    result = tuner.tune()
    assert len(result.losses) == 3 * 40  # intervals 0..2 tuned, the last left at τ = σ
    counts = tuner.strategy.counts
    torch.testing.assert_close(result.tau[counts[-1] :], result.eval_sigmas[counts[-1] :], rtol=1e-3, atol=0)
    tuned = tuner.param.raw.detach().clone()

    def held_out_loss(i, raw):
        with torch.no_grad():
            tuner.param.raw.copy_(raw)
            return _mean([tuner.strategy.interval_loss(i, j) for j in range(1000, 1006)])

    for i in range(3):
        untuned_here = tuned.clone()
        untuned_here[counts[i - 1] if i else 0 : counts[i]] = 1.0  # this interval back at r = 1
        assert held_out_loss(i, tuned) < held_out_loss(i, untuned_here), i


def test_tuning_is_deterministic_for_a_seed(gmm):
    sigmas = make_sigmas(gmm, "logsnr", 3)
    runs = [
        Tuner(gmm, "ddpm", sigmas, "logsnr", TuneConfig(iters=5, seed=seed, **SMALL)).tune().tau for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_resume_equals_an_uninterrupted_run(gmm, tmp_path):
    sigmas = make_sigmas(gmm, "logsnr", 3)
    cfg = dict(iters=12, checkpoint_every=4, validate_every=3, val_size=32, **{**SMALL, "select": True})
    full = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(**cfg)).tune()

    ckpt = tmp_path / "run.ckpt"
    stopped = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(**cfg), checkpoint=ckpt)
    original = stopped.strategy.step

    def stop_after_seven(phase, iteration):
        if iteration == 7:
            raise KeyboardInterrupt
        return original(phase, iteration)

    stopped.strategy.step = stop_after_seven
    with pytest.raises(KeyboardInterrupt):
        stopped.tune()
    assert ckpt.exists()
    with pytest.raises(TuneError, match="--resume"):
        Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(**cfg), checkpoint=ckpt).tune()
    with pytest.raises(CheckpointError, match="other settings"):
        Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(**{**cfg, "lr": 0.5}), checkpoint=ckpt).tune(resume=True)
    resumed = Tuner(gmm, "dpmpp_2m", sigmas, "logsnr", TuneConfig(**cfg), checkpoint=ckpt).tune(resume=True)
    assert torch.equal(resumed.tau, full.tau)
    assert resumed.losses == full.losses
    assert resumed.selection == full.selection
    assert not ckpt.exists()


def test_bad_settings_are_named(gmm):
    sigmas = make_sigmas(gmm, "logsnr", 3)
    with pytest.raises(TuneError, match="unknown objective"):
        Tuner(gmm, "ddim", sigmas, config=TuneConfig(objective="fid"))
    with pytest.raises(TuneError, match="data-free"):
        Tuner(gmm, "ddim", sigmas, config=TuneConfig(objective="final", data="real"))
    with pytest.raises(TuneError, match="lr must be"):
        Tuner(gmm, "ddim", sigmas, config=TuneConfig(lr=float("nan")))
    with pytest.raises(TuneError, match="teacher_tolerance must be in"):
        Tuner(gmm, "ddim", sigmas, config=TuneConfig(teacher_tolerance=1.0))


def test_the_teacher_is_refined_until_it_has_converged(gmm):
    """The teacher's substeps double (at most twice) while doubling them still moves its final samples by more than
    ``teacher_tolerance`` of the plain sampler's distance to them; the set records what was used and measured."""
    from timetuner_plugins.sampling.schedules import refine

    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    sizes = dict(iters=2, batch=16, pool=32, val_size=32, teacher_substeps=1, show_progress=False, select=False)

    def settled(tolerance):
        tuner = Tuner(gmm, "ddim", sigmas, "quadratic_t", TuneConfig(teacher_tolerance=tolerance, **sizes))
        tuner.teacher(tuner.pool)
        return tuner

    strict, loose, off = settled(1e-9), settled(0.99), settled(0)
    assert strict.teacher.substeps == 4 and [c["substeps"] for c in strict.teacher.checks] == [1, 2]
    fine = Tuner(
        gmm, "ddim", sigmas, "quadratic_t", TuneConfig(teacher_tolerance=0, **{**sizes, "teacher_substeps": 32})
    )
    exact = fine.teacher(fine.pool)[0][-1]
    error = {k: (t.teacher(t.pool)[0][-1] - exact).pow(2).mean().item() for k, t in (("strict", strict), ("off", off))}
    assert error["strict"] < 0.5 * error["off"]  # the refined teacher is nearer the converged solutions
    assert torch.equal(strict.teacher.sigmas, refine(sigmas, 4, gmm.sigma_min)[0])
    assert loose.teacher.substeps == 1 and len(loose.teacher.checks) == 1
    assert off.teacher.substeps == 1 and off.teacher.checks == []
    extra = strict.tune().tuned_set(gmm).extra
    assert extra["teacher_substeps"] == 4 and extra["teacher_check"] == strict.teacher.checks


def test_energy_is_measured_in_the_given_feature_space(gmm):
    """The energy objective embeds both sample sets with ``features``; the set records which space."""
    seen = []

    class Halves:
        name = "halves"

        def __call__(self, x):
            seen.append(x.shape)
            return x.flatten(1)[:, :32]

    sigmas = make_sigmas(gmm, "quadratic_t", 3)
    cfg = TuneConfig(objective="energy", iters=2, accuracy_hinge=0, **{**SMALL, "batch": 8, "pool": 8})
    result = Tuner(gmm, "ddim", sigmas, "quadratic_t", cfg, features=Halves()).tune()
    assert len(seen) == 4 and all(s == (8, 1, 8, 8) for s in seen)  # student and target, two iterations
    assert result.feature_space == "halves" and result.tuned_set(gmm).extra["features"] == "halves"


def test_the_default_needs_nothing_but_the_model(ddpm, gmm):
    """The default objective and selection use no classifier and no FD: pixels and the objective on held-out noise.
    digits-ddpm's classifier features (not the FD metric's) and FD selection are options; a model without them
    gets an error that names the fix. The feature network is no submodule: the model's fingerprint is its own."""
    sigmas = make_sigmas(ddpm, "quadratic_t", 3)
    default = Tuner(ddpm, "ddim", sigmas, config=TuneConfig(**{**SMALL, "select": True}))
    assert default.feature_space == "pixel" and default.selector.metric is None
    assert Tuner(ddpm, "ddim", sigmas, config=TuneConfig(features="tuning_features", **SMALL)).feature_space == (
        "digits-features"
    )
    fd = Tuner(ddpm, "ddim", sigmas, config=TuneConfig(select_by="fd", **{**SMALL, "select": True}))
    assert fd.selector.metric is not None
    with pytest.raises(TuneError, match="has none; use features 'pixel'"):
        Tuner(gmm, "ddim", sigmas, config=TuneConfig(features="tuning_features", **SMALL))
    assert not any("digits-features" in k or "classifier" in k for k in ddpm.state_dict())
    feats = ddpm.tuning_features(torch.zeros(3, 1, 8, 8))
    assert feats.shape == (3, 64)
    from timetuner_plugins.bundled import load_classifier

    metric = load_classifier().features(torch.zeros(3, 1, 8, 8))
    assert not torch.allclose(feats, metric)
    with pytest.raises(TuneError, match="features"):
        TuneConfig(features="inception").validate()
    with pytest.raises(TuneError, match="select_by"):
        TuneConfig(select_by="inception").validate()


def test_a_candidate_that_loses_per_sample_accuracy_is_not_kept(gmm):
    """Model-agnostic selection: a τ whose validation energy is better is still not kept when its final samples
    are farther from the teacher's than the plain sampler's; the plain sampler never beats itself."""
    from timetuner_plugins.tuning.checkpoint import TunerState

    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    tuner = Tuner(gmm, "ddim", sigmas, "quadratic_t", TuneConfig(val_size=64, **{**SMALL, "select": True}))
    with torch.no_grad():
        tuner.param.raw.add_(0.3)  # a changed τ
    state = TunerState(raw=tuner.param.raw.clone(), best_score=float("inf"), best_iter=0)
    selector = tuner.selector
    plain_error = selector.trajectory_guard(tuner.untuned)
    selector.trajectory_guard = lambda values: plain_error * (1 if values.tau is None else 2)
    selector.consider(state, 5)
    assert state.best_raw is None and state.best_iter == 0 and state.scores[-1][0] == 5
    selector.trajectory_guard = lambda values: plain_error * (1 if values.tau is None else 0.5)
    selector.consider(state, 10)
    assert state.best_iter == 10 and torch.equal(state.best_raw, tuner.param.raw)
    assert selector.win_rate(tuner.untuned) == 0.0


def test_resampled_energy_distances_match_the_energy_distance_of_each_resample():
    """The selection's bootstrap computes every resample's energy distance from one set of distances: each must equal
    energy_distance on the drawn rows (repeated rows included)."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 2, 3, generator=gen), torch.randn(40, 2, 3, generator=gen) + 0.2
    draws = [torch.randint(40, (40,), generator=gen) for _ in range(5)]
    counts = torch.stack([torch.bincount(idx, minlength=40) for idx in draws])
    batched = objectives.resampled_energy_distances(a, b, counts)
    one_by_one = torch.stack([objectives.energy_distance(a[idx], b[idx]) for idx in draws])
    assert torch.allclose(batched, one_by_one, atol=1e-6) and len(set(batched.tolist())) == 5


def test_the_hinged_energy_is_relative_to_the_plain_sampler(gmm):
    """With the teacher, the default energy objective is energy / the plain run's + hinge · the final error's
    growth past the plain run's: exactly 1 for the plain sampler, the pure energy distance with the hinge off."""
    sigmas, sizes = make_sigmas(gmm, "quadratic_t", 3), {**SMALL, "batch": 64, "pool": 128}
    hinged = Tuner(gmm, "ddim", sigmas, "quadratic_t", TuneConfig(**sizes))
    plain = Tuner(gmm, "ddim", sigmas, "quadratic_t", TuneConfig(accuracy_hinge=0, **sizes))
    # the units: the plain run's energy over the whole pool (the mean of the chunks' estimates, to their noise)
    units = hinged.joint.plain_terms(hinged.pool, 0)[0]
    assert plain.joint.pool_objective(plain.untuned) == pytest.approx(units, rel=0.2)
    assert hinged.joint.pool_objective(hinged.untuned) == pytest.approx(
        plain.joint.pool_objective(plain.untuned) / units
    )
    with torch.no_grad():
        hinged.param.raw.add_(0.5)  # a τ far from the plain one: its samples move away from the teacher's
    values = hinged.param.values()
    outputs = hinged.whole(hinged.pool, 0, values)
    error = float(objectives.squared_error(outputs[-1], hinged.teacher(hinged.pool)[0][-1]))
    e0, err0 = hinged.joint.plain_terms(hinged.pool, 0)
    energy_now = float(objectives.energy_distance(outputs[-1], hinged.teacher(hinged.pool)[0][-1]))
    expected = energy_now / e0 + 3 * max(0.0, error / err0 - 1)
    assert float(hinged.joint.chunk_value(hinged.pool, 0, values)) == pytest.approx(expected, rel=1e-5)
    assert error > err0  # the hinge is active here
    with pytest.raises(TuneError, match="accuracy_hinge"):
        TuneConfig(accuracy_hinge=-1).validate()


def test_the_reference_starts_where_the_run_starts():
    """ComfyUI's ddim_uniform starts higher the more steps it has; the reference a run is measured against solves
    the same ODE from the run's own σ_0 (the fine schedule's σ's below it), and elsewhere is unchanged."""
    from timetuner_plugins.evaluation.evaluate import eval_noise, generate, reference

    model, spec = registry.load_model("heldout-resnet-v"), registry.get_sampler("dpmpp_2m")
    noise = eval_noise(16, (1, 8, 8), 3)
    run, fine = make_sigmas(model, "ddim_uniform", 5), make_sigmas(model, "ddim_uniform", 40)
    assert float(fine[0]) > 2 * float(run[0])
    ref = reference(model, spec, "ddim_uniform", noise, nfe=40, start_sigma=float(run[0]))
    grid = torch.cat([run[:1], fine[fine < run[0] * (1 - 1e-4)]])
    torch.testing.assert_close(ref, generate(model, spec, grid, noise))
    karras = float(make_sigmas(model, "karras", 5)[0])
    torch.testing.assert_close(
        reference(model, spec, "karras", noise, nfe=40, start_sigma=karras),
        reference(model, spec, "karras", noise, nfe=40),
    )


def test_noise_sets_are_derived_from_the_config_alone(gmm):
    config = TuneConfig(**SMALL)
    tuner = Tuner(gmm, "ddim", make_sigmas(gmm, "logsnr", 3), "logsnr", config)
    assert tuner.pool == NoiseSet.training(config) and tuner.val == NoiseSet.validation(config)
    shape, cpu = tuple(gmm.sample_shape), torch.device("cpu")
    assert not torch.equal(tuner.pool.noise(0, shape, cpu), tuner.val.noise(0, shape, cpu))
