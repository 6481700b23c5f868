"""How a tuned set reaches a ComfyUI model, written without ComfyUI imports (tested in CI).

ComfyUI's ``BaseModel._apply_model`` scales the input with ``model_sampling.calculate_input(σ)``,
conditions the network on ``model_sampling.timestep(σ)`` and un-scales with
``calculate_denoised(σ)``. Replacing ``timestep`` on a cloned ``model_sampling`` with
:class:`TauTimestep` moves only the network's conditioning to τ, as TimeTuner requires.
The ratio τ/σ it applies is set per call, either by an evaluation counter (our samplers) or
by :class:`SigmaMatcher` (stock samplers, keyed by σ), and is ``None`` outside sampling, so
schedulers that call ``timestep`` themselves see the original function.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import torch

from timetuner_plugins.adapters import denoisers
from timetuner_plugins.sets.tau import TauLookup
from timetuner_plugins.sets.tuned_set import SIGMA_RTOL, TunedSet, sigmas_match


class TauTimestep:
    """Stands in for ``model_sampling.timestep``: conditions on σ·ratio while a ratio is set.

    ``fractional`` gives a discrete model a fractional timestep for moved σ's (interpolating
    log σ between its training steps, as the tuner did) instead of ComfyUI's nearest step.
    ``tau_max`` (a flow model's σ = 1) is the most a moved σ may be: the network never sees a
    noise level beyond the range it was trained on.
    """

    def __init__(
        self,
        original: Callable[..., torch.Tensor],
        fractional: Callable[[torch.Tensor], torch.Tensor] | None,
        tau_max: float | None = None,
    ):
        self.original, self.fractional, self.tau_max = original, fractional, tau_max
        self.ratio: torch.Tensor | None = None  # σ-keyed ratio for the current call
        self.forced: torch.Tensor | None = None  # set by an evaluation counter; wins over ``ratio``

    def __call__(self, sigma: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ratio = self.forced if self.forced is not None else self.ratio
        if ratio is None:
            return self.original(sigma, *args, **kwargs)
        ratio = ratio.to(sigma.device, sigma.dtype)
        moved = sigma * ratio
        if self.tau_max is not None:
            moved = moved.clamp(max=self.tau_max)
        if self.fractional is not None:
            moved_t = self.fractional(moved).to(sigma.dtype)
            if ratio.requires_grad:  # tuning: the gradient goes through the fractional timestep
                return moved_t
            # τ = σ (ratio exactly 1) keeps the model's own timestep, so an identity set is bit-exact on any model
            return torch.where(ratio == 1, self.original(sigma, *args, **kwargs).to(sigma.dtype), moved_t)
        return self.original(moved, *args, **kwargs)


def fractional_timestep(log_sigmas: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """t(σ) for a discrete model with this log σ table, linear in log σ between steps (the library's)."""
    return partial(denoisers.fractional_timestep, log_sigmas)


class SigmaMatcher:
    """τ/σ for a call at σ, found by matching σ to the set's evaluation σ's within ``rtol``.

    Everything runs on the device (no host sync per step). A cursor remembers the last
    matched evaluation, so a σ evaluated twice (Heun's corrector, then the next step's
    first evaluation) maps to successive evaluations; a call whose cond/uncond chunks were
    already seen at the cursor starts the next evaluation, one that completes them does not.
    Unmatched σ's get ratio 1 (the plain model).
    """

    def __init__(self, lookup: TauLookup, rtol: float = SIGMA_RTOL):
        self.lookup, self.rtol = lookup, rtol
        self._device: tuple | None = None
        self.reset()

    def reset(self) -> None:
        """Start of a run: forget the cursor."""
        self._cursor: torch.Tensor | None = None
        self._seen: set[int] = set()

    def _tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if self._device != key:  # moved once per device and dtype, not per step
            self._ev = self.lookup.eval_sigmas.to(
                like.device, torch.float64 if like.device.type != "mps" else torch.float32
            )
            self._ratio = self.lookup.ratio.detach().to(like.device, like.dtype)
            self._idx = torch.arange(len(self._ev), device=like.device)
            self._device = key
        return self._ev, self._ratio, self._idx

    def ratio(self, sigma: torch.Tensor, chunks: Sequence[int] | None = None) -> torch.Tensor:
        """Ratios (one per row of ``sigma``) for one model call; ``chunks`` is ComfyUI's
        ``cond_or_uncond`` for the call, if known."""
        return self.match(sigma, chunks)[0]

    def match(self, sigma: torch.Tensor, chunks: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ratios, the matched evaluation's index or −1) per row of ``sigma`` for one model call."""
        ev, ratio, idx = self._tables(sigma)
        flat = sigma.reshape(-1).to(ev.dtype)
        close = (flat[:, None] - ev[None]).abs() <= self.rtol * ev[None]
        chunk_set = set(chunks) if chunks is not None else None
        new_eval = chunk_set is None or not self._seen or bool(chunk_set & self._seen)
        if self._cursor is None:
            self._cursor = torch.full((), -1, dtype=torch.long, device=sigma.device)
        start = self._cursor + 1 if new_eval else self._cursor.clamp_min(0)
        ahead = close & (idx[None] >= start)
        pick = torch.where(ahead.any(1), ahead.int().argmax(1), close.int().argmax(1))
        matched = close.any(1)
        self._cursor = torch.where(matched[0], pick[0], self._cursor)
        self._seen = (chunk_set or set()) if new_eval else self._seen | chunk_set
        out = torch.where(matched, ratio[pick], torch.ones_like(ratio[pick]))
        return out.reshape(sigma.shape), torch.where(matched, pick, torch.full_like(pick, -1)).reshape(sigma.shape)


class DODEOutputs:
    """D-ODE (Kim et al. 2024) on a σ-keyed host: D̃_k = D_k + λ_k·(D_k − D_{k−1}) per network call, D_{k−1} being
    the previous evaluation's output for the same rows. A host that batches cond and uncond rows (ComfyUI's
    ``cond_or_uncond`` chunks) keeps one previous output per chunk; CFG mixes the chunks linearly, so the guided
    result is the guided D̃ a counted run computes."""

    def __init__(self, lambdas: torch.Tensor):
        self.lambdas = lambdas
        self.reset()

    def reset(self) -> None:
        self.previous: dict[int, torch.Tensor] = {}

    def apply(self, out: torch.Tensor, index: torch.Tensor, chunks: Sequence[int] | None) -> torch.Tensor:
        chunks = list(chunks) if chunks else [0]
        lam_table = self.lambdas.to(out.device, out.dtype)
        index = index.reshape(-1)
        lam = torch.where(index >= 0, lam_table[index.clamp_min(0)], torch.zeros_like(index, dtype=out.dtype))
        lam = lam.expand(out.shape[0]) if lam.numel() == 1 else lam
        rows = out.shape[0] // len(chunks)
        parts = []
        for j, (c, part) in enumerate(zip(chunks, out.split(rows))):
            previous, self.previous[c] = self.previous.get(c), part
            if previous is None or previous.shape != part.shape:
                parts.append(part)
                continue
            row_lam = lam[j * rows : (j + 1) * rows].reshape((-1,) + (1,) * (part.ndim - 1))
            parts.append(torch.where(row_lam != 0, part + row_lam * (part - previous), part))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def schedule_problem(tuned: TunedSet, run_sigmas: torch.Tensor) -> str | None:
    """Why a run's σ's do not fit the set (None when they do: the set's schedule or a suffix of it,
    as ComfyUI's denoise < 1 produces)."""
    run = run_sigmas.detach().float().cpu()
    own = tuned.sigmas
    if len(run) <= len(own) and sigmas_match(own[len(own) - len(run) :], run):
        return None
    denoise = tuned.extra.get("denoise")
    how = f"{tuned.steps}-step {tuned.schedule} schedule"
    if denoise not in (None, 1.0):
        how += f" (denoise {denoise:g})"
    return (
        f"the run's {len(run) - 1}-step schedule does not match the {how} "
        f"'{tuned.path.name if tuned.path else tuned.model_id}' was tuned on (use the Tuned Sigmas node, or the same "
        f"scheduler, step count and denoise)"
    )
