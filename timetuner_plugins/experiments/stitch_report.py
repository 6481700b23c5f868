"""``timetuner stitch``: T-Stitch's speed/quality curve over the switch fraction, optionally with τ tuned
for each stitched pair. Writes ``results.json``, ``results.md`` and ``stitch.png``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

import registry

from ..evaluation.evaluate import EVAL_SEED, eval_noise, generate
from ..evaluation.metrics import fd_metric
from ..sampling.run import make_sigmas
from ..devices import model_device
from ..sampling.t_stitch import StitchedDenoiser, check_fraction, stitch
from ..sets.tau import TauLookup
from ..tuning.pipeline import tune_set
from ..tuning.tuner import TuneConfig


@dataclass
class StitchPlan:
    model: str = "digits-ddpm"
    small: str = "digits-ddpm-small"
    sampler: str = "ddim"
    steps: int = 10
    schedule: str | None = None  # default: the large model's
    fractions: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])
    tune_fractions: list[float] = field(default_factory=list)
    tune_iters: int = 250
    n: int = 1000
    batch: int = 500  # samples per timed batch
    repeats: int = 5  # timing rounds; each fraction's fastest run is reported
    seed: int = EVAL_SEED

    def validate(self) -> None:
        self.fractions = [check_fraction(f) for f in self.fractions]
        self.tune_fractions = [check_fraction(f) for f in self.tune_fractions]
        if not self.fractions:
            raise ValueError("give at least one fraction")
        if self.n < 2 or self.batch < 1 or self.repeats < 1 or self.steps < 1 or self.tune_iters < 1:
            raise ValueError("n must be ≥ 2, and batch, repeats, steps and tune iterations ≥ 1")


def _timings(runs: list[Callable[[], Any]], repeats: int, progress: bool) -> list[float]:
    """Per run, the fastest of ``repeats`` timed calls in seconds, after one warm-up each. The runs are
    timed in rounds (each once per round), so load from other processes spreads over all of them."""
    for run in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in tqdm(range(repeats), desc="t-stitch timing rounds", disable=not progress):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def run_stitch(
    plan: StitchPlan, out: Path | None = None, log: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """Measure FD and time per fraction (and FD with tuned τ at ``tune_fractions``); write the report."""
    plan.validate()
    large = registry.load_model(plan.model)
    spec = registry.get_sampler(plan.sampler)
    small = stitch(large, plan.small, 0.0).small  # a bad small model fails before any work
    schedule = plan.schedule or large.default_schedule
    sigmas = make_sigmas(large, schedule, plan.steps)
    noise = eval_noise(plan.n, tuple(large.sample_shape), plan.seed)
    timing = noise[: plan.batch].to(model_device(large))
    fd = fd_metric(large)
    if fd is None:
        raise ValueError(f"model {plan.model!r} has no FD metric; the stitch report needs one")
    rows: list[dict[str, Any]] = []
    for f in tqdm(plan.fractions, desc="t-stitch fractions", disable=not progress):
        model = StitchedDenoiser(large, small, f)
        samples = generate(model, spec, sigmas, noise, seed=plan.seed)
        k = spec.nfe(sigmas)
        row = {"fraction": f, "small_evals": model.small_evaluations(k), "nfe": k, "fd": fd(samples)}
        if any(abs(f - t) < 1e-9 for t in plan.tune_fractions):
            row.update(_tuned(model, spec, sigmas, schedule, noise, plan, fd))
        rows.append(row)
    runs = [
        lambda m=StitchedDenoiser(large, small, r["fraction"]): generate(m, spec, sigmas, timing, seed=plan.seed)
        for r in rows
    ]
    for r, seconds in zip(rows, _timings(runs, plan.repeats, progress)):
        r["seconds"] = round(seconds, 5)
        log(_line(r))
    base = next((r["seconds"] for r in rows if r["fraction"] == 0.0), rows[0]["seconds"])
    for r in rows:
        r["speedup"] = round(base / r["seconds"], 3)
    data = {
        "plan": asdict(plan) | {"schedule": schedule},
        "rows": rows,
        "params": {plan.model: _params(large), plan.small: _params(small)},
        "torch_threads": torch.get_num_threads(),
        "device": str(model_device(large)),
    }
    if out is not None:
        write(data, out)
    return data


def _tuned(
    model: Any,
    spec: Any,
    sigmas: torch.Tensor,
    schedule: str,
    noise: torch.Tensor,
    plan: StitchPlan,
    fd: Callable[[torch.Tensor], float],
) -> dict[str, Any]:
    """τ tuned by the generic tuner with the stitched pair as the model, evaluated on the report's noise."""
    config = TuneConfig(iters=plan.tune_iters, show_progress=False)
    result = tune_set(model, spec, sigmas, schedule, config, eval_n=0).result
    lookup = TauLookup(result.eval_sigmas, result.tau, dode_lambda=result.dode_lambda)
    samples = generate(model, spec, sigmas, noise, lookup=lookup, seed=plan.seed)
    sel = result.selection
    return {
        "fd_tuned": fd(samples),
        "tau_ratio": [round(v, 4) for v in (result.tau / result.eval_sigmas).tolist()],
        "tune_seconds": round(result.seconds, 1),
        "kept_identity": bool(sel.get("fallback_identity", False)),
    }


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _line(r: dict[str, Any]) -> str:
    tuned = f"  FD tuned τ {r['fd_tuned']:.3f}" if "fd_tuned" in r else ""
    return (
        f"f={r['fraction']:.2f}  small evals {r['small_evals']}/{r['nfe']}  FD {r['fd']:.3f}  "
        f"{r['seconds'] * 1e3:.1f} ms/batch{tuned}"
    )


def markdown(data: dict[str, Any]) -> str:
    p = data["plan"]
    tuned = any("fd_tuned" in r for r in data["rows"])
    head = "| fraction | small / total evals | FD | s per batch | speedup |" + (
        " FD, τ tuned for the pair |" if tuned else ""
    )
    rule = "|---:|---:|---:|---:|---:|" + ("---:|" if tuned else "")
    lines = [
        f"T-Stitch: {p['small']} for the first evaluations, then {p['model']}; {p['sampler']}, {p['steps']} "
        f"steps ({p['schedule']}), FD on {p['n']} samples, time = fastest of {p['repeats']} interleaved runs of "
        f"{p['batch']} samples ({data['device']}, {data['torch_threads']} threads).",
        "",
        head,
        rule,
    ]
    for r in data["rows"]:
        cell = ""
        if tuned:
            cell = (
                " – |"
                if "fd_tuned" not in r
                else f" {r['fd_tuned']:.3f}{' (identity kept)' if r['kept_identity'] else ''} |"
            )
        lines.append(
            f"| {r['fraction']:.2f} | {r['small_evals']} / {r['nfe']} | {r['fd']:.3f} | "
            f"{r['seconds']:.4f} | {r['speedup']:.2f}× |{cell}"
        )
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> Path:
    from .plots import plt

    rows = data["rows"]
    frac = [r["fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(frac, [r["fd"] for r in rows], marker="o", color="C0", label="FD")
    tuned = [(r["fraction"], r["fd_tuned"]) for r in rows if "fd_tuned" in r]
    if tuned:
        ax.plot(*zip(*tuned), marker="s", linestyle="none", color="C2", label="FD, τ tuned for the pair")
    ax.set_xlabel("switch fraction (share of evaluations on the small model)")
    ax.set_ylabel("FD")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(frac, [r["seconds"] for r in rows], marker="^", color="C1", label="s per batch")
    twin.set_ylabel("seconds per batch")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="center left")
    p = data["plan"]
    ax.set_title(f"T-Stitch {p['small']} → {p['model']}, {p['sampler']} {p['steps']} steps", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=140)
    plt.close(fig)
    return path


def write(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2))
    (out / "results.md").write_text(markdown(data))
    plot(data, out / "stitch.png")
