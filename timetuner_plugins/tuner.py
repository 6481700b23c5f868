"""The generic τ tuner: trains τ for any registered sampler by differentiating through its runs.

No per-sampler code: a run goes through the registry's ``wrap_model`` hook with a
differentiable τ lookup, and gradients flow back through the sampler's own arithmetic.

Objectives
- ``paper``: TimeTuner's per-interval ε-consistency loss (Xia et al. 2024): for interval i,
  ‖ε(x_i, σ_i) − ε(x̃_{i+1}, σ_{i+1})‖² with x̃_{i+1} one solver step from x_i whose network
  is conditioned on τ; one interval after another, the last left untuned; ``sequential``
  reaches x_i by running the tuned steps, ``parallel`` draws it from the forward process.
- ``trajectory``: all τ jointly, matching a high-NFE teacher's states at the schedule's σ's.
- ``final``: all τ jointly, matching the teacher's final sample.
The teacher runs from the same noise (and Brownian path, for stochastic samplers) on a
refinement of the same schedule; its states are computed once per run and reused.

Every iteration's randomness derives from (seed, interval, iteration), so a run that
is stopped and resumed from its checkpoint equals an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from registry import SamplerSpec

from . import __version__
from .io import atomic_path
from .noise import BrownianNoise, SeededNoise
from .run import eval_sigmas, run_sampler, sampler_spec
from .schedules import refine
from .tau import TauLookup
from .tuned_set import TunedSet

OBJECTIVES = ("paper", "trajectory", "final")
MODES = ("sequential", "parallel")
PARAMS = ("log_ratio", "t_ratio")
DATA = ("teacher", "real")
LOG_RATIO_BOUND = 1.0  # |log τ/σ| ≤ 1 via a tanh


class TuneError(ValueError):
    """Settings that cannot work, named with the fix."""


@dataclass
class TuneConfig:
    """Settings of one tuning run; ``TuneConfig.paper()`` gives the paper's procedure."""

    objective: str = "final"
    mode: str = "sequential"
    iters: int = 200
    batch: int = 64
    lr: float = 0.01
    seed: int = 0
    param: str = "log_ratio"
    data: str = "teacher"
    pool: int = 512
    teacher_substeps: int = 20
    teacher_sampler: str | None = None
    checkpoint_every: int = 25
    show_progress: bool = True

    @classmethod
    def paper(cls, mode: str = "sequential", **overrides: Any) -> "TuneConfig":
        """Xia et al. 2024: ratio τ = r·t per interval, Adam lr 2e-3, 500 iterations, real data."""
        return cls(**{"objective": "paper", "mode": mode, "iters": 500, "lr": 2e-3, "param": "t_ratio",
                      "data": "real", **overrides})

    def validate(self) -> None:
        for name, value, allowed in (("objective", self.objective, OBJECTIVES), ("mode", self.mode, MODES),
                                     ("param", self.param, PARAMS), ("data", self.data, DATA)):
            if value not in allowed:
                raise TuneError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        for name in ("iters", "batch", "pool", "teacher_substeps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TuneError(f"lr must be a positive number, got {self.lr}")
        if self.objective != "paper" and self.data == "real":
            raise TuneError(f"objective {self.objective!r} matches a teacher run from the same noise, so it is "
                            f"data-free; use data='teacher', or objective='paper' to tune on real data")


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

    def tuned_set(self, model: Any, metrics_before: dict | None = None, metrics_after: dict | None = None,
                  extra: dict | None = None) -> TunedSet:
        cfg = self.config
        return TunedSet(
            sigmas=self.sigmas.detach().cpu(), eval_sigmas=self.eval_sigmas.detach().cpu(),
            tau=self.tau.detach().cpu(), model_id=getattr(model, "model_id", "") or "unnamed",
            model_fingerprint=model.fingerprint, sampler=self.sampler, schedule=self.schedule,
            objective=cfg.objective, mode=cfg.mode if cfg.objective == "paper" else "joint",
            iterations=cfg.iters, seed=cfg.seed, data_source=cfg.data,
            sampler_options={k: v for k, v in self.options.items() if _jsonable(v)},
            metrics_before=metrics_before or {}, metrics_after=metrics_after or {},
            extra={"param": cfg.param, "lr": cfg.lr, "batch": cfg.batch, "pool": cfg.pool,
                   "teacher_substeps": cfg.teacher_substeps, "tune_seconds": round(self.seconds, 2),
                   "final_loss": self.losses[-1] if self.losses else None, **(extra or {})})


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


class TauParam(torch.nn.Module):
    """τ per evaluation from raw parameters (zero / one = identity).

    ``log_ratio``: τ = σ·exp(b·tanh(raw/b)); ``t_ratio`` (the paper's): the model's
    continuous time is scaled, t(τ) = r·t(σ), with t counted from the model's time origin.
    """

    def __init__(self, eval_sigmas: torch.Tensor, model: Any, kind: str):
        super().__init__()
        self.kind, self.model = kind, model
        self.register_buffer("eval_sigmas", eval_sigmas.clone())
        init = torch.zeros if kind == "log_ratio" else torch.ones
        self.raw = torch.nn.Parameter(init(len(eval_sigmas), dtype=eval_sigmas.dtype, device=eval_sigmas.device))

    def tau(self) -> torch.Tensor:
        if self.kind == "log_ratio":
            return self.eval_sigmas * torch.exp(LOG_RATIO_BOUND * torch.tanh(self.raw / LOG_RATIO_BOUND))
        offset = float(getattr(self.model, "time_offset", 0.0))
        t = self.model.sigma_to_t(self.eval_sigmas) + offset
        return self.model.t_to_sigma(self.raw * t - offset)


class Tuner:
    """Trains τ for ``sampler`` on ``model`` over ``sigmas`` (see the module docstring)."""

    def __init__(self, model: Any, sampler: str | SamplerSpec, sigmas: torch.Tensor, schedule: str = "custom",
                 config: TuneConfig | None = None, options: dict | None = None, extra_args: dict | None = None,
                 data: torch.Tensor | None = None, checkpoint: str | Path | None = None):
        self.model, self.spec = model, sampler_spec(sampler)
        self.config = config or TuneConfig()
        self.config.validate()
        if not self.spec.tunable:
            raise TuneError(f"sampler {self.spec.name!r} cannot be tuned: {self.spec.untunable_reason}")
        self.device = model_device(model)
        self.sigmas = sigmas.float()
        self.schedule, self.extra_args, self.data = schedule, extra_args, data
        self.options = self.spec.options(options)
        self.options.pop("noise_sampler", None)
        self.stochastic = self.spec.is_stochastic(self.options)
        self.shape = tuple(model.sample_shape)
        self.ev = eval_sigmas(self.spec, self.sigmas, self.shape, self.options)
        self.param = TauParam(self.ev.to(self.device), model, self.config.param)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.losses: list[float] = []
        self._teacher: list[torch.Tensor] | None = None
        self._brownian: dict[int, BrownianNoise] = {}

    # ----- runs -----------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, sigmas: torch.Tensor, tau: torch.Tensor | None, ev: torch.Tensor,
             noise_sampler: Callable | None, seed: int, states: list[torch.Tensor] | None = None,
             spec: SamplerSpec | None = None, extra_args: dict | None = None) -> torch.Tensor:
        lookup = None if tau is None else TauLookup(ev, tau)
        callback = (lambda info: states.append(info["x"])) if states is not None else None
        return run_sampler(self.model, spec or self.spec, x, sigmas, lookup=lookup, options=self.options,
                           extra_args=extra_args, noise_sampler=noise_sampler, seed=seed, callback=callback)

    def _noise_sampler(self, key: int, like: torch.Tensor) -> Callable | None:
        if not self.stochastic:
            return None
        if key not in self._brownian:
            self._brownian[key] = BrownianNoise(like, self.model.sigma_min, self.model.sigma_max, key)
        return self._brownian[key]

    def _batch_args(self, chunk: int) -> dict | None:
        if not self.extra_args:
            return self.extra_args
        b, pool = self.config.batch, self._chunks() * self.config.batch
        out = {}
        for k, v in self.extra_args.items():
            if torch.is_tensor(v) and v.ndim and len(v) == pool and pool != b:
                v = v[chunk * b:(chunk + 1) * b]
            out[k] = v.to(self.device) if torch.is_tensor(v) else v
        return out

    def _chunks(self) -> int:
        return max(1, math.ceil(self.config.pool / self.config.batch))

    def _pool_noise(self, chunk: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + chunk)
        return torch.randn((self.config.batch, *self.shape), generator=gen).to(self.device)

    def teacher(self) -> list[torch.Tensor]:
        """Per pool chunk, the teacher's states at each σ of the schedule: (N+1, batch, ...)."""
        if self._teacher is not None:
            return self._teacher
        cfg = self.config
        name = cfg.teacher_sampler or (self.spec.name if self.stochastic else "dpmpp_2m")
        spec = sampler_spec(name)
        fine, positions = refine(self.sigmas, cfg.teacher_substeps, self.model.sigma_min)
        fine = fine.to(self.device)
        out = []
        with torch.no_grad():
            for c in tqdm(range(self._chunks()), desc="teacher", disable=not cfg.show_progress, leave=False):
                x = self._pool_noise(c) * fine[0]
                states: list[torch.Tensor] = []
                final = self._run(x, fine, None, self.ev, self._noise_sampler(cfg.seed * 7919 + c, x),
                                  seed=cfg.seed + c, states=states, spec=spec, extra_args=self._batch_args(c))
                states.append(final)
                out.append(torch.stack([states[p] for p in positions]))
        self._teacher = out
        return out

    # ----- objectives -----------------------------------------------------------------------------------
    def _joint_loss(self, iteration: int) -> torch.Tensor:
        chunks = self._chunks()
        epoch, pos = divmod(iteration, chunks)
        order = torch.randperm(chunks, generator=torch.Generator().manual_seed(self.config.seed * 7919 + epoch))
        return self._chunk_loss(int(order[pos]), self.param.tau())

    def pool_objective(self, tau: torch.Tensor | None = None) -> float:
        """The joint objective (``final`` or ``trajectory``) averaged over the whole noise pool, for
        ``tau`` (default: the current τ; ``self.ev`` gives the untuned sampler)."""
        tau = self.param.tau() if tau is None else tau.to(self.device)
        with torch.no_grad():
            return sum(self._chunk_loss(c, tau).item() for c in range(self._chunks())) / self._chunks()

    def _chunk_loss(self, c: int, tau: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.objective == "paper":
            raise TuneError("pool_objective applies to the joint objectives 'final' and 'trajectory'")
        target = self.teacher()[c]
        x = self._pool_noise(c) * self.sigmas[0].to(self.device)
        states: list[torch.Tensor] = []
        final = self._run(x, self.sigmas.to(self.device), tau, self.param.eval_sigmas,
                          self._noise_sampler(cfg.seed * 7919 + c, x), seed=cfg.seed + c,
                          states=states if cfg.objective == "trajectory" else None, extra_args=self._batch_args(c))
        if cfg.objective == "final":
            return (final - target[-1]).pow(2).mean()
        states.append(final)
        weights = 1 / (self.sigmas.to(self.device) ** 2 + 1)
        per_step = [(s - t).pow(2).mean() * w for s, t, w in zip(states[1:], target[1:], weights[1:])]
        return torch.stack(per_step).mean()

    def _interval_evals(self) -> list[int]:
        """counts[i]: evaluations made by steps 0..i (runs on prefixes of the schedule)."""
        counts = []
        for i in range(len(self.sigmas) - 2):
            prefix = eval_sigmas(self.spec, self.sigmas[:i + 2], self.shape, self.options)
            if not torch.allclose(prefix, self.ev[:len(prefix)], rtol=1e-6):
                raise TuneError(f"sampler {self.spec.name!r} evaluates at other σ's on a prefix of the schedule, so "
                                f"the paper's per-interval objective does not apply; use objective 'final'")
            counts.append(len(prefix))
        return counts

    def _x0(self, gen: torch.Generator) -> torch.Tensor:
        b = self.config.batch
        if self.data is not None:
            return self.data[torch.randint(len(self.data), (b,), generator=gen)].to(self.device)
        if self.config.data == "real":
            return real_data(self.model, b, gen).to(self.device)
        teacher = torch.cat([t[-1] for t in self.teacher()])
        return teacher[torch.randint(len(teacher), (b,), generator=gen).to(teacher.device)]

    def _eps(self, x: torch.Tensor, sigma: torch.Tensor, args: dict | None) -> torch.Tensor:
        s = sigma.to(x.device)
        return (x - self.model(x, s.expand(len(x)), **(args or {}))) / s

    def _paper_loss(self, interval: int, iteration: int, counts: list[int]) -> torch.Tensor:
        cfg, i = self.config, interval
        gen = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + i) * 1_000_003 + iteration) % 2 ** 63)
        x0 = self._x0(gen)
        n = torch.randn(x0.shape, generator=gen).to(self.device)
        noise_sampler = SeededNoise(x0, gen.initial_seed() % 2 ** 62) if self.stochastic else None
        args = self._batch_args(0)
        sig = self.sigmas.to(self.device)
        tau = self.param.tau()
        start = counts[i - 1] if i else 0
        if cfg.mode == "sequential":
            states: list[torch.Tensor] = []
            x_next = self._run(x0 + sig[0] * n, sig[:i + 2], tau[:counts[i]], self.param.eval_sigmas[:counts[i]],
                               noise_sampler, seed=gen.initial_seed() % 2 ** 62, states=states, extra_args=args)
            x_i = states[i].detach()
        else:
            x_i = x0 + sig[i] * n
            x_next = self._run(x_i, sig[i:i + 2], tau[start:counts[i]], self.param.eval_sigmas[start:counts[i]],
                               noise_sampler, seed=gen.initial_seed() % 2 ** 62, extra_args=args)
        with torch.no_grad():
            eps_i = self._eps(x_i, sig[i], args)
        eps_next = self._eps(x_next, sig[i + 1], args)
        return (eps_i - eps_next).pow(2).flatten(1).sum(1).mean()

    # ----- optimisation ---------------------------------------------------------------------------------
    def _phases(self) -> list[tuple[int, list[int]]]:
        """(phase, indices of the evaluations it trains): one joint phase, or one per interval."""
        if self.config.objective != "paper":
            return [(0, list(range(len(self.ev))))]
        counts = self._interval_evals()
        self._counts = counts
        return [(i, list(range(counts[i - 1] if i else 0, counts[i]))) for i in range(len(counts))]

    def tune(self, resume: bool = False) -> TuneResult:
        cfg = self.config
        started = time.perf_counter()
        phases = self._phases()
        phase0, iter0, opt_state = 0, 0, None
        if resume:
            phase0, iter0, opt_state = self._load_checkpoint()
        elif self.checkpoint is not None and self.checkpoint.exists():
            raise TuneError(f"checkpoint {self.checkpoint} exists from an earlier run; pass --resume to continue it, "
                            f"or delete it to start over")
        total = len(phases) * cfg.iters
        bar = tqdm(total=total, initial=phase0 * cfg.iters + iter0, desc=f"tune {self.spec.name}",
                   disable=not cfg.show_progress)
        for phase, active in phases[phase0:]:
            mask = torch.zeros(len(self.ev), dtype=torch.bool, device=self.device)
            mask[active] = True
            opt = torch.optim.Adam([self.param.raw], lr=cfg.lr)
            if opt_state is not None:
                opt.load_state_dict(opt_state)
                opt_state = None
            for it in range(iter0 if phase == phase0 else 0, cfg.iters):
                if cfg.objective == "paper":
                    loss = self._paper_loss(phase, it, self._counts)
                else:
                    loss = self._joint_loss(it)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad = self.param.raw.grad
                if not torch.isfinite(loss) or not bool(torch.isfinite(grad).all()):
                    raise TuneError(f"the loss diverged at iteration {it} (loss {float(loss):.4g}); lower --lr "
                                    f"(now {cfg.lr}) or check the model's output for NaNs")
                grad.mul_(mask)
                opt.step()
                self.losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.4g}", phase=phase)
                if self.checkpoint is not None and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iters):
                    self._save_checkpoint(phase, it + 1, opt)
        bar.close()
        if self.checkpoint is not None:
            self.checkpoint.unlink(missing_ok=True)
        with torch.no_grad():
            tau = self.param.tau().detach().float().cpu()
        return TuneResult(tau=tau, eval_sigmas=self.ev.cpu(), sigmas=self.sigmas.cpu(), sampler=self.spec.name,
                          schedule=self.schedule, config=cfg, options=self.options, losses=self.losses,
                          seconds=time.perf_counter() - started)

    # ----- checkpoints ----------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        import hashlib

        parts = [asdict(self.config) | {"show_progress": None, "checkpoint_every": None}, self.spec.name,
                 self.sigmas.tolist(), self.model.fingerprint, {k: repr(v) for k, v in self.options.items()}]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _save_checkpoint(self, phase: int, next_iter: int, opt: torch.optim.Optimizer) -> None:
        if next_iter == self.config.iters:
            phase, next_iter = phase + 1, 0
            opt_tensors: dict[str, torch.Tensor] = {}
        else:
            opt_tensors = {f"adam.{k}": torch.as_tensor(v).detach().cpu().clone()
                           for k, v in opt.state_dict()["state"].get(0, {}).items()}
        tensors = {"raw": self.param.raw.detach().cpu().clone(), "losses": torch.tensor(self.losses or [0.0]),
                   **opt_tensors}
        meta = {"fingerprint": self._fingerprint(), "phase": str(phase), "next_iter": str(next_iter),
                "n_losses": str(len(self.losses)), "library_version": __version__,
                "param_groups": json.dumps(opt.state_dict()["param_groups"])}
        with atomic_path(self.checkpoint, overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def _load_checkpoint(self) -> tuple[int, int, dict | None]:
        from safetensors import safe_open

        if self.checkpoint is None or not self.checkpoint.is_file():
            raise TuneError(f"--resume needs a checkpoint, but {self.checkpoint} does not exist; run without --resume")
        try:
            with safe_open(str(self.checkpoint), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(self.checkpoint))
        except Exception as exc:
            raise TuneError(f"checkpoint {self.checkpoint} is unreadable ({exc}); delete it and start over") from None
        if meta.get("fingerprint") != self._fingerprint():
            raise TuneError(f"checkpoint {self.checkpoint} was written by a run with other settings (model, sampler, "
                            f"schedule or options); resume with the same command, or delete it to start over")
        with torch.no_grad():
            self.param.raw.copy_(tensors["raw"].to(self.device))
        self.losses = tensors["losses"].tolist()[:int(meta["n_losses"])]
        phase, next_iter = int(meta["phase"]), int(meta["next_iter"])
        opt_state = None
        if next_iter:
            state = {k[len("adam."):]: v.to(self.device) if k != "adam.step" else v
                     for k, v in tensors.items() if k.startswith("adam.")}
            opt_state = {"state": {0: state}, "param_groups": json.loads(meta["param_groups"])}
        return phase, next_iter, opt_state


def model_device(model: Any) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for anything else)."""
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device("cpu")


def real_data(model: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """Real x₀ for a bundled model: exact mixture draws for the GMM, training digits for the networks."""
    if hasattr(model, "sample_data"):
        return model.sample_data(n, generator)
    if getattr(model, "fd_kind", None) == "digits":
        from .data import digits

        images, _ = digits("train")
        return images[torch.randint(len(images), (n,), generator=generator)]
    raise TuneError("this model has no bundled real data; pass data=<tensor of x0> or use data='teacher'")


def tune(model: Any, sampler: str | SamplerSpec, sigmas: torch.Tensor, schedule: str = "custom",
         config: TuneConfig | None = None, **kwargs: Any) -> TuneResult:
    """Convenience: ``Tuner(...).tune()``; ``resume=True`` continues from ``checkpoint``."""
    resume = kwargs.pop("resume", False)
    return Tuner(model, sampler, sigmas, schedule, config, **kwargs).tune(resume=resume)
