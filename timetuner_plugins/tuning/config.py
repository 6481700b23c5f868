"""The settings of one tuning run: a frozen :class:`TuneConfig` with typed choices, checked up front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args


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


class TuneError(ValueError):
    """Settings that cannot work, named with the fix."""


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one tuning run (immutable: change one with ``dataclasses.replace``); ``TuneConfig.paper()``
    gives the paper's procedure."""

    objective: Objective = "energy"
    mode: Mode = "sequential"
    iters: int = 250
    batch: int = 64
    lr: float = 0.03
    seed: int = 0
    param: Param = "log_ratio"
    data: Data = "teacher"
    pool: int = 256
    teacher_substeps: int = 10  # per interval; doubled (at most twice) until the teacher has converged
    teacher_tolerance: float = 0.05  # converged: doubling moves it by ≤ this share of the plain run's distance; 0: off
    teacher_sampler: str | None = None
    select: bool = True
    validate_every: int = 25
    val_size: int = 384
    patience: int = 2  # validations without improvement before a joint run stops; 0: run every iteration
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
        if not 0 <= self.teacher_tolerance < 1:
            raise TuneError(
                f"teacher_tolerance must be in [0, 1) (0 turns the check off), got {self.teacher_tolerance}"
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
