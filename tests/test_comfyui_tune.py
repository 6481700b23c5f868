"""Tune and Apply with ComfyUI's own samplers in a real ComfyUI server (see test_comfyui_server.py).

Needs COMFYUI_PATH (and COMFYUI_PYTHON); skips without it.
"""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

import registry
from timetuner_plugins.sets.tuned_set import TunedSet

from helpers import COMFYUI, error_message, load, ok

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")

SAMPLERS = ["euler", "res_multistep", "ipndm", "deis", "uni_pc", "euler_ancestral"]  # the last one stochastic


def tune_prompt(model: str, sampler: str, scheduler: str, steps: int, filename: str, iterations: int = 6) -> dict:
    prompt = load("tune_ksampler.json")
    prompt["1"]["inputs"]["model_name"] = model
    prompt["5"]["inputs"].update(
        sampler_name=f"comfy.{sampler}",
        scheduler=scheduler,
        steps=steps,
        iterations=iterations,
        batch=8,
        pool=16,
        filename=filename,
    )
    prompt["8"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, steps=steps)
    prompt["10"]["inputs"]["filename_prefix"] = f"timetuner/{filename}"
    return prompt


@pytest.mark.parametrize("model,scheduler", [("digits-ddpm", "karras"), ("digits-flow", "simple")])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tune_then_apply_under_the_stock_ksampler(server, sampler, model, scheduler):
    """Tune (KSampler inputs) with ComfyUI's own sampler, then Apply (strict: the run's σ's must be the set's) under
    the stock KSampler with the same sampler, scheduler and steps."""
    name = f"{model}_{sampler}_{scheduler}6"
    entry = server.run(tune_prompt(model, sampler, scheduler, 6, name))
    assert ok(entry), error_message(entry)
    assert len(server.images(entry)) == 16
    ts = TunedSet.load(server.base / "models" / "timetuner" / f"{name}.safetensors")
    assert ts.sampler == f"comfy.{sampler}" and ts.schedule == scheduler and ts.steps == 6
    assert ts.extra["scheduler"] == scheduler and ts.extra["denoise"] == 1.0 and ts.extra["host"] == "comfyui"
    assert ts.extra["model"]["space"] == ("flow" if model == "digits-flow" else "ve")
    if model == "digits-flow":
        assert ts.extra["model"]["shift"] == 1.0 and float(ts.tau.max()) <= 1.0
    assert ts.model_fingerprint == registry.load_model(model).fingerprint
    assert not (server.base / "models" / "timetuner" / f"{name}.safetensors.ckpt").exists()


def test_cancel_during_tune_leaves_no_file_and_the_server_serves_the_next_prompt(server):
    folder = server.base / "models" / "timetuner"
    prompt = tune_prompt("digits-ddpm", "euler", "karras", 8, "cancelled", iterations=5000)
    status, reply = server.post(prompt)
    assert status == 200, reply
    checkpoint = folder / "cancelled.safetensors.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline:  # tuning has started and written a checkpoint
        time.sleep(0.2)
    assert checkpoint.exists()
    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", b"", method="POST"), timeout=30).read()
    pid = reply["prompt_id"]
    while time.time() < deadline:
        history = server.get(f"/history/{pid}")
        if pid in history and history[pid]["status"].get("completed") is not None:
            break
        time.sleep(0.3)
    messages = [kind for kind, _ in history[pid]["status"]["messages"]]
    assert "execution_interrupted" in messages
    assert not (folder / "cancelled.safetensors").exists() and checkpoint.exists()  # kept for a resume
    assert ok(server.run(load("apply_tuned_set_ksampler.json")))


def test_tune_with_sigmas_on_align_your_steps_then_apply_under_sampler_custom_advanced(server):
    prompt = {
        "1": {"class_type": "TimeTunerDemoModelLoader", "inputs": {"model_name": "digits-ddpm"}},
        "2": {"class_type": "TimeTunerDemoDigitConditioning", "inputs": {"digit": "none"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "AlignYourStepsScheduler", "inputs": {"model_type": "SD1", "steps": 6, "denoise": 1.0}},
        "5": {
            "class_type": "TimeTunerTune",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["2", 0],
                "cfg": 1.0,
                "sampler_name": "comfy.dpmpp_2m",
                "sigmas": ["4", 0],
                "latent_image": ["3", 0],
                "schedule_name": "AlignYourSteps",
                "objective": "energy",
                "iterations": 6,
                "batch": 8,
                "pool": 16,
                "seed": 0,
                "micro_batch": 0,
                "recompute": "auto",
                "filename": "ays_dpmpp_2m",
                "overwrite": True,
                "resume": False,
            },
        },
        "6": {
            "class_type": "TimeTunerApplyTunedSet",
            "inputs": {"model": ["1", 0], "tuned_set": ["5", 0], "strict": True, "force": False},
        },
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "8": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["6", 0], "positive": ["2", 0], "negative": ["2", 0], "cfg": 1.0},
        },
        "9": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 16}},
        "11": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["9", 0],
                "guider": ["8", 0],
                "sampler": ["7", 0],
                "sigmas": ["4", 0],
                "latent_image": ["10", 0],
            },
        },
        "12": {"class_type": "TimeTunerDemoDecode", "inputs": {"samples": ["11", 0], "scale": 8}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "timetuner/ays"}},
    }
    entry = server.run(prompt)
    assert ok(entry), error_message(entry)
    ts = TunedSet.load(server.base / "models" / "timetuner" / "ays_dpmpp_2m.safetensors")
    assert ts.schedule == "AlignYourSteps" and ts.sampler == "comfy.dpmpp_2m" and ts.nfe == 6


def test_load_shows_the_provenance_of_a_set_from_models_timetuner(server):
    assert ok(server.run(tune_prompt("digits-ddpm", "deis", "karras", 6, "provenance")))
    entry = server.run(
        {"1": {"class_type": "TimeTunerLoadTunedSet", "inputs": {"tuned_set": "provenance.safetensors"}}}
    )
    assert ok(entry), error_message(entry)
    text = " ".join(entry["outputs"]["1"]["text"])
    for part in ("model: digits-ddpm", "sampler: comfy.deis", "scheduler: karras, 6 steps", "validation "):
        assert part in text, (part, text)


def test_registry_sampler_has_typed_inputs_from_each_samplers_defaults(server):
    info = server.get("/object_info/TimeTunerRegistrySampler")["TimeTunerRegistrySampler"]["input"]
    optional = info["optional"]
    assert optional["eta"][0] == "FLOAT" and optional["max_order"][0] == "INT" and "options" not in info["required"]
    table = info["required"]["sampler_name"][1]["timetuner_options"]
    assert table["comfy.deis"]["max_order"] == 3 and table["comfy.ipndm"]["max_order"] == 4
    assert table["comfy.euler_ancestral"]["eta"] == 1.0
    prompt = load("tuned_sigmas_registry_sampler.json")
    del prompt["4"]["inputs"]["tuned_set"]
    images = {}
    for name, options in (("comfy.euler", {}), ("comfy.euler_ancestral", {"eta": 0.0, "max_order": 2})):
        prompt["4"]["inputs"] = {"sampler_name": name, "strict": False, **options}
        prompt["11"]["inputs"]["filename_prefix"] = f"timetuner/typed_{name}"
        entry = server.run(json.loads(json.dumps(prompt)))
        assert ok(entry), error_message(entry)
        images[name] = np.stack(server.images(entry))
    # η = 0 makes Euler-ancestral plain Euler (max_order belongs to other samplers and is ignored)
    assert np.abs(images["comfy.euler"] - images["comfy.euler_ancestral"]).max() <= 1 / 255
