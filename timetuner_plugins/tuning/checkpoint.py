"""Tuning checkpoints: τ parameters, optimiser state, progress and selection state (safetensors)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import __version__
from ..io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from."""


@dataclass
class TunerState:
    """Everything a resumed run needs to continue exactly where it stopped."""

    raw: torch.Tensor
    phase: int = 0
    next_iter: int = 0
    losses: list[float] = field(default_factory=list)
    optimizer: dict | None = None
    best_raw: torch.Tensor | None = None
    best_score: float | None = None
    best_iter: int | None = None
    scores: list[tuple[int, float]] = field(default_factory=list)
    stopped_at: int | None = None  # the step an early stop ended the run at
    history: list = field(default_factory=list)  # a τ function run's per-validation record (each run's change)


def save(path: Path, state: TunerState, fingerprint: str) -> None:
    tensors = {"raw": state.raw.detach().cpu().clone(), "losses": torch.tensor(state.losses or [0.0])}
    if state.best_raw is not None:
        tensors["best_raw"] = state.best_raw.detach().cpu().clone()
    groups = None
    if state.optimizer is not None:
        for key, value in state.optimizer["state"].get(0, {}).items():
            tensors[f"adam.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        groups = state.optimizer["param_groups"]
    meta = {
        "fingerprint": fingerprint,
        "phase": str(state.phase),
        "next_iter": str(state.next_iter),
        "n_losses": str(len(state.losses)),
        "library_version": __version__,
        "param_groups": json.dumps(groups),
        "best_score": json.dumps(state.best_score),
        "best_iter": json.dumps(state.best_iter),
        "scores": json.dumps(state.scores),
        "stopped_at": json.dumps(state.stopped_at),
        "history": json.dumps(state.history),
    }
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load(path: Path, fingerprint: str, device: torch.device) -> TunerState:
    if not path.is_file():
        raise CheckpointError(f"--resume needs a checkpoint, but {path} does not exist; run without --resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        if meta.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"checkpoint {path} was written by a run with other settings (model, sampler, "
                f"schedule or options); resume with the same command, or delete it to start over"
            )
        groups = json.loads(meta["param_groups"])
        optimizer = None
        if groups is not None:
            adam = {
                k[len("adam.") :]: v if k == "adam.step" else v.to(device)
                for k, v in tensors.items()
                if k.startswith("adam.")
            }
            optimizer = {"state": {0: adam}, "param_groups": groups}
        return TunerState(
            raw=tensors["raw"].to(device),
            phase=int(meta["phase"]),
            next_iter=int(meta["next_iter"]),
            losses=tensors["losses"].tolist()[: int(meta["n_losses"])],
            optimizer=optimizer,
            best_raw=tensors["best_raw"].to(device) if "best_raw" in tensors else None,
            best_score=json.loads(meta["best_score"]),
            best_iter=json.loads(meta["best_iter"]),
            scores=[tuple(s) for s in json.loads(meta["scores"])],
            stopped_at=json.loads(meta.get("stopped_at", "null")),
            history=json.loads(meta.get("history", "[]")),
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); delete it and start over"
        ) from None
