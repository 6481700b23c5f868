"""Built-in plugin: the default τ hook, serving every sampler whose plugin declares none."""

from registry import hookimpl

from ..sets.tau import TauModel


@hookimpl(trylast=True)
def wrap_model(model, lookup, sampler):
    return TauModel(model, lookup)
