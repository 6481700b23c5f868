"""Built-in plugin: diffusers (the optional ``diffusers`` extra).

- adapters ``diffusers.<ModelClass>`` for UNet2DModel, UNet2DConditionModel, SD3Transformer2DModel and
  FluxTransformer2DModel (``registry.adapt_model(unet, scheduler_config=pipe.scheduler.config)``);
- samplers ``diffusers.<SchedulerClass>`` that drive the schedulers' own ``step()``, and schedules of the same
  names that give the σ's each scheduler sets (see :mod:`timetuner_plugins.sampling.diffusers_samplers`).

Whether diffusers is installed is checked without importing it (importing it takes seconds); without it the
plugin registers nothing and reports one problem, with the install command, for every ``diffusers.`` name.
"""

from __future__ import annotations

import functools
import importlib.util

from registry import AdapterSpec, SamplerSpec, ScheduleSpec, add_problem, hookimpl

PLUGIN = __name__
PREFIX = "diffusers."
HINT = "install them with: pip install 'timetuner[diffusers]'"
MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether diffusers is installed (reported once as a plugin problem when it is not)."""
    try:
        found = importlib.util.find_spec("diffusers") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        add_problem(
            PLUGIN,
            f"diffusers samplers, schedules and model adapters unavailable: diffusers is not installed; {HINT}",
            PREFIX,
        )
    return found


def _is(cls_name: str):
    def accepts(obj) -> bool:
        return any(c.__name__ == cls_name and c.__module__.startswith("diffusers.") for c in type(obj).__mro__)

    return accepts


def _adapt(obj, **kwargs):
    from ..adapters.diffusers import adapt

    return adapt(obj, **kwargs)


@hookimpl
def register_model_adapters(register):
    if not available():
        return
    for name in MODEL_CLASSES:
        register(
            AdapterSpec(
                f"diffusers.{name}",
                accepts=_is(name),
                adapt=_adapt,
                description=f"diffusers {name} with its scheduler config (scheduler_config=...)",
            )
        )


@hookimpl
def register_samplers(register):
    if not available():
        return
    from ..sampling import diffusers_samplers as ds

    for entry in ds.ENTRIES:
        register(
            SamplerSpec(
                f"diffusers.{entry.cls}",
                ds.make_sampler(entry),
                entry.nfe,
                description=entry.description,
                spaces=ds.SPACES[entry.space],
            )
        )


@hookimpl
def register_schedules(register):
    if not available():
        return
    from ..sampling import diffusers_samplers as ds

    for entry in ds.ENTRIES:
        register(
            ScheduleSpec(
                f"diffusers.{entry.cls}",
                ds.make_schedule(entry),
                f"the σ's diffusers' {entry.cls} sets for the model's scheduler config",
                auto=False,
            )
        )
