"""The ``timetuner`` plugin registry: samplers, models, adapters and schedules.

>>> import registry
>>> registry.get_sampler("dpmpp_2m").fn   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .errors import SamplerOptionError, SamplerSpaceError, UnknownNameError
from .hookspecs import hookimpl
from .plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP, add_problem, collecting, load_plugins, plugin_names, problems
from .plugins import reset as _reset_plugins
from .specs import AdapterSpec, ModelSpec, SamplerSpec, ScheduleSpec, one_eval_per_step, two_evals_per_step

__all__ = [
    "AdapterSpec",
    "ModelSpec",
    "SamplerSpec",
    "ScheduleSpec",
    "UnknownNameError",
    "SamplerOptionError",
    "SamplerSpaceError",
    "ENTRY_POINT_GROUP",
    "hookimpl",
    "one_eval_per_step",
    "two_evals_per_step",
    "samplers",
    "get_sampler",
    "models",
    "get_model_spec",
    "load_model",
    "adapters",
    "adapt_model",
    "schedules",
    "get_schedule",
    "wrap_model",
    "model_for_run",
    "problems",
    "plugin_names",
    "reset",
]


def _collect(hook_name: str, kind: str, spec_type: type) -> dict[str, Any]:
    """Call one registration hook plugin by plugin, so each spec knows its plugin. Called on every lookup,
    as llm's registry does: a plugin registered at any time is visible at once."""
    pm = load_plugins()
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    builtin_first = sorted(impls, key=lambda impl: impl.plugin_name not in DEFAULT_PLUGINS)
    found: dict[str, Any] = {}
    with collecting(hook_name):  # the problems this collection finds replace the last one's
        for impl in builtin_first:
            plugin = impl.plugin_name

            def register(spec: Any, _plugin: str = plugin) -> None:
                if not isinstance(spec, spec_type):
                    raise TypeError(f"{hook_name} expects {spec_type.__name__} objects, got {type(spec).__name__}")
                if spec.name in found:
                    add_problem(
                        _plugin, f"{kind} {spec.name!r} ignored: already registered by {found[spec.name].plugin}"
                    )
                    return
                found[spec.name] = replace(spec, plugin=_plugin)

            try:
                impl.function(register=register)
            except Exception as exc:  # one broken plugin must not hide the others
                add_problem(plugin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
    return found


def _get(table: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return table[name]
    except KeyError:
        notes = [p.message for p in problems() if p.provides and name.startswith(p.provides)]
        raise UnknownNameError(kind, name, table, notes) from None


def samplers() -> dict[str, SamplerSpec]:
    """Every registered sampler by name."""
    return dict(_collect("register_samplers", "sampler", SamplerSpec))


def get_sampler(name: str) -> SamplerSpec:
    return _get(_collect("register_samplers", "sampler", SamplerSpec), "sampler", name)


def models() -> dict[str, ModelSpec]:
    """Every registered named model by name (not loaded)."""
    return dict(_collect("register_models", "model", ModelSpec))


def get_model_spec(name: str) -> ModelSpec:
    return _get(_collect("register_models", "model", ModelSpec), "model", name)


def load_model(name: str) -> Any:
    """Load a named model as a tunable denoiser."""
    return get_model_spec(name).load()


def schedules() -> dict[str, ScheduleSpec]:
    return dict(_collect("register_schedules", "schedule", ScheduleSpec))


def get_schedule(name: str) -> ScheduleSpec:
    return _get(_collect("register_schedules", "schedule", ScheduleSpec), "schedule", name)


def adapters() -> dict[str, AdapterSpec]:
    return dict(_collect("register_model_adapters", "adapter", AdapterSpec))


def adapt_model(obj: Any, **kwargs: Any) -> Any:
    """Return ``obj`` as a tunable denoiser ``D(x, sigma, cond_sigma=None, **extra)``.

    Tunable denoisers pass through; anything else goes to the first adapter that
    accepts it.
    """
    if getattr(obj, "is_tunable_denoiser", False):
        return obj
    for spec in adapters().values():
        if spec.accepts(obj):
            return spec.adapt(obj, **kwargs)
    known = ", ".join(sorted(adapters())) or "none"
    raise TypeError(
        f"no registered model adapter accepts a {type(obj).__module__}.{type(obj).__qualname__}; "
        f"registered adapters: {known}. Wrap it in a TunableDenoiser subclass or register an "
        f"adapter with the register_model_adapters hook."
    )


def wrap_model(model: Any, lookup: Any, sampler: SamplerSpec) -> Callable[..., Any]:
    """The model ``sampler`` calls for a run whose network conditioning follows ``lookup``."""
    wrapped = load_plugins().hook.wrap_model(model=model, lookup=lookup, sampler=sampler)
    if wrapped is None:
        raise RuntimeError("no plugin implements wrap_model; the built-in tau_hook plugin is missing")
    return wrapped


def model_for_run(model: Any, sampler: SamplerSpec, sigmas: Any) -> Callable[..., Any]:
    """The callable that makes one run's network evaluations: a plugin's choice, else ``model``."""
    chosen = load_plugins().hook.model_for_run(model=model, sampler=sampler, sigmas=sigmas)
    return model if chosen is None else chosen


def reset() -> None:
    """Forget plugins and their problems, so the next call discovers them again."""
    _reset_plugins()
