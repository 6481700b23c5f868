"""diffusers as an optional extra: model adapters, schedulers as registry samplers, pipelines with a tuned set.

Runs on reduced-width ("tiny") configs of diffusers' own classes with random weights; needs diffusers importable
(``pip install 'timetuner[diffusers]'``). CI sets TIMETUNER_REQUIRE_DIFFUSERS=1 so these tests fail instead of
skipping when it is not.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import registry
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

try:
    import diffusers
except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
    if os.environ.get("TIMETUNER_REQUIRE_DIFFUSERS"):
        raise
    pytest.skip(
        f"diffusers is not importable here ({type(exc).__name__}: {exc}); install the extra with "
        f"pip install 'timetuner[diffusers]'",
        allow_module_level=True,
    )

from timetuner_plugins.adapters import diffusers_configs as dc  # noqa: E402
from timetuner_plugins.adapters.diffusers import DiffusersCFGDenoiser, DiffusersFlowDenoiser, DiffusersVPDenoiser, adapt

V_SCHEDULER = {**dc.DDPM_SCHEDULER, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}
VARIANTS = {  # name: (config name, scheduler overrides)
    "ddpm-eps": ("ddpm", None),
    "ddpm-v": ("ddpm", V_SCHEDULER),
    "sd15": ("sd15", None),
    "sdxl-v": ("sdxl", {"prediction_type": "v_prediction"}),
    "sd3": ("sd3", None),
    "flux": ("flux", None),
}


class Tiny:
    """A tiny network, its adapter and conditioning for a batch of ``b``."""

    def __init__(self, variant: str):
        name, sched = VARIANTS[variant]
        self.variant, self.name = variant, name
        self.built = dc.build(name, "tiny", seed=0)
        cfg = {**self.built.scheduler_config, **(sched or {})}
        self.scheduler_config = cfg
        self.model = adapt(self.built.model, cfg, latent_size=self.built.latent[1:], model_id=f"tiny-{variant}")

    def extra(self, b: int = 1) -> dict:
        return dc.conditioning(self.name, "tiny", batch=b, seed=3)

    def noise(self, b: int, seed: int = 0) -> torch.Tensor:
        return noise(b, seed=seed, shape=self.model.sample_shape)


@pytest.fixture(scope="module", params=list(VARIANTS))
def tiny(request) -> Tiny:
    return Tiny(request.param)


@pytest.fixture(scope="module")
def tinies() -> dict[str, Tiny]:
    return {v: Tiny(v) for v in VARIANTS}


def _record_timesteps(module: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    seen: list = []

    def hook(_module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        x = kwargs.get("hidden_states", args[0] if args else None)
        seen.append(
            (
                torch.as_tensor(t).detach().clone(),
                x.detach().clone(),
                {k: v for k, v in kwargs.items() if k not in ("timestep", "hidden_states")},
            )
        )

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


# ----- Goal: adapters -------------------------------------------------------------------------------------------


def test_the_plugin_registers_adapters_samplers_and_schedules():
    assert {
        f"diffusers.{c}"
        for c in ("UNet2DModel", "UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")
    } <= set(registry.adapters())
    names = {n for n in registry.samplers() if n.startswith("diffusers.")}
    assert {
        "diffusers.DDIMScheduler",
        "diffusers.DPMSolverMultistepScheduler",
        "diffusers.DPMSolverSinglestepScheduler",
        "diffusers.UniPCMultistepScheduler",
        "diffusers.DEISMultistepScheduler",
        "diffusers.EulerDiscreteScheduler",
        "diffusers.HeunDiscreteScheduler",
        "diffusers.FlowMatchEulerDiscreteScheduler",
    } <= names
    assert names <= set(registry.schedules())
    assert not [p for p in registry.problems() if "diffusers" in p.message]


def test_registry_adapt_model_picks_the_diffusers_adapter(tinies):
    t = tinies["sd15"]
    model = registry.adapt_model(t.built.model, scheduler_config=t.scheduler_config)
    assert isinstance(model, DiffusersVPDenoiser) and model.fingerprint == t.model.fingerprint
    flux = tinies["flux"]
    assert isinstance(
        registry.adapt_model(flux.built.model, scheduler_config=flux.scheduler_config, latent_size=(8, 8)),
        DiffusersFlowDenoiser,
    )


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_identity_tau_is_bit_exact_through_registry_samplers(tiny, sampler):
    spec = registry.get_sampler(sampler)
    model = tiny.model
    sigmas = make_sigmas(model, model.default_schedule, 4)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    x = tiny.noise(2, seed=1) * sigmas[0]
    with torch.no_grad():
        plain = run_sampler(model, spec, x, sigmas, extra_args=tiny.extra(2))
        tuned = run_sampler(model, spec, x, sigmas, extra_args=tiny.extra(2), lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned) and torch.isfinite(plain).all()


def test_denoised_matches_the_schedulers_own_x0(tiny):
    """D(x, σ) against diffusers' arithmetic on the raw network output: DDIM's pred_original_sample (ε and v) for the
    UNets, x − σ·v for the flow transformers, at a few of the scheduler's own timesteps."""
    net, model, extra = tiny.built.model, tiny.model, tiny.extra(2)
    gen = torch.Generator().manual_seed(5)
    if isinstance(model, DiffusersVPDenoiser):
        scheduler = diffusers.DDIMScheduler.from_config(tiny.scheduler_config)
        scheduler.set_timesteps(10)
        for t in (10, 500, 990):
            abar = scheduler.alphas_cumprod[t].double()
            sigma = ((1 - abar) / abar).sqrt().float()
            x_vp = torch.randn((2, *model.sample_shape), generator=gen)
            with torch.no_grad():
                out = net(x_vp, torch.tensor(t), **_unet_kwargs(extra)).sample
                x0 = scheduler.step(out, t, x_vp).pred_original_sample
                d = model(x_vp * (1 + sigma**2) ** 0.5, sigma.expand(2), **extra)
            torch.testing.assert_close(d, x0, atol=2e-4, rtol=2e-4)
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(tiny.scheduler_config)
        scheduler.set_timesteps(10, **model.set_timesteps_kwargs(10))
        for i in (0, 4, 9):
            sigma = scheduler.sigmas[i]
            x = torch.randn((2, *model.sample_shape), generator=gen)
            scale = 1.0 if tiny.name == "flux" else 1000.0  # FluxPipeline passes timestep / 1000
            with torch.no_grad():
                v = net(hidden_states=x, timestep=(sigma * scale).expand(2), **extra).sample
                fresh = copy.deepcopy(scheduler)  # step() counts its calls: a fresh one starts at timestep i
                step = fresh.step(v, scheduler.timesteps[i], x).prev_sample
                d = model(x, sigma.expand(2), **extra)
            torch.testing.assert_close(d, x - sigma * v, atol=1e-5, rtol=1e-5)
            nxt = scheduler.sigmas[i + 1]
            torch.testing.assert_close(step, x + (x - d) / sigma * (nxt - sigma), atol=1e-5, rtol=1e-5)


def _unet_kwargs(extra: dict) -> dict:
    extra = dict(extra)
    added = {k: extra.pop(k) for k in ("text_embeds", "time_ids") if k in extra}
    return {**extra, **({"added_cond_kwargs": added} if added else {})}


def test_tau_changes_only_the_timestep_the_network_receives(tiny):
    model, extra = tiny.model, tiny.extra(2)
    seen, handle = _record_timesteps(tiny.built.model)
    x = tiny.noise(2, seed=2) * 0.7
    sigma = torch.full((2,), 0.6 if model.space == "flow" else 2.0)
    try:
        with torch.no_grad():
            model(x, sigma, **extra)
            model(x, sigma, cond_sigma=sigma * 1.3, **extra)
            model(x, sigma, cond_sigma=sigma * 2.0, **extra)  # a flow τ above 1 stops at 1
    finally:
        handle.remove()
    (t0, x0, k0), (t1, x1, k1), (t2, _, _) = seen
    assert torch.equal(x0, x1) and k0.keys() == k1.keys()
    for key in k0:
        if torch.is_tensor(k0[key]):
            assert torch.equal(k0[key], k1[key])
    if model.space == "flow":
        mult = model.multiplier
        torch.testing.assert_close(t0, sigma * mult)
        torch.testing.assert_close(t1, sigma * 1.3 * mult)
        torch.testing.assert_close(t2, torch.full((2,), mult))
    else:
        torch.testing.assert_close(t0, model.sigma_to_t(sigma))
        torch.testing.assert_close(t1, model.sigma_to_t(sigma * 1.3))
        assert float(t1[0]) > float(t0[0])


def test_the_generic_tuner_runs_on_every_tiny_model(tiny):
    model = tiny.model
    sampler = "diffusers.FlowMatchEulerDiscreteScheduler" if model.space == "flow" else "diffusers.DDIMScheduler"
    for name, schedule in (("ddim", model.default_schedule), (sampler, sampler)):
        sigmas = make_sigmas(model, schedule, 3)
        cfg = TuneConfig(
            iters=2,
            batch=4,
            pool=4,
            val_size=4,
            teacher_substeps=2,
            select=False,
            show_progress=False,
            features="pixel",
        )
        result = Tuner(model, name, sigmas, schedule, cfg, extra_args=tiny.extra(1)).tune()
        assert len(result.tau) == registry.get_sampler(name).nfe(sigmas) and torch.isfinite(result.tau).all()
        assert len(result.losses) == 2
        ts = result.tuned_set(model)
        assert ts.model_fingerprint == model.fingerprint and len(ts.model_fingerprint) == 64


def test_a_bf16_network_under_a_float32_state_stays_close_to_float32(tinies):
    for variant in ("sd15", "flux"):
        t = tinies[variant]
        half = dc.build(t.name, "tiny", seed=0, dtype=torch.bfloat16).model
        model16 = adapt(half, t.scheduler_config, latent_size=t.built.latent[1:])
        sigmas = make_sigmas(t.model, t.model.default_schedule, 4)
        x = t.noise(2, seed=4) * sigmas[0]
        with torch.no_grad():
            a = run_sampler(t.model, registry.get_sampler("ddim"), x, sigmas, extra_args=t.extra(2))
            b = run_sampler(model16, registry.get_sampler("ddim"), x, sigmas, extra_args=t.extra(2))
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert float((a - b).norm() / a.norm()) < 0.05, variant
        assert model16.fingerprint != t.model.fingerprint  # the dtype is part of the sampled fingerprint


def test_cfg_batches_both_branches_and_cycles_bound_prompts(tinies):
    t = tinies["sdxl-v"]
    cond, neg = dc.conditioning("sdxl", "tiny", batch=3, seed=1), dc.conditioning("sdxl", "tiny", batch=1, seed=2)
    cfg = DiffusersCFGDenoiser(
        t.model,
        4.0,
        cond=cond,
        negative={"encoder_hidden_states": neg["encoder_hidden_states"], "text_embeds": neg["text_embeds"]},
    )
    x, sigma = t.noise(4, seed=6), torch.full((4,), 3.0)
    with torch.no_grad():
        out = cfg(x, sigma)
        rows = torch.arange(4) % 3
        pos = {
            "encoder_hidden_states": cond["encoder_hidden_states"][rows],
            "text_embeds": cond["text_embeds"][rows],
            "time_ids": cond["time_ids"][rows],
        }
        negative = {**pos, "encoder_hidden_states": neg["encoder_hidden_states"], "text_embeds": neg["text_embeds"]}
        d_c, d_u = t.model(x, sigma, **pos), t.model(x, sigma, **negative)
    torch.testing.assert_close(out, d_u + 4.0 * (d_c - d_u), atol=1e-4, rtol=1e-4)
    assert cfg.fingerprint == t.model.fingerprint and cfg.sample_shape == t.model.sample_shape


def test_flux_shift_is_e_to_the_mu_and_its_sigmas_are_the_pipelines():
    built = dc.build("flux", "tiny")
    model = adapt(built.model, built.scheduler_config, latent_size=(64, 64))
    mu = 0.5 + (1.15 - 0.5) * (32 * 32 - 256) / (4096 - 256)
    assert abs(model.shift - math.exp(mu)) < 1e-12
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(built.scheduler_config)
    scheduler.set_timesteps(6, **model.set_timesteps_kwargs(6))
    ours = make_sigmas(model, "diffusers.FlowMatchEulerDiscreteScheduler", 6)
    torch.testing.assert_close(ours, scheduler.sigmas.float())


def test_full_size_configs_count_their_published_parameters():
    counts = {name: dc.parameter_count(name) for name in ("sd15", "sdxl", "sd3", "flux")}
    assert abs(counts["sd15"] - 859.52e6) < 0.1e6 and abs(counts["sdxl"] - 2567.46e6) < 0.1e6
    assert abs(counts["sd3"] - 2028.33e6) < 0.1e6 and abs(counts["flux"] - 11901.4e6) < 0.1e6


def test_fingerprint_samples_stay_inside_large_tensors():
    from timetuner_plugins.adapters.diffusers import sample_positions

    for n in (1, 2, 63, 64, 65, 29_491_200, 2**31 + 7):  # SD1.5's largest tensor has 29 491 200 elements
        pos = sample_positions(n, 64)
        assert int(pos[0]) == 0 and int(pos[-1]) == n - 1 and len(pos) == min(n, 64)
        assert bool((pos[1:] > pos[:-1]).all())


# ----- Goal: diffusers schedulers as registry samplers ------------------------------------------------------------

PARITY = [
    ("diffusers.DDIMScheduler", "ddim", {"timestep_spacing": "trailing"}),
    ("diffusers.DDIMScheduler", "ddim", {}),
    ("diffusers.DPMSolverMultistepScheduler", "dpmpp_2m", {}),
    ("diffusers.EulerDiscreteScheduler", "ddim", {}),
    ("diffusers.HeunDiscreteScheduler", "heun", {}),
]


@pytest.mark.parametrize("theirs,ours,overrides", PARITY)
def test_diffusers_schedulers_match_our_samplers(ddpm, theirs, ours, overrides):
    sigmas = make_sigmas(ddpm, theirs, 8) if not overrides else _schedule_with(ddpm, theirs, 8, overrides)
    x = noise(32, seed=5) * sigmas[0]
    with torch.no_grad():
        a = run_sampler(ddpm, registry.get_sampler(ours), x, sigmas)
        b = run_sampler(ddpm, registry.get_sampler(theirs), x, sigmas, options={"scheduler_config": overrides})
    assert (a - b).abs().max() < (2e-5 if ours == "heun" else 1e-5)


def _schedule_with(model, name, steps, overrides):
    from timetuner_plugins.sampling import diffusers_samplers as ds

    p = ds.plan(ds.BY_NAME[name], model, steps, overrides)
    return torch.tensor([*p.step_sigmas, 0.0])


def test_parity_on_the_flow_mixture(request):
    gflow = registry.load_model("gmm-digits-flow")
    sigmas = make_sigmas(gflow, "diffusers.FlowMatchEulerDiscreteScheduler", 8)
    x = noise(32, seed=5) * sigmas[0]
    with torch.no_grad():
        a = run_sampler(gflow, registry.get_sampler("ddim"), x, sigmas)
        b = run_sampler(gflow, registry.get_sampler("diffusers.FlowMatchEulerDiscreteScheduler"), x, sigmas)
    assert (a - b).abs().max() < 1e-5


DIFFUSERS_SAMPLERS = sorted(n for n in registry.samplers() if n.startswith("diffusers."))


@pytest.mark.parametrize("name", DIFFUSERS_SAMPLERS)
def test_identity_tau_through_every_diffusers_sampler_is_bit_exact(ddpm, name):
    model = registry.load_model("gmm-digits-flow") if "FlowMatch" in name else ddpm
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(model, name, 5)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    assert len(ev) == spec.nfe(sigmas)
    x = noise(8, seed=2) * sigmas[0]
    with torch.no_grad():
        plain = run_sampler(model, spec, x, sigmas)
        tuned = run_sampler(model, spec, x, sigmas, lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned) and torch.isfinite(plain).all()


def test_other_sigmas_are_refused_naming_the_schedule(ddpm):
    spec = registry.get_sampler("diffusers.DPMSolverMultistepScheduler")
    sigmas = make_sigmas(ddpm, "karras", 6)
    with pytest.raises(ValueError, match=r"--schedule diffusers\.DPMSolverMultistepScheduler"):
        run_sampler(ddpm, spec, noise(2) * sigmas[0], sigmas)
    with pytest.raises(ValueError, match="deterministic"):
        run_sampler(
            ddpm,
            spec,
            noise(2),
            make_sigmas(ddpm, spec.name, 4),
            options={"scheduler_config": {"algorithm_type": "sde-dpmsolver++"}},
        )


@pytest.mark.parametrize("name", ["diffusers.UniPCMultistepScheduler", "diffusers.HeunDiscreteScheduler"])
def test_the_generic_tuner_tunes_a_diffusers_scheduler(gmm, ddpm, name):
    sigmas = make_sigmas(ddpm, name, 4)
    cfg = TuneConfig(
        objective="final", iters=3, lr=0.05, batch=8, pool=8, teacher_substeps=3, select=False, show_progress=False
    )
    tuner = Tuner(ddpm, name, sigmas, name, cfg, extra_args={"label": torch.arange(8) % 10})
    before = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert len(result.tau) == registry.get_sampler(name).nfe(sigmas)
    assert tuner.joint.pool_objective() < before


# ----- Goal: pipelines: apply a tuned set, tune a saved folder ------------------------------------------------------

from click.testing import CliRunner  # noqa: E402

from timetuner_plugins.cli import cli  # noqa: E402
from timetuner_plugins.adapters.diffusers_pipeline import apply_tuned_set, load, remove_tuned_set  # noqa: E402
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetMismatch  # noqa: E402

QUICK = TuneConfig(
    iters=2, batch=4, pool=4, val_size=4, teacher_substeps=2, select=False, show_progress=False, features="pixel"
)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny StableDiffusionPipeline (text encoder and tokenizer included) with a DDIM scheduler, saved."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    dc.tiny_pipeline("sd15", "DDIMScheduler").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_set(sd_folder):
    """A set tuned (briefly) on the saved folder with two prompts and CFG 3, for DDIM's 4 steps."""
    model = load(sd_folder, prompts=["a cat", "a dog"], guidance_scale=3.0)
    name = "diffusers.DDIMScheduler"
    sigmas = make_sigmas(model, name, 4)
    result = Tuner(model, name, sigmas, name, TuneConfig(**{**QUICK.__dict__, "lr": 0.3})).tune()
    tuned = result.tuned_set(model)
    assert not torch.equal(tuned.tau, tuned.eval_sigmas)
    return tuned.save(sd_folder.parent / "sd-ddim4.safetensors", overwrite=True)


def _pipe(folder):
    return diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)


def _latents(pipe, steps=4, **kwargs):
    return pipe(
        "a cat",
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **kwargs,
    ).images


def test_identity_set_reproduces_the_plain_pipeline_bit_for_bit(sd_folder, sd_set):
    pipe = _pipe(sd_folder)
    plain = _latents(pipe)
    tuned = TunedSet.load(sd_set)
    identity = TunedSet(**{**tuned.__dict__, "tau": tuned.eval_sigmas.clone(), "path": None})
    handle = apply_tuned_set(pipe, identity)
    assert torch.equal(_latents(pipe), plain)
    assert [k for k, _, _ in handle.calls] == [0, 1, 2, 3] and all(a is b for _, a, b in handle.calls)


def test_a_tuned_set_moves_only_the_timestep_and_remove_restores(sd_folder, sd_set):
    pipe = _pipe(sd_folder)
    plain = _latents(pipe)
    handle = apply_tuned_set(pipe, sd_set)
    seen, hook = _record_timesteps(pipe.unet)  # runs after the set's hook: sees what the network gets
    tuned = _latents(pipe)
    hook.remove()
    ts = TunedSet.load(sd_set)
    model = load(sd_folder, prompts=["a cat"], guidance_scale=3.0)
    for (k, before, after), (t, _, _) in zip(handle.calls, seen):
        assert torch.equal(torch.as_tensor(after), t)  # the network got the moved timestep
        expected = model.sigma_to_t(ts.tau[k].double()).float()
        torch.testing.assert_close(t, torch.full_like(t, float(expected), dtype=torch.float32))
    assert not torch.equal(tuned, plain)
    assert remove_tuned_set(pipe) and not remove_tuned_set(pipe)
    assert torch.equal(_latents(pipe), plain)


def test_mismatched_sets_are_refused_or_warned(sd_folder, sd_set):
    pipe = _pipe(sd_folder)
    apply_tuned_set(pipe, sd_set)
    with pytest.raises(TunedSetMismatch, match="this run's scheduler makes 5"):
        _latents(pipe, steps=5)
    with pytest.warns(UserWarning, match="applied by σ matching"):
        apply_tuned_set(pipe, sd_set, force=True)
        _latents(pipe, steps=5)
    remove_tuned_set(pipe)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(TunedSetMismatch, match="diffusers.EulerDiscreteScheduler"):
        apply_tuned_set(pipe, sd_set)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    with pytest.raises(TunedSetMismatch, match="timestep_spacing"):
        apply_tuned_set(pipe, sd_set)
    other = dc.tiny_pipeline("sd15", "DDIMScheduler", seed=1)
    with pytest.raises(TunedSetMismatch, match="fingerprint"):
        apply_tuned_set(other, sd_set)


def test_flux_pipeline_with_embeddings(tmp_path):
    """A FluxPipeline (no text encoders: precomputed embeddings) tuned through a saved transformer folder."""
    pipe = dc.tiny_pipeline("flux")
    pipe.transformer.save_pretrained(tmp_path / "transformer")
    pipe.scheduler.save_pretrained(tmp_path / "scheduler")
    embeds = {
        "prompt_embeds": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1)),
        "pooled_prompt_embeds": torch.randn(2, 16, generator=torch.Generator().manual_seed(2)),
    }
    model = load(tmp_path / "transformer", embeds=embeds, height=64)  # 64 image pixels: 8 × 8 latents, 16 tokens
    assert model.sample_shape == (16, 16) and model.kind == "FluxTransformer2DModel"
    name = "diffusers.FlowMatchEulerDiscreteScheduler"
    sigmas = make_sigmas(model, name, 3)
    ts = Tuner(model, name, sigmas, name, TuneConfig(**{**QUICK.__dict__, "lr": 0.3})).tune().tuned_set(model)
    call = dict(
        prompt_embeds=embeds["prompt_embeds"][:1],
        pooled_prompt_embeds=embeds["pooled_prompt_embeds"][:1],
        height=64,
        width=64,
        num_inference_steps=3,
        output_type="latent",
    )
    plain = pipe(generator=torch.Generator().manual_seed(0), **call).images
    identity = TunedSet(**{**ts.__dict__, "tau": ts.eval_sigmas.clone(), "path": None})
    apply_tuned_set(pipe, identity)
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(0), **call).images, plain)
    handle = apply_tuned_set(pipe, ts)
    tuned = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert not torch.equal(tuned, plain) and len(handle.calls) == 3
    with pytest.raises(TunedSetMismatch, match="image size"):  # another resolution: another μ, other σ's
        pipe(generator=torch.Generator().manual_seed(0), **{**call, "height": 128, "width": 128})


def test_cli_tunes_a_saved_pipeline_folder(sd_folder, tmp_path, monkeypatch):
    import functools

    import timetuner_plugins.tuning.tuner as tuner_module

    # the command line has no --pool: a small pool and teacher keep this test to seconds (the default is 512 samples)
    monkeypatch.setattr(
        tuner_module, "TuneConfig", functools.partial(TuneConfig, pool=4, val_size=4, teacher_substeps=2)
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "cli.safetensors"
    spec = f"diffusers:{sd_folder}?prompts={prompts}&guidance=3"
    result = CliRunner().invoke(
        cli,
        [
            "tune",
            "--model",
            spec,
            "--sampler",
            "diffusers.DDIMScheduler",
            "--schedule",
            "diffusers.DDIMScheduler",
            "--steps",
            "4",
            "--iters",
            "2",
            "--batch",
            "4",
            "--no-select",
            "--eval-n",
            "0",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ts = TunedSet.load(out)
    assert ts.model_id == spec and ts.nfe == 4 and ts.sampler == "diffusers.DDIMScheduler"
    apply_tuned_set(_pipe(sd_folder), out)  # the set matches the pipeline it was tuned from
    bad = CliRunner().invoke(cli, ["tune", "--model", "diffusers:/no/such/folder", "--sampler", "ddim", "--steps", "2"])
    assert bad.exit_code == 2 and "neither model_index.json" in bad.output
    wrong = CliRunner().invoke(
        cli,
        [
            "tune",
            "--model",
            spec,
            "--sampler",
            "diffusers.DDIMScheduler",
            "--schedule",
            "karras",
            "--steps",
            "4",
            "--eval-n",
            "0",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
    )
    assert wrong.exit_code == 1 and "--schedule diffusers.DDIMScheduler" in wrong.output


def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch, doc_block):
    """The documented diffusers blocks: tuning a saved folder (with a smaller pool than the default 512), then the
    README's three-line quick start on the pipeline, in a folder where both files are."""
    import timetuner_plugins

    block = doc_block
    monkeypatch.chdir(tmp_path)
    dc.tiny_pipeline("sd15", "DDIMScheduler").save_pretrained(tmp_path / "my-sd")
    made = []

    def small(**given):  # the documented config, with a pool small enough for a test
        made.append(TuneConfig(**given, pool=8, batch=8, val_size=8, teacher_substeps=2, show_progress=False))
        return made[-1]

    tune_scope = {}
    code = block("tested: diffusers-tune").replace("TuneConfig(iters=100)", "TuneConfig(iters=3)")
    with monkeypatch.context() as m:
        m.setattr(timetuner_plugins, "TuneConfig", small)
        exec(compile(code, "README diffusers-tune", "exec"), tune_scope)
    assert [c.iters for c in made] == [3]
    assert (tmp_path / "my-sd_ddim10.safetensors").is_file()
    scope = {"pipe": _pipe(tmp_path / "my-sd")}
    exec(compile(block("tested: diffusers-apply"), "README diffusers-apply", "exec"), scope)
    assert scope["image"].size == (16, 16) and len(scope["pipe"]._timetuner.calls) == 10
