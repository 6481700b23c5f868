"""Built-in plugin: ComfyUI's own samplers as ``comfy.<name>`` (when ComfyUI is importable).

One registry sampler per name in ComfyUI's sampler list (``comfy.samplers.SAMPLER_NAMES``), resolved the way
its KSampler resolves it, so a sampler ComfyUI adds is registered with no change here. See
:mod:`timetuner_plugins.sampling.comfy_samplers` for how the functions are called, counted and checked.
"""

from __future__ import annotations

import functools

from registry import SamplerSpec, add_problem, hookimpl

from ..sampling import comfy_samplers as cs

PLUGIN = __name__


@functools.lru_cache(maxsize=1)
def _specs() -> tuple[tuple[SamplerSpec, ...], str]:
    modules, why = cs.comfy_modules()
    if modules is None:
        return (), why
    samplers = modules[0]
    specs = []
    for name in samplers.SAMPLER_NAMES:
        try:
            real = cs.differentiable(samplers.sampler_object(name).sampler_function)
        except Exception as exc:  # noqa: BLE001 - one odd sampler must not hide the others
            specs.append(
                SamplerSpec(
                    cs.PREFIX + name,
                    lambda model, x, sigmas, **kw: x,
                    tunable=False,
                    untunable_reason=f"ComfyUI could not resolve it ({exc})",
                )
            )
            continue
        reason = cs.untunable_reason(real, name)
        specs.append(
            SamplerSpec(
                cs.PREFIX + name,
                cs.wrap(real),
                cs.DryRunCount(real, name),
                stochastic=cs.DryRunStochastic(real, name),
                description=cs.description(name, real),
                tunable=not reason,
                untunable_reason=reason,
            )
        )
    return tuple(specs), ""


@hookimpl
def register_samplers(register):
    specs, why = _specs()
    if why:
        add_problem(PLUGIN, why, cs.PREFIX)
    for spec in specs:
        register(spec)
