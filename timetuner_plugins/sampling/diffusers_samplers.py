"""diffusers' schedulers as registry samplers: each one drives the scheduler's own ``step()`` (its code, not a copy).

A sampler ``diffusers.<SchedulerClass>`` has the shared signature ``fn(model, x, sigmas, extra_args, callback,
disable, scheduler_config=None)``. Per run it builds the scheduler from the model's scheduler config (a diffusers
adapter's; for another discrete-time VP model the β's of its σ table; for a flow model its shift) with
``scheduler_config`` applied on top, calls ``set_timesteps(len(sigmas) − 1)`` (plus what the model's pipeline
passes there: Flux's σ's and μ), and loops over the scheduler's timesteps exactly as a pipeline does, with our
denoiser in place of the network:

- state: our σ-space x is converted to the scheduler's sample and back — x_vp = x / √(1 + σ²) for the
  VP schedulers (DDIM, PNDM, DPM-Solver, UniPC, DEIS), x itself for the k-diffusion-style ones (Euler, Heun, LMS,
  which scale the network input themselves) and for flow models;
- model output: ε = (x − D)/σ for VP models (the scheduler is built with ``prediction_type="epsilon"``; our
  adapters have already turned a v-network's output into D), v = (x − D)/σ for flow models;
- σ's: the scheduler decides them. A run's ``sigmas`` must be the σ's of its steps (its evaluation σ's with a
  step's repeats — Heun's corrector, PNDM's first step — counted once) followed by 0; others are refused with the
  σ's it would use. The schedule of the same name (``--schedule diffusers.<SchedulerClass>``) gives exactly
  those. A scheduler that stops above σ = 0 (DEIS, DDIM with ``set_alpha_to_one`` false, ...) returns its final
  state at that σ, in our σ-space coordinates.

Every evaluation of a run is one call of ``model`` at the run's σ (so identity τ is bit-exact and the tuner sees
a fixed sequence of evaluations); only deterministic configurations are accepted.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..tuning.tuner import TuneError

SIGMA_RTOL = 1e-5


@dataclass(frozen=True)
class Entry:
    """A scheduler presented as a sampler: its class, the space its sample lives in, evaluations per run."""

    cls: str
    space: str  # "vp": x_vp = x/√(1+σ²); "ve": k-diffusion-style x; "flow": flow x
    nfe: Callable[[torch.Tensor], int]
    description: str


def _one(sigmas: torch.Tensor) -> int:
    return len(sigmas) - 1


def _heun(sigmas: torch.Tensor) -> int:
    return max(2 * (len(sigmas) - 1) - 1, 0)


def _pndm(sigmas: torch.Tensor) -> int:
    steps = len(sigmas) - 1
    return steps + 1 if steps >= 2 else steps  # PLMS evaluates its first step twice (a Heun-like start)


ENTRIES = [
    Entry("DDIMScheduler", "vp", _one, "diffusers DDIM (eta 0), the scheduler's own step()"),
    Entry("PNDMScheduler", "vp", _pndm, "diffusers PNDM / PLMS (skip_prk_steps), SD1.5's default scheduler"),
    Entry("DPMSolverMultistepScheduler", "vp", _one, "diffusers DPM-Solver++ multistep (2M by default)"),
    Entry("DPMSolverSinglestepScheduler", "vp", _one, "diffusers DPM-Solver singlestep"),
    Entry("UniPCMultistepScheduler", "vp", _one, "diffusers UniPC multistep (bh2, order 2)"),
    Entry("DEISMultistepScheduler", "vp", _one, "diffusers DEIS multistep (order 2; stops at the first timestep's σ)"),
    Entry("EulerDiscreteScheduler", "ve", _one, "diffusers Euler (k-diffusion style), SDXL's default scheduler"),
    Entry("HeunDiscreteScheduler", "ve", _heun, "diffusers Heun, 2nd order"),
    Entry("LMSDiscreteScheduler", "ve", _one, "diffusers linear multistep (order 4)"),
    Entry("FlowMatchEulerDiscreteScheduler", "flow", _one, "diffusers flow-matching Euler (SD3 / Flux default)"),
    Entry("FlowMatchHeunDiscreteScheduler", "flow", _heun, "diffusers flow-matching Heun"),
]
BY_NAME = {f"diffusers.{e.cls}": e for e in ENTRIES}
# The model spaces each kind is right for: the flow-matching schedulers' steps are Euler / Heun in σ, the same ODE
# step in both spaces; the others convert a VP sample.
SPACES = {"vp": ("ve",), "ve": ("ve",), "flow": ("ve", "flow")}


class DiffusersScheduleError(TuneError):
    """A run whose σ's or settings a diffusers scheduler cannot follow; the message names the fix."""


def find_attr(model: Any, name: str, depth: int = 10) -> Any:
    """``name`` on ``model`` or on what it wraps (τ hooks' ``inner_model``, CFG's ``inner``), else None."""
    for _ in range(depth):
        if model is None:
            return None
        value = getattr(model, name, None)
        if value is not None:
            return value
        model = getattr(model, "inner_model", None) or getattr(model, "inner", None)
    return None


def base_config(entry: Entry, model: Any) -> dict[str, Any] | None:
    """The scheduler config a run starts from: the model's own (a diffusers adapter), else one derived from the
    model's σ table (discrete-time VP: its β's; flow: its shift); None for a model with neither."""
    own = find_attr(model, "scheduler_config")
    if own is not None:
        return {k: v for k, v in dict(own).items() if not k.startswith("_")}
    if find_attr(model, "space") == "flow":
        return {
            "shift": float(find_attr(model, "shift") or 1.0),
            "num_train_timesteps": int(find_attr(model, "timesteps") or 1000),
        }
    log_sigmas = find_attr(model, "log_sigmas")
    if log_sigmas is None:
        return None
    abar = 1 / (1 + log_sigmas.detach().double().cpu().exp() ** 2)
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    return {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(), "clip_sample": False}


NO_CONFIG = (
    "needs a discrete-time VP model — a diffusers adapter (timetuner_plugins.adapters.diffusers) or a "
    "DiscreteVPDenoiser, whose σ table it turns into the scheduler's β's — or a flow model"
)


def _scheduler_class(entry: Entry) -> type:
    from ..adapters.diffusers import require_diffusers

    diffusers = require_diffusers()
    cls = getattr(diffusers, entry.cls, None)
    if cls is None:
        raise DiffusersScheduleError(f"this diffusers ({diffusers.__version__}) has no {entry.cls}")
    return cls


def run_config(entry: Entry, model: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The config a run builds its scheduler with: the base, ``overrides`` on top, keys the class does not take
    dropped, the prediction type set to what the sampler feeds (ε)."""
    cls = _scheduler_class(entry)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    base = base_config(entry, model)
    if base is None:
        raise DiffusersScheduleError(
            f"diffusers.{entry.cls} {NO_CONFIG}; this model has neither a scheduler config nor a σ table"
        )
    cfg = {**base, **(overrides or {})}
    unknown = sorted(set(overrides or {}) - accepted)
    if unknown:
        raise DiffusersScheduleError(
            f"{entry.cls} has no setting {', '.join(map(repr, unknown))}; it takes: {', '.join(sorted(accepted))}"
        )
    cfg = {k: v for k, v in cfg.items() if k in accepted}
    if entry.space != "flow" and "prediction_type" in accepted:
        cfg["prediction_type"] = "epsilon"
    if entry.cls == "PNDMScheduler":
        if (overrides or {}).get("skip_prk_steps") is False or (base.get("skip_prk_steps") is False):
            raise DiffusersScheduleError(
                "diffusers.PNDMScheduler is registered as PLMS (skip_prk_steps, as Stable "
                "Diffusion's configs set it): its Runge-Kutta warm-up steps are not supported"
            )
        cfg["skip_prk_steps"] = True
    if (
        str(cfg.get("algorithm_type", "")).startswith("sde")
        or cfg.get("stochastic_sampling")
        or float(cfg.get("eta", 0) or 0) > 0
    ):
        raise DiffusersScheduleError(
            f"diffusers.{entry.cls} with {cfg.get('algorithm_type') or 'noise'} adds noise "
            f"from its own generator; only deterministic settings are registry samplers"
        )
    return cfg


@dataclass
class Plan:
    """A scheduler after ``set_timesteps`` and what a run reads from it."""

    scheduler: Any
    eval_sigmas: list[float]  # the σ of each evaluation (one per timestep)
    step_of: list[int]  # the step each evaluation belongs to
    step_sigmas: list[float]  # σ of each step (evaluation σ's, a step's repeats once)
    final_sigma: float


_TEMPLATES: dict[str, Plan] = {}
_BY_SIGMAS: dict[tuple, str] = {}  # (class, settings, step σ's in float32) -> template key


def plan(
    entry: Entry, model: Any, steps: int, overrides: dict[str, Any] | None = None, sigmas: torch.Tensor | None = None
) -> Plan:
    """A fresh scheduler for ``steps`` steps on ``model`` (built once per setting, copied per run).

    A model with no scheduler config or σ table — the registry's stand-in that records a run's evaluation σ's
    (``run.eval_sigmas``) — gets the plan whose step σ's are ``sigmas``, from an earlier run or schedule."""
    overrides_key = json.dumps(overrides or {}, sort_keys=True, default=str)
    if base_config(entry, model) is None and sigmas is not None:
        key = _BY_SIGMAS.get((entry.cls, overrides_key, tuple(sigmas[:-1].detach().float().cpu().tolist())))
        if key is None:
            raise DiffusersScheduleError(
                f"diffusers.{entry.cls} {NO_CONFIG}; or σ's that one of its schedules gave "
                f"(--schedule diffusers.{entry.cls})"
            )
    else:
        cfg = run_config(entry, model, overrides)
        setter = find_attr(model, "set_timesteps_kwargs")
        kwargs = setter(steps) if callable(setter) else {}
        key = json.dumps([entry.cls, cfg, steps, kwargs], sort_keys=True, default=str)
        if key not in _TEMPLATES:
            made = _TEMPLATES[key] = _make_plan(entry, cfg, steps, kwargs)
            step_key = tuple(torch.tensor(made.step_sigmas, dtype=torch.float32).tolist())
            _BY_SIGMAS[(entry.cls, overrides_key, step_key)] = key
    template = _TEMPLATES[key]
    return Plan(
        copy.deepcopy(template.scheduler),
        template.eval_sigmas,
        template.step_of,
        template.step_sigmas,
        template.final_sigma,
    )


def _make_plan(entry: Entry, cfg: dict[str, Any], steps: int, kwargs: dict[str, Any]) -> Plan:
    import logging

    cls = _scheduler_class(entry)
    logger = logging.getLogger(cls.__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # e.g. DPMSolverSinglestep's note on odd step counts, once per setting
    try:
        scheduler = cls.from_config(cfg)
        scheduler.set_timesteps(steps, **kwargs)
    finally:
        logger.setLevel(level)
    return read_plan(scheduler)


def read_plan(scheduler: Any, final: bool = True) -> Plan:
    """What a run of ``scheduler`` (after ``set_timesteps``) evaluates: the σ of each timestep — its ``sigmas``
    entry where it keeps one per timestep, else from ᾱ at the timestep —, the step each belongs to, and (with
    ``final``) the σ it ends at. Reads the scheduler; changes nothing."""
    timesteps = scheduler.timesteps
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(timesteps) + 1:
        evals = [float(s) for s in sigmas[:-1].double()]
        end = float(sigmas[-1])
    elif hasattr(scheduler, "alphas_cumprod"):
        abar = scheduler.alphas_cumprod.double()[timesteps.long().cpu()]
        evals = [float(s) for s in ((1 - abar) / abar).sqrt()]
        end = _probe_final_sigma(scheduler, evals[0]) if final else float("nan")
    else:
        raise DiffusersScheduleError(f"{type(scheduler).__name__}: cannot read the σ of its timesteps")
    step_of, step_sigmas = [], []
    for s in evals:
        if not step_sigmas or abs(s - step_sigmas[-1]) > SIGMA_RTOL * step_sigmas[-1]:
            step_sigmas.append(s)
        step_of.append(len(step_sigmas) - 1)
    return Plan(scheduler, evals, step_of, step_sigmas, end)


def _probe_final_sigma(scheduler: Any, first_sigma: float) -> float:
    """The σ a VP scheduler ends at: a run whose ε is 0 everywhere keeps x_vp/√ᾱ fixed (every solver is exact on
    a constant x₀), so the final sample over the start gives √ᾱ at the end. Runs a copy; the scheduler's code
    decides, whatever its rule for the last step."""
    probe = copy.deepcopy(scheduler)
    start = 1e-3
    sample = torch.full((1, 1), start, dtype=torch.float64)
    for t in probe.timesteps:
        sample = probe.step(torch.zeros_like(sample), t, sample, return_dict=False)[0]
    alpha = float(sample.reshape(-1)[0]) / start / (1 + first_sigma**2) ** 0.5
    return 0.0 if alpha >= 1 - 1e-6 else ((1 - alpha**2) ** 0.5) / alpha


def check_sigmas(name: str, p: Plan, sigmas: torch.Tensor) -> None:
    host = sigmas.detach().double().cpu().tolist()
    ok = (
        len(host) == len(p.step_sigmas) + 1
        and host[-1] == 0.0
        and all(abs(a - b) <= SIGMA_RTOL * b for a, b in zip(host[:-1], p.step_sigmas))
    )
    if not ok:
        fmt = lambda v: "[" + ", ".join(f"{x:.5g}" for x in v) + "]"  # noqa: E731
        raise DiffusersScheduleError(
            f"sampler {name!r} runs the σ's its scheduler sets for {len(host) - 1} steps, {fmt(p.step_sigmas)} then 0, "
            f"but the run's σ's are {fmt(host)}: the scheduler's timesteps decide the schedule. Use the schedule "
            f"{name!r} (--schedule {name}), which gives exactly those σ's"
        )


def make_sampler(entry: Entry) -> Callable[..., torch.Tensor]:
    name = f"diffusers.{entry.cls}"

    def sample(
        model, x, sigmas, extra_args=None, callback=None, disable=None, scheduler_config: dict | None = None
    ) -> torch.Tensor:
        extra_args = extra_args or {}
        p = plan(entry, model, len(sigmas) - 1, scheduler_config, sigmas)
        check_sigmas(name, p, sigmas)
        scheduler = p.scheduler
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        scale = getattr(scheduler, "scale_model_input", None)
        ones = x.new_ones([x.shape[0]])
        vp = entry.space == "vp"
        state = x / (1 + sigmas[0] ** 2) ** 0.5 if vp else x
        for i, t in enumerate(scheduler.timesteps):
            j = p.step_of[i]
            sigma = sigmas[j]
            current = state * (1 + sigma**2) ** 0.5 if vp else state
            denoised = model(current, sigma * ones, **extra_args)
            if callback is not None and (i == 0 or p.step_of[i - 1] != j):
                callback({"x": current, "i": j, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
            output = (current - denoised) / sigma  # ε (VP, VE) or v (flow)
            if scale is not None:
                scale(state, t)  # the pipeline's protocol (Euler-style schedulers expect the call before step())
            state = scheduler.step(output.to(state.dtype), t, state, return_dict=False)[0]
        return state * (1 + p.final_sigma**2) ** 0.5 if vp and p.final_sigma else state

    sample.__name__ = f"sample_{entry.cls}"
    sample.__doc__ = (
        f"{entry.description}: drives {entry.cls}.step() (see timetuner_plugins.sampling.diffusers_samplers)."
    )
    return sample


def make_schedule(entry: Entry) -> Callable[[int, Any], torch.Tensor]:
    def schedule(n: int, model: Any) -> torch.Tensor:
        p = plan(entry, model, n)
        return torch.tensor([*p.step_sigmas, 0.0], dtype=torch.float32)

    schedule.__name__ = f"schedule_{entry.cls}"
    return schedule
