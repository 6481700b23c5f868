"""Figures: sample grids, FD against NFE, learned τ/σ per step (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..extras import require

require("matplotlib", "matplotlib", "the figures (demo, bench, plots)").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def sample_grid(panels: dict[str, dict[str, torch.Tensor]], path: Path, per_row: int = 12) -> Path:
    """One column of rows per panel: ``{panel title: {row label: samples (n, 1, H, W)}}``."""
    n_panels = len(panels)
    n_rows = max(len(rows) for rows in panels.values())
    width = 3.6  # inches per panel; a row is a strip of ``per_row`` images, so its height follows
    fig, axes = plt.subplots(
        n_rows, n_panels, figsize=(width * n_panels, n_rows * (width / per_row * 1.15 + 0.12) + 0.45), squeeze=False
    )
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


def measured_runs(nfes: Sequence[int], grid: Sequence[int]) -> list[list[int]]:
    """Indices of ``nfes`` split where the series skips an NFE of ``grid`` (the NFEs any series measured)."""
    order = sorted(range(len(nfes)), key=lambda i: nfes[i])
    position = {v: k for k, v in enumerate(sorted(set(grid)))}
    runs: list[list[int]] = []
    for i in order:
        if runs and position[nfes[i]] == position[nfes[runs[-1][-1]]] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def fd_vs_nfe(
    series: dict[str, tuple[Sequence[int], Sequence[float]]],
    path: Path,
    reference: float | None = None,
    title: str = "FD vs NFE",
) -> Path:
    """FD over NFE, a marker per measured point; lines join only neighbouring NFEs that were both measured, so
    no line crosses an NFE a series did not run. Tuned series (a name with 'tuned', not 'untuned') are dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    grid = sorted({int(v) for nfes, _ in series.values() for v in nfes})
    for name, (nfes, fds) in series.items():
        nfes, fds = [int(v) for v in nfes], list(fds)
        dashed = "tuned" in name and "untuned" not in name
        line = None
        for run in measured_runs(nfes, grid):
            color = line.get_color() if line is not None else None
            (line,) = ax.plot(
                [nfes[i] for i in run],
                [fds[i] for i in run],
                marker="s" if dashed else "o",
                linestyle="--" if dashed else "-",
                color=color,
                label=None if color else name,
            )
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


def comparison_grid(
    cases: dict[str, dict[str, tuple[torch.Tensor, str]]], path: Path, per_row: int = 8, columns: int = 2
) -> Path:
    """Panels of sample rows, ``{panel title: {row label: (images (n, 1, H, W) in −1…1, kind)}}``; kind 'sample'
    is drawn in grey (ink dark), kind 'error' (|sample − reference|, 0…2) in a heat map, so the rows that
    differ are visible at a glance."""
    titles = list(cases)
    rows = max(len(r) for r in cases.values())
    cols = min(columns, len(titles))
    panel_rows = (len(titles) + cols - 1) // cols
    cell = 0.55  # inches per image
    fig, axes = plt.subplots(
        panel_rows * rows,
        cols,
        squeeze=False,
        figsize=(cols * (per_row * cell + 1.3), panel_rows * (rows * cell * 1.15 + 0.5)),
    )
    for p, title in enumerate(titles):
        top, col = (p // cols) * rows, p % cols
        for r, (label, (images, kind)) in enumerate(cases[title].items()):
            ax = axes[top + r][col]
            imgs = images[:per_row, 0].float().cpu()
            value = imgs.clamp(-1, 1) if kind == "sample" else imgs.clamp(0, 2)
            gap = torch.full((imgs.shape[1], 1), float("nan"))
            strip = torch.cat([t for img in value for t in (img, gap)][:-1], dim=1).numpy()
            if kind == "sample":
                ax.imshow(strip, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            else:
                ax.imshow(strip, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(title, fontsize=9)
    for p in range(len(titles), panel_rows * cols):
        for r in range(rows):
            axes[(p // cols) * rows + r][p % cols].axis("off")
    fig.tight_layout(h_pad=0.8, w_pad=1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
