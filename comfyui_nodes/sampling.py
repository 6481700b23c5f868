"""Registry samplers as ComfyUI SAMPLERs, and tuning a ComfyUI model inside its sampling machinery."""

from __future__ import annotations

from typing import Any, Callable

import torch

from registry import SamplerSpec
from timetuner_plugins.adapters.denoisers import TunableDenoiser
from timetuner_plugins.sampling.multistep import UNIPC_LAST_SIGMA, sample_unipc, sample_unipc_bh2
from timetuner_plugins.sampling.noise import SeededNoise
from timetuner_plugins.sampling.run import nfe_of
from timetuner_plugins.sampling.samplers import run_options
from timetuner_plugins.sets.tau import TauModel
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetMismatch

from .model_patch import install_timestep, sampling_of, sampling_parameters, set_for_run, warn
from .tau_patch import TauTimestep, schedule_problem

# Samplers that stop short of a final σ = 0 (ComfyUI's UniPC stops at 0.001). ComfyUI's own UniPC writes that σ
# into KSAMPLER's σ's, so KSAMPLER un-scales its output from there (x/(1−σ) for a CONST/flow model); ours leave
# the σ's alone, so ``run`` un-scales from the stopping σ itself, and the two agree on every kind of model.
STOPS_SHORT = {sample_unipc: UNIPC_LAST_SIGMA, sample_unipc_bh2: UNIPC_LAST_SIGMA}


class _OnStandIn:
    """ComfyUI's model, with the noise level a call is conditioned on (``cond_sigma``, as the library's
    :class:`~timetuner_plugins.sets.tau.TauModel` passes τ) forced on the timestep stand-in as τ/σ."""

    def __init__(self, model: Callable, stand_in: TauTimestep):
        self.inner_model, self.stand_in = model, stand_in

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None, **extra: Any):
        if cond_sigma is None:
            return self.inner_model(x, sigma, **extra)
        # one evaluation, one σ for all its rows (CFG doubles them inside ComfyUI's model): a scalar ratio
        self.stand_in.forced = cond_sigma.reshape(-1)[0] / sigma.reshape(-1)[0]
        try:
            return self.inner_model(x, sigma, **extra)
        finally:
            self.stand_in.forced = None


def sampler_function(spec: SamplerSpec, tuned: TunedSet | None, strict: bool) -> Callable:
    """A k-diffusion-style function for ``comfy.samplers.KSAMPLER`` running ``spec``, τ-aware with ``tuned``
    (evaluations counted, so every τ is applied exactly; a suffix schedule from denoise < 1 uses the last τ's)."""

    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = extra_args or {}
        options = spec.options(options)
        if spec.is_stochastic(options) and "noise_sampler" not in options:
            options["noise_sampler"] = SeededNoise(x, int(extra_args.get("seed", 0) or 0))
        call = model
        stand_in = installed = None
        if tuned is not None:
            run_set, problem = set_for_run(tuned, sampling_of(model), sigmas, tuple(x.shape[1:]))
            problem = problem or schedule_problem(run_set, sigmas)
            if problem is None and tuned.sampler != spec.name:
                problem = f"the set was tuned for sampler {tuned.sampler!r}, not {spec.name!r}"
            if problem and strict:
                raise TunedSetMismatch(tuned.path, problem, "Turn 'strict' off to sample without τ instead")
            if problem:
                warn(f"{problem}; sampling WITHOUT the tuned set.")
            else:
                ms = sampling_of(model)
                installed = not isinstance(ms.timestep, TauTimestep)
                stand_in = install_timestep(ms)
                call = TauModel(_OnStandIn(model, stand_in), run_set.lookup())
                call.calls = len(run_set.tau) - nfe_of(spec, sigmas, model, options)  # denoise < 1: the last τ's
        try:
            out = spec.fn(
                call,
                x,
                sigmas,
                extra_args=extra_args,
                callback=callback,
                disable=disable,
                **run_options(spec.fn, options),
            )
        finally:
            if installed:
                del sampling_of(model).timestep  # back to the class's own method
        if spec.fn in STOPS_SHORT and float(sigmas[-1]) == 0:
            out = sampling_of(model).inverse_noise_scaling(sigmas.new_tensor(STOPS_SHORT[spec.fn]), out)
        return out

    run.__name__ = f"sample_{spec.name}"
    return run


class ComfyDenoiser(TunableDenoiser):
    """A ComfyUI model (as a sampler function receives it) as a tunable denoiser: τ reaches the network through
    the timestep stand-in; the extra arguments a run passes (ComfyUI's model_options, seed, denoise_mask, which
    CFG++ samplers extend with their post-CFG hook) go to ComfyUI's model. ``comfy_guider`` is what ComfyUI's own
    sampler functions read from their model; ``check`` runs before every evaluation (ComfyUI's Cancel)."""

    def __init__(
        self,
        model: Callable,
        stand_in: TauTimestep,
        sample_shape: tuple[int, ...],
        fingerprint: str,
        model_id: str,
        device: torch.device,
        network_parameters: int = 0,
        check: Callable[[], None] | None = None,
    ):
        super().__init__()
        ms = sampling_of(model)
        self.comfy_model, self.stand_in, self.device, self.check = model, stand_in, device, check
        self.comfy_guider = model.inner_model
        self.sample_shape, self._fingerprint, self.model_id = sample_shape, fingerprint, model_id
        self.network_parameters = network_parameters
        self.sigma_min, self.sigma_max = float(ms.sigma_min), float(ms.sigma_max)
        self.default_schedule = "karras"
        parameters = sampling_parameters(ms)
        self.space = parameters["space"]
        if self.space == "flow":  # τ stays within the σ range the network was trained on
            self.shift, self.multiplier, self.tau_max = parameters["shift"], parameters["multiplier"], self.sigma_max

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        if self.check is not None:
            self.check()
        # one evaluation, one σ for all its rows (CFG doubles them inside ComfyUI's model): a scalar ratio
        self.stand_in.forced = cond_sigma.reshape(-1)[0] / sigma.reshape(-1)[0]
        try:
            return self.comfy_model(x, sigma, **extra)
        finally:
            self.stand_in.forced = None
