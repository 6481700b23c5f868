"""The teacher a tuner learns from: its sampler's runs from the same noise on a finer schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..sampling.run import sampler_spec
from ..sampling.schedules import refine

if TYPE_CHECKING:
    from .tuner import NoiseSet, Tuner


class Teacher:
    """The states of a :class:`~.tuner.Tuner`'s teacher at each σ of its schedule, per chunk of a noise set,
    computed once. The teacher is the tuned sampler itself for stochastic samplers and D-ODE (which distils from
    its own solver, Kim et al.), else DPM-Solver++(2M), on ``teacher_substeps`` refinements of each interval,
    from the same noise and Brownian path."""

    def __init__(self, tuner: Tuner):
        self.tuner = tuner
        cfg = tuner.config
        same_kind = tuner.stochastic or "dode" in cfg.families
        self.spec = sampler_spec(cfg.teacher_sampler or (tuner.spec.name if same_kind else "dpmpp_2m"))
        self.sigmas, self.positions = refine(tuner.sigmas, cfg.teacher_substeps, tuner.model.sigma_min)
        self._states: dict[str, list[torch.Tensor]] = {}

    def __call__(self, noise_set: NoiseSet | None = None) -> list[torch.Tensor]:
        """Per chunk of ``noise_set`` (default: the tuner's pool), the states at each σ: (N+1, batch, ...)."""
        t = self.tuner
        noise_set = noise_set or t.pool
        if noise_set.name not in self._states:
            show = t.config.show_progress and t.shards.rank == 0
            chunks = tqdm(range(noise_set.chunks), desc=f"teacher ({noise_set.name})", leave=False, disable=not show)
            self._states[noise_set.name] = [
                torch.stack([states[p] for p in self.positions])
                for states in (t.whole(noise_set, c, None, states=True, spec=self.spec) for c in chunks)
            ]
        return self._states[noise_set.name]

    def use(self, noise_set: NoiseSet, states: list[torch.Tensor]) -> None:
        """Take another run's teacher for ``noise_set`` (per chunk, at least the final states): runs that start from
        the same noise at the same σ_0 and compare only final samples can share one."""
        self._states[noise_set.name] = states
