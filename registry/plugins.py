"""The plugin manager: built-in plugins and installed ``timetuner`` entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = hookspecs.PROJECT

# Registered exactly like third-party plugins, one module each.
DEFAULT_PLUGINS = (
    "timetuner_plugins.builtin.samplers",
    "timetuner_plugins.builtin.paper_samplers",
    "timetuner_plugins.builtin.schedules",
    "timetuner_plugins.builtin.models",
    "timetuner_plugins.builtin.tau_hook",
    "timetuner_plugins.builtin.time_shift",
    "timetuner_plugins.builtin.t_stitch",
    "timetuner_plugins.builtin.kdiffusion",
    "timetuner_plugins.builtin.diffusers",
    "timetuner_plugins.builtin.comfyui",
)


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that failed to load or registered something it could not."""

    plugin: str
    message: str
    provides: str = ""  # the name prefix of what the plugin would have registered (e.g. "k_diffusion.")


pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)

_problems: list[PluginProblem] = []  # loading problems (entry points that failed to import)
_hook_problems: dict[str, list[PluginProblem]] = {}  # per registration hook, from its latest call
_current: list[str] = []  # the registration hook being called, if any
_loaded = False


@contextmanager
def collecting(hook_name: str) -> Iterator[None]:
    """While a registration hook is called: the problems it reports replace those of its previous call."""
    _hook_problems[hook_name] = []
    _current.append(hook_name)
    try:
        yield
    finally:
        _current.pop()


def _load_entry_points() -> None:
    if os.environ.get("TIMETUNER_NO_ENTRY_POINTS"):
        return
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the tool down
            dist = getattr(ep, "dist", None)
            where = f" (from {dist.name} {dist.version})" if dist is not None else ""
            _problems.append(PluginProblem(ep.name, f"failed to load{where}: {type(exc).__name__}: {exc}"))


def load_plugins() -> pluggy.PluginManager:
    """Register the built-in plugins and every installed entry point, once."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    _load_entry_points()
    for name in DEFAULT_PLUGINS:
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(name), name)
    return pm


def add_problem(plugin: str, message: str, provides: str = "") -> None:
    """Report a plugin problem; ``provides`` (a name prefix) lets an unknown name under it explain itself."""
    problem = PluginProblem(plugin, message, provides)
    (_hook_problems[_current[-1]] if _current else _problems).append(problem)


def problems() -> list[PluginProblem]:
    """Load failures and what the registration hooks reported when last called, for ``timetuner samplers``."""
    load_plugins()
    seen = [*_problems, *(p for found in _hook_problems.values() for p in found)]
    return list(dict.fromkeys(seen))  # one line per problem, in order


def plugin_names() -> list[str]:
    load_plugins()
    return sorted(name for name, _ in pm.list_name_plugin())


def reset() -> None:
    """Forget every registered plugin (tests use this after installing a package)."""
    global _loaded
    for name, plugin in list(pm.list_name_plugin()):
        pm.unregister(plugin, name)
    _problems.clear()
    _hook_problems.clear()
    _loaded = False
    importlib.invalidate_caches()
