"""Running a registered sampler, plainly or with a τ lookup applied through the ``wrap_model`` hook."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

import registry
from registry import SamplerSpec

from .noise import SeededNoise
from .samplers import run_options
from ..sets.tau import RecordingModel, TauLookup


def sampler_spec(sampler: str | SamplerSpec) -> SamplerSpec:
    return sampler if isinstance(sampler, SamplerSpec) else registry.get_sampler(sampler)


def make_sigmas(model: Any, schedule: str, steps: int) -> torch.Tensor:
    """``steps`` σ's of the named schedule over the model's range, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return registry.get_schedule(schedule).fn(steps, model)


def nfe_of(spec: SamplerSpec, sigmas: torch.Tensor, model: Any = None, options: dict | None = None) -> int:
    """How many network evaluations a run of ``spec`` on ``sigmas`` makes; samplers counted by a dry run (ComfyUI's)
    count for ``model``'s σ space and ``options``."""
    if getattr(spec.nfe, "by_dry_run", False):
        return spec.nfe(sigmas, options=options, model=model)
    return spec.nfe(sigmas)


def steps_for_nfe(spec: SamplerSpec, model: Any, schedule: str, nfe: int) -> int:
    """The most steps whose run makes at most ``nfe`` network evaluations."""
    best = None
    for steps in range(1, nfe + 1):
        if spec.nfe(make_sigmas(model, schedule, steps)) <= nfe:
            best = steps
    if best is None:
        raise ValueError(f"{spec.name} needs more than {nfe} evaluations for a single step")
    return best


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork and seed torch's global RNG (for samplers that draw with ``torch.randn_like``)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def per_sample_args(extra_args: dict | None, rows: slice, n: int, device: torch.device | None = None) -> dict | None:
    """``extra_args`` for rows ``rows`` of an ``n``-sample run: tensors with one row per sample are sliced, the
    rest (one row for every sample, scalars, other values) pass whole; tensors are moved to ``device`` if given."""
    if not extra_args:
        return extra_args
    out = {}
    for k, v in extra_args.items():
        if torch.is_tensor(v):
            v = v[rows] if v.ndim and len(v) == n else v
            v = v if device is None else v.to(device)
        out[k] = v
    return out


def run_sampler(
    model: Callable[..., torch.Tensor],
    spec: SamplerSpec,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    lookup: TauLookup | None = None,
    extra_args: dict | None = None,
    options: dict | None = None,
    noise_sampler: Callable | None = None,
    seed: int = 0,
    callback: Callable | None = None,
    disable: bool = True,
) -> torch.Tensor:
    """One run of ``spec`` from ``x`` (already at σ₀) over ``sigmas``.

    The registry's ``model_for_run`` hook picks the callable for the run's evaluations (the
    model itself unless a plugin claims it); with a ``lookup`` that is wrapped by the
    ``wrap_model`` hook and the run must make exactly ``len(lookup)`` evaluations. Stochastic samplers without a
    ``noise_sampler`` get seeded noise, so a run is deterministic for ``seed``.
    """
    opts = spec.options(options)
    spec.check_space(model)
    if noise_sampler is None and spec.is_stochastic(opts):
        noise_sampler = SeededNoise(x, seed)
    if noise_sampler is not None:
        opts["noise_sampler"] = noise_sampler
    call = registry.model_for_run(model, spec, sigmas)
    call = call if lookup is None else registry.wrap_model(call, lookup, spec)
    with seeded(seed, x.device):
        out = spec.fn(
            call,
            x,
            sigmas.to(x.device),
            extra_args=extra_args,
            callback=callback,
            disable=disable,
            **run_options(spec.fn, opts),
        )
    check = getattr(call, "check_complete", None)
    if lookup is not None and check is not None:
        check()
    return out


def sample(
    model: Any,
    sampler: str | SamplerSpec,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    tuned: Any = None,
    lookup: TauLookup | None = None,
    force: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Sample from standard-normal ``noise`` (scaled to σ₀ here), optionally with a tuned set.

    A ``tuned`` set is checked against the model, sampler and σ's first (a τ function set: τ for these σ's, if
    their NFE is in its range); a mismatch raises :class:`~timetuner_plugins.sets.tuned_set.TunedSetMismatch` unless
    ``force``.
    """
    spec = sampler_spec(sampler)
    if tuned is not None:
        tuned = tuned.for_run(model, sigmas, sample_shape=tuple(noise.shape[1:]), force=force)
        tuned.check(model=model, sampler=spec.name, sigmas=sigmas, force=force)
        lookup = tuned.lookup()
    return run_sampler(model, spec, noise * sigmas[0], sigmas, lookup=lookup, **kwargs)


class _Zero:
    """A stand-in denoiser that returns zeros, with the σ space of the model it stands for (samplers that read
    the model's kind, such as ComfyUI's on flow models or diffusers' schedulers on the model's own config, evaluate
    where they would on the real model)."""

    def __init__(self, like: Any = None):
        self.inner_model = None
        for attr in (
            "space",
            "shift",
            "multiplier",
            "sigma_table",
            "comfy_guider",
            "sigma_min",
            "sigma_max",
            "log_sigmas",
            "timesteps",
            "scheduler_config",
            "set_timesteps_kwargs",
        ):
            if like is not None and hasattr(like, attr):
                setattr(self, attr, getattr(like, attr))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.zeros_like(x)


@dataclass(frozen=True)
class EvalPlan:
    """Where each network evaluation of a run happens: its σ, the step (σ_i → σ_{i+1}) it belongs to and its place
    in that step (j / n_i for the j-th of the step's n_i evaluations)."""

    eval_sigmas: torch.Tensor
    step: torch.Tensor
    stage: torch.Tensor


def eval_plan(
    spec: SamplerSpec,
    sigmas: torch.Tensor,
    sample_shape: tuple[int, ...],
    options: dict | None = None,
    model: Any = None,
) -> EvalPlan:
    """The :class:`EvalPlan` of a run of ``spec`` on ``sigmas``, found by running it on a stand-in denoiser that
    returns zeros, of ``model``'s σ space (samplers whose σ's depend on the model's output are not tunable). Steps
    come from the sampler's callback, which k-diffusion-style samplers call once per step after its first
    evaluation; a sampler that does not is planned from σ alone (every evaluation at stage 0)."""
    recorder = RecordingModel(_Zero(model))
    firsts: list[int] = []
    x = torch.randn((1, *sample_shape), generator=torch.Generator().manual_seed(0)) * sigmas[0]
    with torch.no_grad():
        run_sampler(
            recorder, spec, x, sigmas, options=options, callback=lambda _: firsts.append(len(recorder.sigmas) - 1)
        )
    recorded = torch.tensor(recorder.sigmas, dtype=torch.float32)
    if not getattr(spec.nfe, "by_dry_run", False) and len(recorded) != spec.nfe(sigmas):
        raise RuntimeError(
            f"sampler {spec.name!r} made {len(recorded)} evaluations on {len(sigmas) - 1} steps but "
            f"its spec says {spec.nfe(sigmas)}; fix the nfe function its plugin registers"
        )
    k = len(recorded)
    if (
        len(firsts) == len(sigmas) - 1
        and firsts[0] == 0
        and all(b > a for a, b in zip(firsts, firsts[1:]))
        and firsts[-1] < k
    ):
        bounds = firsts + [k]
        step = torch.cat([torch.full((b - a,), i) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))])
        stage = torch.cat([torch.arange(b - a, dtype=torch.float32) / (b - a) for a, b in zip(bounds, bounds[1:])])
    else:  # by σ: the step whose interval [σ_{i+1}, σ_i) holds the evaluation's σ
        starts = sigmas[:-1].float()
        step = (recorded[:, None] <= starts[None, :] * (1 + 1e-6)).sum(1).sub(1).clamp(0, len(starts) - 1)
        stage = torch.zeros(k)
    return EvalPlan(recorded, step.long(), stage)


def eval_sigmas(
    spec: SamplerSpec,
    sigmas: torch.Tensor,
    sample_shape: tuple[int, ...],
    options: dict | None = None,
    model: Any = None,
) -> torch.Tensor:
    """The σ of each network evaluation a run on ``sigmas`` makes (see :func:`eval_plan`)."""
    return eval_plan(spec, sigmas, sample_shape, options, model).eval_sigmas
