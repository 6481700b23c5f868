"""GPU paths: tuned sets on CUDA, dtypes, no host sync per step, tuning on the GPU.

Skipped without a CUDA device (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import registry
from comfyui_nodes.tau_patch import SigmaMatcher
from timetuner_plugins.sets import shipped
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.sampling.noise import SeededNoise
from timetuner_plugins.sampling.run import eval_sigmas, make_sigmas, run_sampler
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

from helpers import noise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32():
    """Compare with the CPU in true float32 (no TF32 convolutions or matmuls)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on(model, device, dtype=torch.float32):
    return registry.load_model(model.model_id).to(device, dtype)


def _syncs(fn) -> int:
    """How many synchronising CUDA calls ``fn`` makes (torch's sync debug mode counts them)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("sampler,nfe", [("ddim", 10), ("dpmpp_2m", 10), ("heun", 9), ("ddpm", 10)])
def test_shipped_set_on_cuda_matches_cpu(ddpm, sampler, nfe):
    ts = shipped.load(shipped.find("digits-ddpm", sampler, nfe=nfe))
    spec = registry.get_sampler(sampler)
    x = noise(64, seed=3) * ts.sigmas[0]
    outs = []
    for device in ("cpu", CUDA):
        model = _on(ddpm, device)
        xs = x.to(device)
        ns = SeededNoise(xs, 11) if spec.is_stochastic(ts.sampler_options) else None
        with torch.no_grad():
            outs.append(
                run_sampler(
                    model, spec, xs, ts.sigmas, lookup=ts.lookup(), options=ts.sampler_options, noise_sampler=ns
                ).cpu()
            )
    assert (outs[0] - outs[1]).abs().max() < 1e-3


@pytest.mark.parametrize("sampler", ["res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2"])
def test_multistep_samplers_on_cuda_match_cpu(ddpm, sampler):
    spec, sigmas = registry.get_sampler(sampler), make_sigmas(ddpm, "karras", 8)
    x = noise(64, seed=5) * sigmas[0]
    with torch.no_grad():
        cpu, gpu = (run_sampler(_on(ddpm, d), spec, x.to(d), sigmas).cpu() for d in ("cpu", CUDA))
    assert (cpu - gpu).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tuned_sampling_in_half_precision_stays_close_to_float32(ddpm, dtype):
    ts = shipped.load(shipped.find("digits-ddpm", "ddim", nfe=10))
    spec = registry.get_sampler("ddim")
    x = (noise(256, seed=4) * ts.sigmas[0]).to(CUDA)
    with torch.no_grad():
        full = run_sampler(_on(ddpm, CUDA), spec, x, ts.sigmas, lookup=ts.lookup())
        half = run_sampler(_on(ddpm, CUDA, dtype), spec, x.to(dtype), ts.sigmas, lookup=ts.lookup())
    assert half.dtype == dtype and torch.isfinite(half).all()
    rms = (half.float() - full).pow(2).mean().sqrt()
    assert rms < (0.02 if dtype == torch.float16 else 0.06), float(rms)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "res_multistep", "ipndm", "deis", "uni_pc"])
def test_tau_wrapper_adds_no_host_sync(ddpm, sampler):
    """A τ-wrapped run makes exactly the synchronising calls of the plain run, at any step count."""
    model, spec = _on(ddpm, CUDA), registry.get_sampler(sampler)
    counts = {}
    for steps in (4, 8):
        sigmas = make_sigmas(model, "karras", steps)
        ev = eval_sigmas(spec, sigmas, model.sample_shape)
        lookup = TauLookup(ev, ev * torch.linspace(1.1, 0.9, len(ev)))
        x = (noise(32) * sigmas[0]).to(CUDA)
        with torch.no_grad():
            run_sampler(model, spec, x, sigmas, lookup=lookup)  # warm-up: lazy inits may sync once
            counts[steps] = (
                _syncs(lambda: run_sampler(model, spec, x, sigmas)),
                _syncs(lambda: run_sampler(model, spec, x, sigmas, lookup=lookup)),
            )
    assert counts[4][0] == counts[4][1] and counts[8][0] == counts[8][1], counts
    assert counts[4][1] == counts[8][1], f"syncs grow with the step count: {counts}"


def test_sigma_keyed_lookup_on_cuda_makes_no_host_sync(ddpm):
    """ComfyUI's path: σ-keyed ratios computed on the device, with no synchronising call per step."""
    spec = registry.get_sampler("heun")
    sigmas = make_sigmas(ddpm, "karras", 5)
    ev = eval_sigmas(spec, sigmas, ddpm.sample_shape)
    matcher = SigmaMatcher(TauLookup(ev, ev * torch.linspace(0.8, 1.2, len(ev))))
    sig = sigmas.to(CUDA)
    matcher.ratio(sig[:1].expand(4))  # first call moves the tables
    matcher.reset()

    def steps():
        for s in sig[:-1]:
            matcher.ratio(s.expand(4), [0, 1])

    assert _syncs(steps) == 0


def test_tuner_runs_on_cuda_and_returns_cpu_float32_results(ddpm):
    model = _on(ddpm, CUDA)
    sigmas = make_sigmas(model, "quadratic_t", 5)
    cfg = TuneConfig(
        iters=30,
        batch=64,
        pool=128,
        val_size=128,
        validate_every=10,
        teacher_substeps=8,
        families=("tau", "dode", "sigma"),
        show_progress=False,
    )
    tuner = Tuner(model, "ddim", sigmas, "quadratic_t", cfg)
    assert tuner.device.type == "cuda"
    untuned = tuner.joint.pool_objective(tuner.untuned)
    result = tuner.tune()
    assert tuner.joint.pool_objective() < untuned
    for t in (result.tau, result.eval_sigmas, result.sigmas, result.dode_lambda):
        assert t.device.type == "cpu" and t.dtype == torch.float32
    ts = result.tuned_set(model)
    samples = generate(model, registry.get_sampler("ddim"), ts.sigmas, noise(16), lookup=ts.lookup())
    assert samples.device.type == "cpu" and torch.isfinite(samples).all()
