"""TimeTuner: learned network timesteps (τ) for few-step diffusion samplers.

The public API is the names below, imported from here (``from timetuner_plugins import Tuner, TunedSet``) and
described in docs/api.md; everything else is internal and may move. Names are loaded on first use, so
``import timetuner_plugins`` stays cheap. Layout: ``sampling`` (samplers, schedules, running), ``adapters``
(model wrappers), ``tuning`` (the tuner and its pipeline), ``sets`` (tuned-set files and τ lookups),
``evaluation`` (FD, trajectory error), ``bundled`` (the digits models), ``experiments`` (bench, demo, set builder),
``builtin`` (the default plugins) and ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # wrap your network
    "TunableDenoiser": "adapters.denoisers",
    "DiscreteVPDenoiser": "adapters.denoisers",
    "EDMDenoiser": "adapters.denoisers",
    "FlowDenoiser": "adapters.denoisers",
    "CFGDenoiser": "adapters.denoisers",
    # what a model provides
    "TunableModel": "contract",
    "QualityMetric": "contract",
    "HasQualityMetric": "contract",
    "HasTuningFeatures": "contract",
    "HasRealData": "contract",
    # sample
    "make_sigmas": "sampling.run",
    "sample": "sampling.run",
    "run_sampler": "sampling.run",
    "bdia_sample": "sampling.bdia",
    "bdia_invert": "sampling.bdia",
    "stitch": "sampling.t_stitch",
    # tune
    "TuneConfig": "tuning.config",
    "Tuner": "tuning.tuner",
    "TuneError": "tuning.config",
    "tune_set": "tuning.pipeline",
    "tune_function_set": "tuning.pipeline",
    # tuned sets
    "TunedSet": "sets.tuned_set",
    "TunedSetError": "sets.tuned_set",
    "TunedSetMismatch": "sets.tuned_set",
    # measure
    "evaluate": "evaluation.evaluate",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
