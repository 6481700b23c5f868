"""Small helpers shared by the tests."""

from __future__ import annotations

import torch


def noise(n: int, seed: int = 0, shape=(1, 8, 8)) -> torch.Tensor:
    """Standard-normal noise, reproducible from ``seed``."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
