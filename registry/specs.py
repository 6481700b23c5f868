"""What plugins register: samplers, models, model adapters and σ schedules."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch

from .errors import SamplerOptionError, SamplerSpaceError

SAMPLER_ARGS = ("model", "x", "sigmas", "extra_args", "callback", "disable")


class SamplerFn(Protocol):
    """k-diffusion's sampler shape: ``model(x, sigma, **extra_args)`` returns denoised x."""

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: torch.Tensor,
        extra_args: dict | None = None,
        callback: Callable | None = None,
        disable: bool | None = None,
        **options: Any,
    ) -> torch.Tensor: ...


def one_eval_per_step(sigmas: torch.Tensor) -> int:
    """Network evaluations of a one-evaluation-per-step sampler (Euler, DPM-Solver++(2M), ...)."""
    return len(sigmas) - 1


def two_evals_per_step(sigmas: torch.Tensor) -> int:
    """Evaluations of a two-stage sampler whose step to σ=0 is a single Euler stage (Heun, DPM-2)."""
    steps = len(sigmas) - 1
    return 2 * steps - int(steps > 0 and float(sigmas[-1]) == 0.0)


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    ``nfe(sigmas)`` says how many network evaluations one run on ``sigmas`` makes;
    ``stochastic`` is a bool or a function of the run's options (Heun with churn).
    """

    name: str
    fn: SamplerFn
    nfe: Callable[[torch.Tensor], int] = one_eval_per_step
    stochastic: bool | Callable[[Mapping[str, Any]], bool] = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    plugin: str = ""
    tunable: bool = True
    untunable_reason: str = ""
    spaces: tuple[str, ...] = ("ve", "flow")  # the model σ spaces it is right for (see TunableDenoiser.space)

    def option_names(self) -> tuple[str, ...] | None:
        """The keyword options ``fn`` takes beyond the shared arguments (None: any, it takes ``**options``)."""
        params = inspect.signature(self.fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return tuple(p.name for p in params if p.name not in SAMPLER_ARGS and p.kind is not p.VAR_POSITIONAL)

    def options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults with ``overrides`` applied; an option ``fn`` does not take raises
        :class:`~registry.errors.SamplerOptionError` naming the ones it does."""
        merged = {**self.defaults, **(overrides or {})}
        accepted = self.option_names()
        if accepted is not None and set(merged) - set(accepted):
            raise SamplerOptionError(self.name, set(merged) - set(accepted), accepted)
        return merged

    def is_stochastic(self, options: Mapping[str, Any] | None = None) -> bool:
        if callable(self.stochastic):
            return bool(self.stochastic(self.options(options)))
        return bool(self.stochastic)

    def check_space(self, model: Any) -> None:
        """Raise :class:`~registry.errors.SamplerSpaceError` if the sampler is wrong for the model's σ space."""
        space = getattr(model, "space", "ve")
        if space not in self.spaces:
            raise SamplerSpaceError(self.name, space, self.spaces)


@dataclass(frozen=True)
class ModelSpec:
    """A named model; ``load()`` returns a tunable denoiser."""

    name: str
    load: Callable[[], Any]
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class AdapterSpec:
    """Turns a foreign denoiser object into a tunable one when ``accepts(obj)``."""

    name: str
    accepts: Callable[[Any], bool]
    adapt: Callable[..., Any]
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ScheduleSpec:
    """``fn(n, model)`` returns n σ's from high to low for the model's range, then 0."""

    name: str
    fn: Callable[[int, Any], torch.Tensor]
    description: str = ""
    plugin: str = ""
    auto: bool = True  # a candidate of ``--schedule auto`` (False: the σ's of one sampler, e.g. a diffusers scheduler)
