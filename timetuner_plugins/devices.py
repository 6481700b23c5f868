"""Where a model runs: its device, and a device name from the command line checked up front."""

from __future__ import annotations

import itertools
from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """The model's ``device`` attribute if it has one, else its first parameter's or buffer's (else CPU)."""
    if isinstance(getattr(model, "device", None), torch.device):
        return model.device
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked up front."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return device
