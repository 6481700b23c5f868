"""The node pack's logic that needs no ComfyUI: σ-keyed τ, the timestep stand-in, file-name safety."""

from __future__ import annotations


import pytest
import torch

import registry
from comfyui_nodes import paths
from comfyui_nodes.tau_patch import DODEOutputs, SigmaMatcher, TauTimestep, fractional_timestep, schedule_problem
from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, sample
from timetuner_plugins.sets.tau import TauLookup, TauModel

from helpers import make_set, noise


def heun_lookup(gmm):
    spec = registry.get_sampler("heun")
    sigmas = make_sigmas(gmm, "karras", 4)
    ev = eval_sigmas(spec, sigmas, gmm.sample_shape)  # σ_1..σ_3 appear twice: corrector, then next step
    return spec, sigmas, TauLookup(ev, ev * torch.linspace(0.8, 1.2, len(ev)))


class KeyedModel:
    """What ComfyUI does: the model only sees σ; τ comes from a σ-keyed matcher."""

    def __init__(self, model, matcher, split=False):
        self.model, self.matcher, self.split = model, matcher, split

    def __call__(self, x, sigma, **extra):
        if not self.split:
            return self.model(x, sigma, cond_sigma=sigma * self.matcher.ratio(sigma, [1, 0]), **extra)
        half = len(x) // 2  # cond and uncond rows in separate calls, as ComfyUI does when memory is short
        a = self.model(x[:half], sigma[:half], cond_sigma=sigma[:half] * self.matcher.ratio(sigma[:half], [0]))
        b = self.model(x[half:], sigma[half:], cond_sigma=sigma[half:] * self.matcher.ratio(sigma[half:], [1]))
        return torch.cat([a, b])


@pytest.mark.parametrize("split", [False, True])
def test_sigma_keyed_matching_equals_counted_evaluations_even_with_repeated_sigmas(gmm, split):
    spec, sigmas, lookup = heun_lookup(gmm)
    assert len(set(lookup.eval_sigmas.tolist())) < len(lookup)  # repeated σ's are the hard case
    with torch.no_grad():
        counted = sample(gmm, spec, sigmas, noise(4), lookup=lookup)
        matcher = SigmaMatcher(lookup)
        keyed = spec.fn(KeyedModel(gmm, matcher, split), noise(4) * sigmas[0], sigmas, disable=True)
    torch.testing.assert_close(keyed, counted, rtol=1e-5, atol=1e-5)


def test_unmatched_sigmas_keep_the_plain_model(gmm):
    _, _, lookup = heun_lookup(gmm)
    matcher = SigmaMatcher(lookup)
    torch.testing.assert_close(matcher.ratio(torch.tensor([3.3333, 3.3333])), torch.ones(2))
    matcher.reset()
    first = matcher.ratio(lookup.eval_sigmas[:1].expand(2))
    torch.testing.assert_close(first, lookup.ratio[:1].expand(2))


def test_timestep_stand_in_moves_only_while_a_ratio_is_set():
    model = DiscreteVPDenoiser(torch.nn.Identity(), DiscreteVPDenoiser.linear_betas())
    calls = []
    original = lambda s: calls.append(s) or s.log()  # noqa: E731
    stand_in = TauTimestep(original, fractional_timestep(model.log_sigmas))
    sigma = torch.tensor([2.0, 2.0])
    assert torch.equal(stand_in(sigma), sigma.log()) and len(calls) == 1
    stand_in.ratio = torch.tensor([1.1, 0.9])
    torch.testing.assert_close(
        stand_in(sigma).double(), model.sigma_to_t(sigma.double() * torch.tensor([1.1, 0.9])), rtol=1e-6, atol=1e-4
    )
    stand_in.forced = torch.tensor(0.5)  # an evaluation counter wins over σ matching
    torch.testing.assert_close(stand_in(sigma).double(), model.sigma_to_t(sigma.double() * 0.5), rtol=1e-6, atol=1e-4)
    stand_in.forced = torch.tensor(1.0)  # exactly 1: the model's own timestep
    torch.testing.assert_close(stand_in(sigma), sigma.log())


def test_schedule_problem_accepts_the_schedule_or_a_denoise_suffix():
    ts = make_set()
    assert schedule_problem(ts, ts.sigmas) is None
    assert schedule_problem(ts, ts.sigmas[-3:]) is None
    assert "does not match" in schedule_problem(ts, torch.tensor([50.0, 5.0, 0.0]))


def test_paths_stay_inside_their_folders(tmp_path):
    user = tmp_path / "models" / "timetuner"
    (user / "sub").mkdir(parents=True)
    make_set().save(user / "sub" / "mine.safetensors")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    names = paths.choices([user])
    assert "sub/mine.safetensors" in names and any(n.startswith("shipped/") for n in names)
    assert paths.resolve("sub/mine.safetensors", [user])[0] == (user / "sub" / "mine.safetensors").resolve()
    for bad in (
        "../secret.safetensors",
        "sub/../../secret.safetensors",
        str(tmp_path / "secret.safetensors"),
        "/etc/passwd",
        "shipped/../../../etc/passwd",
        "",
    ):
        with pytest.raises((paths.UnsafePath, FileNotFoundError)):
            paths.resolve(bad, [user])
    (user / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    with pytest.raises(paths.UnsafePath, match="outside"):
        paths.resolve("link.safetensors", [user])
    for bad in ("../x", "a/b", "/abs", "", "..", "x" * 200):
        with pytest.raises(paths.UnsafePath):
            paths.output_path(user, bad)
    assert paths.output_path(user, "my set.safetensors") == user / "my set.safetensors"


def test_dode_on_a_sigma_keyed_host_equals_the_counted_run_with_cfg(gmm):
    """D-ODE λ applied per call and cond/uncond chunk (as Apply Tuned Set does) and then mixed by CFG equals D-ODE on
    the guided output (as a counted run does): CFG is linear."""
    spec = registry.get_sampler("heun")
    sigmas = make_sigmas(gmm, "karras", 4)
    ev = eval_sigmas(spec, sigmas, gmm.sample_shape)
    lam = torch.cat([torch.zeros(1), torch.linspace(0.3, -0.2, len(ev) - 1)])
    lookup = TauLookup(ev, ev * torch.linspace(0.9, 1.1, len(ev)), dode_lambda=lam)
    scale = 2.5

    def guided(model):  # uncond: a shifted copy of the model, so the chunks differ
        return lambda x, s, **kw: model(x + 0.1, s, **kw) + scale * (model(x, s, **kw) - model(x + 0.1, s, **kw))

    with torch.no_grad():
        counted = spec.fn(TauModel(_Guided(gmm, scale), lookup), noise(3) * sigmas[0], sigmas, disable=True)
        matcher, dode = SigmaMatcher(lookup), DODEOutputs(lam)

        def host(x, sigma, **_):
            both, s2 = torch.cat([x, x + 0.1]), torch.cat([sigma, sigma])
            ratio, index = matcher.match(s2, [0, 1])
            out = dode.apply(gmm(both, s2, cond_sigma=s2 * ratio), index, [0, 1])
            cond, uncond = out.chunk(2)
            return uncond + scale * (cond - uncond)

        keyed = spec.fn(host, noise(3) * sigmas[0], sigmas, disable=True)
    torch.testing.assert_close(keyed, counted, rtol=1e-5, atol=1e-5)


class _Guided:
    """CFG over a tunable denoiser whose uncond branch sees x + 0.1; both branches conditioned on τ."""

    def __init__(self, model, scale):
        self.model, self.scale = model, scale

    def __call__(self, x, sigma, cond_sigma=None, **kw):
        c = self.model(x, sigma, cond_sigma=cond_sigma)
        u = self.model(x + 0.1, sigma, cond_sigma=cond_sigma)
        return u + self.scale * (c - u)


def test_an_exact_ratio_of_one_keeps_the_models_own_timestep():
    nearest = lambda s: torch.round(s * 10)  # noqa: E731  (a model whose own timestep is not the fractional one)
    stand_in = TauTimestep(nearest, lambda s: s * 10)
    sigma = torch.tensor([1.234, 1.234])
    stand_in.ratio = torch.tensor([1.0, 1.1])
    out = stand_in(sigma)
    assert out[0] == nearest(sigma[:1])[0] and torch.isclose(out[1], sigma[1] * 1.1 * 10)
    stand_in.ratio = None
    stand_in.forced = torch.tensor(1.0, requires_grad=True)  # tuning: the gradient goes through the moved timestep
    assert stand_in(sigma).requires_grad


def test_every_template_workflow_has_its_api_copy_with_the_same_nodes():
    """ComfyUI lists example_workflows/*.json as templates; the server tests run example_workflows/api/: the two
    must be one graph (same node ids and types, same links)."""
    import json

    from helpers import REPO, WORKFLOWS

    templates = sorted((REPO / "example_workflows").glob("*.json"))
    assert len(templates) >= 4
    for path in templates:
        ui = json.loads(path.read_text())
        api = json.loads((WORKFLOWS / path.name).read_text())
        assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}, path
        ui_links = {(str(src), str(dst)) for _, src, _, dst, _, _ in ui["links"]}
        api_links = {(v[0], k) for k, node in api.items() for v in node["inputs"].values() if isinstance(v, list)}
        assert ui_links == api_links, path
