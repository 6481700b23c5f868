"""Apply Tuned Set inside ComfyUI's own sampling code (no server): ε- and v-prediction models.

Needs COMFYUI_PATH (a ComfyUI checkout importable by this interpreter); skips without it.
"""

from __future__ import annotations

import os

import pytest
import torch

COMFYUI = os.environ.get("COMFYUI_PATH")
if not COMFYUI:
    pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the in-process ComfyUI tests", allow_module_level=True)
from comfy_host import make  # noqa: E402  (puts ComfyUI on sys.path, --cpu)

import comfy.model_base  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

from comfyui_nodes.model_patch import apply_tuned_set  # noqa: E402
from timetuner_plugins.sets.tuned_set import TunedSet  # noqa: E402


@pytest.mark.parametrize("model_type", [comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.V_PREDICTION])
def test_network_sees_tau_while_preconditioning_stays_at_sigma(model_type):
    model = make(model_type)
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "karras", 4).cpu()
    ratio = torch.tensor([1.2, 0.9, 1.1, 0.8])
    ts = TunedSet(
        sigmas=sigmas,
        eval_sigmas=sigmas[:-1].clone(),
        tau=sigmas[:-1] * ratio,
        model_id="tiny",
        model_fingerprint="0" * 64,
        sampler="ddim",
        schedule="karras",
        objective="energy",
    )
    patched = apply_tuned_set(model, ts, strict=True)
    latent = torch.zeros(2, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    cond = [[torch.zeros(1, 1, 4), {}]]
    net = model.model.diffusion_model
    with torch.inference_mode():
        comfy.sample.sample(patched, noise, 4, 1.0, "euler", "karras", cond, cond, latent, seed=0, disable_pbar=True)
        tuned_calls = list(net.calls)
        net.calls.clear()
        comfy.sample.sample(model, noise, 4, 1.0, "euler", "karras", cond, cond, latent, seed=0, disable_pbar=True)
        plain_calls = list(net.calls)
    assert len(tuned_calls) == len(plain_calls) == 4
    # the first evaluation gets the same input (preconditioning at σ), only its timestep moves to τ
    torch.testing.assert_close(tuned_calls[0][0], plain_calls[0][0])
    stand_in = patched.get_model_object("model_sampling").timestep
    for k, (_, t) in enumerate(tuned_calls):
        expected = stand_in.fractional(sigmas[k : k + 1] * ratio[k]).float()
        torch.testing.assert_close(t, expected.expand_as(t), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(tuned_calls[0][1], plain_calls[0][1])
    # the unpatched model is untouched
    assert not hasattr(model.get_model_object("model_sampling").timestep, "forced")


def _discard_penultimate(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas[:-2], sigmas[-1:]])


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_2", "dpmpp_2m"])
@pytest.mark.parametrize("model_type", [comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.FLOW])
def test_every_evaluation_gets_its_own_tau_under_stock_samplers(sampler, cfg, model_type):
    """Heun evaluates each interior σ twice and DPM-2 adds midpoints; with cfg > 1 each call carries the cond
    and uncond rows. The k-th network call must see the k-th evaluation's τ (σ-keyed matching with a cursor);
    on a flow (CONST) model the moved σ never passes 1, the most its network was trained on."""
    model = make(model_type)
    ms = model.get_model_object("model_sampling")
    steps = 4
    scheduler = "simple" if model_type == comfy.model_base.ModelType.FLOW else "karras"
    sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, steps + (sampler == "dpm_2")).cpu()
    if sampler == "dpm_2":  # KSampler drops the penultimate σ for DPM-2
        sigmas = _discard_penultimate(sigmas)
    recorder, seen = model.clone(), []

    def record(apply, args):
        seen.append(float(args["timestep"][0]))
        return apply(args["input"], args["timestep"], **args["c"])

    recorder.set_model_unet_function_wrapper(record)
    latent = torch.zeros(2, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    positive, negative = [[torch.zeros(1, 1, 4), {}]], [[torch.ones(1, 1, 4), {}]]
    net = model.model.diffusion_model
    with torch.inference_mode():
        comfy.sample.sample(
            recorder, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=0, disable_pbar=True
        )
    net.calls.clear()
    flow = model_type == comfy.model_base.ModelType.FLOW
    ev = torch.tensor(seen)  # the wrapper sees σ (the network then gets σ·1000 on a flow model)
    ratio = torch.linspace(1.2, 0.8, len(ev)) if flow else torch.linspace(0.8, 1.2, len(ev))  # flow: τ₀ > 1
    ts = TunedSet(
        sigmas=sigmas,
        eval_sigmas=ev,
        tau=ev * ratio,
        model_id="tiny",
        model_fingerprint="0" * 64,
        sampler=sampler,
        schedule=scheduler,
        objective="energy",
        extra={"model": {"space": "flow", "shift": 1.0, "multiplier": 1000.0}} if flow else {},
    )
    patched = apply_tuned_set(model, ts, strict=True)
    with torch.inference_mode():
        comfy.sample.sample(
            patched, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=0, disable_pbar=True
        )
    assert len(net.calls) == len(ev) > steps - 1
    stand_in = patched.get_model_object("model_sampling").timestep
    for k, (x, t) in enumerate(net.calls):
        assert x.shape[0] == (4 if cfg > 1 else 2)
        moved = ev[k : k + 1].double() * ratio[k].double()
        expected = (moved.clamp(max=1.0) * 1000).float() if flow else stand_in.fractional(moved).float()
        if not flow and float(ratio[k]) == 1.0:  # τ = σ keeps the model's own timestep (identity is bit-exact)
            expected = stand_in.original(ev[k : k + 1]).float()
        torch.testing.assert_close(t, expected.expand_as(t), rtol=1e-4, atol=1e-3)
    if flow:  # the first evaluation, at σ = 1 with ratio 1.2, is held at the trained range's end
        assert float(net.calls[0][1].max()) == 1000.0


@pytest.mark.parametrize("name", ["res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("model_type", [comfy.model_base.ModelType.FLOW, comfy.model_base.ModelType.EPS])
def test_registry_multistep_samplers_match_comfyuis_own(name, model_type):
    """Through KSAMPLER (noise scaling in, inverse noise scaling out) on a CONST (flow) and an EPS model: the
    node pack's registry sampler gives ComfyUI's stock result, UniPC's stop at σ = 0.001 included."""
    from comfyui_nodes.sampling import sampler_function
    import registry

    model = make(model_type)
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple" if model_type.name == "FLOW" else "karras", 6).cpu()
    cond, latent = [[torch.zeros(1, 1, 4), {}]], torch.zeros(2, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    ours = comfy.samplers.KSAMPLER(sampler_function(registry.get_sampler(name), None, False))
    with torch.inference_mode():
        stock = comfy.sample.sample_custom(
            model,
            noise,
            1.0,
            comfy.samplers.sampler_object(name),
            sigmas.clone(),
            cond,
            cond,
            latent,
            seed=0,
            disable_pbar=True,
        )
        native = comfy.sample.sample_custom(
            model, noise, 1.0, ours, sigmas.clone(), cond, cond, latent, seed=0, disable_pbar=True
        )
    assert (stock - native).abs().max() < 1e-5


@pytest.mark.parametrize("steps", [4, 6])
def test_a_tau_function_set_applies_under_the_stock_ksampler_at_any_steps_in_range(steps):
    """One function set, two step counts: each run's k-th network call sees the function's τ for that run's σ's;
    a step count outside the set's range samples plainly with a warning (strict: an error)."""
    from timetuner_plugins.tuning.function_tuner import FunctionResult
    from timetuner_plugins.sets.tau_function import N_BASIS, TauFunction
    from timetuner_plugins.sets.tuned_set import TunedSetMismatch
    from timetuner_plugins.tuning.tuner import TuneConfig

    model = make(comfy.model_base.ModelType.EPS)
    ms = model.get_model_object("model_sampling")
    from comfyui_nodes.model_patch import HostSpace

    host = HostSpace(ms)
    host.sample_shape, host.model_id, host.fingerprint = (1, 4, 4), "tiny", "0" * 64
    fn = TauFunction.for_model(host)
    with torch.no_grad():
        fn.coef.copy_(torch.linspace(-0.2, 0.2, N_BASIS))
    result = FunctionResult(fn, "ddim", ["karras"], (3, 7), [], TuneConfig(), {}, {"fallback_identity": False})
    ts = result.tuned_set(host, comfy.samplers.calculate_sigmas(ms, "karras", 5).cpu())
    sigmas = comfy.samplers.calculate_sigmas(ms, "karras", steps).cpu()
    expected = ts.for_run(host, sigmas)
    patched = apply_tuned_set(model, ts, strict=True)
    latent = torch.zeros(2, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=torch.manual_seed(0))
    cond = [[torch.zeros(1, 1, 4), {}]]
    net = model.model.diffusion_model
    net.calls.clear()
    with torch.inference_mode():
        comfy.sample.sample(
            patched, noise, steps, 1.0, "euler", "karras", cond, cond, latent, seed=0, disable_pbar=True
        )
    stand_in = patched.get_model_object("model_sampling").timestep
    assert len(net.calls) == steps
    for k, (_, t) in enumerate(net.calls):
        want = stand_in.fractional(expected.tau[k : k + 1].double()).float()
        torch.testing.assert_close(t, want.expand_as(t), rtol=1e-4, atol=1e-3)
    with torch.inference_mode(), pytest.raises(TunedSetMismatch, match="NFE 3–7 but the run makes 9"):
        comfy.sample.sample(patched, noise, 9, 1.0, "euler", "karras", cond, cond, latent, seed=0, disable_pbar=True)
