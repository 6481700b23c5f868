"""``timetuner demo``: the shipped τ sets against the plain samplers on digits-ddpm."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

import registry

from . import plots, shipped
from .evaluate import EVAL_SEED, eval_noise, evaluate, generate, reference
from .run import make_sigmas, steps_for_nfe
from .tuned_set import TunedSet
from .tuner import Tuner

MODEL = "digits-ddpm"
CASES = [("ddim", 5), ("ddim", 10), ("dpmpp_2m", 5), ("dpmpp_2m", 10)]
CURVE_NFE = [4, 5, 6, 8, 10, 15, 20]


def _tuned_set(model: Any, sampler: str, nfe: int, schedule: str, retune: bool) -> TunedSet:
    if not retune:
        return shipped.load(shipped.find(MODEL, sampler, nfe=nfe))
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(model, schedule, steps_for_nfe(spec, model, schedule, nfe))
    return Tuner(model, spec, sigmas, schedule).tune().tuned_set(model)


def _gap(untuned: dict, tuned: dict) -> float | None:
    """Share of the FD gap to the 500-NFE reference closed; None when the untuned run is already there."""
    gap = untuned["fd"] - untuned["fd_reference"]
    return (untuned["fd"] - tuned["fd"]) / gap if gap > 0 else None


def run_demo(out: Path, retune: bool = False, n: int = 1000) -> dict[str, Any]:
    started = time.perf_counter()
    model = registry.load_model(MODEL)
    rows, grid, curves, schedules = [], {}, {}, {}
    grid_noise = eval_noise(12, tuple(model.sample_shape), EVAL_SEED + 1)
    for sampler, nfe in CASES:
        spec = registry.get_sampler(sampler)
        ts = _tuned_set(model, sampler, nfe, model.default_schedule, retune)
        sigmas = make_sigmas(model, ts.schedule, ts.steps)
        ts.check(model=model, sampler=sampler, sigmas=sigmas)
        schedules[sampler] = ts.schedule
        untuned = evaluate(model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options)
        tuned = evaluate(model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options, lookup=ts.lookup())
        rows.append({"sampler": sampler, "schedule": ts.schedule, "nfe": tuned["nfe"], "untuned": untuned,
                     "tuned": tuned, "gap_closed": _gap(untuned, tuned),
                     "identity": ts.lookup().is_identity(), "tuned_set": str(ts.path) if ts.path else "retuned"})
        grid[f"{sampler}, NFE {tuned['nfe']}"] = {
            "untuned": generate(model, spec, sigmas, grid_noise),
            "tuned": generate(model, spec, sigmas, grid_noise, lookup=ts.lookup()),
            "reference": reference(model, spec, ts.schedule, grid_noise),
        }
    for sampler, schedule in schedules.items():
        spec = registry.get_sampler(sampler)
        fds = [evaluate(model, spec, make_sigmas(model, schedule, k), schedule, n=n)["fd"] for k in CURVE_NFE]
        curves[f"{sampler} untuned ({schedule})"] = (CURVE_NFE, fds)
        mine = [r for r in rows if r["sampler"] == sampler]
        curves[f"{sampler} tuned"] = ([r["nfe"] for r in mine], [r["tuned"]["fd"] for r in mine])
    out.mkdir(parents=True, exist_ok=True)
    plots.sample_grid(grid, out / "samples.png")
    plots.fd_vs_nfe(curves, out / "fd_vs_nfe.png", reference=rows[0]["untuned"]["fd_reference"],
                    title=f"{MODEL}: FD vs NFE ({n} samples)")
    summary = {"model": MODEL, "n": n, "rows": rows,
               "curves": {k: {"nfe": list(v[0]), "fd": v[1]} for k, v in curves.items()},
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"{MODEL}, {n} samples from noise no set was tuned on; FD against held-out digits, lower is better")
    click.echo(f"{'sampler':<9} {'schedule':<11} {'NFE':>3} {'FD untuned':>10} {'FD tuned':>9} {'FD ref':>7} "
               f"{'gap closed':>10} {'traj untuned':>12} {'traj tuned':>10} {'s untuned':>9} {'s tuned':>7}")
    for r in rows:
        u, t = r["untuned"], r["tuned"]
        gap = "at ref" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
        gap += "*" if r["identity"] else ""
        click.echo(f"{r['sampler']:<9} {r['schedule']:<11} {r['nfe']:>3} {u['fd']:>10.2f} {t['fd']:>9.2f} "
                   f"{u['fd_reference']:>7.2f} {gap:>10} {u['traj_err']:>12.4f} {t['traj_err']:>10.4f} "
                   f"{u['seconds']:>9.3f} {t['seconds']:>7.3f}")
    if any(r["identity"] for r in rows):
        click.echo("* the set is the identity: tuning did not validate better than the plain sampler")
    click.echo(f"wrote {out / 'samples.png'}, {out / 'fd_vs_nfe.png'}, {out / 'results.json'} "
               f"in {summary['seconds']:.0f} s")
    return summary
