"""The generic τ tuner: trains τ for any registered sampler by differentiating through its runs.

No per-sampler code: a run goes through the registry's ``wrap_model`` hook with a
differentiable τ lookup, and gradients flow back through the sampler's own arithmetic.

Objectives
- ``paper``: TimeTuner's per-interval ε-consistency loss (Xia et al. 2024): for interval i,
  ‖ε(x_i, σ_i) − ε(x̃_{i+1}, σ_{i+1})‖² with x̃_{i+1} one solver step from x_i whose network
  is conditioned on τ; one interval after another, the last left untuned; ``sequential``
  reaches x_i by running the tuned steps, ``parallel`` draws it from the forward process.
- ``final``: all τ jointly, squared error to a high-NFE teacher's final sample from the same noise.
- ``trajectory``: all τ jointly, squared error to the teacher's states at every σ of the schedule.
- ``energy`` (the default): all τ jointly, energy distance between the run's final samples and the teacher's
  (or real data, ``data="real"``): it matches distributions, so it does not reward the blur
  that per-sample squared error does when few steps cannot follow the teacher. It is measured on
  the raw samples (``features="pixel"``, the default), on the model's own ``tuning_features`` (the bundled digits models carry a small classifier trained
  apart from the FD metric's; an option, never the default), or on a given ``features=`` callable.
  Against the teacher it is hinged (``accuracy_hinge``, default 3): energy / the plain run's energy
  + hinge · max(0, final error / the plain run's − 1), where the final error is each sample's squared
  distance to the teacher's from the same noise. Energy alone can match the distribution by moving
  samples away from their own ODE solutions (the trajectory error rises); the hinge lets τ improve
  the distribution only while the samples' mean error to those solutions does not grow.
The teacher runs from the same noise (and Brownian path, for stochastic samplers) on a
refinement of the same schedule; its states are computed once and reused.

Selection (``select=True``): every ``validate_every`` iterations τ is scored on held-out
noise — by the objective itself on the validation samples (``select_by="objective"``, the default:
it needs nothing but the model), or by the model's FD (``select_by="fd"``, bundled models only) —
and the best τ is kept, the untuned sampler included as a candidate. With the hinged energy objective
a candidate is kept only if its final samples are no farther from the teacher's (same noise) than the
plain sampler's (the hinge's guard, on held-out noise). The best replaces the
untuned sampler only if it wins at least 90 % of paired bootstrap resamples of the validation
samples, so a set records identity where tuning does not clearly help. Early stop (``patience``): a joint
run ends once ``patience`` validations in a row have not improved the best score by a relative
``min_improvement``. Every iteration's randomness derives from (seed, phase, iteration), so a run
that is stopped and resumed from its checkpoint equals an uninterrupted one.

This module is the loop; its parts: :mod:`.config` (the settings), :mod:`.parameters` (what is trained),
:mod:`.teacher`, the training strategies :mod:`.joint_objective` and :mod:`.paper_objective`, :mod:`.selection`
and :mod:`.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from registry import SamplerSpec

from . import checkpoint, parallel
from ..adapters.denoisers import frozen_network, network_parameters, parameterisation, recompute_evaluations
from ..contract import HasRealData, HasTuningFeatures
from ..devices import model_device
from ..evaluation.metrics import fd_metric
from ..sampling.noise import BrownianNoise, RowNoise
from ..sampling.run import eval_sigmas, per_sample_args, run_sampler, sampler_spec
from ..sets.tau import TauLookup
from ..sets.tuned_set import TunedSet, verdict
from .config import TuneConfig, TuneError
from .joint_objective import JointObjective
from .paper_objective import PaperObjective
from .parameters import RunValues, TauParam
from .selection import Selector
from .teacher import Teacher

RECOMPUTE_PARAMETERS = 20_000_000  # auto: recompute for networks this large (docs/scale.md)
VALIDATION_SEED_OFFSET = 500_000_003


@dataclass
class TuneResult:
    tau: torch.Tensor
    eval_sigmas: torch.Tensor
    sigmas: torch.Tensor
    sampler: str
    schedule: str
    config: TuneConfig
    options: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    selection: dict[str, Any] = field(default_factory=dict)
    dode_lambda: torch.Tensor | None = None
    feature_space: str = "pixel"
    iterations_run: int = 0
    teacher: dict[str, Any] = field(default_factory=dict)  # the substeps used and the convergence check's record

    def tuned_set(
        self,
        model: Any,
        metrics_before: dict | None = None,
        metrics_after: dict | None = None,
        extra: dict | None = None,
    ) -> TunedSet:
        cfg = self.config
        said = verdict(metrics_before or {}, metrics_after or {})
        return TunedSet(
            sigmas=self.sigmas.detach().cpu(),
            eval_sigmas=self.eval_sigmas.detach().cpu(),
            tau=self.tau.detach().cpu(),
            dode_lambda=None if self.dode_lambda is None else self.dode_lambda.cpu(),
            model_id=getattr(model, "model_id", "") or "unnamed",
            model_fingerprint=model.fingerprint,
            sampler=self.sampler,
            schedule=self.schedule,
            objective=cfg.objective,
            mode=cfg.mode if cfg.objective == "paper" else "joint",
            iterations=cfg.iters,
            seed=cfg.seed,
            data_source=cfg.data,
            sampler_options={k: v for k, v in self.options.items() if _jsonable(v)},
            metrics_before=metrics_before or {},
            metrics_after=metrics_after or {},
            extra={
                "model": parameterisation(model),
                "families": list(cfg.families),
                "features": self.feature_space,
                "param": cfg.param,
                "lr": cfg.lr,
                "batch": cfg.batch,
                "pool": cfg.pool,
                "teacher_substeps": self.teacher.get("substeps", cfg.teacher_substeps),
                "teacher_check": self.teacher.get("checks", []),
                "tune_seconds": round(self.seconds, 2),
                "final_loss": self.losses[-1] if self.losses else None,
                "selection": self.selection,
                "iterations_run": self.iterations_run,
                **({"verdict": said} if said else {}),
                **(extra or {}),
            },
        )


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def derive_seed(*parts: int) -> int:
    """One seed from a base seed and indices (chunk, interval, iteration): ((s·P + a)·P + b)… mod 2⁶², P = 1 000 003."""
    seed = 0
    for i, part in enumerate(parts):
        seed = (seed * 1_000_003 + part) if i else part
    return seed % 2**62


@dataclass(frozen=True)
class NoiseSet:
    """Fixed batches of starting noise (and Brownian keys) derived from a seed."""

    name: str
    seed: int
    chunks: int
    batch: int

    @classmethod
    def training(cls, config: TuneConfig) -> NoiseSet:
        """The pool a run with ``config`` trains on."""
        return cls("pool", config.seed, max(1, math.ceil(config.pool / config.batch)), config.batch)

    @classmethod
    def validation(cls, config: TuneConfig) -> NoiseSet:
        """The held-out noise a run with ``config`` selects on."""
        chunks = max(1, math.ceil(config.val_size / config.batch))
        return cls("val", config.seed + VALIDATION_SEED_OFFSET, chunks, config.batch)

    def noise(self, c: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, c))
        return torch.randn((self.batch, *shape), generator=gen).to(device)

    def key(self, c: int) -> int:
        return self.seed * 7919 + c


class Tuner:
    """Trains τ for ``sampler`` on ``model`` over ``sigmas`` (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        sampler: str | SamplerSpec,
        sigmas: torch.Tensor,
        schedule: str = "custom",
        config: TuneConfig | None = None,
        options: dict | None = None,
        extra_args: dict | None = None,
        data: torch.Tensor | Iterable | None = None,
        checkpoint: str | Path | None = None,
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.model, self.spec = model, sampler_spec(sampler)
        self.config = config or TuneConfig()
        self.config.validate()
        if isinstance(self.config.families, list):
            self.config = replace(self.config, families=tuple(self.config.families))
        if not self.spec.tunable:
            raise TuneError(f"sampler {self.spec.name!r} cannot be tuned: {self.spec.untunable_reason}")
        cfg = self.config
        self.device = model_device(model)
        self.sigmas = sigmas.float()
        self.schedule, self.extra_args, self.data = schedule, extra_args, real_x0(data, tuple(model.sample_shape))
        self.options = self.spec.options(options)
        self.options.pop("noise_sampler", None)
        self.stochastic = self.spec.is_stochastic(self.options)
        self.shape = tuple(model.sample_shape)
        self.ev = eval_sigmas(self.spec, self.sigmas, self.shape, self.options, model)
        self.param = TauParam(
            self.ev.to(self.device),
            model,
            cfg.param,
            self.sigmas.to(self.device),
            tuple(cfg.families),
            self._eval_sigmas,
        )
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.pool, self.val = NoiseSet.training(cfg), NoiseSet.validation(cfg)
        self.shards = parallel.Shards.current(cfg.micro_batch)
        self.shards.check(cfg.batch)
        self.recompute = cfg.recompute == "on" or (
            cfg.recompute == "auto" and network_parameters(model) >= RECOMPUTE_PARAMETERS
        )
        self.losses: list[float] = []
        self._untuned: RunValues | None = None
        self._brownian: dict[int, BrownianNoise] = {}
        metric = fd_metric(model) if cfg.select and cfg.select_by == "fd" else None
        if cfg.select and cfg.select_by == "fd" and metric is None:
            raise TuneError(
                f"select_by 'fd' needs a model with a quality metric of its own (a quality_metric() method, "
                f"docs/model_agnostic.md) and {getattr(model, 'model_id', 'this model')!r} has none; use select_by "
                f"'objective' (held-out selection by the objective itself)"
            )
        if features is None and cfg.features == "tuning_features":
            features = model.tuning_features if isinstance(model, HasTuningFeatures) else None
            if features is None:
                raise TuneError(
                    f"features 'tuning_features' needs a model that carries a feature network and "
                    f"{getattr(model, 'model_id', 'this model')!r} has none; use features 'pixel'"
                )
        self.features = features
        self.feature_space = "pixel" if features is None else getattr(features, "name", type(features).__name__)
        self.teacher = Teacher(self)
        self.joint = JointObjective(self)
        self.strategy: JointObjective | PaperObjective = (
            PaperObjective(self) if cfg.objective == "paper" else self.joint
        )
        self.selector = Selector(self, metric)
        self.shards.agree(self._fingerprint(), "settings and model (config, sampler, σ's, model fingerprint)")

    # ----- runs -----------------------------------------------------------------------------------------
    def _eval_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        return eval_sigmas(self.spec, sigmas.cpu(), self.shape, self.options, self.model).to(self.device)

    @property
    def untuned(self) -> RunValues:
        """The plain sampler, as a candidate for :meth:`pool_objective` and the selector's scores (one object, so its
        validation samples are computed once)."""
        if self._untuned is None:
            self._untuned = self.param.plain()
        return self._untuned

    def run(
        self,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        lookup: TauLookup | None,
        noise_sampler: Callable | None,
        seed: int,
        states: list[torch.Tensor] | None = None,
        spec: SamplerSpec | None = None,
        extra_args: dict | None = None,
    ) -> torch.Tensor:
        callback = (lambda info: states.append(info["x"])) if states is not None else None
        spec = spec or self.spec
        options = self.options if spec.name == self.spec.name else None  # a teacher of another kind: its defaults
        return run_sampler(
            self.model,
            spec,
            x,
            sigmas,
            lookup=lookup,
            options=options,
            extra_args=extra_args,
            noise_sampler=noise_sampler,
            seed=seed,
            callback=callback,
        )

    def _noise_sampler(self, key: int, like: torch.Tensor) -> Callable | None:
        if not self.stochastic:
            return None
        if key not in self._brownian:
            self._brownian[key] = BrownianNoise(like, self.model.sigma_min, self.model.sigma_max, key)
        return self._brownian[key]

    def batch_args(self, c: int, part: slice = slice(None)) -> dict | None:
        """Extra arguments for rows ``part`` of chunk ``c``: tensors with one row per pool sample are sliced to
        the chunk, tensors with one row per batch sample to ``part``."""
        b = self.config.batch
        chunk = per_sample_args(self.extra_args, slice(c * b, (c + 1) * b), self.pool.chunks * b)
        return per_sample_args(chunk, part, b, self.device)

    def _start(self, noise_set: NoiseSet, c: int, part: slice = slice(None)) -> tuple[torch.Tensor, Callable | None]:
        """Rows ``part`` of chunk ``c``'s starting state, and their noise sampler (the whole chunk's, sliced,
        so a micro-batch or a process sees exactly the noise its rows get in a whole-batch run)."""
        x = noise_set.noise(c, self.shape, self.device) * self.sigmas[0].to(self.device)
        ns = self._noise_sampler(noise_set.key(c), x)
        return x[part], (None if ns is None else RowNoise(ns, part))

    def sampled(
        self,
        noise_set: NoiseSet,
        c: int,
        values: RunValues | None,
        part: slice,
        states: bool = False,
        spec: SamplerSpec | None = None,
    ) -> list[torch.Tensor]:
        """One run on rows ``part`` of chunk ``c``: [final], or the states at each σ and the final with
        ``states``. ``values`` None is a teacher run (``spec`` on the refined schedule)."""
        x, ns = self._start(noise_set, c, part)
        recorded: list[torch.Tensor] | None = [] if states else None
        if values is None:
            final = self.run(
                x,
                self.teacher.sigmas.to(self.device),
                None,
                ns,
                seed=noise_set.seed + c,
                states=recorded,
                spec=spec,
                extra_args=self.batch_args(c, part),
            )
        else:
            with recompute_evaluations(self.recompute and torch.is_grad_enabled()):
                final = self.run(
                    x,
                    values.sigmas,
                    values.lookup(),
                    ns,
                    seed=noise_set.seed + c,
                    states=recorded,
                    extra_args=self.batch_args(c, part),
                )
        return (recorded or []) + [final]

    def whole(
        self,
        noise_set: NoiseSet,
        c: int,
        values: RunValues | None,
        states: bool = False,
        spec: SamplerSpec | None = None,
    ) -> list[torch.Tensor]:
        """:meth:`sampled` for the whole chunk without gradients: this process's micro-batches, joined with the
        other processes' rows."""
        with torch.no_grad():
            runs = [
                self.sampled(noise_set, c, values, part, states, spec) for part in self.shards.parts(self.config.batch)
            ]
        return [self.shards.gather(parallel.concat([run[j] for run in runs])) for j in range(len(runs[0]))]

    # ----- optimisation ---------------------------------------------------------------------------------
    def tune(self, resume: bool = False, progress: Callable[[int, int], None] | None = None) -> TuneResult:
        """Run (or resume) the optimisation; ``progress(done, total)`` is called after every iteration.
        Out of memory becomes a :class:`TuneError` naming the fix. The network's weights get no gradients."""
        try:
            with frozen_network(self.model):
                return self._tune(resume, progress)
        except torch.OutOfMemoryError:
            raise TuneError(_oom_message(self.config)) from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
                raise TuneError(_oom_message(self.config)) from None
            raise

    def _tune(self, resume: bool, progress: Callable[[int, int], None] | None) -> TuneResult:
        cfg = self.config
        started = time.perf_counter()
        phases = self.strategy.phases()
        if resume:
            state = checkpoint.load(self.checkpoint, self._fingerprint(), self.device) if self.checkpoint else None
            if state is None:
                raise TuneError("--resume needs a checkpoint path")
            with torch.no_grad():
                self.param.raw.copy_(state.raw)
        else:
            if self.checkpoint is not None and self.checkpoint.exists():
                raise TuneError(
                    f"checkpoint {self.checkpoint} exists from an earlier run; pass --resume to continue "
                    f"it, or delete it to start over"
                )
            state = checkpoint.TunerState(raw=self.param.raw.detach().clone())
            if cfg.select:
                untuned = self.selector.score(self.untuned)
                state.scores.append((0, untuned))
                state.best_score, state.best_iter, state.best_raw = untuned, 0, None
        self.losses = state.losses
        total = self._planned = len(phases) * cfg.iters
        with tqdm(
            total=total,
            initial=state.phase * cfg.iters + state.next_iter,
            desc=f"tune {self.spec.name}",
            disable=not (cfg.show_progress and self.shards.rank == 0),
        ) as bar:  # closed before any message
            self._optimise(state, phases, bar, progress)
        self.shards.barrier()
        if self.checkpoint is not None and self.shards.rank == 0:
            self.checkpoint.unlink(missing_ok=True)
        return self._result(state, time.perf_counter() - started)

    def _optimise(
        self,
        state: checkpoint.TunerState,
        phases: list[list[int]],
        bar: tqdm,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        cfg = self.config
        total = len(phases) * cfg.iters
        for phase in range(state.phase, len(phases)):
            mask = self.param.trainable(phases[phase])
            opt = torch.optim.Adam([self.param.raw], lr=cfg.lr)
            if state.optimizer is not None:
                opt.load_state_dict(state.optimizer)
            for it in range(state.next_iter, cfg.iters):
                opt.zero_grad(set_to_none=True)
                loss = self.strategy.step(phase, it)
                grad = self.param.raw.grad
                if not torch.isfinite(loss) or not bool(torch.isfinite(grad).all()):
                    raise TuneError(
                        f"the loss diverged at iteration {it} (loss {loss.item():.4g}); lower --lr "
                        f"(now {cfg.lr}) or check the model's output for NaNs"
                    )
                grad.mul_(mask)
                opt.step()
                self.losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.4g}", phase=phase)
                if progress is not None:
                    progress(phase * cfg.iters + it + 1, total)
                step = phase * cfg.iters + it + 1
                done = it + 1 == cfg.iters
                if cfg.select and (step % cfg.validate_every == 0 or done):
                    self.selector.consider(state, step)
                    if not done and len(phases) == 1 and stalled(state.scores, cfg.patience, cfg.min_improvement):
                        done, state.stopped_at = True, step
                        bar.total = step
                        bar.set_postfix_str(f"stopped early: {stop_reason(cfg, step)}")
                state.raw = self.param.raw.detach().clone()
                state.phase, state.next_iter = (phase + 1, 0) if done else (phase, it + 1)
                state.optimizer = None if done else opt.state_dict()
                if self.checkpoint is not None and self.shards.rank == 0 and (step % cfg.checkpoint_every == 0 or done):
                    checkpoint.save(self.checkpoint, state, self._fingerprint())
                if done:
                    break
            state.next_iter, state.optimizer = 0, None
        if progress is not None and state.stopped_at is not None:
            progress(total, total)

    def _result(self, state: checkpoint.TunerState, seconds: float) -> TuneResult:
        selection: dict[str, Any] = {}
        with torch.no_grad():
            if self.config.select:
                chosen, selection = self.selector.decide(state)
            else:
                chosen = self.param.values()
        tau = chosen.ev if chosen.tau is None else chosen.tau
        lam = chosen.dode_lambda
        if lam is None and "dode" in self.config.families:
            lam = torch.zeros_like(tau)  # the identity fallback still records the family it tuned
        schedule = self.schedule if chosen.sigmas is self.param.sigmas else f"learned-{self.schedule}"
        return TuneResult(
            tau=tau.detach().float().cpu(),
            eval_sigmas=chosen.ev.detach().float().cpu(),
            sigmas=chosen.sigmas.detach().float().cpu(),
            sampler=self.spec.name,
            schedule=schedule,
            config=self.config,
            options=self.options,
            losses=self.losses,
            seconds=seconds,
            selection=selection,
            dode_lambda=None if lam is None else lam.detach().float().cpu(),
            feature_space=self.feature_space,
            iterations_run=state.stopped_at or self._planned,
            teacher={"substeps": self.teacher.substeps, "checks": self.teacher.checks},
        )

    def _fingerprint(self) -> str:
        parts = [
            asdict(self.config)
            | {"show_progress": None, "checkpoint_every": None, "micro_batch": None, "recompute": None},
            self.spec.name,
            self.sigmas.tolist(),
            self.model.fingerprint,
            {k: repr(v) for k, v in self.options.items()},
            self.feature_space,
        ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stop_reason(config: TuneConfig, step: int) -> str:
    """Why a run that ended at ``step`` stopped before its configured iterations."""
    return (
        f"iteration {step} of {config.iters}: {config.patience} validations in a row without a "
        f"{config.min_improvement:.1%} gain (patience 0 runs every iteration)"
    )


def stalled(scores: list[tuple[int, float]], patience: int, min_improvement: float) -> bool:
    """Whether the last ``patience`` validation scores (lower is better) all failed to beat the best before
    them by a relative ``min_improvement``; ``patience`` 0 never stalls."""
    if patience < 1 or len(scores) <= patience:
        return False
    best = min(score for _, score in scores[:-patience])
    return all(score >= best - min_improvement * abs(best) for _, score in scores[-patience:])


def _oom_message(cfg: TuneConfig) -> str:
    rows = cfg.micro_batch or cfg.batch
    return (
        f"out of memory at {rows} rows per pass (batch {cfg.batch}); try --micro-batch {max(1, rows // 2)} (the "
        f"same result in more passes), --recompute on if it is off, or a lower resolution; --batch "
        f"{max(2, cfg.batch // 2)} also helps but changes the result. Nothing was written; the last checkpoint, "
        f"if any, is intact"
    )


def real_x0(data: torch.Tensor | Iterable | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Real x₀ as one tensor: a tensor, or a data loader / iterable of batches (tensors, or tuples whose
    first element is the batch, like ``(images, labels)``)."""
    if data is None or torch.is_tensor(data):
        x = data
    else:
        try:
            batches = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
        except TypeError:
            raise TuneError(
                f"data must be a tensor of x0 or an iterable of batches, got {type(data).__name__}"
            ) from None
        if not batches or not all(torch.is_tensor(b) for b in batches):
            raise TuneError("data yielded no tensors; give a tensor of x0 or a loader of (x0, ...) batches")
        x = torch.cat([b.reshape(-1, *b.shape[-len(shape) :]) if shape else b for b in batches])
    if x is not None and tuple(x.shape[1:]) != tuple(shape):
        raise TuneError(
            f"data samples have shape {tuple(x.shape[1:])} but the model makes {tuple(shape)}; "
            f"give x0 shaped (N, {', '.join(map(str, shape))})"
        )
    if x is not None and len(x) < 2:
        raise TuneError("data needs at least 2 samples")
    return x


def real_data(model: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """Real x₀ from a model that has them (:class:`~.contract.HasRealData`; the bundled ones do)."""
    if isinstance(model, HasRealData):
        return model.sample_data(n, generator)
    raise TuneError("this model has no bundled real data; pass data=<tensor of x0> or use data='teacher'")
