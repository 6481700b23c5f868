"""The teacher a tuner learns from: its sampler's runs from the same noise on a finer schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..sampling.run import sampler_spec
from ..sampling.schedules import refine
from .parallel import concat

if TYPE_CHECKING:
    from .parameters import RunValues
    from .tuner import NoiseSet, Tuner

MAX_DOUBLINGS = 2  # the convergence check refines the teacher up to 4× the configured substeps
CHECK_ROWS = 64  # validation samples the check runs


class Teacher:
    """The states of a :class:`~.tuner.Tuner`'s teacher at each σ of its schedule, per chunk of a noise set,
    computed once. The teacher is the tuned sampler itself for stochastic samplers and D-ODE (which distils from
    its own solver, Kim et al.), else DPM-Solver++(2M), on ``teacher_substeps`` refinements of each interval
    (doubled until it has converged, :meth:`settle`), from the same noise and Brownian path."""

    def __init__(self, tuner: Tuner):
        self.tuner = tuner
        cfg = tuner.config
        same_kind = tuner.stochastic or "dode" in cfg.families
        self.spec = sampler_spec(cfg.teacher_sampler or (tuner.spec.name if same_kind else "dpmpp_2m"))
        self.substeps = cfg.teacher_substeps
        self.sigmas, self.positions = refine(tuner.sigmas, self.substeps, tuner.model.sigma_min)
        self.checks: list[dict[str, float]] = []  # the convergence check: substeps and relative change per doubling
        self._settled = cfg.teacher_tolerance == 0
        self._states: dict[str, list[torch.Tensor]] = {}

    def settle(self) -> None:
        """Refine the teacher until it has converged for this run (once, before its first use): doubling its substeps
        must move its final samples on the first :data:`CHECK_ROWS` validation samples by at most
        ``teacher_tolerance`` of the plain sampler's RMS distance to them, else the substeps double, at most
        :data:`MAX_DOUBLINGS` times. How many a model needs is not known in advance (a coarse teacher lets τ chase its
        errors, and the trajectory guard then compares with the wrong solutions)."""
        if self._settled:
            return
        self._settled = True
        t = self.tuner
        world = t.shards.world
        rows = max(world, min(t.config.batch, CHECK_ROWS - CHECK_ROWS % world))  # splits evenly over the processes
        rms = lambda a, b: float((a - b).double().pow(2).mean().sqrt())  # noqa: E731
        with torch.no_grad():
            plain = self._final(rows, t.untuned)
            coarse = self._final(rows, None, self.substeps)
            for _ in range(MAX_DOUBLINGS):
                fine = self._final(rows, None, 2 * self.substeps)
                change = rms(fine, coarse) / max(rms(fine, plain), 1e-12)
                self.checks.append({"substeps": self.substeps, "change": round(change, 5)})
                if change <= t.config.teacher_tolerance:
                    break
                self.substeps, coarse = 2 * self.substeps, fine
        self.sigmas, self.positions = refine(t.sigmas, self.substeps, t.model.sigma_min)

    def _final(self, rows: int, values: RunValues | None, substeps: int = 0) -> torch.Tensor:
        """Final samples of the first ``rows`` validation samples: a run of ``values``, or (None) the teacher's with
        ``substeps`` substeps; in micro-batches and processes like every other run, each process getting them all."""
        t = self.tuner
        if values is None:
            self.sigmas, self.positions = refine(t.sigmas, substeps, t.model.sigma_min)
        parts = [t.sampled(t.val, 0, values, part, spec=self.spec)[-1] for part in t.shards.parts(rows)]
        return t.shards.gather(concat(parts))

    def __call__(self, noise_set: NoiseSet | None = None) -> list[torch.Tensor]:
        """Per chunk of ``noise_set`` (default: the tuner's pool), the states at each σ: (N+1, batch, ...)."""
        t = self.tuner
        noise_set = noise_set or t.pool
        if noise_set.name not in self._states:
            self.settle()
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
        self._settled = True
        self._states[noise_set.name] = states
