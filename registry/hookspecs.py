"""Hook specifications of the ``timetuner`` plugin system.

A plugin is any module or object with functions marked ``@hookimpl``; built-in
plugins and third-party packages (entry-point group ``timetuner``) are
registered the same way. Registration hooks receive a ``register`` callback.
"""

from __future__ import annotations

from typing import Any, Callable

from pluggy import HookimplMarker, HookspecMarker

PROJECT = "timetuner"

hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)


@hookspec
def register_samplers(register: Callable[..., None]) -> None:
    """Register samplers: call ``register(SamplerSpec(...))`` once per sampler."""


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register named models: call ``register(ModelSpec(...))`` once per model."""


@hookspec
def register_model_adapters(register: Callable[..., None]) -> None:
    """Register adapters that turn foreign denoisers into tunable ones:
    call ``register(AdapterSpec(...))``."""


@hookspec
def register_schedules(register: Callable[..., None]) -> None:
    """Register σ schedules: call ``register(ScheduleSpec(...))``."""


@hookspec(firstresult=True)
def wrap_model(model: Any, lookup: Any, sampler: Any) -> Any:
    """Return the model ``sampler`` will call for a run that uses ``lookup``.

    ``model`` is a tunable denoiser ``D(x, sigma, cond_sigma=None, **extra)``;
    ``lookup`` is a :class:`timetuner_plugins.sets.tau.TauLookup`; ``sampler`` the
    :class:`registry.specs.SamplerSpec` of the run. The first non-``None``
    result wins; a built-in implementation (``trylast``) serves every sampler
    whose plugin declares nothing.
    """


@hookspec(firstresult=True)
def model_for_run(model: Any, sampler: Any, sigmas: Any) -> Any:
    """Return the callable that serves one run's network evaluations, or ``None`` for ``model`` itself.

    Called once per run, before any τ hook wraps the result, with the run's ``model``, the
    :class:`registry.specs.SamplerSpec` and its σ schedule (``sampler.nfe(sigmas)`` evaluations).
    A plugin may count the calls and choose a network for each evaluation (T-Stitch does); the
    callable takes and passes on ``cond_sigma`` like a tunable denoiser.
    """
