"""Applying a tuned set to a ComfyUI MODEL (a ModelPatcher) and identifying the model."""

from __future__ import annotations

import copy
import logging
import math
import warnings
import weakref
from typing import Any

import torch

from timetuner_plugins.adapters.denoisers import fingerprint_tensors
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetMismatch

from .tau_patch import DODEOutputs, SigmaMatcher, TauTimestep, fractional_timestep, schedule_problem

log = logging.getLogger("timetuner")
WRAPPER_KEY = "timetuner"
_fingerprints: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: Any) -> str:
    """sha256 over the diffusion network's tensors, named as the library names a wrapped network
    (``net.*``), so a set tuned in Python on a bundled model applies to the same model in ComfyUI."""
    net = model.model.diffusion_model
    if net not in _fingerprints:
        _fingerprints[net] = fingerprint_tensors({f"net.{k}": v for k, v in net.state_dict().items()})
    return _fingerprints[net]


def warn(message: str) -> None:
    """Log a warning and show it in the ComfyUI page (a toast, through web/timetuner.js)."""
    log.warning("TimeTuner: %s", message)
    try:
        from server import PromptServer

        PromptServer.instance.send_sync("timetuner.warning", {"message": message})
    except Exception:  # no server (scripts, tests): the log line is enough
        pass


def install_timestep(model_sampling: Any) -> TauTimestep:
    """Put a :class:`TauTimestep` on ``model_sampling`` (idempotent) and return it."""
    current = model_sampling.timestep
    if isinstance(current, TauTimestep):
        return current
    fractional = None
    if hasattr(model_sampling, "log_sigmas") and getattr(model_sampling, "num_timesteps", None):
        fractional = fractional_timestep(model_sampling.log_sigmas.detach().double())
    flow = any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)
    stand_in = TauTimestep(current, fractional, float(model_sampling.sigma_max) if flow else None)
    model_sampling.timestep = stand_in
    return stand_in


def is_flow(model_sampling: Any) -> bool:
    """A CONST (rectified-flow) model_sampling: SD3, Flux, Wan, the flow demo model."""
    return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)


def sampling_parameters(model_sampling: Any) -> dict[str, Any]:
    """The model's σ space as a tuned set records it (see ``timetuner_plugins.adapters.denoisers.parameterisation``):
    a flow model's shift in SD3's form s (Flux's μ is s = e^μ) and its timestep multiplier."""
    if not is_flow(model_sampling):
        return {"space": "ve"}
    shift = float(getattr(model_sampling, "shift", 1.0))
    flux = any(cls.__name__ == "ModelSamplingFlux" for cls in type(model_sampling).__mro__)
    return {
        "space": "flow",
        "shift": math.exp(shift) if flux else shift,
        "multiplier": float(getattr(model_sampling, "multiplier", 1.0 if flux else 1000.0)),
    }


class HostSpace:
    """A ComfyUI model's σ space as the library's planning reads it (a function set's τ for a run)."""

    def __init__(self, model_sampling: Any):
        parameters = sampling_parameters(model_sampling)
        self.space, self.shift = parameters["space"], parameters.get("shift")
        self.sigma_min, self.sigma_max = float(model_sampling.sigma_min), float(model_sampling.sigma_max)


def set_for_run(tuned: TunedSet, model_sampling: Any, sigmas: torch.Tensor, shape: tuple[int, ...]) -> tuple:
    """(the set for this run, None), or (None, why it does not fit): a one-run set is itself; a τ function set gives
    τ for these σ's if the run's NFE is within its range (a schedule it was not tuned on is a warning)."""
    if not tuned.is_function:
        return tuned, None
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            one = tuned.for_run(HostSpace(model_sampling), sigmas.detach().float().cpu(), sample_shape=shape)
    except TunedSetMismatch as exc:
        return None, exc.problem
    for warning in said:
        warn(str(warning.message))
    return one, None


def check_model(tuned: TunedSet, model: Any, force: bool, strict: bool = False) -> str | None:
    """Compare a set with the connected model. A set for another σ space is always an error. Another model or flow
    shift is an error with ``strict``, applied anyway (with a warning) with ``force``, and otherwise returned as the
    problem: the caller warns and leaves the model as it is (identity), never applying it silently."""
    identity = _Identity(model_fingerprint(model), sampling_parameters(model.get_model_object("model_sampling")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = tuned.check(model=identity, force=True)  # another σ space raises here, whatever the switches
    if not problems:
        return None
    problem = "; ".join(problems)
    if strict:
        raise TunedSetMismatch(
            tuned.path,
            problem,
            "Use a set tuned for this model, or turn on the node's 'force' "
            "input to apply it anyway ('strict' off: sample without it, with a warning)",
        )
    if force:
        warn(f"{problem}; applied anyway ('force' is on).")
        return None
    return problem


class _Identity:
    """What a tuned set is checked against: the connected model's fingerprint and σ space."""

    model_id = "the connected MODEL"

    def __init__(self, fingerprint: str, parameters: dict[str, Any]):
        self.fingerprint, self.space = fingerprint, parameters["space"]
        self.shift = parameters.get("shift")


def apply_tuned_set(model: Any, tuned: TunedSet, strict: bool = False) -> Any:
    """A clone of ``model`` whose network is conditioned on the set's τ during sampling (and, for a set with
    D-ODE parameters, whose outputs become D_k + λ_k·(D_k − D_{k−1}) per run and cond/uncond chunk).

    Runs whose σ's do not fit the set log a warning and sample plainly, or raise with ``strict``.
    """
    import comfy.patcher_extension as ext

    patched = model.clone()
    sampling = copy.deepcopy(patched.get_model_object("model_sampling"))
    stand_in = install_timestep(sampling)
    patched.add_object_patch("model_sampling", sampling)
    matcher = None if tuned.is_function else SigmaMatcher(tuned.lookup())  # a function: per run, in outer_sample
    lam = tuned.dode_lambda
    dode = DODEOutputs(lam) if lam is not None and bool(lam.any()) else None
    state = {"active": False}

    def outer_sample(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        nonlocal matcher
        run_set, problem = set_for_run(tuned, sampling, sigmas, tuple(noise.shape[1:]))
        if run_set is not None and tuned.is_function:
            matcher = SigmaMatcher(run_set.lookup())
        problem = problem or schedule_problem(run_set, sigmas)
        live = getattr(getattr(executor.class_obj, "model_patcher", None), "get_model_object", None)
        if problem is None and live is not None and live("model_sampling").timestep is not stand_in:
            problem = (
                "the model's sampling was replaced after Apply Tuned Set (a ModelSampling node after it?); put "
                "shift and sampling nodes before Apply Tuned Set"
            )
        if problem and strict:
            raise TunedSetMismatch(tuned.path, problem, "Turn 'strict' off to sample without τ instead")
        if problem:
            warn(f"{problem}; sampling WITHOUT the tuned set.")
        if matcher is not None:
            matcher.reset()
        if dode is not None:
            dode.reset()
        state["active"] = problem is None
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            state["active"] = False

    def apply_model(executor, x, t, *args, **kwargs):
        transformer_options = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
        chunks = transformer_options.get("cond_or_uncond")
        index = None
        if state["active"] and stand_in.forced is None:
            stand_in.ratio, index = matcher.match(t, chunks)
        try:
            out = executor(x, t, *args, **kwargs)
        finally:
            stand_in.ratio = None
        if dode is not None and index is not None:
            out = dode.apply(out, index, chunks)
        return out

    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, WRAPPER_KEY, apply_model)
    return patched


def sampling_of(model_k: Any) -> Any:
    """The model_sampling object a sampler function's ``model`` argument evaluates with."""
    return model_k.inner_model.inner_model.model_sampling
