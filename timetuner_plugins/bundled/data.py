"""sklearn's 8×8 digits, scaled to [-1, 1], with a fixed train / held-out split."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

HELD_OUT = 360  # of 1797 images; never seen by the bundled diffusion models
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from ..extras import require

    datasets = require("sklearn.datasets", "scikit-learn", "the bundled models' digits data")
    data = datasets.load_digits()  # ships its data inside the package
    images = (data.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> -1..1
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    return images[order], data.target[order].astype(np.int64)


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [-1, 1] and labels (N,) for ``split`` in {"train", "held_out", "all"}."""
    images, labels = _digits()
    if split == "train":
        images, labels = images[HELD_OUT:], labels[HELD_OUT:]
    elif split == "held_out":
        images, labels = images[:HELD_OUT], labels[:HELD_OUT]
    elif split != "all":
        raise ValueError(f"unknown split {split!r}; use 'train', 'held_out' or 'all'")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def data_loader(batch: int, seed: int, split: str = "train"):
    """An endless iterator of real x₀ batches, reshuffled every epoch from ``seed``."""
    images, _ = digits(split)
    generator = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(images), generator=generator).split(batch):
            if len(idx) == batch:
                yield images[idx]
