"""The plugin registry: built-ins, third-party entry points, hooks, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import registry
from registry import SamplerSpec, hookimpl
from timetuner_plugins.sampling.run import make_sigmas, sample
from timetuner_plugins.sets.tau import TauLookup, TauModel
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty_sampler"


def test_builtins_are_registered_like_plugins():
    specs = registry.samplers()
    assert {"ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"} <= set(specs)
    assert specs["ddim"].plugin == "timetuner_plugins.builtin.samplers"
    assert specs["ddpm"].is_stochastic() and not specs["heun"].is_stochastic()
    assert specs["heun"].is_stochastic({"s_churn": 5.0})
    assert {"digits-ddpm", "digits-edm", "gmm-digits"} <= set(registry.models())
    assert {"uniform_t", "quadratic_t", "logsnr", "karras"} <= set(registry.schedules())
    assert "timetuner_plugins.builtin.tau_hook" in registry.plugin_names()


@pytest.mark.parametrize(
    "kind,getter,name",
    [
        ("sampler", registry.get_sampler, "dpmpp2m"),
        ("model", registry.get_model_spec, "digits_ddpm"),
        ("schedule", registry.get_schedule, "karas"),
    ],
)
def test_unknown_names_list_close_matches(kind, getter, name):
    with pytest.raises(registry.UnknownNameError) as err:
        getter(name)
    msg = str(err.value)
    assert f"unknown {kind} {name!r}" in msg and "Did you mean" in msg and "Registered" in msg
    assert err.value.close_matches


@pytest.fixture
def installed_thirdparty(tmp_path, monkeypatch):
    """pip-install the fixture package (a real distribution with a `timetuner` entry point) into a folder."""
    target, source = tmp_path / "site", tmp_path / "source"
    shutil.copytree(FIXTURE, source)  # setuptools builds in the source folder: keep the repository clean
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    monkeypatch.syspath_prepend(str(target))
    registry.reset()
    yield target
    monkeypatch.undo()
    sys.modules.pop("tt_thirdparty", None)
    registry.reset()


def test_third_party_entry_point_sampler_is_discovered_and_tunable(installed_thirdparty, gmm):
    spec = registry.get_sampler("thirdparty_midpoint")
    assert spec.plugin == "tt_thirdparty"
    assert "tt_thirdparty" in registry.plugin_names()
    sigmas = make_sigmas(gmm, "logsnr", 4)
    with torch.no_grad():
        plain = sample(gmm, spec, sigmas, noise(8))
    assert torch.isfinite(plain).all()
    tuner = Tuner(
        gmm,
        spec,
        sigmas,
        "logsnr",
        TuneConfig(iters=3, pool=16, batch=8, teacher_substeps=4, show_progress=False, select=False),
    )
    result = tuner.tune()
    assert len(result.tau) == spec.nfe(sigmas) == 7
    assert not torch.equal(result.tau, result.eval_sigmas)


class _Recorder:
    """A third-party plugin that wraps the model its own way for one sampler."""

    seen = []

    @hookimpl
    def wrap_model(self, model, lookup, sampler):
        if sampler.name != "ddim":
            return None
        self.seen.append(sampler.name)
        return TauModel(model, lookup)


def test_wrap_model_hook_can_be_overridden_per_sampler(gmm):
    plugin = _Recorder()
    registry.load_plugins().register(plugin, "recorder")
    try:
        sigmas = make_sigmas(gmm, "logsnr", 3)
        for name in ("ddim", "dpmpp_2m"):
            spec = registry.get_sampler(name)
            from timetuner_plugins.sampling.run import eval_sigmas

            with torch.no_grad():
                sample(gmm, spec, sigmas, noise(2), lookup=TauLookup.identity(eval_sigmas(spec, sigmas, (1, 8, 8))))
        assert plugin.seen == ["ddim"]
    finally:
        registry.load_plugins().unregister(plugin)


def test_broken_plugin_is_reported_not_fatal():
    class Broken:
        @hookimpl
        def register_samplers(self, register):
            register(SamplerSpec("ddim", lambda *a, **k: None))  # collides with the built-in
            raise RuntimeError("boom")

    registry.reset()
    registry.load_plugins().register(Broken(), "broken")
    try:
        assert registry.get_sampler("ddim").plugin == "timetuner_plugins.builtin.samplers"
        messages = [p.message for p in registry.problems() if p.plugin == "broken"]
        assert any("already registered" in m for m in messages) and any("boom" in m for m in messages)
    finally:
        registry.reset()


def test_a_plugin_registered_later_is_visible_at_once_and_gone_when_unregistered():
    assert "late_sampler" not in registry.samplers()  # the registry has been asked before

    class Late:
        @hookimpl
        def register_samplers(self, register):
            register(SamplerSpec("late_sampler", lambda model, x, sigmas, **kw: x))

    plugin = Late()
    registry.load_plugins().register(plugin, "late")
    try:
        assert registry.get_sampler("late_sampler").plugin == "late"
    finally:
        registry.load_plugins().unregister(plugin)
    assert "late_sampler" not in registry.samplers()
    assert len(registry.problems()) == len(set(registry.problems()))  # asking again repeats no problem
