"""The node pack in a real ComfyUI server: each example workflow over /prompt and /history.

Needs COMFYUI_PATH (a ComfyUI checkout) and an interpreter that can run it (COMFYUI_PYTHON,
default: this one); without COMFYUI_PATH these tests skip. The server runs on loopback with
--base-directory in a temporary folder whose custom_nodes/ links to this repository.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import registry
from timetuner_plugins.sets import shipped
from timetuner_plugins.sampling.run import run_sampler
from timetuner_plugins.sets.tuned_set import TunedSet

from helpers import COMFYUI, WORKFLOWS, error_message, load, ok

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_example_workflows_run(server, name):
    entry = server.run(load(name))
    assert ok(entry), error_message(entry)
    images = server.images(entry)
    assert len(images) == 16 and images[0].shape == (64, 64, 3)


def test_apply_changes_the_image_and_matches_the_library(server):
    with_set = server.run(load("apply_tuned_set_ksampler.json"))
    prompt = load("apply_tuned_set_ksampler.json")
    prompt["6"]["inputs"]["model"] = ["1", 0]  # the same graph without Apply
    prompt["8"]["inputs"]["filename_prefix"] = "timetuner/plain"
    plain = server.run(prompt)
    a, b = np.stack(server.images(with_set)), np.stack(server.images(plain))
    assert np.abs(a - b).max() > 0.1  # τ visibly changed the digits

    ts = shipped.load(shipped.find("digits-ddpm", "ddim", nfe=10, schedule="karras"))
    model = registry.load_model("digits-ddpm")
    noise = torch.randn((16, 1, 8, 8), generator=torch.manual_seed(42))  # ComfyUI's prepare_noise
    with torch.no_grad():
        for lookup, images in ((ts.lookup(), a), (None, b)):
            x = run_sampler(
                model, registry.get_sampler("ddim"), noise * (1 + ts.sigmas[0] ** 2) ** 0.5, ts.sigmas, lookup=lookup
            )
            ours = ((x.clamp(-1, 1) + 1) / 2)[:, 0].numpy()
            theirs = images[..., 0][:, ::8, ::8]  # undo the 8× nearest upscaling
            assert np.abs(ours - theirs).max() < 3 / 255  # PNG rounding


def test_corrupt_set_is_a_node_error_and_the_server_keeps_serving(server):
    prompt = load("apply_tuned_set_ksampler.json")
    prompt["2"]["inputs"]["tuned_set"] = "corrupt.safetensors"
    entry = server.run(prompt)
    assert not ok(entry) and "corrupt" in error_message(entry) and "corrupt.safetensors" in error_message(entry)
    assert ok(server.run(load("apply_tuned_set_ksampler.json")))


@pytest.mark.parametrize(
    "name", ["../../../etc/passwd", "/etc/passwd", "shipped/../../README.md", "nothere.safetensors"]
)
def test_paths_outside_the_allowed_folders_are_refused(server, name):
    prompt = load("apply_tuned_set_ksampler.json")
    prompt["2"]["inputs"]["tuned_set"] = name
    status, reply = server.post(prompt)
    assert status == 400 and "2" in reply["node_errors"]
    assert ok(server.run(load("apply_tuned_set_ksampler.json")))


def test_a_set_for_another_model_is_a_warning_and_the_plain_model_an_error_with_strict_applied_with_force(server):
    prompt = load("apply_tuned_set_ksampler.json")
    prompt["2"]["inputs"]["tuned_set"] = "valid.safetensors"  # tuned for another model
    plain = load("apply_tuned_set_ksampler.json")
    plain["6"]["inputs"]["model"] = ["1", 0]
    plain["8"]["inputs"]["filename_prefix"] = "timetuner/mismatch_plain"
    entry = server.run(prompt)
    assert ok(entry), error_message(entry)  # never silent: a warning toast, and the model as it was
    assert "left WITHOUT the tuned set" in (server.base / "server.log").read_text()
    assert np.array_equal(np.stack(server.images(entry)), np.stack(server.images(server.run(plain))))
    prompt["3"]["inputs"]["strict"] = True
    entry = server.run(prompt)
    assert not ok(entry) and "tuned for model" in error_message(entry)
    assert "node's 'force' input" in error_message(entry) and "--force" not in error_message(entry)
    prompt["3"]["inputs"].update(strict=False, force=True)
    entry = server.run(prompt)
    assert ok(entry), error_message(entry)  # applied, but its σ's don't match: warned, sampled plainly
    assert "WITHOUT the tuned set" in (server.base / "server.log").read_text()


def test_tune_node_saves_a_valid_set_under_models_timetuner(server):
    assert ok(server.run(load("tune_in_graph.json")))
    ts = TunedSet.load(server.base / "models" / "timetuner" / "workflow_ddim_karras8.safetensors")
    assert ts.sampler == "ddim" and ts.nfe == 8 and ts.extra.get("host") == "comfyui"
    assert ts.model_fingerprint == registry.load_model("digits-ddpm").fingerprint


def _variants() -> dict[str, dict]:
    """Workflow (a) with its KSampler swapped for KSamplerAdvanced or SamplerCustomAdvanced (stock nodes)."""
    base = load("apply_tuned_set_ksampler.json")
    advanced = json.loads(json.dumps(base))
    k = advanced["6"]["inputs"]
    advanced["6"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": k["model"],
            "add_noise": "enable",
            "noise_seed": k["seed"],
            "steps": k["steps"],
            "cfg": k["cfg"],
            "sampler_name": k["sampler_name"],
            "scheduler": k["scheduler"],
            "positive": k["positive"],
            "negative": k["negative"],
            "latent_image": k["latent_image"],
            "start_at_step": 0,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }
    custom = json.loads(json.dumps(base))
    custom.update(
        {
            "20": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "21": {
                "class_type": "BasicScheduler",
                "inputs": {"model": ["3", 0], "scheduler": "karras", "steps": 10, "denoise": 1.0},
            },
            "22": {
                "class_type": "CFGGuider",
                "inputs": {"model": ["3", 0], "positive": ["4", 0], "negative": ["4", 0], "cfg": 1.0},
            },
            "23": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
            "6": {
                "class_type": "SamplerCustomAdvanced",
                "inputs": {
                    "noise": ["23", 0],
                    "guider": ["22", 0],
                    "sampler": ["20", 0],
                    "sigmas": ["21", 0],
                    "latent_image": ["5", 0],
                },
            },
        }
    )
    for name, prompt in (("advanced", advanced), ("custom", custom)):
        prompt["8"]["inputs"]["filename_prefix"] = f"timetuner/{name}"
    return {"KSampler": base, "KSamplerAdvanced": advanced, "SamplerCustomAdvanced": custom}


def test_apply_works_under_every_stock_sampler_node(server):
    images = {}
    for name, prompt in _variants().items():
        entry = server.run(prompt)
        assert ok(entry), (name, error_message(entry))
        images[name] = np.stack(server.images(entry))
    for name in ("KSamplerAdvanced", "SamplerCustomAdvanced"):
        assert np.abs(images[name] - images["KSampler"]).max() <= 1 / 255, name


def test_flow_set_under_the_stock_ksampler_matches_the_library(server):
    """The flow demo model (CONST, its own ModelSamplingDiscreteFlow) with a shipped Euler set under KSampler
    euler / simple: ComfyUI's image is the library's τ run from ComfyUI's noise (x_T = noise at σ = 1)."""
    with_set = server.run(load("apply_tuned_set_flow.json"))
    assert ok(with_set), error_message(with_set)
    prompt = load("apply_tuned_set_flow.json")
    prompt["6"]["inputs"]["model"] = ["1", 0]
    prompt["8"]["inputs"]["filename_prefix"] = "timetuner/flow_plain"
    plain = server.run(prompt)
    a, b = np.stack(server.images(with_set)), np.stack(server.images(plain))
    assert np.abs(a - b).max() > 0.1
    ts = shipped.load(shipped.find("digits-flow", "ddim", nfe=10, schedule="simple"))
    model = registry.load_model("digits-flow")
    noise = torch.randn((16, 1, 8, 8), generator=torch.manual_seed(42))
    with torch.no_grad():
        for lookup, images in ((ts.lookup(), a), (None, b)):
            x = run_sampler(model, registry.get_sampler("ddim"), noise * ts.sigmas[0], ts.sigmas, lookup=lookup)
            ours = ((x.clamp(-1, 1) + 1) / 2)[:, 0].numpy()
            assert np.abs(ours - images[..., 0][:, ::8, ::8]).max() < 3 / 255


def _with_shift(prompt: dict, after_apply: bool, shift: float = 3.0) -> dict:
    """A ModelSamplingSD3 node (the stock shift node) before or after Apply Tuned Set."""
    prompt["9"] = {
        "class_type": "ModelSamplingSD3",
        "inputs": {"model": ["3", 0] if after_apply else ["1", 0], "shift": shift},
    }
    if after_apply:
        prompt["6"]["inputs"]["model"] = ["9", 0]
    else:
        prompt["3"]["inputs"]["model"] = ["9", 0]
    return prompt


def test_a_flow_set_for_another_shift_is_warned_and_not_applied_or_an_error_with_strict(server):
    strict = _with_shift(load("apply_tuned_set_flow.json"), after_apply=False)
    strict["3"]["inputs"]["strict"] = True
    entry = server.run(strict)
    assert not ok(entry) and "flow shift 1 but the run's model has shift 3" in error_message(entry)
    warned = _with_shift(load("apply_tuned_set_flow.json"), after_apply=False)
    warned["8"]["inputs"]["filename_prefix"] = "timetuner/flow_shift_warned"
    entry = server.run(warned)
    assert ok(entry), error_message(entry)  # the model as it is, with a warning
    assert "flow shift 1 but the run's model has shift 3" in (server.base / "server.log").read_text()
    plain = _with_shift(load("apply_tuned_set_flow.json"), after_apply=False)
    plain["6"]["inputs"]["model"] = ["9", 0]  # the shifted model without Apply
    plain["8"]["inputs"]["filename_prefix"] = "timetuner/flow_shift_plain"
    assert np.array_equal(np.stack(server.images(entry)), np.stack(server.images(server.run(plain))))


def test_a_shift_node_after_apply_is_caught_not_silently_ignored(server):
    prompt = _with_shift(load("apply_tuned_set_flow.json"), after_apply=True, shift=1.0)
    prompt["3"]["inputs"]["strict"] = True
    entry = server.run(prompt)
    assert not ok(entry) and "sampling was replaced after Apply Tuned Set" in error_message(entry)


def test_a_ve_set_on_the_flow_model_is_refused_even_when_forced(server):
    prompt = load("apply_tuned_set_flow.json")
    prompt["2"]["inputs"]["tuned_set"] = "shipped/digits-ddpm/ddim_karras_nfe10.safetensors"
    prompt["3"]["inputs"]["force"] = True
    entry = server.run(prompt)
    assert not ok(entry)
    assert "tuned for a VE/VP model" in error_message(entry) and "a flow model" in error_message(entry)


def test_tune_node_tunes_the_flow_model_in_the_graph(server):
    prompt = load("tune_in_graph.json")
    prompt["1"]["inputs"]["model_name"] = "digits-flow"
    prompt["4"]["inputs"]["scheduler"] = prompt["8"]["inputs"]["scheduler"] = "simple"
    prompt["5"]["inputs"]["filename"] = "workflow_flow_simple8"
    entry = server.run(prompt)
    assert ok(entry), error_message(entry)
    ts = TunedSet.load(server.base / "models" / "timetuner" / "workflow_flow_simple8.safetensors")
    assert ts.extra["model"]["space"] == "flow" and ts.extra["model"]["shift"] == 1.0
    assert ts.model_fingerprint == registry.load_model("digits-flow").fingerprint
    assert float(ts.tau.max()) <= 1.0
