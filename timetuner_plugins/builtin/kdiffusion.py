"""Built-in plugin: the real k-diffusion samplers and denoiser wrappers (the optional `k-diffusion` extra).

Samplers are registered as ``k_diffusion.<name>`` with k-diffusion's own functions, unwrapped
from their ``torch.no_grad`` decorator (``inspect.unwrap`` returns the original function object)
so that the tuner can differentiate through them; callers sample under ``torch.no_grad()``.
"""

from __future__ import annotations

import functools
import inspect

from registry import AdapterSpec, SamplerSpec, add_problem, hookimpl, one_eval_per_step, two_evals_per_step

PLUGIN = __name__
PREFIX = "k_diffusion."  # the names this plugin registers
HINT = (
    "install them with: pip install 'timetuner[k-diffusion]' (k-diffusion needs a torch build that "
    "torchvision supports; see docs/kdiffusion.md)"
)
ONE_EVAL = ("euler", "euler_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
TWO_EVALS = ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde")
ALWAYS_STOCHASTIC = (
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
)
CHURN = ("euler", "heun", "dpm_2")


@functools.lru_cache(maxsize=1)
def _import() -> tuple[tuple | None, str]:
    """k-diffusion's (sampling, external, layers) modules, or None and why not (imported once)."""
    try:
        from k_diffusion import external, layers, sampling
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "k_diffusion":
            return None, f"k-diffusion samplers unavailable: k-diffusion is not installed; {HINT}"
        return None, f"k-diffusion samplers unavailable: importing k-diffusion needs {exc.name!r}; {HINT}"
    except Exception as exc:  # e.g. torchvision built for another torch: "operator torchvision::nms does not exist"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"k-diffusion samplers unavailable: importing k-diffusion failed ({first}); {HINT}"
    return (sampling, external, layers), ""


def _kdiffusion() -> tuple | None:
    """k-diffusion's modules, or None, reported as a plugin problem for the registration hook calling it."""
    modules, why = _import()
    if modules is None:
        add_problem(PLUGIN, why, PREFIX)
    return modules


def _stochastic(name: str):
    """Noise-injecting samplers are stochastic while η > 0 (default 1); churn samplers while s_churn > 0."""
    if name in ALWAYS_STOCHASTIC:
        return lambda options: float(options.get("eta", 1.0)) > 0
    if name in CHURN:
        return lambda options: float(options.get("s_churn", 0.0)) > 0
    return False


def _fixed_grid(real, with_n: bool):
    """Our protocol over dpm_fast / dpm_adaptive, which take (σ_min, σ_max[, n]) instead of a schedule."""

    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        positive = sigmas[sigmas > 0]
        grid = (positive.min(), positive.max()) + ((len(sigmas) - 1,) if with_n else ())
        return real(model, x, *grid, extra_args=extra_args, callback=callback, disable=disable, **options)

    run.__name__ = real.__name__
    return run


@hookimpl
def register_samplers(register):
    modules = _kdiffusion()
    if modules is None:
        return
    sampling = modules[0]
    for name in ONE_EVAL + TWO_EVALS:
        real = inspect.unwrap(getattr(sampling, f"sample_{name}"))
        register(
            SamplerSpec(
                f"k_diffusion.{name}",
                real,
                one_eval_per_step if name in ONE_EVAL else two_evals_per_step,
                stochastic=_stochastic(name),
                description=f"k-diffusion sample_{name}",
                spaces=("ve",) if name in ALWAYS_STOCHASTIC else ("ve", "flow"),
            )
        )
    register(
        SamplerSpec(
            "k_diffusion.dpm_fast",
            _fixed_grid(inspect.unwrap(sampling.sample_dpm_fast), True),
            one_eval_per_step,
            tunable=False,
            description="k-diffusion sample_dpm_fast",
            untunable_reason="it lays out its own σ grid from (σ_min, σ_max, n), so τ cannot be keyed to a schedule",
        )
    )
    register(
        SamplerSpec(
            "k_diffusion.dpm_adaptive",
            _fixed_grid(inspect.unwrap(sampling.sample_dpm_adaptive), False),
            one_eval_per_step,
            tunable=False,
            description="k-diffusion sample_dpm_adaptive",
            untunable_reason="its step sizes adapt to the model's output, so the number and σ's of "
            "network evaluations change from run to run",
        )
    )


@hookimpl
def register_model_adapters(register):
    modules = _kdiffusion()
    if modules is None:
        return
    from ..adapters import kdiffusion as ours

    _, external, layers = modules
    kinds = [
        (ours.DiscreteEpsDenoiser, external.DiscreteEpsDDPMDenoiser),
        (ours.DiscreteVDenoiser, external.DiscreteVDDPMDenoiser),
        (ours.ContinuousVDenoiser, external.VDenoiser),
        (ours.KarrasDenoiser, layers.Denoiser),
    ]
    for adapter, cls in kinds:
        register(
            AdapterSpec(
                f"k_diffusion.{cls.__name__}",
                accepts=lambda obj, cls=cls: isinstance(obj, cls),
                adapt=adapter,
                description=f"k-diffusion {cls.__name__} and subclasses",
            )
        )
