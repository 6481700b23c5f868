"""The one tune pipeline: a schedule's σ's → the generic tuner → before/after evaluation → a tuned set.

The command line, the set builder, the benchmark, the demo and the T-Stitch report all tune through
:func:`tune_set`, so a set made anywhere is made, measured and recorded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from registry import SamplerSpec

from .evaluate import evaluate
from .run import make_sigmas, sampler_spec, steps_for_nfe
from .tuned_set import TunedSet
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
) -> Tuned:
    """Tune ``sampler`` on ``model`` over ``sigmas`` and :func:`measure` the result on ``eval_n`` samples (0 skips
    it); the metrics are recorded in the set."""
    tuner = Tuner(
        model, sampler, sigmas, schedule, config, options=options, extra_args=extra_args, checkpoint=checkpoint
    )
    result = tuner.tune(resume=resume)
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
