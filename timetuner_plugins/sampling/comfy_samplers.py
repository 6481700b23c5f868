"""ComfyUI's own sampler functions as registry samplers (``comfy.<name>``), without copying any of them.

Each of ComfyUI's sampler names (``comfy.samplers.SAMPLER_NAMES``) is resolved to the function its
``KSampler`` would run (``comfy.samplers.sampler_object(name).sampler_function``). ComfyUI decorates its
k-diffusion functions with ``torch.no_grad`` and some call each other by module-global name (Euler
ancestral switches to its RF variant on flow models, the DPM++ "_gpu" and "_heun" names forward to the
base functions). So that the tuner can differentiate through a run, each function's own code object is
bound to a copy of its module's namespace in which the module's decorated functions are undecorated:
the same code, called through the τ hook; nothing is copied from ComfyUI into this project.

What a ComfyUI sampler reads from its ``model`` argument besides calling it is provided by
:class:`ComfyView`, a small explicit adapter: ``model.inner_model.inner_model.model_sampling`` and
``model.inner_model.model_patcher.get_model_object("model_sampling")`` (for CONST/flow detection,
``sigma_to_half_log_snr``, ``percent_to_sigma`` and ``noise_scaling``), and the CFG++ samplers' post-CFG
hook in ``model_options``. Over a ComfyUI model (inside ComfyUI: the Tune node, the Registry Sampler node)
those are ComfyUI's real objects; over one of this library's denoisers the ``model_sampling`` is one of
ComfyUI's own ModelSampling classes built from the denoiser's σ space and table, and the post-CFG hook
sees the denoiser as unguided (uncond = cond = the denoised x).

How many network evaluations a run makes, and at which σ's, comes from the function itself: a counting
dry run on a tiny input with a stand-in denoiser, cached per σ schedule, options and model σ space. A
function whose evaluations ignore the schedule's interior σ's (it lays out its own steps from the
schedule's ends, or adapts them to the model's output) is registered as untunable with that reason.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import types
from collections import OrderedDict
from typing import Any, Callable

import torch

PREFIX = "comfy."
UNAVAILABLE = (
    "ComfyUI samplers unavailable: ComfyUI is not importable here (they are registered inside "
    "ComfyUI, or from Python with COMFYUI_PATH set to a ComfyUI checkout)"
)
_DRY_SHAPE = (1, 1, 2, 2)  # the tiny input of a counting dry run
_PROBE_STEPS = 6


@functools.lru_cache(maxsize=1)
def comfy_modules() -> tuple[tuple | None, str]:
    """ComfyUI's (samplers, model_sampling) modules, or None and why not. Inside ComfyUI they are already
    imported; elsewhere only a checkout named by COMFYUI_PATH is imported (as ``main.py --cpu`` would on a
    machine without a GPU)."""
    if "comfy.samplers" not in sys.modules:
        path = os.environ.get("COMFYUI_PATH")
        if not path or not os.path.isdir(os.path.join(path, "comfy")):
            return None, UNAVAILABLE
        if path not in sys.path:
            sys.path.insert(0, path)
        try:
            import comfy.cli_args

            if not torch.cuda.is_available():
                comfy.cli_args.args.cpu = True
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            return None, f"ComfyUI samplers unavailable: importing ComfyUI from {path} failed ({exc})"
    try:
        import comfy.model_sampling
        import comfy.samplers
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"ComfyUI samplers unavailable: importing comfy.samplers failed ({first})"
    return (comfy.samplers, comfy.model_sampling), ""


# ----- the functions, differentiable -------------------------------------------------------------------------

_namespaces: dict[str, dict[str, Any]] = {}


def _rebound(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    out = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__qualname__, out.__doc__ = fn.__qualname__, fn.__doc__
    return out


def _carries_grad(values: Any) -> bool:
    return any(torch.is_tensor(v) and v.requires_grad for v in values)


class _Helpers:
    """A helper module of ComfyUI's sampling package (its DEIS and SA-Solver coefficients, utils) whose functions,
    called with arguments that carry no gradient, run without autograd as under ComfyUI's own no_grad: a helper
    that differentiates internally (DEIS's coefficient integral) then leaves no graph behind. With a gradient in
    its arguments (a tuned schedule) it runs as it is."""

    def __init__(self, module: types.ModuleType):
        self._module, self._functions = module, {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if not isinstance(value, types.FunctionType):
            return value
        if name not in self._functions:

            def call(*args: Any, _fn=value, **kwargs: Any) -> Any:
                if _carries_grad(args) or _carries_grad(kwargs.values()):
                    return _fn(*args, **kwargs)
                with torch.no_grad():
                    return _fn(*args, **kwargs)

            self._functions[name] = functools.wraps(value)(call)
        return self._functions[name]


def _undecorated_namespace(module_globals: dict[str, Any]) -> dict[str, Any]:
    """A copy of a module's namespace whose module-level functions are its own, undecorated (``torch.no_grad``
    removed), and resolve each other in this copy; helper modules of its package are seen through
    :class:`_Helpers`."""
    name = module_globals.get("__name__", "?")
    if name not in _namespaces:
        namespace = dict(module_globals)
        package = name.rpartition(".")[0]
        for key, value in module_globals.items():
            base = inspect.unwrap(value) if callable(value) else value
            if isinstance(base, types.FunctionType) and base.__globals__ is module_globals:
                namespace[key] = _rebound(base, namespace)
            elif isinstance(value, types.ModuleType) and package and value.__name__.startswith(package + "."):
                namespace[key] = _Helpers(value)
        _namespaces[name] = namespace
    return _namespaces[name]


def differentiable(fn: Callable) -> Callable:
    """``fn`` (a ComfyUI sampler function) with its ``torch.no_grad`` removed, and the functions of its module it
    calls by name likewise; the same code objects."""
    base = inspect.unwrap(fn)
    if not isinstance(base, types.FunctionType):
        return base
    namespace = _undecorated_namespace(base.__globals__)
    own = namespace.get(base.__name__)
    if isinstance(own, types.FunctionType) and own.__code__ is base.__code__:
        return own
    return _rebound(base, namespace)  # a closure (KSampler's dpm_fast / dpm_adaptive wrappers)


# ----- what a ComfyUI sampler sees as its model ---------------------------------------------------------------


class _Patcher:
    """``model_patcher.get_model_object`` for what ComfyUI's samplers read: the model's ``model_sampling``."""

    def __init__(self, model_sampling: Any):
        self.model_sampling = model_sampling

    def get_model_object(self, name: str) -> Any:
        if name == "model_sampling":
            return self.model_sampling
        raise AttributeError(
            f"{name!r} is not available to a ComfyUI sampler run outside ComfyUI's own sampling "
            f"(only 'model_sampling' is)"
        )


class _Base:
    def __init__(self, model_sampling: Any):
        self.model_sampling = model_sampling


class _Guider:
    """Stands where ComfyUI's CFGGuider is: ``.inner_model.model_sampling`` and ``.model_patcher``."""

    def __init__(self, model_sampling: Any):
        self.inner_model, self.model_patcher = _Base(model_sampling), _Patcher(model_sampling)


class _Settings:
    def __init__(self, **settings: Any):
        self.sampling_settings = settings


@functools.lru_cache(maxsize=64)
def _built_sampling(space: str, shift: float, multiplier: float, table_key: bytes) -> Any:
    _, model_sampling = comfy_modules()[0]
    if space == "flow":
        cls = type("TimeTunerFlowSampling", (model_sampling.ModelSamplingDiscreteFlow, model_sampling.CONST), {})
        return cls(_Settings(shift=shift, multiplier=multiplier))
    cls = type("TimeTunerSampling", (model_sampling.ModelSamplingDiscrete, model_sampling.EPS), {})
    ms = cls()
    if table_key:
        ms.set_sigmas(torch.frombuffer(bytearray(table_key), dtype=torch.float32).clone())
    return ms


def model_sampling_for(denoiser: Any) -> Any:
    """One of ComfyUI's own ModelSampling objects for one of this library's denoisers: ModelSamplingDiscreteFlow
    (CONST) with the model's shift and multiplier for a flow model, else ModelSamplingDiscrete (EPS) over the
    model's σ table (``sigma_table()``; ComfyUI's SD1 table when it has none)."""
    space = getattr(denoiser, "space", "ve")
    if space == "flow":
        return _built_sampling(
            "flow", float(getattr(denoiser, "shift", 1.0)), float(getattr(denoiser, "multiplier", 1000.0)), b""
        )
    table = getattr(denoiser, "sigma_table", None)
    key = b""
    if callable(table):
        key = table().sigmas.detach().float().cpu().contiguous().numpy().tobytes()
    return _built_sampling("ve", 1.0, 1.0, key)


def _find(model: Any) -> tuple[Any, Any, bool]:
    """(the object that says what the model is, ComfyUI's guider or a stand-in, whether it is ComfyUI's own)."""
    obj = model
    for _ in range(10):
        if obj is None:
            break
        guider = getattr(obj, "comfy_guider", None)
        if guider is not None:
            return obj, guider, True
        inner = getattr(obj, "inner_model", None)
        if inner is not None and hasattr(inner, "model_patcher") and hasattr(inner, "inner_model"):
            return obj, inner, True  # ComfyUI's KSamplerX0Inpaint, whose inner_model is the guider
        if isinstance(getattr(obj, "space", None), str):
            return obj, _Guider(model_sampling_for(obj)), False
        obj = inner
    return None, _Guider(model_sampling_for(None)), False


class ComfyView:
    """The ``model`` a ComfyUI sampler function is given: calls pass through to ``model`` (our τ hook over a
    tunable denoiser, or ComfyUI's own model), and ``inner_model`` is ComfyUI's guider or a stand-in for it
    exposing the model's ``model_sampling``."""

    def __init__(self, model: Callable[..., torch.Tensor]):
        self.model = model
        self.denoiser, self.inner_model, self.comfy = _find(model)

    @property
    def model_sampling(self) -> Any:
        return self.inner_model.inner_model.model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.comfy:  # ComfyUI's guider runs model_options (post-CFG functions included) itself
            return self.model(x, sigma, **extra)
        options = extra.pop("model_options", None) or {}
        post = options.get("sampler_post_cfg_function", [])
        if post:
            scale = getattr(self.denoiser, "scale", 1.0)
            if type(self.denoiser).__name__ == "CFGDenoiser" and float(scale) != 1.0:
                raise ValueError(
                    "CFG++ samplers need the unguided prediction, which ComfyUI's guider gives them; "
                    "timetuner's CFGDenoiser with scale != 1 does not: tune them in ComfyUI (Tune node)"
                )
        denoised = self.model(x, sigma, **extra)
        for fn in post:  # an unguided denoiser: the uncond prediction is the denoised x itself
            denoised = fn(
                {
                    "denoised": denoised,
                    "cond_denoised": denoised,
                    "uncond_denoised": denoised,
                    "cond_scale": 1.0,
                    "sigma": sigma,
                    "input": x,
                    "model_options": options,
                    "model": None,
                    "cond": None,
                    "uncond": None,
                }
            )
        return denoised


def wrap(real: Callable) -> Callable:
    """Our sampler protocol over ComfyUI's function ``real``: ``model`` seen through :class:`ComfyView`, the σ's
    passed as a copy (ComfyUI's UniPC writes its stopping σ into them), and, as ComfyUI's KSAMPLER does, the
    result un-scaled from the σ the function actually stopped at when it moved the last one."""

    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        view = ComfyView(model)
        own = sigmas.clone()
        out = real(view, x, own, extra_args=dict(extra_args or {}), callback=callback, disable=disable, **options)
        if own.numel() and float(own[-1]) != float(sigmas[-1]):
            out = view.model_sampling.inverse_noise_scaling(own[-1], out)
        return out

    functools.update_wrapper(run, real)  # the real function's options (its signature), named our way
    signature = inspect.signature(real)
    params = list(signature.parameters.values())
    ours = [p.replace(name=n) for p, n in zip(params[:3], ("model", "x", "sigmas"))] + params[3:]
    run.__signature__ = signature.replace(parameters=ours)
    del run.__wrapped__
    return run


# ----- counting dry runs --------------------------------------------------------------------------------------


class _Zero:
    """A stand-in denoiser returning zeros, with the σ space (and ComfyUI guider) of the model it stands for."""

    def __init__(self, like: Any = None):
        self.inner_model = None
        for attr in ("space", "shift", "multiplier", "comfy_guider"):
            if hasattr(like, attr):
                setattr(self, attr, getattr(like, attr))
        if hasattr(like, "sigma_table"):
            self.sigma_table = like.sigma_table
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        denoised = torch.zeros_like(x)
        options = extra.get("model_options") or {}
        for fn in options.get("sampler_post_cfg_function", []):  # CFG++: as ComfyUI's guider would call it
            denoised = fn(
                {
                    "denoised": denoised,
                    "cond_denoised": denoised,
                    "uncond_denoised": denoised,
                    "cond_scale": 1.0,
                    "sigma": sigma,
                    "input": x,
                    "model_options": options,
                    "model": None,
                    "cond": None,
                    "uncond": None,
                }
            )
        return denoised


class _CountingNoise:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        self.calls += 1
        return torch.zeros(_DRY_SHAPE)


def space_key(model: Any) -> tuple:
    """What a dry run's result depends on besides the schedule and options: the model's σ space."""
    found, guider, comfy = _find(model) if model is not None else (None, None, False)
    if comfy:
        ms = guider.inner_model.model_sampling
        return ("comfy", type(ms).__name__, float(getattr(ms, "shift", 1.0)), float(ms.sigma_min), float(ms.sigma_max))
    if found is None:
        return ("ve",)
    if getattr(found, "space", "ve") == "flow":
        return ("flow", float(getattr(found, "shift", 1.0)), float(getattr(found, "multiplier", 1000.0)))
    table = getattr(found, "sigma_table", None)
    t = table().sigmas if callable(table) else None
    return ("ve",) if t is None else ("ve", len(t), float(t[0]), float(t[-1]))


class DryRun:
    """One counting dry run: the σ of every network evaluation and the noise draws."""

    def __init__(self, sigmas: list[float], noise_calls: int):
        self.sigmas, self.noise_calls = sigmas, noise_calls


_cache: "OrderedDict[tuple, DryRun]" = OrderedDict()
_lock = threading.Lock()
_CACHE_SIZE = 4096


def dry_run(fn: Callable, name: str, sigmas: torch.Tensor, options: dict | None = None, model: Any = None) -> DryRun:
    """Run ComfyUI's ``fn`` once on a tiny input with a zero denoiser (of ``model``'s σ space) and a counting
    noise sampler; cached per (sampler, σ schedule, options, σ space)."""
    options = {k: v for k, v in (options or {}).items() if k != "noise_sampler"}
    schedule = sigmas.detach().float().cpu()
    key = (name, tuple(schedule.tolist()), repr(sorted(options.items())), space_key(model))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    zero, noise = _Zero(_find(model)[0] if model is not None else None), _CountingNoise()
    x = torch.zeros(_DRY_SHAPE)
    params = inspect.signature(fn).parameters
    if "noise_sampler" in params:
        options["noise_sampler"] = noise
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        wrap(fn)(zero, x, schedule.clone(), extra_args={}, callback=None, disable=True, **options)
    result = DryRun(zero.sigmas, noise.calls)
    with _lock:
        _cache[key] = result
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


class DryRunCount:
    """``SamplerSpec.nfe`` for a ComfyUI sampler: the evaluations its dry run makes (``model`` picks the σ space;
    the default is a VE/VP model's)."""

    by_dry_run = True

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, sigmas: torch.Tensor, options: dict | None = None, model: Any = None) -> int:
        return len(dry_run(self.fn, self.name, sigmas, options, model).sigmas)


class DryRunStochastic:
    """``SamplerSpec.stochastic``: whether a run with these options draws noise (from its noise sampler, or with
    EDM churn)."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, options: dict) -> bool:
        if float(options.get("s_churn", 0.0) or 0.0) > 0:
            return True
        if "noise_sampler" not in inspect.signature(self.fn).parameters:
            return False
        return dry_run(self.fn, self.name, _probe(_PROBE_STEPS), options).noise_calls > 0


def _probe(steps: int, bend: float = 1.0) -> torch.Tensor:
    """A VE probe schedule from 14.6 to 0.03 (then 0); ``bend`` moves its interior σ's, keeping both ends."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) ** bend
    return torch.cat([(14.6 ** (1 / 7) + ramp * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7, torch.zeros(1)]).float()


def untunable_reason(fn: Callable, name: str) -> str:
    """Why ``fn`` cannot be tuned, or "" when its evaluations follow the schedule it is given."""
    try:
        a = dry_run(fn, name, _probe(_PROBE_STEPS))
        b = dry_run(fn, name, _probe(_PROBE_STEPS, bend=2.0))
    except Exception as exc:  # noqa: BLE001
        return f"its dry run outside ComfyUI's own sampling failed ({type(exc).__name__}: {exc})"
    if a.sigmas == b.sigmas:
        return (
            "it picks its own step sizes: its network evaluations ignore the schedule's interior σ's (it lays out "
            "its steps from the schedule's ends, or adapts them to the model's output), so τ cannot be keyed to "
            "a schedule"
        )
    return ""


def description(name: str, fn: Callable) -> str:
    base = inspect.unwrap(fn)
    where = f"{getattr(base, '__module__', '?')}.{getattr(base, '__qualname__', name)}"
    text = f"ComfyUI's {name} ({where}), called through the τ hook"
    if isinstance(base, types.FunctionType) and "detach" in base.__code__.co_names:
        text += "; it detaches its history, so tuning gradients follow each evaluation's own step only"
    return text
