"""The one tune pipeline: a schedule's σ's → the generic tuner → before/after evaluation → a tuned set.

The command line, the set builder, the benchmark, the demo, the T-Stitch report and the ComfyUI Tune node tune through
:func:`tune_set` (:func:`tune_function_set` for τ functions), so a set made anywhere is made, measured and recorded
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from registry import SamplerSpec

from ..evaluation.evaluate import evaluate
from ..sampling.run import make_sigmas, sampler_spec, steps_for_nfe
from ..sets.tuned_set import TunedSet
from .tuner import TuneConfig, Tuner, TuneResult


def schedule_sigmas(
    model: Any,
    sampler: str | SamplerSpec,
    schedule: str | None = None,
    *,
    steps: int | None = None,
    nfe: int | None = None,
) -> tuple[torch.Tensor, str]:
    """The σ's of ``schedule`` (default: the model's) for ``steps`` steps, or for the most steps within ``nfe``
    network evaluations; exactly one of the two."""
    if (steps is None) == (nfe is None):
        raise ValueError("give exactly one of steps (sampler steps) or nfe (network evaluations)")
    schedule = schedule or model.default_schedule
    if steps is None:
        steps = steps_for_nfe(sampler_spec(sampler), model, schedule, nfe)
    return make_sigmas(model, schedule, steps), schedule


@dataclass
class Tuned:
    """What :func:`tune_set` made: the tuner's result, the set (metrics included) and the before/after metrics."""

    result: TuneResult
    tuned_set: TunedSet
    before: dict[str, Any]
    after: dict[str, Any]


def measure(
    model: Any,
    spec: SamplerSpec,
    sigmas: torch.Tensor,
    schedule: str,
    result: TuneResult,
    *,
    options: dict | None = None,
    extra_args: dict | None = None,
    n: int = 1000,
    progress: bool = False,
    ref: torch.Tensor | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain and the tuned run on ``n`` samples of evaluation noise: FD (where the model has one), trajectory
    error against the cached 500-NFE reference (or ``ref``), NFE and seconds."""
    common = dict(n=n, options=options, extra_args=extra_args, progress=progress, ref=ref)
    before = evaluate(model, spec, sigmas, schedule, **common)
    after = evaluate(model, spec, result.sigmas, schedule, lookup=result.tuned_set(model).lookup(), **common)
    return before, after


def tune_set(
    model: Any,
    sampler: str | SamplerSpec,
    sigmas: torch.Tensor,
    schedule: str,
    config: TuneConfig | None = None,
    *,
    options: dict | None = None,
    extra_args: dict | None = None,
    eval_n: int = 1000,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    extra: dict | None = None,
    on_iteration: Callable[[int, int], None] | None = None,
) -> Tuned:
    """Tune ``sampler`` on ``model`` over ``sigmas`` and :func:`measure` the result on ``eval_n`` samples (0 skips
    it); the metrics are recorded in the set. ``on_iteration(done, total)`` is called after every iteration."""
    tuner = Tuner(
        model, sampler, sigmas, schedule, config, options=options, extra_args=extra_args, checkpoint=checkpoint
    )
    result = tuner.tune(resume=resume, progress=on_iteration)
    before, after = (
        measure(
            model,
            tuner.spec,
            sigmas,
            schedule,
            result,
            options=tuner.options,
            extra_args=extra_args,
            n=eval_n,
            progress=progress,
        )
        if eval_n
        else ({}, {})
    )
    return Tuned(result, result.tuned_set(model, before, after, extra=extra), before, after)


@dataclass
class TunedFunction:
    """What :func:`tune_function_set` made: the tuner's result, the function set (metrics included) and the
    before/after metrics on its representative run."""

    result: Any  # function_tuner.FunctionResult
    tuned_set: TunedSet
    before: dict[str, Any]
    after: dict[str, Any]


def representative_nfe(nfe_range: tuple[int, int]) -> int:
    """The NFE a function set is measured and shown at: 10, or the range's nearest end."""
    return min(max(10, nfe_range[0]), nfe_range[1])


def tune_function_set(
    model: Any,
    sampler: str | SamplerSpec,
    schedules: list[str],
    nfe_range: tuple[int, int],
    config: TuneConfig | None = None,
    *,
    options: dict | None = None,
    eval_n: int = 1000,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> TunedFunction:
    """Tune one τ function over ``nfe_range`` and ``schedules`` and measure it on ``eval_n`` samples at the
    representative run (the first schedule, :func:`representative_nfe`); the metrics are recorded in the set.
    ``checkpoint``: written every ``config.checkpoint_every`` iterations and removed at the end; ``resume``
    continues from it."""
    from .function_tuner import FunctionTuner

    tuner = FunctionTuner(model, sampler, schedules, nfe_range, config, options=options, checkpoint=checkpoint)
    result = tuner.tune(resume=resume)
    sigmas, schedule = schedule_sigmas(model, tuner.spec, schedules[0], nfe=representative_nfe(nfe_range))
    before = after = {}
    tuned = result.tuned_set(model, sigmas)
    if eval_n:
        common = dict(n=eval_n, options=tuner.options, progress=progress)
        before = evaluate(model, tuner.spec, sigmas, schedule, **common)
        one = tuned.for_run(model, sigmas, schedule=schedule)
        after = evaluate(model, tuner.spec, sigmas, schedule, lookup=one.lookup(), **common)
        tuned = result.tuned_set(model, sigmas, before, after)
    return TunedFunction(result, tuned, before, after)
