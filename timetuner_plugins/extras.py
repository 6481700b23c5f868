"""Optional dependencies: the bundled digits data (scikit-learn) and the figures (matplotlib) are only needed by
the demo, the benchmarks and the bundled models' metrics, so a ComfyUI or library user tuning their own model
does not install them. ``pip install 'timetuner[demo]'`` brings both."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "demo"


class MissingExtraError(ImportError):
    """An optional dependency that this use needs and that is not installed; the message names the install."""


def require(module: str, package: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{needed_for} needs {package}, which is not installed; install it with: pip install 'timetuner[{EXTRA}]'"
        ) from exc
