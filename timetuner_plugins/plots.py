"""Figures: sample grids, FD against NFE, learned τ/σ per step (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def sample_grid(panels: dict[str, dict[str, torch.Tensor]], path: Path, per_row: int = 12) -> Path:
    """One column of rows per panel: ``{panel title: {row label: samples (n, 1, H, W)}}``."""
    n_panels = len(panels)
    n_rows = max(len(rows) for rows in panels.values())
    width = 3.6  # inches per panel; a row is a strip of ``per_row`` images, so its height follows
    fig, axes = plt.subplots(n_rows, n_panels, figsize=(width * n_panels, n_rows * (width / per_row * 1.15 + 0.12) + 0.45),
                             squeeze=False)
    for col, (title, rows) in enumerate(panels.items()):
        for row, (label, samples) in enumerate(rows.items()):
            imgs = samples[:per_row, 0].clamp(-1, 1).cpu()
            gap = torch.full((imgs.shape[1], 1), -1.0)  # one blank pixel column between images
            strip = torch.cat([t for img in imgs for t in (img, gap)][:-1], dim=1)
            ax = axes[row][col]
            ax.imshow(strip.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path


def fd_vs_nfe(series: dict[str, tuple[Sequence[int], Sequence[float]]], path: Path, reference: float | None = None,
              title: str = "FD vs NFE") -> Path:
    """Lines of FD over NFE; a name containing 'tuned' is drawn with markers only."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (nfes, fds) in series.items():
        style = dict(marker="o", linestyle="--" if "tuned" in name and "untuned" not in name else "-")
        ax.plot(list(nfes), list(fds), label=name, **style)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle=":", label="500-NFE reference")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FD")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path


def tau_ratios(series: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, title: str = "learned τ/σ") -> Path:
    """τ/σ per evaluation for each named set: ``{name: (eval_sigmas, tau)}``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (ev, tau) in series.items():
        ax.plot(range(len(ev)), (tau / ev).tolist(), marker="o", label=name)
    ax.axhline(1.0, color="gray", linestyle=":")
    ax.set_xlabel("network evaluation")
    ax.set_ylabel("τ / σ")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path
