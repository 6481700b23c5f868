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


def run_demo(out: Path, retune: bool = False, n: int = 1000) -> dict[str, Any]:
    started = time.perf_counter()
    model = registry.load_model(MODEL)
    schedule = model.default_schedule
    rows, grid, curves = [], {}, {}
    grid_noise = eval_noise(12, tuple(model.sample_shape), EVAL_SEED + 1)
    for sampler, nfe in CASES:
        spec = registry.get_sampler(sampler)
        ts = _tuned_set(model, sampler, nfe, schedule, retune)
        sigmas = make_sigmas(model, ts.schedule, ts.steps)
        ts.check(model=model, sampler=sampler, sigmas=sigmas)
        untuned = evaluate(model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options)
        tuned = evaluate(model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options, lookup=ts.lookup())
        gap = untuned["fd"] - untuned["fd_reference"]
        closed = (untuned["fd"] - tuned["fd"]) / gap if gap > 0 else float("nan")
        rows.append({"sampler": sampler, "nfe": tuned["nfe"], "untuned": untuned, "tuned": tuned,
                     "gap_closed": closed, "tuned_set": str(ts.path) if ts.path else "retuned"})
        grid[f"{sampler}, NFE {tuned['nfe']}"] = {
            "untuned": generate(model, spec, sigmas, grid_noise),
            "tuned": generate(model, spec, sigmas, grid_noise, lookup=ts.lookup()),
            "reference": reference(model, spec, ts.schedule, grid_noise),
        }
    for sampler in dict.fromkeys(s for s, _ in CASES):
        spec = registry.get_sampler(sampler)
        fds = [evaluate(model, spec, make_sigmas(model, schedule, k), schedule, n=n)["fd"] for k in CURVE_NFE]
        curves[f"{sampler} untuned"] = (CURVE_NFE, fds)
        tuned_rows = [r for r in rows if r["sampler"] == sampler]
        curves[f"{sampler} tuned"] = ([r["nfe"] for r in tuned_rows], [r["tuned"]["fd"] for r in tuned_rows])
    out.mkdir(parents=True, exist_ok=True)
    plots.sample_grid(grid, out / "samples.png")
    plots.fd_vs_nfe(curves, out / "fd_vs_nfe.png", reference=rows[0]["untuned"]["fd_reference"],
                    title=f"{MODEL}, {schedule}: FD vs NFE ({n} samples)")
    summary = {"model": MODEL, "schedule": schedule, "n": n, "rows": rows,
               "curves": {k: {"nfe": list(v[0]), "fd": v[1]} for k, v in curves.items()},
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"{MODEL}, {schedule} schedule, {n} samples; FD against held-out digits (lower is better)")
    click.echo(f"{'sampler':<10} {'NFE':>3} {'FD untuned':>11} {'FD tuned':>9} {'gap closed':>10} "
               f"{'traj untuned':>12} {'traj tuned':>10} {'s untuned':>9} {'s tuned':>8}")
    for r in rows:
        u, t = r["untuned"], r["tuned"]
        click.echo(f"{r['sampler']:<10} {r['nfe']:>3} {u['fd']:>11.4f} {t['fd']:>9.4f} {r['gap_closed']:>9.0%} "
                   f"{u['traj_err']:>12.4f} {t['traj_err']:>10.4f} {u['seconds']:>9.3f} {t['seconds']:>8.3f}")
    click.echo(f"500-NFE reference FD: {rows[0]['untuned']['fd_reference']:.4f}")
    click.echo(f"wrote {out / 'samples.png'}, {out / 'fd_vs_nfe.png'}, {out / 'results.json'} "
               f"in {summary['seconds']:.0f} s")
    return summary
