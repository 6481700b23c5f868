"""Evaluating a sampler run, untuned or with τ: FD, error against a 500-NFE reference, time."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from registry import SamplerSpec

from ..io import atomic_path
from .metrics import fd_metric, trajectory_error
from ..sampling.noise import BrownianNoise
from ..sampling.run import eval_sigmas, make_sigmas, per_sample_args, run_sampler, steps_for_nfe
from ..devices import model_device
from ..sets.tau import TauLookup

REFERENCE_NFE = 500
EVAL_SEED = 10_000  # evaluation noise is drawn apart from any tuning seed
CHUNK = 500


def cache_dir() -> Path:
    """Where reference runs are cached: $TIMETUNER_CACHE, else ~/.cache/timetuner."""
    return Path(os.environ.get("TIMETUNER_CACHE", Path.home() / ".cache" / "timetuner"))


def eval_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def generate(
    model: Any,
    spec: SamplerSpec,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    lookup: TauLookup | None = None,
    options: dict | None = None,
    extra_args: dict | None = None,
    seed: int = EVAL_SEED,
    chunk: int = CHUNK,
    progress: str | None = None,
) -> torch.Tensor:
    """Samples from ``noise`` in chunks, run on the model's device and returned on the CPU; stochastic
    samplers follow one Brownian path per chunk, so runs with different step counts from the same seed
    are comparable sample by sample. ``progress``: a bar with this label, counting sampler steps."""
    stochastic = spec.is_stochastic(options)
    device = model_device(model)
    chunks = noise.split(chunk)
    out = []
    with (
        torch.no_grad(),
        tqdm(
            total=len(chunks) * (len(sigmas) - 1), desc=progress, unit="step", leave=False, disable=progress is None
        ) as bar,
    ):
        for c, sub in enumerate(chunks):
            x = sub.to(device) * sigmas[0].to(device)
            ns = BrownianNoise(x, model.sigma_min, model.sigma_max, seed + c) if stochastic else None
            args = per_sample_args(extra_args, slice(c * chunk, c * chunk + len(sub)), len(noise), device)
            out.append(
                run_sampler(
                    model,
                    spec,
                    x,
                    sigmas,
                    lookup=lookup,
                    options=options,
                    extra_args=args,
                    noise_sampler=ns,
                    seed=seed + c,
                    callback=lambda _: bar.update(1),
                ).cpu()
            )
    return torch.cat(out)


def _key(*parts: Any) -> str:
    def enc(v: Any) -> Any:
        if torch.is_tensor(v):
            return hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if isinstance(v, dict):
            return {k: enc(x) for k, x in sorted(v.items())}
        return v

    return hashlib.sha256(json.dumps([enc(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()[:24]


def reference(
    model: Any,
    spec: SamplerSpec,
    schedule: str,
    noise: torch.Tensor,
    *,
    options: dict | None = None,
    extra_args: dict | None = None,
    seed: int = EVAL_SEED,
    nfe: int = REFERENCE_NFE,
    progress: bool = False,
    start_sigma: float | None = None,
) -> torch.Tensor:
    """The same sampler at about ``nfe`` evaluations on the same schedule from the same noise (and the
    same Brownian path for stochastic samplers); cached on disk by everything it depends on. With
    ``progress``, computing one (not reading the cache) shows a bar that says where it is cached.

    ``start_sigma``: the σ_0 of the run it is the reference for. Where the schedule's σ_0 depends on its step count
    (ComfyUI's ddim_uniform), the fine run starts there instead (its σ's below it), so the reference solves the same
    ODE from the same state as the run; elsewhere it changes nothing."""
    options = spec.options(options)
    steps = steps_for_nfe(spec, model, schedule, nfe)
    sigmas = make_sigmas(model, schedule, steps)
    if start_sigma is not None and abs(float(sigmas[0]) - start_sigma) > 1e-4 * start_sigma:
        sigmas = torch.cat([sigmas.new_tensor([start_sigma]), sigmas[sigmas < start_sigma * (1 - 1e-4)]])
    else:
        start_sigma = None  # the same reference as without it (one cache entry)
    key = _key(
        "reference-v1", model.fingerprint, spec.name, spec.plugin, options, schedule, nfe, noise, extra_args, seed
    )
    if start_sigma is not None:
        key = _key(key, "from", start_sigma)
    path = cache_dir() / "references" / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["samples"]
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    label = f"{nfe}-NFE {spec.name} reference, {len(noise)} samples (once; cached in {path.parent})"
    samples = generate(
        model,
        spec,
        sigmas,
        noise,
        options=options,
        extra_args=extra_args,
        seed=seed,
        progress=label if progress else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        save_file({"samples": samples.contiguous()}, str(tmp))
    return samples


def evaluate(
    model: Any,
    sampler: SamplerSpec,
    sigmas: torch.Tensor,
    schedule: str,
    *,
    lookup: TauLookup | None = None,
    n: int = 1000,
    seed: int = EVAL_SEED,
    options: dict | None = None,
    extra_args: dict | None = None,
    ref: torch.Tensor | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``fd`` (None when the model has no FD), ``fd_reference``, ``traj_err``, ``nfe`` and ``seconds``;
    ``progress`` shows bars for the reference (when not cached) and the run."""
    noise = eval_noise(n, tuple(model.sample_shape), seed)
    if ref is None:
        ref = reference(
            model,
            sampler,
            schedule,
            noise,
            options=options,
            extra_args=extra_args,
            seed=seed,
            progress=progress,
            start_sigma=float(sigmas[0]),
        )
    started = time.perf_counter()
    label = f"evaluate {sampler.name} {'tuned' if lookup is not None else 'untuned'}, {n} samples"
    samples = generate(
        model,
        sampler,
        sigmas,
        noise,
        lookup=lookup,
        options=options,
        extra_args=extra_args,
        seed=seed,
        progress=label if progress else None,
    )
    seconds = time.perf_counter() - started
    fd = fd_metric(model)
    return {
        "fd": None if fd is None else fd(samples),
        "fd_reference": None if fd is None else fd(ref),
        "traj_err": trajectory_error(samples, ref),
        "nfe": len(eval_sigmas(sampler, sigmas, tuple(model.sample_shape), options)),
        "seconds": round(seconds, 4),
        "n": n,
    }


SCHEDULE_SEED = 20_000  # validation noise for choosing a schedule, apart from tuning and evaluation seeds


def choose_schedule(
    model: Any,
    spec: SamplerSpec,
    nfe: int,
    candidates: list[str] | None = None,
    n: int = 500,
    options: dict | None = None,
) -> tuple[str, dict[str, float]]:
    """The registered schedule under which the untuned sampler does best at ``nfe`` evaluations, scored on
    validation noise by the model's FD, or (models without one) by the error against a 500-NFE
    DPM-Solver++(2M) run. Returns the name and every candidate's score."""
    import registry

    if candidates is None:  # one name per schedule function ('exponential' is ComfyUI's name for 'logsnr')
        unique: dict[Any, str] = {}
        for name, schedule in sorted(registry.schedules().items()):
            if getattr(schedule, "auto", True):
                unique.setdefault(schedule.fn, name)
        candidates = sorted(unique.values())
    noise = eval_noise(n, tuple(model.sample_shape), SCHEDULE_SEED)
    fd = fd_metric(model)
    ref = None
    if fd is None:
        solver = registry.get_sampler("dpmpp_2m")
        ref = generate(model, solver, make_sigmas(model, "logsnr", REFERENCE_NFE), noise, seed=SCHEDULE_SEED)
    scores = {}
    for name in candidates:
        sigmas = make_sigmas(model, name, steps_for_nfe(spec, model, name, nfe))
        samples = generate(model, spec, sigmas, noise, options=options, seed=SCHEDULE_SEED)
        score = fd(samples) if fd is not None else trajectory_error(samples, ref)
        scores[name] = score if score == score else float("inf")  # NaN from a diverged run ranks last
    return min(scores, key=scores.get), scores
