"""Tuning one τ function (:mod:`..sets.tau_function`) over a range of NFEs and schedules.

Each (schedule, step count) in the range is a run with its own :class:`~timetuner_plugins.tuning.tuner.Tuner` (training
pool, held-out noise, the plain sampler's units; runs from one σ_0 share the finest run's teacher); they share θ. Each iteration trains on one run, in a
seeded order that visits every run once per round, with that run's joint objective (the default's hinged energy
is relative to the plain sampler, so runs of different NFE weigh alike). Selection: every ``validate_every``
iterations each run scores θ on its held-out noise against its plain sampler; θ's score is the worst run's change,
so the θ kept is better than the plain sampler on every run it was tuned on, and it must pass every run's
trajectory guard (hinged energy). θ = 0 (the plain sampler) is kept unless some θ scores below 0.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from registry import SamplerSpec

from . import checkpoint as ckpt
from ..adapters.denoisers import frozen_network
from ..sampling.run import eval_plan, make_sigmas, sampler_spec, steps_for_nfe
from ..sets.tau_function import TauFunction
from ..sets.tuned_set import TunedSet
from .config import TuneConfig, TuneError
from .parameters import RunValues
from .tuner import Tuner, stalled

TRAIN_NFES = (4, 5, 6, 8, 10, 13, 16, 20)  # the runs a 4–20 function trains on; it applies at every NFE between
# A function's defaults where they differ from one run's: its runs share the iterations, so it gets more, and no
# early stop (on gmm-digits DDIM, 250 iterations stopped at 150 closed 48/52 % of the FD gap at NFE 8/10; 750
# without the stop 56-59/63-64 %, docs/model_agnostic.md).
# a function learns from eight runs at once: more iterations, no early stop, and the larger pools and finer teacher
# its results were measured with (docs/model_agnostic.md)
FUNCTION_DEFAULTS = {
    "iters": 800,
    "validate_every": 50,
    "patience": 0,
    "batch": 128,
    "pool": 512,
    "val_size": 512,
    "teacher_substeps": 20,
    "teacher_tolerance": 0.0,
}


@dataclass
class _Run:
    schedule: str
    tuner: Tuner
    features: torch.Tensor
    plain_score: float = 0.0
    unit: float = 1.0
    plain_guard: float | None = None

    @property
    def nfe(self) -> int:
        return len(self.tuner.ev)


@dataclass
class FunctionResult:
    """A tuned τ function, the runs it was tuned on and how it scored on their held-out noise."""

    function: TauFunction
    sampler: str
    schedules: list[str]
    nfe_range: tuple[int, int]
    runs: list[dict[str, Any]]
    config: TuneConfig
    options: dict[str, Any]
    selection: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    iterations_run: int = 0

    def tuned_set(
        self,
        model: Any,
        sigmas: torch.Tensor,
        metrics_before: dict | None = None,
        metrics_after: dict | None = None,
    ) -> TunedSet:
        """The function set; its tensors are the function on the representative run ``sigmas`` (one of its
        schedules, within its NFE range), where ``metrics_before``/``metrics_after`` were measured."""
        from ..adapters.denoisers import parameterisation

        fn = self.function
        settings = {
            **fn.describe(),
            "nfe": list(self.nfe_range),
            "schedules": self.schedules,
            "runs": self.runs,
        }
        shell = TunedSet(
            sigmas=sigmas,
            eval_sigmas=sigmas[:1],
            tau=sigmas[:1],
            model_id=getattr(model, "model_id", "model"),
            model_fingerprint=model.fingerprint,
            sampler=self.sampler,
            schedule=self.schedules[0],
            objective=self.config.objective,
            iterations=self.config.iters,
            seed=self.config.seed,
            data_source=self.config.data,
            sampler_options={k: v for k, v in self.options.items() if k != "noise_sampler"},
            metrics_before=metrics_before or {},
            metrics_after=metrics_after or {},
            extra={
                "tau_function": settings,
                "selection": self.selection,
                "iterations_run": self.iterations_run,
                "seconds": round(self.seconds, 1),
                "model": parameterisation(model),
            },
            tau_function=fn.coef.detach().float().cpu(),
        )
        one = shell.for_run(model, sigmas, schedule=self.schedules[0])
        return replace(shell, eval_sigmas=one.eval_sigmas, tau=one.tau)


class FunctionTuner:
    """Trains one τ function for ``sampler`` on ``model`` over NFEs ``nfe_range`` and ``schedules``."""

    def __init__(
        self,
        model: Any,
        sampler: str | SamplerSpec,
        schedules: list[str],
        nfe_range: tuple[int, int] = (4, 20),
        config: TuneConfig | None = None,
        options: dict | None = None,
        train_nfes: tuple[int, ...] | None = None,
        checkpoint: str | Path | None = None,
    ):
        self.model, self.spec = model, sampler_spec(sampler)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.config = config or TuneConfig(**FUNCTION_DEFAULTS)
        if self.config.objective == "paper" or self.config.families != ("tau",):
            raise TuneError(
                "a τ function is tuned with the joint objectives ('energy', 'final', 'trajectory') and τ alone; "
                "tune one NFE at a time for the paper's objective or the 'dode'/'sigma' families"
            )
        lo, hi = nfe_range
        if not 1 <= lo < hi:
            raise TuneError(f"an NFE range needs 1 ≤ lowest < highest, got {lo}–{hi}")
        if not schedules:
            raise TuneError("give at least one schedule to tune the function on")
        self.schedules, self.nfe_range = list(schedules), (lo, hi)
        wanted = sorted({n for n in (train_nfes or TRAIN_NFES) if lo <= n <= hi} | {lo, hi})
        inner = replace(self.config, show_progress=False, select=True, patience=0)
        shape = tuple(model.sample_shape)
        self.runs: list[_Run] = []
        self.function = TauFunction.for_model(model)
        seen = set()
        for schedule in self.schedules:
            for nfe in wanted:
                try:
                    steps = steps_for_nfe(self.spec, model, schedule, nfe)
                except ValueError:
                    continue  # a sampler that needs more than ``nfe`` evaluations for one step
                if (schedule, steps) in seen:
                    continue
                seen.add((schedule, steps))
                sigmas = make_sigmas(model, schedule, steps)
                tuner = Tuner(model, self.spec, sigmas, schedule, inner, options)
                if not lo <= len(tuner.ev) <= hi:
                    continue
                plan = eval_plan(self.spec, sigmas, shape, tuner.options, model)
                features = self.function.features(plan, sigmas).to(tuner.device)
                self.runs.append(_Run(schedule, tuner, features))
        if not self.runs:
            raise TuneError(f"{self.spec.name} makes no run within NFE {lo}–{hi} on {', '.join(self.schedules)}")
        self.function = self.function.to(self.runs[0].tuner.device)
        self.options = self.runs[0].tuner.options
        self.losses: list[float] = []

    def _share_teachers(self, show: bool) -> None:
        """Runs that start at one σ_0 start from the same noise (one seed), so one teacher — the run with the most
        steps, the finest refinement — serves them all where only its final samples are compared ('energy',
        'final'; deterministic samplers): one teacher per σ_0 instead of one per run."""
        cfg, first = self.config, self.runs[0].tuner
        if cfg.objective == "trajectory" or first.stochastic or first.data is not None or cfg.data == "real":
            return
        groups: dict[float, list[_Run]] = {}
        for run in self.runs:
            groups.setdefault(round(float(run.tuner.sigmas[0]), 5), []).append(run)
        for runs in tqdm(list(groups.values()), desc="teachers", disable=not show, leave=False):
            finest = max(runs, key=lambda r: len(r.tuner.sigmas))
            for noise_set in (finest.tuner.pool, finest.tuner.val):
                finals = [states[-1:] for states in finest.tuner.teacher(noise_set)]
                for run in runs:
                    if run is not finest:
                        run.tuner.teacher.use(noise_set, finals)

    def values(self, run: _Run, coef: torch.Tensor | None = None) -> RunValues:
        """``run`` with τ from θ = ``coef`` (default: the function's own)."""
        param = run.tuner.param
        return RunValues(param.sigmas, param.eval_sigmas, self.function.tau(run.features, param.eval_sigmas, coef))

    def _order(self, round_: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + round_)
        return torch.randperm(len(self.runs), generator=gen).tolist()

    def _prepare(self, run: _Run) -> None:
        """The plain sampler's held-out score, the unit a change of score is measured in, and its guard value. The
        unit is the plain score, floored (an energy distance) at 1 % of the mean distance between the plain samples
        and their targets: a plain sampler that already matches the teacher scores near 0, or below (the estimate
        is unbiased), where a ratio would mean nothing."""
        tuner = run.tuner
        run.plain_score = tuner.selector.score(tuner.untuned)
        run.unit = max(abs(run.plain_score), 1e-12)
        if tuner.selector.objective == "energy" and tuner.selector.metric is None:
            samples, target = tuner.selector.rows(tuner.untuned)
            scale = (samples.flatten(1).double() - target.flatten(1).double()).norm(dim=1).mean().item()
            run.unit = max(run.plain_score, 0.01 * scale, 1e-12)
        if tuner.joint.hinged:
            run.plain_guard = tuner.selector.trajectory_guard(tuner.untuned)

    def _score(self, coef: torch.Tensor) -> tuple[float, list[float], bool]:
        """θ's worst change of held-out score over the runs (in each run's unit; below 0 is better than the plain
        sampler), each run's change, and whether every run's trajectory guard passes."""
        changes, guarded = [], True
        for run in self.runs:
            values = self.values(run, coef)
            changes.append((run.tuner.selector.score(values) - run.plain_score) / run.unit)
            if run.plain_guard is not None and guarded:
                guarded = run.tuner.selector.trajectory_guard(values) <= run.plain_guard
        return max(changes), changes, guarded

    def _fingerprint(self) -> str:
        """The settings a checkpoint must share to be resumed: the config and every run's tuner (model, sampler,
        σ's, options)."""
        parts = [
            asdict(self.config) | {"show_progress": None, "checkpoint_every": None},
            self.nfe_range,
            [run.tuner._fingerprint() for run in self.runs],
        ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _start(self, resume: bool) -> ckpt.TunerState:
        if resume:
            if self.checkpoint is None:
                raise TuneError("--resume needs a checkpoint path")
            return ckpt.load(self.checkpoint, self._fingerprint(), self.function.coef.device)
        if self.checkpoint is not None and self.checkpoint.exists():
            raise TuneError(
                f"checkpoint {self.checkpoint} exists from an earlier run; pass --resume to continue it, or delete "
                f"it to start over"
            )
        return ckpt.TunerState(raw=self.function.coef.detach().clone(), scores=[(0, 0.0)], best_score=0.0)

    def tune(self, resume: bool = False) -> FunctionResult:
        """Run (or, from :attr:`checkpoint`, resume) the optimisation; a resumed run equals an uninterrupted one. The
        network's weights get no gradients."""
        with frozen_network(self.model):
            return self._tune(resume)

    def _tune(self, resume: bool) -> FunctionResult:
        cfg = self.config
        started = time.perf_counter()
        show = cfg.show_progress
        state = self._start(resume)
        with torch.no_grad():
            self._share_teachers(show)
            for run in tqdm(self.runs, desc="plain runs", disable=not show, leave=False):
                self._prepare(run)
        coef = self.function.coef
        with torch.no_grad():
            coef.copy_(state.raw)
        opt = torch.optim.Adam([coef], lr=cfg.lr)
        if state.optimizer is not None:
            opt.load_state_dict(state.optimizer)
        self.losses = state.losses
        scores, history = state.scores, state.history  # history: per validation, step, each run's change, guards
        best, best_coef, stopped = state.best_score, state.best_raw, state.stopped_at
        with tqdm(
            total=cfg.iters, initial=state.next_iter, desc=f"tune τ function {self.spec.name}", disable=not show
        ) as bar:
            for it in range(state.next_iter, cfg.iters if stopped is None else 0):
                round_, pos = divmod(it, len(self.runs))
                run = self.runs[self._order(round_)[pos]]
                opt.zero_grad(set_to_none=True)
                loss = run.tuner.joint.chunk_loss(self.values(run), round_)
                if not torch.isfinite(loss):
                    raise TuneError(f"the loss diverged at iteration {it}; lower --lr (now {cfg.lr})")
                loss.backward()
                opt.step()
                self.losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.4g}", nfe=run.nfe)
                step = it + 1
                if step % cfg.validate_every == 0 or step == cfg.iters:
                    with torch.no_grad():
                        score, changes, guarded = self._score(coef.detach())
                    scores.append((step, score))
                    history.append([step, [round(c, 4) for c in changes], guarded])
                    if score < best and guarded:
                        best, best_coef, state.best_iter = score, coef.detach().clone(), step
                    if cfg.patience and step != cfg.iters and stalled(scores, cfg.patience, cfg.min_improvement):
                        stopped = step
                        bar.total = step
                        bar.set_postfix_str(f"stopped early at iteration {step} of {cfg.iters}")
                if self.checkpoint is not None and (step % cfg.checkpoint_every == 0 or stopped is not None):
                    state.raw, state.next_iter, state.optimizer = coef.detach().clone(), step, opt.state_dict()
                    state.best_score, state.best_raw, state.stopped_at = best, best_coef, stopped
                    ckpt.save(self.checkpoint, state, self._fingerprint())
                if stopped is not None:
                    break
        if self.checkpoint is not None:
            self.checkpoint.unlink(missing_ok=True)
        kept = [changes for step, changes, _ in history if step == state.best_iter]
        best_changes = kept[0] if best_coef is not None and kept else [0.0] * len(self.runs)
        identity = best_coef is None
        with torch.no_grad():
            coef.copy_(torch.zeros_like(coef) if identity else best_coef)
        runs = [
            {"schedule": r.schedule, "steps": len(r.tuner.sigmas) - 1, "nfe": r.nfe, "val_change": round(v, 4)}
            for r, v in zip(self.runs, best_changes)
        ]
        selection = {
            "metric": "worst change of held-out score over the runs, in units of each plain sampler's",
            "untuned": 0.0,
            "best": best,
            "fallback_identity": identity,
            "scores": scores,
            "per_run": history,
            "stopped_early_at": stopped,
        }
        return FunctionResult(
            function=self.function.cpu(),
            sampler=self.spec.name,
            schedules=self.schedules,
            nfe_range=self.nfe_range,
            runs=runs,
            config=cfg,
            options=self.options,
            selection=selection,
            losses=self.losses,
            seconds=time.perf_counter() - started,
            iterations_run=stopped or cfg.iters,
        )
