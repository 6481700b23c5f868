"""The ComfyUI-named schedules give ComfyUI's own σ's (same model σ table, scheduler and steps).

The comparison needs COMFYUI_PATH (a ComfyUI checkout importable by this interpreter); the checks that
need no ComfyUI run everywhere.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser, EDMDenoiser, FlowDenoiser
from timetuner_plugins.sampling.run import make_sigmas

COMFY_NAMES = (
    "simple",
    "normal",
    "sgm_uniform",
    "ddim_uniform",
    "beta",
    "linear_quadratic",
    "kl_optimal",
    "karras",
    "exponential",
)
STEPS = list(range(1, 21)) + [30, 50]


def _models():
    return {
        "vp": DiscreteVPDenoiser(torch.nn.Identity(), DiscreteVPDenoiser.linear_betas()),
        "edm": EDMDenoiser(torch.nn.Identity(), 0.5, 0.002, 80.0),
        "flow-shift3": FlowDenoiser(torch.nn.Identity(), shift=3.0),
        "flow": FlowDenoiser(torch.nn.Identity(), shift=1.0),
    }


@pytest.mark.parametrize("name", COMFY_NAMES)
def test_named_schedules_are_valid_everywhere(name):
    for model in _models().values():
        for n in STEPS:
            sigmas = make_sigmas(model, name, n)
            assert sigmas[-1] == 0 and bool((sigmas[:-1] > 0).all()) and bool((sigmas[1:] < sigmas[:-1]).all())
            assert float(sigmas[0]) <= model.sigma_max * (1 + 1e-5)


def test_flow_simple_schedule_starts_at_one_and_follows_the_shift():
    model = _models()["flow-shift3"]
    sigmas = make_sigmas(model, "simple", 4)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert torch.allclose(sigmas[:-1], 3 * t / (1 + 2 * t), rtol=1e-6)


@pytest.fixture(scope="module")
def comfy():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to compare with ComfyUI's schedulers")
    sys.path.insert(0, path)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what main.py --cpu does
    import comfy.model_sampling as ms
    import comfy.samplers as samplers

    class Discrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    betas_abar = DiscreteVPDenoiser.linear_betas()
    betas = 1 - betas_abar / torch.cat([betas_abar.new_ones(1), betas_abar[:-1]])
    vp = Discrete(None)
    vp._register_schedule(given_betas=betas)

    class EDM(ms.ModelSamplingContinuousEDM, ms.EDM):
        pass

    edm = EDM(None)
    edm.set_parameters(0.002, 80.0, 0.5)

    class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    flow3, flow = Flow(None), Flow(None)
    flow3.set_parameters(shift=3.0, multiplier=1000)
    flow.set_parameters(shift=1.0, multiplier=1000)
    return samplers, {"vp": vp, "edm": edm, "flow-shift3": flow3, "flow": flow}


@pytest.mark.parametrize("name", COMFY_NAMES)
def test_named_schedules_match_comfyui(comfy, name):
    samplers, theirs = comfy
    for key, model in _models().items():
        for n in STEPS:
            if name == "kl_optimal" and n == 1:
                continue  # ComfyUI divides by zero there
            expected = samplers.calculate_sigmas(theirs[key], name, n).float()
            ours = make_sigmas(model, name, n)
            assert ours.shape == expected.shape, (key, n, ours, expected)
            assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-7), (key, n, ours, expected)
