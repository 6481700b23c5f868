"""ComfyUI's own samplers as registry samplers (``comfy.<name>``), in process.

Needs COMFYUI_PATH (a ComfyUI checkout importable by this interpreter); skips without it.
"""

from __future__ import annotations

import os
import types

import pytest
import torch

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the ComfyUI sampler tests", allow_module_level=True)

from comfy_host import make  # noqa: E402  (puts ComfyUI on sys.path, --cpu)

import comfy.model_base  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

import registry  # noqa: E402
from timetuner_plugins.sampling import comfy_samplers as cs  # noqa: E402
from timetuner_plugins.sampling.run import eval_sigmas, run_sampler  # noqa: E402
from timetuner_plugins.sets.tau import TauLookup  # noqa: E402

MODEL_TYPES = {"EPS": comfy.model_base.ModelType.EPS, "FLOW": comfy.model_base.ModelType.FLOW}


def comfy_specs(tunable: bool | None = None) -> dict:
    specs = {n: s for n, s in registry.samplers().items() if n.startswith(cs.PREFIX)}
    return {n: s for n, s in specs.items() if tunable is None or s.tunable == tunable}


def test_every_comfyui_sampler_name_is_registered_and_the_untunable_ones_say_why():
    specs = comfy_specs()
    assert sorted(specs) == sorted(cs.PREFIX + n for n in comfy.samplers.SAMPLER_NAMES)
    untunable = {n for n, s in specs.items() if not s.tunable}
    assert untunable == {"comfy.dpm_fast", "comfy.dpm_adaptive"}
    assert all("picks its own step sizes" in specs[n].untunable_reason for n in untunable)


def _stock_run(model, name: str, steps: int, scheduler: str, cfg: float = 1.0):
    """The σ of each network call ComfyUI's own KSampler makes (one per evaluation: its cond rows)."""
    recorder, seen = model.clone(), []

    def record(apply, args):
        if 0 in args["cond_or_uncond"]:
            seen.append(float(args["timestep"][0]))
        return apply(args["input"], args["timestep"], **args["c"])

    recorder.set_model_unet_function_wrapper(record)
    cond = [[torch.zeros(1, 1, 4), {}]]
    noise = torch.randn(1, 1, 4, 4, generator=torch.manual_seed(0))
    with torch.inference_mode():
        comfy.sample.sample(
            recorder, noise, steps, cfg, name, scheduler, cond, cond, torch.zeros(1, 1, 4, 4), seed=0, disable_pbar=True
        )
    return seen


def _ksampler_sigmas(model, name: str, steps: int, scheduler: str) -> torch.Tensor:
    return comfy.samplers.KSampler(model, steps, "cpu", sampler=name, scheduler=scheduler).sigmas.cpu()


@pytest.mark.parametrize("kind", ["EPS", "FLOW"])
def test_the_counting_dry_run_agrees_with_comfyuis_own_run_for_every_sampler_at_1_to_20_steps(kind):
    """For each registered tunable comfy sampler and 1–20 steps: the dry run's evaluations (count and σ's, for the
    run's model σ space) are the calls ComfyUI's stock KSampler makes."""
    model = make(MODEL_TYPES[kind])
    ms = model.get_model_object("model_sampling")
    scheduler = "simple" if kind == "FLOW" else "karras"
    as_comfy = types.SimpleNamespace(comfy_guider=cs._Guider(ms))
    bad = []
    for full, spec in comfy_specs(tunable=True).items():
        name = full[len(cs.PREFIX) :]
        for steps in range(1, 21):
            sigmas = _ksampler_sigmas(model, name, steps, scheduler)
            seen = _stock_run(model, name, steps, scheduler)
            dry = cs.dry_run(spec.nfe.fn, name, sigmas, model=as_comfy).sigmas
            if spec.nfe(sigmas, model=as_comfy) != len(seen) or not torch.allclose(
                torch.tensor(dry), torch.tensor(seen), rtol=1e-5
            ):
                bad.append((name, steps, len(dry), len(seen)))
    assert not bad, bad


def test_counts_agree_between_the_library_view_and_comfyuis_model_sampling():
    """A library denoiser's built model_sampling gives the dry run the same evaluations as ComfyUI's own."""
    model = registry.load_model("digits-flow")
    ms = make(comfy.model_base.ModelType.FLOW).get_model_object("model_sampling")
    as_comfy = types.SimpleNamespace(comfy_guider=cs._Guider(ms))
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.25, 0.1, 0.0])
    for full, spec in comfy_specs(tunable=True).items():
        ours = eval_sigmas(spec, sigmas, (1, 8, 8), model=model)
        theirs = cs.dry_run(spec.nfe.fn, full[len(cs.PREFIX) :], sigmas, model=as_comfy).sigmas
        torch.testing.assert_close(ours, torch.tensor(theirs), msg=full)


@pytest.mark.parametrize("name", sorted(set(comfy.samplers.SAMPLER_NAMES) - {"dpm_fast", "dpm_adaptive"}))
def test_identity_tau_through_every_comfy_sampler_is_bit_exact_and_tau_has_gradients(name):
    model = registry.load_model("gmm-digits")
    spec = registry.get_sampler(cs.PREFIX + name)
    sigmas = comfy.samplers.calculate_sigmas(cs.model_sampling_for(model), "karras", 5).float()
    noise = torch.randn(4, 1, 8, 8, generator=torch.manual_seed(1)) * sigmas[0]
    ev = eval_sigmas(spec, sigmas, (1, 8, 8), model=model)
    with torch.no_grad():
        plain = run_sampler(model, spec, noise, sigmas, seed=3)
        identity = run_sampler(model, spec, noise, sigmas, lookup=TauLookup.identity(ev), seed=3)
    assert torch.equal(plain, identity)
    tau = (ev * 1.01).requires_grad_()
    out = run_sampler(model, spec, noise, sigmas, lookup=TauLookup(ev, tau), seed=3)
    out.square().mean().backward()
    assert tau.grad is not None and bool(tau.grad.abs().sum() > 0), name


# ----- Apply Tuned Set under ComfyUI's stock KSampler, with every comfy sampler ------------------------------

from comfyui_nodes.model_patch import apply_tuned_set  # noqa: E402
from comfyui_nodes.sampling import sampler_function  # noqa: E402
from timetuner_plugins.sets.tuned_set import TunedSet  # noqa: E402

TUNABLE = sorted(n[len(cs.PREFIX) :] for n in comfy_specs(tunable=True))
COND, UNCOND = [[torch.zeros(1, 1, 4), {}]], [[torch.ones(1, 1, 4), {}]]


def _set_for(model, kind: str, name: str, steps: int, ratio=None, lam=None) -> TunedSet:
    """A set for ComfyUI's KSampler run of ``name``: its σ's and the dry run's evaluation σ's (as the Tune node
    records them), τ = σ·ratio."""
    ms = model.get_model_object("model_sampling")
    scheduler = "simple" if kind == "FLOW" else "karras"
    sigmas = _ksampler_sigmas(model, name, steps, scheduler)
    ev = torch.tensor(
        cs.dry_run(
            registry.get_sampler(cs.PREFIX + name).nfe.fn,
            name,
            sigmas,
            model=types.SimpleNamespace(comfy_guider=cs._Guider(ms)),
        ).sigmas
    )
    r = torch.ones(len(ev)) if ratio is None else ratio(len(ev))
    extra = {"model": {"space": "flow", "shift": 1.0, "multiplier": 1000.0}} if kind == "FLOW" else {}
    return TunedSet(
        sigmas=sigmas,
        eval_sigmas=ev,
        tau=ev * r,
        model_id="tiny",
        model_fingerprint="0" * 64,
        sampler=cs.PREFIX + name,
        schedule=scheduler,
        objective="energy",
        extra=extra,
        dode_lambda=None if lam is None else lam(len(ev)),
    )


def _sample(model, name: str, steps: int, kind: str, cfg: float = 1.0) -> torch.Tensor:
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    with torch.inference_mode():
        return comfy.sample.sample(
            model,
            noise,
            steps,
            cfg,
            name,
            "simple" if kind == "FLOW" else "karras",
            COND,
            UNCOND,
            torch.zeros(2, 1, 4, 4),
            seed=5,
            disable_pbar=True,
        )


@pytest.mark.parametrize("kind", ["EPS", "FLOW"])
def test_each_network_call_gets_its_own_evaluations_tau_under_the_stock_ksampler(kind):
    """Every tunable comfy sampler under ComfyUI's own KSampler (cfg 1 and 3): the k-th network call is conditioned
    on the k-th evaluation's τ of a set whose evaluations come from the sampler's dry run."""
    model, steps, bad = make(MODEL_TYPES[kind]), 5, []
    net = model.model.diffusion_model
    for name in TUNABLE:
        for cfg in (1.0, 3.0):
            ts = _set_for(model, kind, name, steps, ratio=lambda n: torch.linspace(0.8, 1.25, n))  # never exactly 1
            patched = apply_tuned_set(model, ts, strict=True)
            stand_in = patched.get_model_object("model_sampling").timestep
            net.calls.clear()
            _sample(patched, name, steps, kind, cfg)
            got = [t for _, t in net.calls]
            if len(got) != len(ts.tau):
                bad.append((name, cfg, "calls", len(got), len(ts.tau)))
                continue
            for k, t in enumerate(got):
                moved = ts.tau[k : k + 1].double()
                expected = (
                    (moved.clamp(max=1.0) * 1000).float() if kind == "FLOW" else stand_in.fractional(moved).float()
                )
                if not torch.allclose(t, expected.expand_as(t), rtol=1e-4, atol=1e-3):
                    bad.append((name, cfg, k, float(t.reshape(-1)[0]), float(expected)))
                    break
    assert not bad, bad


@pytest.mark.parametrize("kind", ["EPS", "FLOW"])
def test_identity_sets_are_bit_exact_against_the_unpatched_model(kind):
    model, steps, bad = make(MODEL_TYPES[kind]), 6, []
    for name in TUNABLE:
        plain = _sample(model, name, steps, kind, cfg=2.0)
        with_set = _sample(
            apply_tuned_set(model, _set_for(model, kind, name, steps), strict=True), name, steps, kind, cfg=2.0
        )
        if not torch.equal(plain, with_set):
            bad.append((name, float((plain - with_set).abs().max())))
    assert not bad, bad


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "res_multistep", "deis", "uni_pc"])
def test_a_dode_set_under_the_stock_ksampler_equals_the_counted_run(name, cfg):
    """D-ODE λ through Apply Tuned Set (σ-keyed, previous output per cond/uncond chunk) gives what the Registry
    Sampler's counted run gives: CFG mixes the chunks linearly."""
    model, kind, steps = make(MODEL_TYPES["EPS"]), "EPS", 5
    ts = _set_for(
        model,
        kind,
        name,
        steps,
        ratio=lambda n: torch.linspace(0.9, 1.1, n),
        lam=lambda n: torch.cat([torch.zeros(1), torch.linspace(0.2, -0.1, n - 1)]),
    )
    sigmas = ts.sigmas
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    latent = torch.zeros(2, 1, 4, 4)
    counted = comfy.samplers.KSAMPLER(sampler_function(registry.get_sampler(cs.PREFIX + name), ts, True))
    with torch.inference_mode():
        applied = comfy.sample.sample_custom(
            apply_tuned_set(model, ts, strict=True),
            noise,
            cfg,
            comfy.samplers.sampler_object(name),
            sigmas.clone(),
            COND,
            UNCOND,
            latent,
            seed=0,
            disable_pbar=True,
        )
        ours = comfy.sample.sample_custom(
            model, noise, cfg, counted, sigmas.clone(), COND, UNCOND, latent, seed=0, disable_pbar=True
        )
        plain = comfy.sample.sample_custom(
            model,
            noise,
            cfg,
            comfy.samplers.sampler_object(name),
            sigmas.clone(),
            COND,
            UNCOND,
            latent,
            seed=0,
            disable_pbar=True,
        )
    assert (applied - plain).abs().max() > 1e-3
    torch.testing.assert_close(applied, ours, rtol=1e-5, atol=1e-5)


def test_the_memory_bounded_settings_tune_the_same_set_on_a_checkpoint_built_in_inference_mode():
    """Micro-batches with recompute per evaluation and per network block give the whole-batch result; the model is
    built (and tuned) inside inference mode, as ComfyUI's executor loads and runs a checkpoint."""
    from comfyui_nodes import demo_model
    from comfyui_nodes.nodes_sampling import ksampler_sigmas, tune_model
    from timetuner_plugins.tuning.tuner import TuneConfig

    with torch.inference_mode():
        model = demo_model.load("digits-ddpm")
        cond = demo_model.conditioning(None)
    assert next(model.model.diffusion_model.parameters()).is_inference()
    spec = registry.get_sampler(cs.PREFIX + "dpmpp_2m")
    sigmas = ksampler_sigmas(model, spec.name, "karras", 4, 1.0)
    taus = []
    for micro, recompute, blocks in ((None, "off", False), (2, "on", True)):
        config = TuneConfig(
            iters=3,
            batch=4,
            pool=4,
            val_size=4,
            teacher_substeps=2,
            select=False,
            show_progress=False,
            micro_batch=micro,
            recompute=recompute,
        )
        with torch.inference_mode():
            ts = tune_model(model, cond, cond, 1.0, spec, sigmas, torch.zeros(1, 1, 8, 8), config, blocks=blocks)
        taus.append(ts.tau)
    assert not torch.allclose(taus[0], ts.eval_sigmas)
    torch.testing.assert_close(taus[0], taus[1], rtol=1e-5, atol=1e-6)
