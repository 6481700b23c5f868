"""Built-in plugin: T-Stitch, a small model for a run's first evaluations, through the ``model_for_run`` hook."""

from registry import hookimpl

from ..sampling.t_stitch import StitchedDenoiser, StitchRun


@hookimpl
def model_for_run(model, sampler, sigmas):
    if isinstance(model, StitchedDenoiser):
        return StitchRun(model, sampler.nfe(sigmas))
    return None
