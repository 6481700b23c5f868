"""The source papers' samplers as plugins: BDIA (Zhang et al. 2024), accelerated DDIM/DDPM (Li et al. 2024) and
λ-DDIM (Pandey et al. 2024). Special cases are the known samplers bit for bit, identity τ is bit-exact, the
evaluation counts match the specs, the orders are the expected ones on the exact GMM, the generic tuner tunes
each, a BDIA round trip gives back the noise, and ``timetuner invert`` does that from files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import registry
from timetuner_plugins.sampling.bdia import bdia_invert, bdia_sample
from timetuner_plugins.cli import cli
from timetuner_plugins.sampling.conjugate import DEFAULT_LAM
from timetuner_plugins.sampling.invert import read_states
from timetuner_plugins.sampling.option_checks import SamplerOptionError
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler, sample
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

PAPER = ["bdia_ddim", "bdia_edm", "accel_ddim", "accel_ddpm", "conjugate_ddim"]


@pytest.fixture(scope="module")
def gmm_flow():
    """The mixture under the rectified-flow path (σ is the flow time, x = (1 − σ)·x₀ + σ·ε)."""
    return registry.load_model("gmm-digits-flow")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These runs are many tiny evaluations, which a second intra-op thread slows down several-fold on a
    shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class BrownianPath:
    """One Brownian path in t = σ sampled exactly at a fixed set of times (every σ and step midpoint of the runs
    that share it); the noise sampler returns its normalised increments, like ``BrownianNoise`` (whose tree is
    ~10× slower per query here)."""

    def __init__(self, like, times, seed):
        gen = torch.Generator().manual_seed(seed)
        w, last, self.at, self.like = torch.zeros(like.shape, dtype=torch.float64), 0.0, {}, like
        for t in sorted(set(times)):
            w = w + torch.randn(like.shape, generator=gen, dtype=torch.float64) * (t - last) ** 0.5
            self.at[t], last = w, t

    def __call__(self, sigma, sigma_next):
        a, b = float(sigma), float(sigma_next)
        return ((self.at[b] - self.at[a]) / abs(b - a) ** 0.5).to(self.like)


@pytest.mark.parametrize(
    "name,options,base",
    [
        ("bdia_ddim", {"gamma": 0.0}, "ddim"),
        ("bdia_ddim", {"gamma": 0.0, "frame": "ve"}, "ddim"),
        ("bdia_edm", {"gamma": 0.0}, "heun"),
        ("conjugate_ddim", {"lam": 0.0}, "ddim"),
    ],
)
@pytest.mark.parametrize("model_name", ["gmm", "edm", "gmm_flow"])
def test_special_cases_are_the_known_samplers_bit_for_bit(name, options, base, model_name, request):
    model = request.getfixturevalue(model_name)
    sigmas = make_sigmas(model, model.default_schedule, 6)
    with torch.no_grad():
        ours = sample(model, name, sigmas, noise(8), options=options)
        known = sample(model, base, sigmas, noise(8))
    assert torch.equal(ours, known)


@pytest.mark.parametrize(
    "name,options",
    [
        ("bdia_ddim", {"gamma": 1.0}),
        ("bdia_ddim", {"gamma": 0.7, "frame": "ve"}),
        ("accel_ddim", {}),
        ("conjugate_ddim", {"lam": 0.5}),
    ],
)
def test_first_step_is_ddim(gmm, name, options):
    """BDIA and the accelerated sampler have no previous state on their first step: one step is DDIM;
    λ-DDIM is DDIM only as λ → 0."""
    sigmas = make_sigmas(gmm, "quadratic_t", 1)
    with torch.no_grad():
        ours, ddim = sample(gmm, name, sigmas, noise(4), options=options), sample(gmm, "ddim", sigmas, noise(4))
    if name == "conjugate_ddim":
        assert not torch.equal(ours, ddim)
        small = sample(gmm, name, make_sigmas(gmm, "quadratic_t", 6), noise(4), options={"lam": 1e-7})
        torch.testing.assert_close(
            small, sample(gmm, "ddim", make_sigmas(gmm, "quadratic_t", 6), noise(4)), rtol=0, atol=1e-4
        )
    else:
        assert torch.equal(ours, ddim)


class ConstantEps(torch.nn.Module):
    """D(x, σ) = x − σ·c: ε̂ = c everywhere, so the probability-flow ODE's solution is x_0 − σ_0·c."""

    def __init__(self):
        super().__init__()
        self.c = torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(1, 1, 8, 8)

    def forward(self, x, sigma, **_):
        return x - sigma.reshape(-1, 1, 1, 1) * self.c


@pytest.mark.parametrize(
    "name,options",
    [
        ("bdia_ddim", {"gamma": 1.0}),
        ("bdia_ddim", {"gamma": 0.5, "frame": "ve"}),
        ("bdia_edm", {"gamma": 0.5}),
        ("bdia_edm", {"backward": "euler"}),
        ("accel_ddim", {}),
    ],
)
def test_exact_when_eps_is_constant(name, options):
    """Each is built from DDIM/Heun steps, exact for a constant ε̂; the BDIA and acceleration corrections vanish."""
    model = ConstantEps()
    sigmas = torch.tensor([80.0, 20.0, 4.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    x = noise(2).double() * 80
    out = run_sampler(model, registry.get_sampler(name), x, sigmas, options=options)
    torch.testing.assert_close(out, x - 80 * model.c, rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("model_name", ["gmm", "ddpm", "edm", "gmm_flow"])
def test_identity_tau_is_bit_exact(name, model_name, request):
    if name == "accel_ddpm" and model_name == "gmm_flow":
        pytest.skip("accel_ddpm refuses flow models (test_accel_ddpm_refuses_flow_models)")
    model = request.getfixturevalue(model_name)
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(model, model.default_schedule, 7)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    with torch.no_grad():
        plain = sample(model, spec, sigmas, noise(16), seed=3)
        tuned = sample(model, spec, sigmas, noise(16), seed=3, lookup=TauLookup.identity(ev))
    assert torch.equal(plain, tuned)


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("schedule", ["logsnr", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_evaluation_count_matches_spec(gmm, name, schedule, steps):
    spec = registry.get_sampler(name)
    sigmas = make_sigmas(gmm, schedule, steps)
    assert len(eval_sigmas(spec, sigmas, gmm.sample_shape)) == spec.nfe(sigmas)


def _last_state(model, name, steps, x_noise, options=None, noise_sampler=None):
    """The state at the last positive σ: every sampler here takes the same final jump σ_min → 0, whose length
    no step count shrinks, so orders are measured before it (accel_ddim's correction on that jump does not vanish)."""
    sigmas = make_sigmas(model, "quadratic_t", steps)
    states = []
    x = x_noise * sigmas[0]
    with torch.no_grad():
        run_sampler(
            model,
            registry.get_sampler(name),
            x,
            sigmas,
            options=options,
            noise_sampler=noise_sampler,
            callback=lambda info: states.append(info["x"]),
        )
    return states[-1].double()


@pytest.fixture(scope="module")
def gmm_reference(gmm):
    x_noise = noise(8, seed=1)
    return x_noise, _last_state(gmm, "dpmpp_2m", 1024, x_noise)


@pytest.mark.parametrize(
    "name,options,order",
    [
        ("accel_ddim", {}, 2),
        ("bdia_ddim", {"gamma": 1.0}, 2),
        ("bdia_ddim", {"gamma": 0.5}, 1),
        ("bdia_edm", {"gamma": 0.5}, 1),
        ("bdia_edm", {"gamma": 0.5, "backward": "extrapolate"}, 2),
        ("conjugate_ddim", {"lam": DEFAULT_LAM}, 1),
    ],
)
def test_deterministic_samplers_converge_at_their_order(gmm, gmm_reference, name, options, order):
    x_noise, ref = gmm_reference
    steps = [32, 64, 128]
    errors = [float((_last_state(gmm, name, s, x_noise, options) - ref).pow(2).mean().sqrt()) for s in steps]
    assert errors[0] > errors[1] > errors[2]
    slope = math.log(errors[0] / errors[2]) / math.log(steps[2] / steps[0])
    assert order - 0.25 < slope < order + 0.6, (errors, slope)


def test_accel_ddpm_converges_along_a_brownian_path(gmm):
    """Strong (pathwise) convergence along one Brownian path, the median over samples as for ``ddpm``."""
    x_noise, counts = noise(16, seed=2), (8, 32, 128, 512)
    grids = [make_sigmas(gmm, "quadratic_t", n) for n in counts]
    times = [t for s in grids for t in s[:-1].tolist() + ((s[:-1] + s[1:]) / 2).tolist()]
    path = BrownianPath(x_noise, times, 5)
    finals = [_last_state(gmm, "accel_ddpm", n, x_noise, noise_sampler=path) for n in counts]
    medians = [float((f - finals[-1]).pow(2).flatten(1).mean(1).sqrt().median()) for f in finals[:-1]]
    assert medians[0] > 2 * medians[1] > 4 * medians[2], medians


@pytest.mark.parametrize("name", PAPER)
def test_the_generic_tuner_tunes_each(gmm, name):
    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    cfg = TuneConfig(iters=3, batch=8, pool=8, val_size=8, select=False, teacher_substeps=2, show_progress=False)
    result = Tuner(gmm, name, sigmas, "quadratic_t", cfg).tune()
    spec = registry.get_sampler(name)
    assert len(result.tau) == spec.nfe(sigmas) and bool(torch.isfinite(result.tau).all())
    assert not torch.equal(result.tau, result.eval_sigmas)  # gradients reached τ through the sampler
    with torch.no_grad():
        tuned = sample(gmm, spec, sigmas, noise(4), tuned=result.tuned_set(gmm))
    assert bool(torch.isfinite(tuned).all())


@pytest.mark.parametrize(
    "name,options,tol32",
    [
        ("bdia_ddim", {"gamma": 1.0}, 1e-4),
        ("bdia_ddim", {"gamma": 0.5}, 1e-4),
        ("bdia_ddim", {"gamma": 0.8, "frame": "ve"}, 1e-4),
        ("bdia_edm", {"gamma": 0.5}, 1e-3),
        ("bdia_edm", {"gamma": 0.5, "backward": "extrapolate"}, None),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bdia_round_trip_gives_back_the_noise(gmm, name, options, tol32, dtype):
    """Max error relative to the noise's scale σ_0. float32 is looser than float64 because each backward step
    divides by c_i ≤ 1 (and bdia_edm's extrapolated backward integral is ill-conditioned: float64 only)."""
    if dtype == torch.float32 and tol32 is None:
        pytest.skip("extrapolate's float32 round trip is ill-conditioned: 1e-4 to 1e+2 of σ_0 (docs/samplers.md table)")
    sigmas = make_sigmas(gmm, "quadratic_t", 8)
    x0 = noise(8, seed=4).to(dtype) * sigmas[0]
    with torch.no_grad():
        out, previous = bdia_sample(gmm, x0, sigmas, name, **options)
        back = bdia_invert(gmm, out, previous, sigmas, name, **options)
    assert back.dtype == dtype
    assert float((back - x0).abs().max()) / float(sigmas[0]) < (1e-9 if dtype == torch.float64 else tol32)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_bdia_round_trip_on_a_flow_model(gmm_flow, gamma, dtype, tol):
    """On a flow model frame=auto is the flow's own state (α = 1): the paper's update for z = (1 − σ)x₀ + σε."""
    from timetuner_plugins.sampling.bdia import resolve_frame

    assert resolve_frame(gmm_flow, "auto") == "ve" and resolve_frame(registry.load_model("gmm-digits"), "auto") == "vp"
    sigmas = make_sigmas(gmm_flow, gmm_flow.default_schedule, 8)
    x0 = noise(8, seed=4).to(dtype) * sigmas[0]
    with torch.no_grad():
        out, previous = bdia_sample(gmm_flow, x0, sigmas, "bdia_ddim", gamma=gamma)
        back = bdia_invert(gmm_flow, out, previous, sigmas, "bdia_ddim", gamma=gamma)
    assert float((back - x0).abs().max()) / float(sigmas[0]) < tol


def test_accel_ddpm_refuses_flow_models(gmm_flow):
    sigmas = make_sigmas(gmm_flow, gmm_flow.default_schedule, 4)
    with pytest.raises(SamplerOptionError, match="not a flow model's; on a flow model use ddpm"):
        run_sampler(gmm_flow, registry.get_sampler("accel_ddpm"), noise(2) * sigmas[0], sigmas)


def test_bad_options_name_the_fix(gmm):
    sigmas = make_sigmas(gmm, "quadratic_t", 4)
    x = noise(2) * sigmas[0]
    for name, options, needle in [
        ("bdia_ddim", {"gamma": 1.5}, r"gamma must be in \[0, 1\].*--option gamma=1"),
        ("bdia_ddim", {"frame": "vpsde"}, "frame must be one of auto, vp, ve"),
        ("bdia_edm", {"backward": "heun"}, "backward must be one of euler, extrapolate"),
        ("conjugate_ddim", {"lam": float("nan")}, "lam must be a finite number"),
        ("conjugate_ddim", {"lam": 20.0}, r"lam=20 is too large for step 0 .* use \|lam\| <"),
    ]:
        with pytest.raises(SamplerOptionError, match=needle):
            run_sampler(gmm, registry.get_sampler(name), x, sigmas, options=options)
    with pytest.raises(SamplerOptionError, match="gamma=0 is the plain sampler"):
        bdia_invert(gmm, x, x, sigmas, "bdia_ddim", gamma=0.0)
    with pytest.raises(SamplerOptionError, match="only BDIA samplers can be inverted"):
        bdia_invert(gmm, x, x, sigmas, "ddim")
    with pytest.raises(SamplerOptionError, match="takes the options"):
        bdia_invert(gmm, x, x, sigmas, "bdia_edm", lam=0.1)


def test_invert_command(tmp_path):
    runner = CliRunner()
    made = tmp_path / "samples.safetensors"
    out = runner.invoke(
        cli,
        [
            "invert",
            "--generate",
            "6",
            "--model",
            "gmm-digits",
            "--steps",
            "6",
            "--option",
            "gamma=1.0",
            "--out",
            str(made),
        ],
    )
    assert out.exit_code == 0, out.output
    recovered = tmp_path / "noise.pt"
    out = runner.invoke(cli, ["invert", "--input", str(made), "--out", str(recovered), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["previous"] == "from the file" and report["options"] == {"gamma": 1.0, "frame": "auto"}
    assert report["noise_max_abs_error"] < 1e-4 and report["round_trip_sample_max_abs"] < 1e-3
    assert report["noise_alone_sample_max_abs"] < 1e-3
    tensors, meta = read_states(recovered)
    given, _ = read_states(made)
    torch.testing.assert_close(tensors["noise"], given["noise"], rtol=0, atol=1e-4)
    assert meta["sampler"] == "bdia_ddim" and meta["steps"] == "6"

    # a bare sample tensor (an image no BDIA run made): the state before it is estimated, the pair round-trips
    bare = tmp_path / "image.pt"
    torch.save(given["sample"][:2].clone(), bare)
    out = runner.invoke(
        cli,
        [
            "invert",
            "--input",
            str(bare),
            "--model",
            "gmm-digits",
            "--steps",
            "6",
            "--float64",
            "--out",
            str(tmp_path / "image_noise.safetensors"),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["previous"].startswith("estimated") and report["round_trip_sample_max_abs"] < 1e-9
    assert report["noise_alone_sample_max_abs"] > 1e-3  # BDIA's state is a pair: x_1 is not DDIM's step from x_0

    for args, needle in [
        (["--out", str(tmp_path / "x.pt")], "exactly one of --input FILE"),
        (["--input", str(made), "--out", str(recovered)], "--overwrite"),
        (["--input", str(made), "--option", "gamma=0", "--out", str(tmp_path / "y.pt")], "gamma=0 is the plain"),
        (
            [
                "--generate",
                "2",
                "--model",
                "gmm-digits",
                "--steps",
                "3",
                "--option",
                "gamma=2",
                "--out",
                str(tmp_path / "z.pt"),
            ],
            "gamma must be in [0, 1]",
        ),
        (["--input", str(bare), "--model", "gmm-digits", "--out", str(tmp_path / "w.pt")], "give --steps"),
    ]:
        out = runner.invoke(cli, ["invert", *args])
        assert out.exit_code != 0 and needle in out.output, (args, out.output)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    out = runner.invoke(
        cli, ["invert", "--input", str(junk), "--model", "gmm-digits", "--steps", "3", "--out", str(tmp_path / "v.pt")]
    )
    assert out.exit_code == 1 and "cannot read it as a states file" in out.output
