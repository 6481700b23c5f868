"""Checks for sampler options, raising one error type whose message names the fix."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class SamplerOptionError(ValueError):
    """A sampler option out of its range (or a run the option cannot serve); the message says what to pass."""


def check_range(
    sampler: str, name: str, value: Any, low: float, high: float, why: str = "", low_open: bool = False
) -> float:
    """``value`` as a float in [low, high] (or (low, high] with ``low_open``), else :class:`SamplerOptionError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        lo = "(" if low_open else "["
        note = f" ({why})" if why else ""
        raise SamplerOptionError(
            f"{sampler}: {name} must be in {lo}{low:g}, {high:g}]{note}, got {value!r}; "
            f"pass e.g. --option {name}={high:g}"
        )
    return v


def check_finite(sampler: str, name: str, value: Any, example: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise SamplerOptionError(
            f"{sampler}: {name} must be a finite number, got {value!r}; pass e.g. --option {name}={example}"
        )
    return v


def check_choice(sampler: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise SamplerOptionError(
            f"{sampler}: {name} must be one of {', '.join(choices)}, got {value!r}; pass e.g. "
            f"--option {name}={choices[0]}"
        )
    return value


def work_dtype(sigmas: torch.Tensor) -> torch.dtype:
    """The dtype for a schedule's coefficients: float64 where the device has it (MPS does not)."""
    return torch.float32 if sigmas.device.type == "mps" else torch.float64
