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

from test_comfyui_inprocess import make  # noqa: E402  (puts ComfyUI on sys.path, --cpu)

import comfy.model_base  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

import registry  # noqa: E402
from timetuner_plugins import comfy_samplers as cs  # noqa: E402
from timetuner_plugins.run import eval_sigmas, run_sampler  # noqa: E402
from timetuner_plugins.tau import TauLookup  # noqa: E402

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
        comfy.sample.sample(recorder, noise, steps, cfg, name, scheduler, cond, cond, torch.zeros(1, 1, 4, 4), seed=0,
                            disable_pbar=True)
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
        name = full[len(cs.PREFIX):]
        for steps in range(1, 21):
            sigmas = _ksampler_sigmas(model, name, steps, scheduler)
            seen = _stock_run(model, name, steps, scheduler)
            dry = cs.dry_run(spec.nfe.fn, name, sigmas, model=as_comfy).sigmas
            if spec.nfe(sigmas, model=as_comfy) != len(seen) or \
                    not torch.allclose(torch.tensor(dry), torch.tensor(seen), rtol=1e-5):
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
        theirs = cs.dry_run(spec.nfe.fn, full[len(cs.PREFIX):], sigmas, model=as_comfy).sigmas
        torch.testing.assert_close(ours, torch.tensor(theirs), msg=full)


@pytest.mark.parametrize("name", sorted(n for n in comfy.samplers.SAMPLER_NAMES if n not in ("dpm_fast", "dpm_adaptive")))
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
