"""The joint objectives ('final', 'trajectory', 'energy'): every τ trained at once on whole runs (see
:mod:`.tuner`). Selection scores with them too, the paper objective's runs by 'final'."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import objectives

if TYPE_CHECKING:
    from .parameters import RunValues
    from .tuner import NoiseSet, Tuner


class JointObjective:
    """The joint loss of a :class:`~.tuner.Tuner`'s runs, its one training phase and its optimisation step."""

    def __init__(self, tuner: Tuner):
        self.tuner = tuner
        self._plain: dict[str, tuple[float, list[float]]] = {}

    @property
    def hinged(self) -> bool:
        """Energy with the accuracy hinge: the teacher pairs each sample with its own target."""
        t, cfg = self.tuner, self.tuner.config
        return cfg.objective == "energy" and cfg.data == "teacher" and t.data is None and cfg.accuracy_hinge > 0

    def target(self, noise_set: NoiseSet, c: int) -> torch.Tensor:
        """What chunk ``c``'s final samples are compared with: real data (``data="real"`` or given data), else the
        teacher's final samples from the same noise."""
        from .tuner import real_data

        t = self.tuner
        if t.config.data == "real" or t.data is not None:
            gen = torch.Generator().manual_seed(noise_set.key(c) + 17)
            if t.data is not None:
                return t.data[torch.randint(len(t.data), (t.config.batch,), generator=gen)].to(t.device)
            return real_data(t.model, t.config.batch, gen).to(t.device)
        return t.teacher(noise_set)[c][-1]

    def loss(self, outputs: list[torch.Tensor], noise_set: NoiseSet, c: int, objective: str) -> torch.Tensor:
        """The joint loss of a whole chunk's run: ``outputs`` = [final], or the states at each σ and the final."""
        t, final = self.tuner, outputs[-1]
        if objective == "energy":
            embed = t.features or (lambda x: x)
            energy = objectives.energy_distance(embed(final), embed(self.target(noise_set, c)))
            if not self.hinged:
                return energy
            plain_energy, plain_error = self.plain_terms(noise_set, c)
            error = objectives.squared_error(final, t.teacher(noise_set)[c][-1])
            return energy / plain_energy + t.config.accuracy_hinge * torch.relu(error / plain_error - 1)
        target = t.teacher(noise_set)[c]
        if objective == "final":
            return objectives.squared_error(final, target[-1])
        return objectives.trajectory_error(outputs, target, t.sigmas)

    def plain_terms(self, noise_set: NoiseSet, c: int) -> tuple[float, float]:
        """The hinged energy objective's units, from the plain sampler (computed once): its energy distance to the
        teacher over the whole noise set (all its samples at once, so it is stable where one chunk's estimate is
        noise; floored at 1 % of the mean distance between its samples and the teacher's, for a plain sampler that
        already matches the teacher), and chunk ``c``'s final squared error."""
        t = self.tuner
        if noise_set.name not in self._plain:
            embed = t.features or (lambda x: x)
            finals = [t.whole(noise_set, chunk, t.untuned)[-1] for chunk in range(noise_set.chunks)]
            targets = [t.teacher(noise_set)[chunk][-1] for chunk in range(noise_set.chunks)]
            errors = [max(objectives.squared_error(f, g).item(), 1e-12) for f, g in zip(finals, targets)]
            a, b = embed(torch.cat(finals)).flatten(1), embed(torch.cat(targets)).flatten(1)
            scale = (a.double() - b.double()).norm(dim=1).mean().item()
            energy = max(objectives.energy_distance(a, b).item(), 0.01 * scale, 1e-12)
            self._plain[noise_set.name] = (energy, errors)
        energy, errors = self._plain[noise_set.name]
        return energy, errors[c]

    def chunk_value(self, noise_set: NoiseSet, c: int, values: RunValues, objective: str | None = None) -> torch.Tensor:
        """The joint loss of chunk ``c`` for ``values`` without gradients (every process gets the same value)."""
        from .tuner import TuneError

        objective = objective or self.tuner.config.objective
        if objective == "paper":
            raise TuneError("the joint objectives are 'final', 'trajectory' and 'energy'")
        outputs = self.tuner.whole(noise_set, c, values, states=objective == "trajectory")
        return self.loss(outputs, noise_set, c, objective)

    def pool_objective(self, values: RunValues | None = None, noise_set: NoiseSet | None = None) -> float:
        """The joint objective averaged over every chunk of ``noise_set`` (default: the training pool) for
        ``values`` (default: the current parameters; the tuner's ``untuned`` is the plain sampler)."""
        t = self.tuner
        noise_set = noise_set or t.pool
        objective = "final" if t.config.objective == "paper" else None
        with torch.no_grad():
            values = t.param.values() if values is None else values
            total = sum(self.chunk_value(noise_set, c, values, objective).item() for c in range(noise_set.chunks))
        return total / noise_set.chunks

    def chunk(self, iteration: int) -> int:
        """The pool chunk iteration ``iteration`` trains on: every chunk once per epoch, in a seeded order."""
        pool = self.tuner.pool
        epoch, pos = divmod(iteration, pool.chunks)
        order = torch.randperm(pool.chunks, generator=torch.Generator().manual_seed(pool.key(epoch)))
        return int(order[pos])

    def chunk_loss(self, values: RunValues, iteration: int) -> torch.Tensor:
        """The joint loss of iteration ``iteration``'s pool chunk for ``values``, differentiable through the run
        (one process, the whole batch in one pass)."""
        t = self.tuner
        c, objective = self.chunk(iteration), t.config.objective
        outputs = t.sampled(t.pool, c, values, slice(None), objective == "trajectory")
        return self.loss(outputs, t.pool, c, objective)

    def phases(self) -> list[list[int]]:
        """One phase that trains every evaluation."""
        return [list(range(len(self.tuner.ev)))]

    def step(self, phase: int, iteration: int) -> torch.Tensor:
        """Back-propagate the joint loss of the iteration's chunk into ``param.raw.grad``; returns the loss.

        One process and micro-batch: one pass. Otherwise two: the whole chunk without gradients (the loss
        compares all its samples), then each own micro-batch again with gradients, back-propagating the
        whole-chunk loss's gradient for its rows; the processes' gradients are summed."""
        t = self.tuner
        c, objective, n = self.chunk(iteration), t.config.objective, t.config.batch
        want_states = objective == "trajectory"
        if t.shards.trivial(n):
            loss = self.chunk_loss(t.param.values(), iteration)
            loss.backward()
            return loss.detach()
        whole = [x.requires_grad_() for x in t.whole(t.pool, c, t.param.values(), want_states)]
        loss = self.loss(whole, t.pool, c, objective)
        grads = torch.autograd.grad(loss, whole, allow_unused=True)  # the start state is not a function of τ
        for part in t.shards.parts(n):
            outputs = t.sampled(t.pool, c, t.param.values(), part, want_states)
            used = [(out, g[part]) for out, g in zip(outputs, grads) if g is not None]
            torch.autograd.backward([out for out, _ in used], [g for _, g in used])
        t.shards.reduce_sum(t.param.raw.grad)
        return loss.detach()
