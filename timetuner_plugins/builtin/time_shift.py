"""Built-in plugin: Time-Shift sampling for every registered sampler, through the ``wrap_model`` hook."""

from registry import hookimpl

from ..sampling.time_shift import TimeShift, TimeShiftModel


@hookimpl
def wrap_model(model, lookup, sampler):
    if isinstance(lookup, TimeShift):
        return TimeShiftModel(model, lookup)
    return None
