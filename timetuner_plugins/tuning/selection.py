"""Held-out selection of a tuned τ: score candidates on validation noise, keep the best one that passes the
trajectory guard, and replace the plain sampler only when the best one clearly wins (see :mod:`.tuner`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint, objectives
from ..contract import QualityMetric

if TYPE_CHECKING:
    from .parameters import RunValues
    from .tuner import Tuner

BOOTSTRAP_RESAMPLES = 200
ACCEPT_WIN_RATE = 0.9  # keep a tuned τ only if it beats the untuned sampler in ≥ 90 % of paired resamples


class Selector:
    """Validation scores of a :class:`~.tuner.Tuner`'s candidates: the objective on the validation samples, or the
    model's own ``metric`` (``select_by="fd"``). Keeps the last candidate's validation samples, so its score, guard
    and win rate run it once."""

    def __init__(self, tuner: Tuner, metric: QualityMetric | None = None):
        self.tuner, self.metric = tuner, metric
        self._cache: tuple[RunValues, torch.Tensor] | None = None
        self._plain_guard: float | None = None

    @property
    def objective(self) -> str:
        """The joint objective selection scores with ('final' for the paper's per-interval one)."""
        objective = self.tuner.config.objective
        return "final" if objective == "paper" else objective

    @property
    def label(self) -> str:
        return "fd" if self.metric is not None else f"{self.objective} objective ({self.tuner.feature_space})"

    def samples(self, values: RunValues) -> torch.Tensor:
        """The final samples of ``values`` on the validation noise."""
        if self._cache is not None and self._cache[0] is values:
            return self._cache[1]
        t = self.tuner
        samples = torch.cat([t.whole(t.val, c, values)[-1] for c in range(t.val.chunks)])
        self._cache = (values, samples)
        return samples

    def rows(self, values: RunValues) -> tuple[torch.Tensor, torch.Tensor]:
        """Per validation sample: the run's final sample and the objective's target, embedded where the objective
        compares embeddings ('energy')."""
        t = self.tuner
        samples = self.samples(values)
        target = torch.cat([t.joint.target(t.val, c) for c in range(t.val.chunks)])
        if self.objective == "energy" and t.features is not None:
            samples, target = t.features(samples), t.features(target)
        return samples, target

    def _rows_objective(self, samples: torch.Tensor, target: torch.Tensor) -> float:
        if self.objective == "energy":
            return float(objectives.energy_distance(samples, target))
        return float(objectives.squared_error(samples, target))

    def score(self, values: RunValues) -> float:
        """Validation score on held-out noise (lower is better): the objective on the whole validation set
        ('final' for 'paper'; the per-chunk mean for 'trajectory'), or the model's metric with ``select_by='fd'``."""
        if self.metric is not None:
            return float(self.metric(self.samples(values)))
        if self.objective == "trajectory":
            return self.tuner.joint.pool_objective(values, self.tuner.val)
        return self._rows_objective(*self.rows(values))

    def trajectory_guard(self, values: RunValues) -> float:
        """Squared error of the final samples to the teacher's from the same validation noise: a candidate must not
        be worse here than the plain sampler, so that matching distributions never costs per-sample accuracy."""
        target = torch.cat([t[-1] for t in self.tuner.teacher(self.tuner.val)])
        return float(objectives.squared_error(self.samples(values), target))

    def win_rate(self, values: RunValues, resamples: int = BOOTSTRAP_RESAMPLES) -> float:
        """Share of paired bootstrap resamples of the validation samples (same noise for both) in which ``values``
        score better than the untuned sampler; 'trajectory' selection: 1 when the score is lower, else 0."""
        untuned = self.tuner.untuned
        if self.metric is None and self.objective == "trajectory":
            return float(self.score(values) < self.score(untuned))
        gen = torch.Generator().manual_seed(self.tuner.val.seed)
        n = len(self.samples(values))
        draws = [torch.randint(n, (n,), generator=gen) for _ in range(resamples)]
        if self.metric is not None:
            metric = self.metric
            tuned, plain = metric.features(self.samples(values)), metric.features(self.samples(untuned))
            wins = [metric.from_features(tuned[idx]) < metric.from_features(plain[idx]) for idx in draws]
            return sum(map(bool, wins)) / resamples
        (tuned, target), (plain, _) = self.rows(values), self.rows(untuned)
        if self.objective == "energy":  # every resample at once, from the distances between all rows
            counts = torch.stack([torch.bincount(idx, minlength=n) for idx in draws])
            tuned_energy = objectives.resampled_energy_distances(tuned, target, counts)
            plain_energy = objectives.resampled_energy_distances(plain, target, counts)
            return (tuned_energy < plain_energy).double().mean().item()
        rows = self._rows_objective
        return sum(rows(tuned[idx], target[idx]) < rows(plain[idx], target[idx]) for idx in draws) / resamples

    def consider(self, state: checkpoint.TunerState, step: int) -> None:
        """Score the current τ on validation noise and keep it if it is the best so far and passes the
        trajectory guard (model-agnostic selection only)."""
        t = self.tuner
        with torch.no_grad():
            values = t.param.values()
            score = self.score(values)
            state.scores.append((step, score))
            if state.best_score is not None and score >= state.best_score:
                return
            if self.metric is None and t.joint.hinged:
                if self._plain_guard is None:
                    self._plain_guard = self.trajectory_guard(t.untuned)
                if self.trajectory_guard(values) > self._plain_guard:
                    return
            state.best_score, state.best_iter, state.best_raw = score, step, t.param.raw.detach().clone()

    def decide(self, state: checkpoint.TunerState) -> tuple[RunValues, dict[str, Any]]:
        """The chosen candidate (the best kept one if it wins ≥ :data:`ACCEPT_WIN_RATE` of the resamples, else the
        plain sampler) and the selection record."""
        t = self.tuner
        best = None if state.best_raw is None else t.param.values(state.best_raw)
        win = None if best is None else self.win_rate(best)
        identity = best is None or win < ACCEPT_WIN_RATE
        return (t.untuned if identity else best), {
            "metric": self.label,
            "untuned": state.scores[0][1],
            "best": state.best_score,
            "best_iteration": state.best_iter,
            "win_rate": win,
            "fallback_identity": identity,
            "scores": state.scores,
            "stopped_early_at": state.stopped_at,
        }
