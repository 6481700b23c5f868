"""The bundled models: they load, generate recognisable digits, and the training script runs."""

from __future__ import annotations

import pytest
import torch

import registry
from timetuner_plugins import bundled
from timetuner_plugins.adapters.denoisers import CFGDenoiser
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.sampling.run import make_sigmas
from timetuner_plugins.bundled.training import digits as training

from helpers import noise


def test_models_load_with_distinct_stable_fingerprints():
    names = ("digits-ddpm", "digits-edm", "gmm-digits", "digits-flow", "gmm-digits-flow")
    prints = {name: registry.load_model(name).fingerprint for name in names}
    assert len(set(prints.values())) == len(names)
    assert registry.load_model("digits-ddpm").fingerprint == prints["digits-ddpm"]
    for name in bundled.FILES:
        assert bundled.weights_path(name).stat().st_size <= 5 * 2**20


@pytest.mark.parametrize("name", ["digits-ddpm", "digits-edm", "digits-flow"])
def test_many_step_samples_are_recognisable_digits(name):
    model = registry.load_model(name)
    spec = registry.get_sampler("dpmpp_2m")
    samples = generate(model, spec, make_sigmas(model, model.default_schedule, 100), noise(300, seed=4))
    with torch.no_grad():
        probs = bundled.load_classifier()(samples.clamp(-1, 1)).softmax(1)
    confident = probs.max(1).values
    assert float(confident.mean()) > 0.9
    assert len(set(probs.argmax(1).tolist())) == 10


def test_classifier_free_guidance_follows_the_class(ddpm):
    model = CFGDenoiser(ddpm, scale=2.0)
    spec = registry.get_sampler("dpmpp_2m")
    labels = torch.full((64,), 3)
    samples = generate(
        model,
        spec,
        make_sigmas(ddpm, "quadratic_t", 30),
        noise(64, seed=8),
        extra_args={"cond": labels, "uncond": torch.full((64,), 10)},
    )
    with torch.no_grad():
        predicted = bundled.load_classifier()(samples.clamp(-1, 1)).argmax(1)
    assert float((predicted == 3).float().mean()) > 0.9


def test_training_script_runs_a_few_steps(tmp_path):
    out = tmp_path / "ddpm.safetensors"
    training.train_ddpm(out, steps=3, batch=16)
    model = bundled.load_path(out)
    assert model.model_id == "digits-ddpm" and model.default_schedule == "quadratic_t"
    out = tmp_path / "edm.safetensors"
    training.train_edm(out, steps=3, batch=16)
    assert bundled.load_path(out).sigma_max == 80.0
    out = tmp_path / "flow.safetensors"
    training.train_flow(out, steps=3, batch=16, shift=3.0)
    flow = bundled.load_path(out)
    assert flow.space == "flow" and flow.shift == 3.0 and flow.default_schedule == "simple"


def test_held_out_models_differ_from_the_bundled_ones_in_architecture_and_recipe(tmp_path):
    """The held-out models' recipes run and load as what they claim: a transformer rectified flow at shift 3, and a
    residual conv net with v-prediction on the cosine schedule."""
    from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser
    from timetuner_plugins.bundled.training import held_out

    out = tmp_path / "dit.safetensors"
    held_out.train_dit_flow(out, steps=3, batch=16)
    dit = bundled.load_path(out)
    assert dit.space == "flow" and dit.shift == 3.0 and type(dit.net).__name__ == "DigitsDiT"
    out = tmp_path / "resnet.safetensors"
    held_out.train_resnet_v(out, steps=3, batch=16)
    resnet = bundled.load_path(out)
    assert resnet.prediction == "v" and type(resnet.net).__name__ == "DigitsResNet"
    abar = DiscreteVPDenoiser.cosine_betas(1000)
    assert torch.allclose(resnet.log_sigmas, ((1 - abar) / abar).sqrt().log())
    assert bool((abar[1:] < abar[:-1]).all()) and 0.99 < float(abar[0]) < 1
    betas = 1 - abar[1:] / abar[:-1]
    assert float(betas.max()) <= 0.999 + 1e-12
    for name in ("heldout-dit-flow", "heldout-resnet-v"):
        model = registry.load_model(name)
        recipe = bundled.read_weights(bundled.weights_path(name))[1]["recipe"]
        assert '"held_out": true' in recipe and model.model_id == name
