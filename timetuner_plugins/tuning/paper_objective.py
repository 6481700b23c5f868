"""TimeTuner's own objective (Xia et al. 2024): one interval after another, the ε-consistency
‖ε(x_i, σ_i) − ε(x̃_{i+1}, σ_{i+1})‖², where x̃_{i+1} is one solver step from x_i with the network conditioned on
τ. ``sequential`` reaches x_i by running the tuned steps before it, ``parallel`` draws it from the forward process."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Iterator

import torch

from . import objectives
from ..adapters.denoisers import recompute_evaluations
from ..sampling.noise import RowNoise, SeededNoise
from ..sampling.run import eval_sigmas
from ..sets.tau import TauLookup

if TYPE_CHECKING:
    from .tuner import Tuner


class PaperObjective:
    """The per-interval loss of a :class:`~.tuner.Tuner` whose objective is ``paper``: one phase per interval, the
    last left untuned."""

    def __init__(self, tuner: Tuner):
        self.tuner = tuner

    @cached_property
    def counts(self) -> list[int]:
        """counts[i]: evaluations made by steps 0..i (runs on prefixes of the schedule)."""
        from .tuner import TuneError

        t = self.tuner
        counts = []
        for i in range(len(t.sigmas) - 2):
            prefix = eval_sigmas(t.spec, t.sigmas[: i + 2], t.shape, t.options, t.model)
            if not torch.allclose(prefix, t.ev[: len(prefix)], rtol=1e-6):
                raise TuneError(
                    f"sampler {t.spec.name!r} evaluates at other σ's on a prefix of the schedule, so "
                    f"the paper's per-interval objective does not apply; use objective 'energy'"
                )
            counts.append(len(prefix))
        return counts

    def phases(self) -> list[list[int]]:
        """Indices of the evaluations each phase trains: one phase per interval."""
        c = self.counts
        return [list(range(c[i - 1] if i else 0, c[i])) for i in range(len(c))]

    def _x0(self, gen: torch.Generator) -> torch.Tensor:
        from .tuner import real_data

        t, b = self.tuner, self.tuner.config.batch
        if t.data is not None:
            return t.data[torch.randint(len(t.data), (b,), generator=gen)].to(t.device)
        if t.config.data == "real":
            return real_data(t.model, b, gen).to(t.device)
        finals = torch.cat([teacher[-1] for teacher in t.teacher()])
        return finals[torch.randint(len(finals), (b,), generator=gen).to(finals.device)]

    def _eps(self, x: torch.Tensor, sigma: torch.Tensor, args: dict | None) -> torch.Tensor:
        s = sigma.to(x.device)
        return (x - self.tuner.model(x, s.expand(len(x)), **(args or {}))) / s

    def _parts(self, interval: int, iteration: int) -> Iterator[torch.Tensor]:
        """The per-interval loss of the iteration's batch, one term per own micro-batch: a mean over samples, so
        each term is its rows' mean weighted by their share of the batch."""
        from .tuner import derive_seed

        t = self.tuner
        cfg, i, n, counts = t.config, interval, t.config.batch, self.counts
        seed = derive_seed(cfg.seed, i, iteration)
        gen = torch.Generator().manual_seed(seed)
        x0 = self._x0(gen)
        noise = torch.randn(x0.shape, generator=gen).to(t.device)
        start = counts[i - 1] if i else 0
        sig, ev = t.sigmas.to(t.device), t.param.eval_sigmas
        for part in t.shards.parts(n):
            ns = RowNoise(SeededNoise(x0, seed), part) if t.stochastic else None
            args = t.batch_args(0, part)
            tau = t.param.tau()
            active = torch.zeros_like(tau, dtype=torch.bool)
            active[start : counts[i]] = True
            tau = torch.where(active, tau, tau.detach())  # earlier intervals are fixed: no graph through the prefix
            with recompute_evaluations(t.recompute and torch.is_grad_enabled()):
                if cfg.mode == "sequential":
                    states: list[torch.Tensor] = []
                    x_next = t.run(
                        x0[part] + sig[0] * noise[part],
                        sig[: i + 2],
                        TauLookup(ev[: counts[i]], tau[: counts[i]]),
                        ns,
                        seed=seed,
                        states=states,
                        extra_args=args,
                    )
                    x_i = states[i].detach()
                else:
                    x_i = x0[part] + sig[i] * noise[part]
                    x_next = t.run(
                        x_i,
                        sig[i : i + 2],
                        TauLookup(ev[start : counts[i]], tau[start : counts[i]]),
                        ns,
                        seed=seed,
                        extra_args=args,
                    )
                with torch.no_grad():
                    eps_i = self._eps(x_i, sig[i], args)
                loss = objectives.eps_consistency(eps_i, self._eps(x_next, sig[i + 1], args))
            yield loss * ((part.stop - part.start) / n)

    def interval_loss(self, interval: int, iteration: int) -> float:
        """The loss for ``interval`` on the batch of ``iteration`` (any iteration number: a held-out batch for
        numbers past the run's), without gradients."""
        t = self.tuner
        with torch.no_grad():
            total = sum(part.detach() for part in self._parts(interval, iteration))
        return float(t.shards.reduce_sum(torch.as_tensor(total, device=t.device)))

    def step(self, interval: int, iteration: int) -> torch.Tensor:
        """Back-propagate the loss into ``param.raw.grad`` (processes' gradients summed); returns it."""
        t = self.tuner
        total = torch.zeros((), device=t.device)
        for loss in self._parts(interval, iteration):
            loss.backward()
            total = total + loss.detach()
        t.shards.reduce_sum(t.param.raw.grad)
        return t.shards.reduce_sum(total)
