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
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, get_args

import torch
from tqdm.auto import tqdm

from registry import SamplerSpec

from . import checkpoint, objectives, parallel
from ..adapters.denoisers import network_parameters, parameterisation, recompute_evaluations
from ..contract import HasRealData, HasTuningFeatures
from ..evaluation.metrics import fd_metric
from ..sampling.noise import BrownianNoise, RowNoise
from .paper_objective import PaperObjective
from ..sampling.run import eval_sigmas, run_sampler, sampler_spec
from ..devices import model_device
from ..sampling.schedules import refine
from .selection import Selector
from ..sets.tau import TauLookup
from ..sets.tau_function import bounded_log_ratio
from ..sets.tuned_set import TunedSet, verdict

Objective = Literal["paper", "trajectory", "final", "energy"]
Mode = Literal["sequential", "parallel"]
Param = Literal["log_ratio", "t_ratio"]
Data = Literal["teacher", "real"]
Features = Literal["pixel", "tuning_features"]  # tuning_features: the model's own (digits: a classifier)
SelectBy = Literal["objective", "fd"]  # fd: the model's own quality metric, where it has one
Family = Literal["tau", "dode", "sigma"]  # τ per evaluation; D-ODE λ per evaluation; the schedule's interior σ's
Recompute = Literal["auto", "on", "off"]
OBJECTIVES, MODES, PARAMS, DATA = get_args(Objective), get_args(Mode), get_args(Param), get_args(Data)
FEATURES, SELECT_BY, FAMILIES, RECOMPUTE = get_args(Features), get_args(SelectBy), get_args(Family), get_args(Recompute)
RECOMPUTE_PARAMETERS = 20_000_000  # auto: recompute for networks this large (docs/scale.md)
DODE_BOUND = 1.0  # |λ| ≤ 1 via a tanh
VALIDATION_SEED_OFFSET = 500_000_003


class TuneError(ValueError):
    """Settings that cannot work, named with the fix."""


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one tuning run (immutable: change one with ``dataclasses.replace``); ``TuneConfig.paper()``
    gives the paper's procedure."""

    objective: Objective = "energy"
    mode: Mode = "sequential"
    iters: int = 250
    batch: int = 128
    lr: float = 0.03
    seed: int = 0
    param: Param = "log_ratio"
    data: Data = "teacher"
    pool: int = 512
    teacher_substeps: int = 20
    teacher_sampler: str | None = None
    select: bool = True
    validate_every: int = 25
    val_size: int = 512
    patience: int = 4  # validations without improvement before a joint run stops; 0: run every iteration
    min_improvement: float = 0.005  # relative score decrease that counts as an improvement for ``patience``
    checkpoint_every: int = 25
    show_progress: bool = True
    families: tuple[Family, ...] = ("tau",)
    features: Features = "pixel"
    select_by: SelectBy = "objective"
    accuracy_hinge: float = 3.0  # energy: weight of the penalty on each sample's error growing past the plain run's
    micro_batch: int | None = None  # rows per forward/backward pass (None: the whole batch); same result
    recompute: Recompute = "auto"  # recompute each evaluation's activations in the backward pass: auto, on, off

    @classmethod
    def paper(cls, mode: str = "sequential", **overrides: Any) -> "TuneConfig":
        """Xia et al. 2024: ratio τ = r·t per interval, Adam lr 2e-3, 500 iterations, real data, no selection."""
        return cls(
            **{
                "objective": "paper",
                "mode": mode,
                "iters": 500,
                "lr": 2e-3,
                "param": "t_ratio",
                "data": "real",
                "batch": 64,
                "select": False,
                **overrides,
            }
        )

    def validate(self) -> None:
        for name, value, allowed in (
            ("objective", self.objective, OBJECTIVES),
            ("mode", self.mode, MODES),
            ("param", self.param, PARAMS),
            ("data", self.data, DATA),
            ("features", self.features, FEATURES),
            ("select_by", self.select_by, SELECT_BY),
        ):
            if value not in allowed:
                raise TuneError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        for name in ("iters", "pool", "teacher_substeps", "checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise TuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise TuneError(f"micro_batch must be at least 1, got {self.micro_batch}")
        if self.recompute not in RECOMPUTE:
            raise TuneError(f"unknown recompute {self.recompute!r}; choose one of {', '.join(RECOMPUTE)}")
        if self.batch < 2 or self.val_size < 2:
            raise TuneError(f"batch and val_size must be at least 2, got {self.batch} and {self.val_size}")
        if self.patience < 0 or not 0 <= self.min_improvement < 1:
            raise TuneError(
                f"patience must be 0 (off) or more and min_improvement in [0, 1), got {self.patience} and "
                f"{self.min_improvement}"
            )
        if not (self.accuracy_hinge >= 0 and math.isfinite(self.accuracy_hinge)):
            raise TuneError(f"accuracy_hinge must be 0 (off) or a positive number, got {self.accuracy_hinge}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TuneError(f"lr must be a positive number, got {self.lr}")
        families = tuple(self.families)
        if not families or len(set(families)) != len(families) or not set(families) <= set(FAMILIES):
            raise TuneError(f"families must be distinct names from {', '.join(FAMILIES)}, got {list(families)}")
        if self.objective == "paper" and families != ("tau",):
            raise TuneError(
                "the paper's objective tunes τ only; use objective 'energy' or 'final' for the "
                "'dode' and 'sigma' families"
            )
        if "sigma" in families and (self.objective == "trajectory" or self.param != "log_ratio"):
            raise TuneError(
                "tuning the schedule ('sigma') moves the states the 'trajectory' objective compares, and "
                "needs param 'log_ratio'; use objective 'energy' or 'final'"
            )
        if self.objective in ("final", "trajectory") and self.data == "real":
            raise TuneError(
                f"objective {self.objective!r} compares each run with a teacher run from the same "
                f"noise, so it is data-free; use data='teacher', or objective 'energy' or 'paper' "
                f"to tune on real data"
            )


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
                "teacher_substeps": cfg.teacher_substeps,
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


@dataclass
class RunValues:
    """What one run uses: the schedule, its evaluation σ's, τ per evaluation and D-ODE λ's (or None)."""

    sigmas: torch.Tensor
    ev: torch.Tensor
    tau: torch.Tensor | None  # None: the plain sampler
    dode_lambda: torch.Tensor | None = None

    def lookup(self) -> TauLookup | None:
        return None if self.tau is None else TauLookup(self.ev, self.tau, dode_lambda=self.dode_lambda)


class TauParam(torch.nn.Module):
    """The trained parameters as one raw vector [τ (K) | D-ODE λ (K) | schedule gaps (N−1)], named by ``parts``;
    zeros (ones for ``t_ratio``'s τ) are the plain sampler.

    τ: ``log_ratio``: τ = σ·exp(b·tanh(raw/b)); ``t_ratio`` (the paper's): the model's continuous
    time is scaled, t(τ) = r·t(σ), with t counted from the model's time origin. λ = b·tanh(raw/b)
    (λ_0 has no previous output and stays 0). Schedule: σ_0 and σ_{N−1} stay; the N−1 gaps between
    them in log σ are a softmax of their initial shares plus raw, so σ's stay decreasing.
    """

    def __init__(
        self,
        eval_sigmas: torch.Tensor,
        model: Any,
        kind: str,
        sigmas: torch.Tensor | None = None,
        families: tuple[str, ...] = ("tau",),
        eval_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.kind, self.model, self.families, self.eval_fn = kind, model, tuple(families), eval_fn
        self.register_buffer("eval_sigmas", eval_sigmas.clone())
        sigmas = sigmas if sigmas is not None else torch.cat([eval_sigmas[:1], eval_sigmas.new_zeros(1)])
        self.register_buffer("sigmas", sigmas.to(eval_sigmas).clone())
        k, gaps = len(eval_sigmas), max(0, len(sigmas) - 2)
        self.parts = {"tau": slice(0, k), "dode": slice(k, 2 * k), "sigma": slice(2 * k, 2 * k + gaps)}
        self.raw = torch.nn.Parameter(self.identity_raw())

    def identity_raw(self) -> torch.Tensor:
        ev = self.eval_sigmas
        raw = ev.new_zeros(self.parts["sigma"].stop)
        if self.kind == "t_ratio":
            raw[self.parts["tau"]] = 1.0
        return raw

    def trainable(self, evaluations: list[int]) -> torch.Tensor:
        """The mask of raw entries a phase training ``evaluations`` updates."""
        mask = torch.zeros(len(self.raw), dtype=torch.bool, device=self.raw.device)
        if "tau" in self.families:
            mask[self.parts["tau"]][evaluations] = True
        if "dode" in self.families:
            mask[self.parts["dode"]][1:] = True  # λ_0 has no previous output
        if "sigma" in self.families:
            mask[self.parts["sigma"]] = True
        return mask

    def tau(self, raw: torch.Tensor | None = None, ev: torch.Tensor | None = None) -> torch.Tensor:
        raw = (self.raw if raw is None else raw)[self.parts["tau"]]
        ev = self.eval_sigmas if ev is None else ev
        if self.kind == "log_ratio":
            tau_max = getattr(self.model, "tau_max", None)
            tau = ev * torch.exp(bounded_log_ratio(raw, ev, tau_max))
            return tau if tau_max is None else tau.clamp(max=tau_max)  # exp's rounding may not pass τ_max
        offset = float(getattr(self.model, "time_offset", 0.0))
        t = self.model.sigma_to_t(ev) + offset
        return self.model.t_to_sigma(raw * t - offset)

    def schedule(self, raw: torch.Tensor) -> torch.Tensor:
        gaps = raw[self.parts["sigma"]]
        if "sigma" not in self.families or len(gaps) == 0:
            return self.sigmas
        log = self.sigmas[:-1].log()
        total = log[0] - log[-1]
        shares = torch.softmax((log[:-1] - log[1:]).div(total).log() + gaps, dim=0)
        inner = log[0] - total * torch.cumsum(shares, dim=0)[:-1]
        return torch.cat([self.sigmas[:1], inner.exp(), self.sigmas[-2:]])

    def values(self, raw: torch.Tensor | None = None) -> RunValues:
        raw = self.raw if raw is None else raw
        sigmas = self.schedule(raw)
        ev = self.eval_sigmas if sigmas is self.sigmas else self.eval_fn(sigmas.detach())
        lam = DODE_BOUND * torch.tanh(raw[self.parts["dode"]] / DODE_BOUND) if "dode" in self.families else None
        return RunValues(sigmas, ev, self.tau(raw, ev), lam)

    def plain(self) -> RunValues:
        return RunValues(self.sigmas, self.eval_sigmas, None)


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
        self.pool = NoiseSet("pool", cfg.seed, max(1, math.ceil(cfg.pool / cfg.batch)), cfg.batch)
        self.val = NoiseSet(
            "val", cfg.seed + VALIDATION_SEED_OFFSET, max(1, math.ceil(cfg.val_size / cfg.batch)), cfg.batch
        )
        self.shards = parallel.Shards.current(cfg.micro_batch)
        self.shards.check(cfg.batch)
        self.recompute = cfg.recompute == "on" or (
            cfg.recompute == "auto" and network_parameters(model) >= RECOMPUTE_PARAMETERS
        )
        self.losses: list[float] = []
        self._untuned: RunValues | None = None
        self._plain: dict[str, tuple[float, list[float]]] = {}
        self._teachers: dict[str, list[torch.Tensor]] = {}
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
        self.selector = Selector(self, metric)
        self.paper = PaperObjective(self) if cfg.objective == "paper" else None
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
        if not self.extra_args:
            return self.extra_args
        b, rows = self.config.batch, self.pool.chunks * self.config.batch
        out = {}
        for k, v in self.extra_args.items():
            if torch.is_tensor(v) and v.ndim and len(v) == rows and rows != b:
                v = v[c * b : (c + 1) * b]
            v = parallel.rows(v, part, b)
            out[k] = v.to(self.device) if torch.is_tensor(v) else v
        return out

    def _start(self, noise_set: NoiseSet, c: int, part: slice = slice(None)) -> tuple[torch.Tensor, Callable | None]:
        """Rows ``part`` of chunk ``c``'s starting state, and their noise sampler (the whole chunk's, sliced,
        so a micro-batch or a process sees exactly the noise its rows get in a whole-batch run)."""
        x = noise_set.noise(c, self.shape, self.device) * self.sigmas[0].to(self.device)
        ns = self._noise_sampler(noise_set.key(c), x)
        return x[part], (None if ns is None else RowNoise(ns, part))

    def _sampled(
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
                self._fine.to(self.device),
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
        """:meth:`_sampled` for the whole chunk without gradients: this process's micro-batches, joined with the
        other processes' rows."""
        with torch.no_grad():
            runs = [
                self._sampled(noise_set, c, values, part, states, spec) for part in self.shards.parts(self.config.batch)
            ]
        return [self.shards.gather(parallel.concat([run[j] for run in runs])) for j in range(len(runs[0]))]

    def teacher(self, noise_set: NoiseSet | None = None) -> list[torch.Tensor]:
        """Per chunk of ``noise_set`` (default: the pool), the teacher's states at each σ: (N+1, batch, ...)."""
        noise_set = noise_set or self.pool
        if noise_set.name in self._teachers:
            return self._teachers[noise_set.name]
        cfg = self.config
        same_kind = self.stochastic or "dode" in cfg.families  # D-ODE distils from its own solver (Kim et al.)
        spec = sampler_spec(cfg.teacher_sampler or (self.spec.name if same_kind else "dpmpp_2m"))
        self._fine, positions = refine(self.sigmas, cfg.teacher_substeps, self.model.sigma_min)
        out = []
        for c in tqdm(
            range(noise_set.chunks),
            desc=f"teacher ({noise_set.name})",
            leave=False,
            disable=not (cfg.show_progress and self.shards.rank == 0),
        ):
            states = self.whole(noise_set, c, None, states=True, spec=spec)
            out.append(torch.stack([states[p] for p in positions]))
        self._teachers[noise_set.name] = out
        return out

    def use_teacher(self, noise_set: NoiseSet, states: list[torch.Tensor]) -> None:
        """Take another run's teacher for ``noise_set`` (per chunk, at least the final states): runs that start from
        the same noise at the same σ_0 and compare only final samples can share one."""
        self._teachers[noise_set.name] = states

    # ----- joint objectives -----------------------------------------------------------------------------
    def target(self, noise_set: NoiseSet, c: int) -> torch.Tensor:
        if self.config.data == "real" or self.data is not None:
            gen = torch.Generator().manual_seed(noise_set.key(c) + 17)
            if self.data is not None:
                return self.data[torch.randint(len(self.data), (self.config.batch,), generator=gen)].to(self.device)
            return real_data(self.model, self.config.batch, gen).to(self.device)
        return self.teacher(noise_set)[c][-1]

    def _objective(self, outputs: list[torch.Tensor], noise_set: NoiseSet, c: int, objective: str) -> torch.Tensor:
        """The joint loss of a whole chunk's run: ``outputs`` = [final], or the states at each σ and the final."""
        final = outputs[-1]
        if objective == "energy":
            embed = self.features or (lambda x: x)
            energy = objectives.energy_distance(embed(final), embed(self.target(noise_set, c)))
            if not self.hinged:
                return energy
            plain_energy, plain_error = self._plain_terms(noise_set, c)
            error = objectives.squared_error(final, self.teacher(noise_set)[c][-1])
            return energy / plain_energy + self.config.accuracy_hinge * torch.relu(error / plain_error - 1)
        target = self.teacher(noise_set)[c]
        if objective == "final":
            return objectives.squared_error(final, target[-1])
        return objectives.trajectory_error(outputs, target, self.sigmas)

    @property
    def hinged(self) -> bool:
        """Energy with the accuracy hinge: the teacher pairs each sample with its own target."""
        cfg = self.config
        return cfg.objective == "energy" and cfg.data == "teacher" and self.data is None and cfg.accuracy_hinge > 0

    def _plain_terms(self, noise_set: NoiseSet, c: int) -> tuple[float, float]:
        """The hinged energy objective's units, from the plain sampler (computed once): its energy distance to the
        teacher over the whole noise set (all its samples at once, so it is stable where one chunk's estimate is
        noise; floored at 1 % of the mean distance between its samples and the teacher's, for a plain sampler that
        already matches the teacher), and chunk ``c``'s final squared error."""
        if noise_set.name not in self._plain:
            embed = self.features or (lambda x: x)
            finals, targets = [], []
            for chunk in range(noise_set.chunks):
                finals.append(self.whole(noise_set, chunk, self.untuned)[-1])
                targets.append(self.teacher(noise_set)[chunk][-1])
            errors = [max(objectives.squared_error(f, t).item(), 1e-12) for f, t in zip(finals, targets)]
            a, b = embed(torch.cat(finals)).flatten(1), embed(torch.cat(targets)).flatten(1)
            scale = (a.double() - b.double()).norm(dim=1).mean().item()
            energy = max(objectives.energy_distance(a, b).item(), 0.01 * scale, 1e-12)
            self._plain[noise_set.name] = (energy, errors)
        energy, errors = self._plain[noise_set.name]
        return energy, errors[c]

    def _loss(self, noise_set: NoiseSet, c: int, values: RunValues, objective: str | None = None) -> torch.Tensor:
        """The joint loss of chunk ``c`` for ``values`` without gradients (every process gets the same value)."""
        objective = objective or self.config.objective
        if objective == "paper":
            raise TuneError("the joint objectives are 'final', 'trajectory' and 'energy'")
        return self._objective(
            self.whole(noise_set, c, values, states=objective == "trajectory"), noise_set, c, objective
        )

    def _chunk(self, iteration: int) -> int:
        """The pool chunk iteration ``iteration`` trains on: every chunk once per epoch, in a seeded order."""
        epoch, pos = divmod(iteration, self.pool.chunks)
        order = torch.randperm(self.pool.chunks, generator=torch.Generator().manual_seed(self.pool.key(epoch)))
        return int(order[pos])

    def chunk_loss(self, values: RunValues, iteration: int) -> torch.Tensor:
        """The joint loss of iteration ``iteration``'s pool chunk for ``values``, differentiable through the run
        (one process, the whole batch in one pass)."""
        c, objective = self._chunk(iteration), self.config.objective
        outputs = self._sampled(self.pool, c, values, slice(None), objective == "trajectory")
        return self._objective(outputs, self.pool, c, objective)

    def _joint_step(self, iteration: int) -> torch.Tensor:
        """Back-propagate the joint loss of the iteration's chunk into ``param.raw.grad``; returns the loss.

        One process and micro-batch: one pass. Otherwise two: the whole chunk without gradients (the loss
        compares all its samples), then each own micro-batch again with gradients, back-propagating the
        whole-chunk loss's gradient for its rows; the processes' gradients are summed."""
        c, objective, n = self._chunk(iteration), self.config.objective, self.config.batch
        want_states = objective == "trajectory"
        if self.shards.trivial(n):
            loss = self.chunk_loss(self.param.values(), iteration)
            loss.backward()
            return loss.detach()
        whole = [t.requires_grad_() for t in self.whole(self.pool, c, self.param.values(), want_states)]
        loss = self._objective(whole, self.pool, c, objective)
        grads = torch.autograd.grad(loss, whole, allow_unused=True)  # the start state is not a function of τ
        for part in self.shards.parts(n):
            outputs = self._sampled(self.pool, c, self.param.values(), part, want_states)
            used = [(out, g[part]) for out, g in zip(outputs, grads) if g is not None]
            torch.autograd.backward([out for out, _ in used], [g for _, g in used])
        self.shards.reduce_sum(self.param.raw.grad)
        return loss.detach()

    def pool_objective(self, values: RunValues | None = None, noise_set: NoiseSet | None = None) -> float:
        """The joint objective averaged over every chunk of ``noise_set`` (default: the training pool) for
        ``values`` (default: the current parameters; :attr:`untuned` is the plain sampler)."""
        noise_set = noise_set or self.pool
        objective = "final" if self.config.objective == "paper" else None
        with torch.no_grad():
            values = self.param.values() if values is None else values
            return (
                sum(self._loss(noise_set, c, values, objective).item() for c in range(noise_set.chunks))
                / noise_set.chunks
            )

    # ----- optimisation ---------------------------------------------------------------------------------
    def _phases(self) -> list[list[int]]:
        """Indices of the evaluations each phase trains: one joint phase, or one per interval (paper)."""
        return [list(range(len(self.ev)))] if self.paper is None else self.paper.phases()

    def tune(self, resume: bool = False, progress: Callable[[int, int], None] | None = None) -> TuneResult:
        """Run (or resume) the optimisation; ``progress(done, total)`` is called after every iteration.
        Out of memory becomes a :class:`TuneError` naming the fix."""
        try:
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
        phases = self._phases()
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
                loss = self._joint_step(it) if self.paper is None else self.paper.step(phase, it)
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
                        bar.set_postfix_str(f"stopped early: {self.stop_reason(step)}")
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

    def stop_reason(self, step: int) -> str:
        """Why a run that ended at ``step`` stopped before its configured iterations."""
        cfg = self.config
        return (
            f"iteration {step} of {cfg.iters}: {cfg.patience} validations in a row without a "
            f"{cfg.min_improvement:.1%} gain (patience 0 runs every iteration)"
        )

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
